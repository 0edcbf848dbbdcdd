"""Tests for L{txsmtpsrv._outcome}: every kind of hook answer, interpreted in one place."""

from __future__ import annotations

from txsmtpsrv import Reply, SMTPError
from txsmtpsrv._outcome import LOCAL_ERROR, auth_outcome, hook_outcome, lmtp_outcomes


def test_none_is_the_default_reply():
    o = hook_outcome(None, None, False, 250, "2.1.0", "Accepted")
    assert (o.ok, o.code, o.enhanced, o.lines, o.fixed, o.problem) == (True, 250, "2.1.0", ("Accepted",), True, None)


def test_reply_borrows_the_commands_enhanced_code():
    o = hook_outcome(Reply(251, "forwarded"), None, False, 250, "2.1.5", "Accepted")
    assert (o.ok, o.code, o.enhanced, o.fixed) == (True, 251, "2.1.5", False)
    o = hook_outcome(Reply(450, "later"), None, False, 250, "2.1.5", "Accepted")
    assert (o.ok, o.code, o.enhanced) == (False, 450, None)  # another class: derived when sent


def test_smtp_error_refuses_with_its_reply():
    o = hook_outcome(None, SMTPError(550, "no such user", "5.1.1"), False, 250, "2.1.5", "Accepted")
    assert (o.ok, o.code, o.enhanced, o.lines, o.problem) == (False, 550, "5.1.1", ("no such user",), None)


def test_other_exceptions_bad_values_and_timeouts_are_ours():
    crash = ValueError("bug")
    o = hook_outcome(None, crash, False, 250, "2.1.0", "Accepted")
    assert (o.code, o.enhanced, o.lines, o.problem, o.error) == (451, "4.3.0", (LOCAL_ERROR,), "failure", crash)
    o = hook_outcome(42, None, False, 250, "2.1.0", "Accepted")
    assert (o.code, o.problem) == (451, "failure") and isinstance(o.error, TypeError)
    o = hook_outcome(None, TimeoutError(), True, 250, "2.1.0", "Accepted")
    assert (o.code, o.problem) == (451, "timeout")


def test_greeting_failures_are_421():
    o = hook_outcome(None, ValueError(), False, 220, "", "", name="mx.test", greeting=True)
    assert (o.code, o.enhanced, o.greeting) == (421, "4.3.0", True)
    assert o.lines == ("mx.test Service not available, try again later",)


def test_lmtp_one_outcome_per_recipient():
    outcomes, problem = lmtp_outcomes([None, SMTPError(552, "full", "5.2.2"), Reply(250, "ok")], None, False,
                                      ["a@x", "b@x", "c@x"])
    assert problem is None
    assert [(o.ok, o.code) for o in outcomes] == [(True, 250), (False, 552), (True, 250)]
    assert outcomes[0].lines == ("OK: message accepted for <a@x>",) and not outcomes[0].fixed
    outcomes, problem = lmtp_outcomes([None], None, False, ["a@x", "b@x"])
    assert problem == (1, 2) and [o.code for o in outcomes] == [451, 451]
    outcomes, _ = lmtp_outcomes(None, SMTPError(554, "no"), False, ["a@x", "b@x"])
    assert [o.code for o in outcomes] == [554, 554]


def test_auth_answers():
    assert auth_outcome(True, None, False, "alice")[0] == "alice"
    user, o = auth_outcome({"id": 1}, None, False, "alice")
    assert user == {"id": 1} and (o.code, o.enhanced, o.fixed) == (235, "2.7.0", True)
    user, o = auth_outcome(Reply(235, "welcome"), None, False, "alice")
    assert user == "alice" and (o.code, o.lines) == (235, ("welcome",))
    for value in (None, False):
        assert auth_outcome(value, None, False, "alice")[1].code == 535
    assert auth_outcome(Reply(334, "hmm"), None, False, "a")[1].code == 535
    assert auth_outcome(Reply(454, "later"), None, False, "a")[1].code == 454
    assert auth_outcome(None, SMTPError(535, "bad"), False, "a")[1].code == 535
    user, o = auth_outcome(None, ValueError(), False, "a")
    assert user is None and (o.code, o.enhanced, o.problem) == (454, "4.7.0", "failure")
