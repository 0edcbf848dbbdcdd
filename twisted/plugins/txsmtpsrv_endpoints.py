# -*- test-case-name: tests.test_proxy_endpoint -*-
"""
Twisted plugin: the C{smtpproxy:} server endpoint string (PROXY protocol, see
L{txsmtpsrv._proxy}) and C{adopted:FD:FAMILY} (an inherited listening
socket, see L{txsmtpsrv._adopted}).
"""
from txsmtpsrv._adopted import AdoptedEndpointParser
from txsmtpsrv._proxy import ProxyEndpointParser

smtpproxyEndpointParser = ProxyEndpointParser()
adoptedEndpointParser = AdoptedEndpointParser()
