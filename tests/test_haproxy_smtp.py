# -*- test-case-name: tests.test_haproxy_smtp -*-
"""
End-to-end: a real HAProxy sends PROXY v1/v2 to the SMTP server itself.

The server is an L{SMTPServer} listening through C{proxyEndpoint} on
127.0.0.1 port 0, trusting only 127.0.0.1 (HAProxy).  HAProxy gets an
already listening frontend socket (C{bind fd@N}, as in L{tests.test_haproxy}),
so there are no fixed ports and no start-up race.  The client is Python's
C{smtplib} in a reactor worker thread, bound to 127.0.0.2, so the address
the hooks report is visibly the client's, not HAProxy's.  Every socket
operation and every wait is bounded.  Missing HAProxy skips these tests
locally but fails them when C{CI} is set.
"""

from __future__ import annotations

import smtplib
from typing import Any, Callable, Dict, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread

from tests._certs import client_context, make_ca
from tests._support import HAProxyTestCase
from txsmtpsrv import SMTPServer
from txsmtpsrv._proxy import proxyEndpoint
from txsmtpsrv._tls import TLSConfig
from txsmtpsrv.testing import FakeResolver

IO_TIMEOUT = 5.0  # every blocking socket operation of the client
THREAD_TIMEOUT = 20.0  # every wait for the client thread
BODY = b"Subject: through haproxy\r\n\r\nhello\r\n"


class Recorder:
    """Hooks that snapshot the session as each hook sees it (they run in the reactor thread)."""

    def __init__(self) -> None:
        self.seen: List[tuple] = []
        self.bodies: List[bytes] = []

    def _snap(self, hook: str, s: Any) -> None:
        self.seen.append((hook, {
            "remote_address": s.remote_address, "remote_port": s.remote_port,
            "local_address": s.local_address, "local_port": s.local_port,
            "client_hostname": s.client_hostname, "proxy": s.proxy, "secure": s.secure,
            "tls": s.tls,
        }))

    def on_connect(self, session: Any) -> None:
        self._snap("connect", session)

    def on_mail_from(self, session: Any, address: Any) -> None:
        self._snap("mail", session)

    async def on_data(self, session: Any, stream: Any) -> None:
        self.bodies.append(await stream.content())
        self._snap("data", session)

    def get(self, hook: str) -> List[Dict[str, Any]]:
        """Snapshots taken by C{hook}, in order."""
        return [snap for name, snap in self.seen if name == hook]


