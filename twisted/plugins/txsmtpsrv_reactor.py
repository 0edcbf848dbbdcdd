# -*- test-case-name: tests.test_reactor -*-
"""The C{smtpsrv-epoll} reactor for C{twistd}/C{twist}/C{trial --reactor}; see L{txsmtpsrv._reactor}."""
from twisted.application.reactors import Reactor

smtpsrv_epoll = Reactor(
    "smtpsrv-epoll", "txsmtpsrv._reactor",
    "epoll reactor with a cheaper per-event log context (txsmtpsrv; Linux)",
)
