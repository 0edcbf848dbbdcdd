# -*- test-case-name: tests.test_exports -*-
"""
txsmtpsrv: an SMTP and LMTP server library for Twisted.

Create an L{SMTPServer} with a hooks object, listen on any endpoint, and
receive mail as a stream. Everything not named in C{__all__} is private.
"""

from __future__ import annotations

from ._authres import ARCVerdict, AuthResults, AuthVerifier, DKIMVerdict, DMARCVerdict, SPFVerdict
from ._cred import CredAuthenticator, FileCredentialsChecker, IOAuth2Token, ThreadedChecker
from ._delivery import MaildirDelivery, MboxDelivery, PrintDelivery, received_header
from ._data import BareLineEnding, MessageDiscarded, MessageDone, MessageStream, MessageTooLarge
from ._errors import Reply, SMTPError
from ._metrics import ServerMetrics
from ._hooks import Hooks
from ._options import ServerOptions, ServerOptionsArgs
from ._passwd import hash_password
from ._proxy import ProxyHeaderError, ProxyInfo, ProxySSLInfo, ProxyWrappingFactory, proxyEndpoint
from ._sasl import Credentials, OAuthError, constant_time_equals
from ._server import OBSERVER_EVENTS, SMTPServer
from ._session import Address, Envelope, Session
from ._tls import TLSConfig, TLSConfigError, TLSInfo, development_certificate
from ._version import __version__

__all__ = [
    "ARCVerdict",
    "Address",
    "AuthResults",
    "AuthVerifier",
    "BareLineEnding",
    "CredAuthenticator",
    "Credentials",
    "DKIMVerdict",
    "DMARCVerdict",
    "FileCredentialsChecker",
    "IOAuth2Token",
    "Envelope",
    "Hooks",
    "MaildirDelivery",
    "MboxDelivery",
    "MessageDiscarded",
    "MessageDone",
    "MessageStream",
    "MessageTooLarge",
    "OAuthError",
    "OBSERVER_EVENTS",
    "PrintDelivery",
    "ProxyHeaderError",
    "ProxyInfo",
    "ProxySSLInfo",
    "ProxyWrappingFactory",
    "Reply",
    "SMTPError",
    "SMTPServer",
    "SPFVerdict",
    "ServerMetrics",
    "ServerOptions",
    "ServerOptionsArgs",
    "Session",
    "TLSConfig",
    "TLSConfigError",
    "TLSInfo",
    "ThreadedChecker",
    "__version__",
    "constant_time_equals",
    "development_certificate",
    "hash_password",
    "proxyEndpoint",
    "received_header",
]
