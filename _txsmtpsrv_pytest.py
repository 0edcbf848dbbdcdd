# -*- test-case-name: tests.test_pytest_plugin -*-
"""
The pytest plugin of txsmtpsrv (entry point C{pytest11}: C{txsmtpsrv}).

A top-level module rather than part of the C{txsmtpsrv} package (as
Hypothesis does with C{_hypothesis_pytestplugin}): pytest imports it at the
start of every run in every environment where txsmtpsrv is installed, and
importing the package would cost a quarter of a second and load Twisted.

    def test_signup_sends_welcome(smtp_server):
        signup("new@example.test", smtp_host=smtp_server.host, smtp_port=smtp_server.port)
        [message] = smtp_server.wait_for(1)
        assert message.message["Subject"] == "Welcome"

Fixtures (each server is fresh and empty per test, stopped after it):
C{smtp_server} (plain SMTP), C{smtp_starttls_server} (STARTTLS offered),
C{smtps_server} (TLS from the first byte, as on port 465),
C{smtp_server_factory(hooks=None, **options)} for any L{ThreadedServer}
option (C{size=...}, C{lmtp=True}, C{tls="implicit"}, C{auth_methods=...}),
and C{smtp_ca}, the throwaway CA the servers' certificates come from.

It imports nothing at load time beyond pytest itself: txsmtpsrv, Twisted,
the reactor and crochet are imported by the fixtures, when a test asks for
one, so a project that does not use them pays nothing and a broken or
missing dependency cannot break its test run. Disable it with
C{-p no:txsmtpsrv}.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, List

import pytest

__all__ = ["smtp_ca", "smtp_server", "smtp_server_factory", "smtp_starttls_server", "smtps_server"]


@pytest.fixture
def smtp_server_factory() -> Iterator[Callable[..., Any]]:
    """
    Start L{txsmtpsrv.testing.ThreadedServer}s with options:
    C{smtp_server_factory(hooks=None, **options)} returns a started server;
    all are stopped when the test ends.
    """
    from txsmtpsrv.testing import ThreadedServer

    servers: List[Any] = []

    def factory(hooks: Any = None, **options: Any) -> Any:
        server = ThreadedServer(hooks, **options)
        server.start()
        servers.append(server)
        return server

    yield factory
    errors = []
    for server in reversed(servers):
        try:
            server.stop()
        except Exception as e:  # stop every server even if one fails
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def smtp_server(smtp_server_factory: Callable[..., Any]) -> Any:
    """A started, empty SMTP server on 127.0.0.1 (a free port), without TLS."""
    return smtp_server_factory()


@pytest.fixture
def smtp_starttls_server(smtp_server_factory: Callable[..., Any]) -> Any:
    """Like C{smtp_server}, offering STARTTLS; verify with C{smtp_starttls_server.client_context()}."""
    return smtp_server_factory(tls="starttls")


@pytest.fixture
def smtps_server(smtp_server_factory: Callable[..., Any]) -> Any:
    """Like C{smtp_server}, but TLS from the first byte (SMTPS); verify with C{smtps_server.client_context()}."""
    return smtp_server_factory(tls="implicit")


@pytest.fixture(scope="session")
def smtp_ca() -> Any:
    """The throwaway CA (L{txsmtpsrv.testing.TestCA}): C{.path}, C{.cert_pem}, C{.client_context()}."""
    from txsmtpsrv.testing import test_ca

    return test_ca()
