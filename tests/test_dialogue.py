"""
Pure tests of the sans-IO dialogue (L{txsmtpsrv._dialogue}): bytes and hook
answers in, replies and actions out; no Twisted, no transport, no clock.

  - a table of every phase x every command (it fails when a phase or a
    command is added without its row);
  - a fuzz test: random command streams in random chunkings with hooks
    answering at once or later, in random order, well or badly.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txsmtpsrv import Reply, SMTPError
from txsmtpsrv._dialogue import (ABORT, ASK, BODY, BODY_ABORT, BODY_END, BODY_START, CANCEL, CLOSE, LOG, NOTIFY,
                                 START_TLS, Dialogue)
from txsmtpsrv._options import ServerOptions
from txsmtpsrv._phases import COMMAND_PHASES, COMMANDS, Phase
from txsmtpsrv._server import OBSERVER_EVENTS
from txsmtpsrv._session import Session
from txsmtpsrv.testing import parse_replies

EVENTS = tuple(OBSERVER_EVENTS)
PENDING = object()  # a hook behaviour: answer later, when the test says


class Harness:
    """
    A driver for a L{Dialogue} that performs its actions itself.

    @ivar answers: hook name -> behaviour: a value, an exception, L{PENDING},
        or a callable returning one of those (called with the hook's args).
    """

    def __init__(self, answers: Optional[Dict[str, Any]] = None, tls: bool = True, **options: Any) -> None:
        options.setdefault("name", "mx.test")
        options.setdefault("disable_reverse_lookup", True)
        self.options = ServerOptions.build(None, **options)
        self.answers = dict(answers or {})
        self.now = 1000.0
        self.session = Session("t", "192.0.2.1", 25, "192.0.2.10", 40000)
        observers: Dict[str, List[Any]] = {e: [] for e in EVENTS}
        observers["command"].append(None)  # so that commands are reported to us
        self.core = Dialogue(self.options, self.session, frozenset(n for n in self.answers if n.startswith("on_")),
                             observers, {}, lambda: self.now, tls_available=tls)
        self.pending: List[Tuple[int, str]] = []
        self.output = b""
        self.events: List[Tuple[str, Tuple[Any, ...]]] = []
        self.logs: List[Tuple[Any, ...]] = []
        self.body: List[bytes] = []
        self.body_ends = 0
        self.tls_started = self.closed = self.aborted = False
        self.core.start()
        self.run()

    @property
    def phase(self) -> Phase:
        return self.core.phase

    def run(self) -> None:
        core = self.core
        actions = core.actions
        while actions:
            action = actions.popleft()
            kind = action[0]
            if kind == ASK:
                self._ask(action[1], action[2], action[3])
            elif kind == BODY_START:
                self.body = []
                if action[1] is not None:
                    self._ask(action[1], "on_data", (action[2], None))
            elif kind == BODY:
                self.body.append(action[1])
            elif kind == BODY_END:
                self.body_ends += 1
            elif kind == BODY_ABORT:
                pass
            elif kind == CANCEL:
                for i, (token, _name) in enumerate(self.pending):
                    if token == action[1]:
                        del self.pending[i]
                        if not core.finished:  # as a cancelled Deferred errbacks
                            core.answer(token, None, RuntimeError("cancelled"), late=True)
                        break
            elif kind == NOTIFY:
                self.events.append((action[1], action[2]))
            elif kind == LOG:
                self.logs.append(action[1:])
            elif kind == START_TLS:
                self.tls_started = True
            elif kind == CLOSE:
                self.closed = True
            elif kind == ABORT:
                self.aborted = True
            else:  # pragma: no cover
                raise AssertionError(f"unknown action {action!r}")
        self.output += core.take_output()

    def _ask(self, token: int, name: str, args: Tuple[Any, ...]) -> None:
        behaviour = self.answers.get(name)
        if callable(behaviour) and not isinstance(behaviour, type):
            behaviour = behaviour(*args)
        if behaviour is PENDING:
            self.pending.append((token, name))
            self.core.asked(token)
        elif isinstance(behaviour, BaseException):
            self.core.answer(token, None, behaviour)
        else:
            self.core.answer(token, behaviour)

    def send(self, data: bytes) -> None:
        self.core.receive(data)
        self.run()

    def fire(self, index: int = 0, value: Any = None, error: Optional[BaseException] = None) -> None:
        token, _name = self.pending.pop(index)
        self.core.answer(token, value, error, late=True)
        self.run()

    def codes(self) -> List[int]:
        replies, rest = parse_replies(self.output)
        self.output = rest
        return [r.code for r in replies]


# -- phase x command ------------------------------------------------------------

#: Every command, with the argument it is tried with. Adding a command to
#: _phases.COMMANDS without adding it here (and to the rows below) fails.
VERBS = {
    "HELO": "c.test", "EHLO": "c.test", "LHLO": "c.test", "MAIL": "FROM:<a@x.test>", "RCPT": "TO:<b@y.test>",
    "DATA": "", "BDAT": "0", "RSET": "", "NOOP": "", "QUIT": "", "VRFY": "a", "EXPN": "a", "HELP": "",
    "AUTH": "PLAIN AGFsaWNlAHB3", "STARTTLS": "", "XCLIENT": "ADDR=192.0.2.99", "XFORWARD": "ADDR=192.0.2.99",
}

NOT_READ = "held or not a command"  # the line is buffered, body, or ignored: no reply, not dispatched
SASL = "a SASL response"  # the line answers the AUTH challenge: not dispatched

#: phase -> command -> the reply codes it gets (or what happens to it).
EXPECTED: Dict[Phase, Dict[str, Any]] = {
    Phase.GREETING: {verb: NOT_READ for verb in VERBS},
    Phase.COMMAND: {
        "HELO": [250], "EHLO": [250], "LHLO": [500], "MAIL": [250], "RCPT": [503], "DATA": [503], "BDAT": [503],
        "RSET": [250], "NOOP": [250], "QUIT": [221], "VRFY": [252], "EXPN": [502], "HELP": [214], "AUTH": [235],
        "STARTTLS": [220], "XCLIENT": [220], "XFORWARD": [250],
    },
    Phase.TRANSACTION: {
        "HELO": [250], "EHLO": [250], "LHLO": [500], "MAIL": [503], "RCPT": [250], "DATA": [554], "BDAT": [554],
        "RSET": [250], "NOOP": [250], "QUIT": [221], "VRFY": [252], "EXPN": [502], "HELP": [214], "AUTH": [503],
        "STARTTLS": [220], "XCLIENT": [503], "XFORWARD": [503],
    },
    Phase.AUTH: {verb: SASL for verb in VERBS},
    Phase.DATA: {verb: NOT_READ for verb in VERBS},
    Phase.BDAT_CHUNK: {verb: NOT_READ for verb in VERBS},
    Phase.BETWEEN_CHUNKS: {
        "HELO": [250], "EHLO": [250], "LHLO": [500], "MAIL": [503], "RCPT": [503], "DATA": [503], "BDAT": [250],
        "RSET": [250], "NOOP": [250], "QUIT": [221], "VRFY": [252], "EXPN": [502], "HELP": [214], "AUTH": [503],
        "STARTTLS": [220], "XCLIENT": [503], "XFORWARD": [503],
    },
    Phase.VERDICT: {verb: NOT_READ for verb in VERBS},
    Phase.REFUSED: {verb: [221] if verb == "QUIT" else [503] for verb in VERBS},  # RFC 5321 3.1
    Phase.CLOSING: {verb: NOT_READ for verb in VERBS},
    Phase.CLOSED: {verb: NOT_READ for verb in VERBS},
}


def in_phase(phase: Phase) -> Harness:
    """A dialogue brought into C{phase}, its replies so far read."""
    answers: Dict[str, Any] = {"on_auth": True}
    if phase is Phase.GREETING:
        answers["on_connect"] = PENDING
    if phase is Phase.VERDICT:
        answers["on_data"] = PENDING
    if phase is Phase.REFUSED:
        answers["on_connect"] = SMTPError(554, "no", "5.7.1")
    h = Harness(answers, auth_optional=True, allow_insecure_auth=True, use_xclient=True, use_xforward=True,
                xclient_trusted=("192.0.2.0/24",), auth_methods=("PLAIN", "LOGIN"))
    steps = {
        Phase.GREETING: b"",
        Phase.COMMAND: b"EHLO c.test\r\n",
        Phase.TRANSACTION: b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n",
        Phase.AUTH: b"EHLO c.test\r\nAUTH LOGIN\r\n",
        Phase.DATA: b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
        Phase.BDAT_CHUNK: b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 100\r\n",
        Phase.BETWEEN_CHUNKS: b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 5\r\nhello",
        Phase.VERDICT: b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n",
        Phase.REFUSED: b"",
        Phase.CLOSING: b"EHLO c.test\r\nQUIT\r\n",
        Phase.CLOSED: b"EHLO c.test\r\n",
    }
    h.send(steps[phase])
    if phase is Phase.CLOSED:
        h.core.connection_lost()
        h.run()
    assert h.phase is phase, (phase, h.phase)
    h.codes()
    h.events.clear()
    return h


def test_table_covers_every_phase_and_command():
    """A new phase or command fails here until the table says what it does."""
    assert set(EXPECTED) == set(Phase)
    assert set(VERBS) == set(COMMANDS)
    for phase, row in EXPECTED.items():
        assert set(row) == set(VERBS), phase
        if phase in COMMAND_PHASES or phase is Phase.REFUSED:  # lines read as commands
            assert all(isinstance(codes, list) for codes in row.values()), phase
        else:
            assert all(isinstance(codes, str) for codes in row.values()), phase


def test_every_phase_and_command():
    """Each command in each phase gets the reply the table says, or is not read as a command."""
    failures = []
    for phase, row in EXPECTED.items():
        for verb, expected in row.items():
            h = in_phase(phase)
            line = f"{verb} {VERBS[verb]}".rstrip(" ").encode("ascii") + b"\r\n"
            h.send(line)
            codes = h.codes()
            commands = [args[1] for event, args in h.events if event == "command"]
            if expected is NOT_READ:
                ok = codes == [] and commands == []
            elif expected is SASL:
                ok = commands == [] and len(codes) == 1 and codes[0] in (334, 501, 535)
            else:
                ok = codes == expected and commands == [verb]
            if not ok:
                failures.append((phase.name, verb, expected, codes, commands))
    assert failures == []


def test_rules_name_a_reply_for_every_refused_phase():
    """A command refused in a command phase says why (the rule has a reply for that phase)."""
    for verb, rule in COMMANDS.items():
        for phase in COMMAND_PHASES - rule.phases:
            code, enhanced, text = rule.refusals[phase]
            assert code == 503 and enhanced == "5.5.1" and text, (verb, phase)


def test_phase_walk():
    """One transaction through the phases, with every transition named."""
    h = Harness({"on_connect": PENDING, "on_data": PENDING})
    assert h.phase is Phase.GREETING
    h.fire()
    assert h.phase is Phase.COMMAND and h.codes() == [220]
    h.send(b"EHLO c\r\nMAIL FROM:<a@x>\r\n")
    assert h.phase is Phase.TRANSACTION
    h.send(b"RCPT TO:<b@y>\r\nDATA\r\nhello\r\n")
    assert h.phase is Phase.DATA and h.body == [b"hello"]  # the CRLF may begin the end: held back
    h.send(b".\r\nNOOP\r\n")
    assert h.phase is Phase.VERDICT and h.codes() == [250, 250, 250, 354]
    assert b"".join(h.body) == b"hello\r\n" and h.body_ends == 1
    h.fire()
    assert h.phase is Phase.COMMAND and h.codes() == [250, 250]
    h.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 3\r\nabc")
    assert h.phase is Phase.BETWEEN_CHUNKS
    h.send(b"BDAT 2 LAST\r\nd")
    assert h.phase is Phase.BDAT_CHUNK
    h.send(b"e")
    assert h.phase is Phase.VERDICT and h.body == [b"abc", b"d", b"e"]
    h.fire()
    assert h.phase is Phase.COMMAND and h.codes() == [250, 250, 250, 250]
    h.send(b"QUIT\r\n")
    assert h.phase is Phase.CLOSING and h.closed and h.codes() == [221]


def test_starttls_discards_what_follows_in_the_same_read():
    """The reader's pending bytes are dropped at STARTTLS (CVE-2011-0411), and the drop is logged."""
    h = Harness()
    h.send(b"EHLO c\r\n")
    h.codes()
    h.send(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n")
    assert h.codes() == [220] and h.tls_started
    assert any("discarded" in log[1] for log in h.logs)
    assert h.core.reader.pending == 0


# -- fuzz ------------------------------------------------------------------------

_LINE = re.compile(rb"^[2-5]\d\d[ -]")

FRAGMENTS = [
    b"EHLO c.test\r\n", b"HELO c.test\r\n", b"LHLO c\r\n", b"MAIL FROM:<a@x.test>\r\n", b"MAIL FROM:<>\r\n",
    b"RCPT TO:<r{n}@y.test>\r\n", b"RCPT TO:<r{n}@y.test>\r\n", b"DATA\r\n", b"line\r\n", b"..dot\r\n", b".\r\n",
    b"BDAT 4\r\nabcd", b"BDAT 3 LAST\r\nxyz", b"BDAT 0 LAST\r\n", b"BDAT x\r\n", b"RSET\r\n", b"NOOP\r\n",
    b"VRFY a\r\n", b"HELP\r\n", b"QUIT\r\n", b"AUTH PLAIN AGFsaWNlAHB3\r\n", b"AUTH LOGIN\r\n", b"YWxpY2U=\r\n",
    b"STARTTLS\r\n", b"XCLIENT ADDR=192.0.2.7\r\n", b"bogus\r\n", b"\r\n", b"\n", b"\r", b"\x00\xff\xfe",
    b"X" * 700 + b"\r\n", b"MAIL FROM:<a@x.test> SIZE=99999999999\r\n", b"RCPT TO:<\xc3\xa9@y.test>\r\n",
]

answers_st = st.sampled_from(["none", "reply", "refuse", "crash", "pending", "pending", "bad"])


def _behaviour(kind: str, name: str) -> Any:
    if kind == "none":
        return None
    if kind == "reply":
        return Reply(250, "custom") if name != "on_connect" else Reply(220, "hi")
    if kind == "refuse":
        return SMTPError(550, "no", "5.7.1")
    if kind == "crash":
        return ValueError("hook bug")
    if kind == "bad":
        return 42  # not a valid answer for most hooks
    return PENDING


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz(data):
    """Random streams, chunkings and hook answers: no exception, well-formed replies, RCPTs answered in order."""
    hooks = ("on_connect", "on_helo", "on_auth", "on_mail_from", "on_data", "on_secure")
    chosen = data.draw(st.dictionaries(st.sampled_from(hooks), answers_st))
    counter = iter(range(10**6))

    def rcpt_answer(session: Any, address: Any) -> Any:
        # Tag each accepted recipient with its number, to check the order of replies.
        return Reply(250, f"tag {address.address.split('@')[0][1:]}")

    answers: Dict[str, Any] = {name: (lambda *a, _k=kind, _n=name: _behaviour(_k, _n)) for name, kind in chosen.items()}
    answers["on_rcpt_to"] = rcpt_answer
    h = Harness(answers, auth_optional=data.draw(st.booleans()), allow_insecure_auth=True, use_xclient=True,
                xclient_trusted=("192.0.2.0/24",), lmtp=False, size=data.draw(st.sampled_from([0, 20, 10_000])),
                max_command_length=512)
    pieces = data.draw(st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=12), max_size=30))
    stream = b"".join(p.replace(b"{n}", str(next(counter)).encode()) for p in pieces)
    pos = 0
    while pos < len(stream) and not h.core.finished:
        size = data.draw(st.integers(1, 40))
        h.send(stream[pos:pos + size])
        pos += size
        while h.pending and data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(h.pending) - 1))
            outcome = data.draw(answers_st)
            value = _behaviour(outcome, h.pending[i][1])
            if value is PENDING:
                value = None
            if isinstance(value, BaseException):
                h.fire(i, error=value)
            else:
                h.fire(i, value)
    for _ in range(100):  # answer whatever is left (answers may ask again)
        if not h.pending:
            break
        h.fire(0)
    replies, rest = parse_replies(h.output)
    for line in h.output.split(b"\r\n")[:-1]:
        assert _LINE.match(line), line
    assert rest == b"" or not h.core.finished
    tags = [int(r.lines[0].split()[1]) for r in replies if r.code == 250 and r.lines[0].startswith("tag ")]
    assert tags == sorted(tags)