class HAProxySMTPTests(HAProxyTestCase):
    """Real HAProxy (send-proxy / send-proxy-v2) in front of the real SMTP server on loopback."""

    tmp_prefix = "txsmtpsrv-haproxy-smtp-"

    def setUp(self) -> None:
        super().setUp()
        self.ca = make_ca("HAProxy SMTP Test CA")
        leaf = self.ca.issue("mx.test")
        self.tls = TLSConfig(key=leaf.key_pem, cert=leaf.cert_pem)

    async def start(self, server_options: str, **options: Any) -> tuple[Recorder, SMTPServer, int, int]:
        """SMTP server behind proxyEndpoint plus HAProxy in front; return (hooks, server, server port, frontend port)."""
        hooks = Recorder()
        self.resolver = FakeResolver()
        options.setdefault("name", "mx.test")
        options.setdefault("close_timeout", 2.0)
        options.setdefault("tls", self.tls)
        server = SMTPServer(hooks, reactor=reactor, resolver=self.resolver, **options)
        endpoint = proxyEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), trusted=["127.0.0.1/32"])
        port = await server.listen(endpoint)
        self.addCleanup(self.drain, port.factory)
        self.addCleanup(server.close)
        proxy = self.start_haproxy(port.getHost().port, server_options)
        return hooks, server, port.getHost().port, proxy.port

    async def run_client(self, f: Callable[[], Any]) -> Any:
        """Run a blocking client in a thread, bounded; add HAProxy's log to any failure."""
        d: Deferred[Any] = deferToThread(f)
        try:
            return await d.addTimeout(THREAD_TIMEOUT, reactor)
        except Exception as e:
            self.fail(f"client failed: {e!r}; haproxy log:\n{self.haproxy_log()}")

    async def send_through(self, fport: int, starttls: bool = False) -> Dict[str, Any]:
        """One message via HAProxy from 127.0.0.2; returns what the client saw."""
        ctx = client_context(self.ca) if starttls else None

        def client() -> Dict[str, Any]:
            with smtplib.SMTP("127.0.0.1", fport, timeout=IO_TIMEOUT, source_address=("127.0.0.2", 0)) as s:
                out: Dict[str, Any] = {"port": s.sock.getsockname()[1]}
                code, text = s.ehlo("client.test")
                out["ehlo"] = (code, text.decode())
                out["features"] = dict(s.esmtp_features)
                if starttls:
                    out["starttls"] = s.starttls(context=ctx)[0]
                    out["cipher"] = s.sock.cipher()
                    s.ehlo("client.test")
                    out["features_tls"] = dict(s.esmtp_features)
                out["refused"] = s.sendmail("a@x.test", ["b@y.test"], BODY)
                out["noop"] = s.noop()[0]
                return out

        return await self.run_client(client)

    def check_proxied(self, hooks: Recorder, seen: Dict[str, Any], version: int, fport: int) -> None:
        """The hooks saw the client (127.0.0.2 and its port), not HAProxy, and the header's version."""
        for hook in ("connect", "mail", "data"):
            (snap,) = hooks.get(hook)
            self.assertEqual((snap["remote_address"], snap["remote_port"]), ("127.0.0.2", seen["port"]), hook)
            self.assertEqual((snap["local_address"], snap["local_port"]), ("127.0.0.1", fport), hook)
            info = snap["proxy"]
            self.assertIsNotNone(info, hook)
            self.assertEqual((info.version, info.command), (version, "PROXY"), hook)
            self.assertEqual(info.source_address, "127.0.0.2", hook)
            self.assertEqual(info.proxy_address, "127.0.0.1", hook)  # the real socket peer is HAProxy
            self.assertEqual(snap["client_hostname"], "localhost", hook)  # loopback: no PTR query
        self.assertEqual(self.resolver.queries, [])
        self.assertEqual(seen["refused"], {})
        self.assertEqual(len(hooks.bodies), 1)
        self.assertIn(b"hello", hooks.bodies[0])

    async def test_send_proxy_v1(self) -> None:
        """send-proxy: on_connect/on_mail_from/on_data see 127.0.0.2 and a v1 ProxyInfo; the message is accepted."""
        hooks, _, _, fport = await self.start("send-proxy")
        seen = await self.send_through(fport)
        self.assertEqual(seen["ehlo"][0], 250)
        self.assertTrue(seen["ehlo"][1].startswith("mx.test Nice to meet you, localhost"))
        self.check_proxied(hooks, seen, 1, fport)
        self.assertFalse(hooks.get("data")[0]["secure"])

    async def test_send_proxy_v2(self) -> None:
        """send-proxy-v2 with a unique-id TLV: the hooks see 127.0.0.2, a v2 ProxyInfo and its TLV."""
        hooks, _, _, fport = await self.start("send-proxy-v2 proxy-v2-options unique-id,crc32c")
        seen = await self.send_through(fport)
        self.check_proxied(hooks, seen, 2, fport)
        info = hooks.get("connect")[0]["proxy"]
        self.assertEqual(info.family, "INET")
        self.assertTrue((info.unique_id or b"").startswith(f"7F000002:{seen['port']:04X}_".encode()),
                        info.unique_id)

    async def test_starttls_through_haproxy_v1(self) -> None:
        """STARTTLS through HAProxy (v1) and the wrapper: handshake works, session.secure, still the real client."""
        hooks, _, _, fport = await self.start("send-proxy")
        seen = await self.send_through(fport, starttls=True)
        self.assertIn("starttls", seen["features"])
        self.assertEqual(seen["starttls"], 220)
        self.assertNotIn("starttls", seen["features_tls"])
        self.assertIn("requiretls", seen["features_tls"])
        self.check_proxied(hooks, seen, 1, fport)
        self.assertFalse(hooks.get("connect")[0]["secure"])
        for hook in ("mail", "data"):
            snap = hooks.get(hook)[0]
            self.assertTrue(snap["secure"], hook)
            self.assertTrue(snap["tls"] is not None and snap["tls"].version.startswith("TLSv1."), hook)

    async def test_starttls_through_haproxy_v2(self) -> None:
        """STARTTLS through HAProxy (v2) and the wrapper works too."""
        hooks, _, _, fport = await self.start("send-proxy-v2")
        seen = await self.send_through(fport, starttls=True)
        self.assertEqual(seen["starttls"], 220)
        self.check_proxied(hooks, seen, 2, fport)
        self.assertTrue(hooks.get("data")[0]["secure"])

    async def test_direct_untrusted_connection_closed(self) -> None:
        """A client bypassing HAProxy (127.0.0.2 is not trusted) is closed without a greeting."""
        hooks, _, sport, _ = await self.start("send-proxy")

        def client() -> str:
            try:
                smtplib.SMTP("127.0.0.1", sport, timeout=IO_TIMEOUT, source_address=("127.0.0.2", 0)).quit()
            except smtplib.SMTPServerDisconnected as e:
                return f"disconnected: {e}"
            return "greeted"

        result = await self.run_client(client)
        self.assertTrue(result.startswith("disconnected"), result)
        self.assertEqual(hooks.seen, [])

    async def test_ignored_hosts_match_client_behind_haproxy(self) -> None:
        """ignored_hosts matches the proxied client (127.0.0.2), whose connection is then not logged."""
        from twisted.logger import capturedLogs

        hooks, _, _, fport = await self.start("send-proxy", ignored_hosts=["127.0.0.2/32"])
        with capturedLogs() as events:
            seen = await self.send_through(fport)
        self.check_proxied(hooks, seen, 1, fport)
        formats = [e.get("log_format", "") for e in events]
        self.assertFalse([f for f in formats if f.startswith("connection from")], formats)
