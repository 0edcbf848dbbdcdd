"""
Review of issue 11: the dialogue fuzz test must catch replies out of command
order (RFC 2920). C{tests/test_dialogue.py::test_fuzz} tags only RCPT
replies, which its hook answers at once, so a core that stopped holding
reading while MAIL or RCPT hooks are pending still passes it. Here every
tagged hook may answer later, in random order, and every hook reply carries
the number of the question it answers: the numbers must come out in order.
"""

from __future__ import annotations

import itertools
from typing import Any, Dict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txsmtpsrv import Reply, SMTPError
from txsmtpsrv.testing import parse_replies
from tests.test_dialogue import _LINE, FRAGMENTS, PENDING, Harness

_TRANSACTION = [b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n", b"RCPT TO:<r@y.test>\r\n" * 2,
                b"RCPT TO:<r@y.test>\r\nDATA\r\nx\r\n.\r\n", b"MAIL FROM:<a@x.test>\r\n"]
TAGGED = ("on_helo", "on_mail_from", "on_rcpt_to", "on_data")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_replies_in_command_order(data: Any) -> None:
    """Random streams and chunkings; tagged hooks answer at once or later, in random order."""
    counter = itertools.count(1)
    tags: Dict[int, int] = {}  # index in Harness.pending order is not stable: key by token
    later = {name: data.draw(st.booleans()) for name in TAGGED}
    refuse = st.booleans()

    def answer_for(tag: int, refused: bool) -> Any:
        return SMTPError(550, f"tag {tag}", "5.7.1") if refused else Reply(250, f"tag {tag}")

    def hook(name: str) -> Any:
        def call(*args: Any) -> Any:
            tag = next(counter)
            if later[name]:
                tags[asking[0]] = tag  # keyed by the token Harness._ask is asking with
                return PENDING
            return answer_for(tag, data.draw(refuse))
        return call

    h = Harness({name: hook(name) for name in TAGGED}, auth_optional=True, max_command_length=512)
    # A pending hook's tag is keyed by its token when the hook is called: a hook
    # may be asked and cancelled in one run (on_data when a BDAT transaction is
    # reset at once), so pairing the new pending entries with tags in order
    # after the run missed one (IndexError) or could pair the wrong ones.
    asking = [0]
    ask = h._ask

    def asking_with(token: int, name: str, args: Any) -> None:
        asking[0] = token
        ask(token, name, args)

    h._ask = asking_with  # type: ignore[method-assign]

    # Transactions with several recipients are what pipelining is for: make them common.
    frags = st.sampled_from(FRAGMENTS) | st.sampled_from(_TRANSACTION)
    pieces = data.draw(st.lists(frags, max_size=30))
    stream = b"".join(p.replace(b"{n}", b"1") for p in pieces)
    pos = 0
    while pos < len(stream) and not h.core.finished:
        size = data.draw(st.integers(1, 40))
        h.send(stream[pos:pos + size])
        pos += size
        while h.pending and data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(h.pending) - 1))
            token = h.pending[i][0]
            result = answer_for(tags.pop(token), data.draw(refuse))
            if isinstance(result, BaseException):
                h.fire(i, error=result)
            else:
                h.fire(i, result)
    for _ in range(200):
        if not h.pending:
            break
        h.fire(0, Reply(250, f"tag {tags.pop(h.pending[0][0])}"))
    replies, _rest = parse_replies(h.output)
    for line in h.output.split(b"\r\n")[:-1]:
        assert _LINE.match(line), line
    seen = [int(r.lines[0].split()[1]) for r in replies if r.lines and r.lines[0].startswith("tag ")]
    assert seen == sorted(seen), seen
