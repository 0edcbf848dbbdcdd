"""
Run by tests/test_reactor.py under C{trial --reactor=smtpsrv-epoll} next to the
loopback suites: fails unless trial really installed that reactor, and proves
an event went through its C{doPoll} (not collected by pytest: no C{test_} prefix).
"""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from txsmtpsrv._reactor import SMTPEPollReactor


class ProbeTests(unittest.TestCase):
    def test_installed(self) -> None:
        self.assertIs(type(reactor), SMTPEPollReactor)

    @defer.inlineCallbacks
    def test_events_pass_through_its_doPoll(self) -> None:
        polls = []
        real = SMTPEPollReactor.doPoll

        def counting(self_: SMTPEPollReactor, timeout: object) -> None:
            polls.append(timeout)
            real(self_, timeout)

        reactor.doIteration = counting.__get__(reactor)  # type: ignore[method-assign]
        self.addCleanup(delattr, reactor, "doIteration")
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0.01, d.callback, None)
        yield d
        self.assertTrue(polls)
