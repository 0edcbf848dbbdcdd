# -*- test-case-name: tests.test_tap_options -*-
"""The C{twistd smtpsrv} plugin; all logic lives in L{txsmtpsrv._tap}."""
from twisted.application.service import ServiceMaker

smtpsrv = ServiceMaker("txsmtpsrv", "txsmtpsrv._tap", "An SMTP/LMTP mail receiver.", "smtpsrv")
