# -*- test-case-name: tests.test_proxy -*-
"""Twisted plugin: the C{smtpproxy:} server endpoint string (PROXY protocol, see L{txsmtpsrv._proxy})."""
from txsmtpsrv._proxy import ProxyEndpointParser

smtpproxyEndpointParser = ProxyEndpointParser()
