# -*- test-case-name: tests.test_selfsigned -*-
"""
The one builder of self-signed certificates (C{txsmtpsrv._selfsigned}): what
it makes, and that the development certificate, the test CA's root, the
tests' certificates and C{bench/tls.py} all come from it.
"""

from __future__ import annotations

import ast
import datetime
import os
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.logger import capturedLogs

from tests import _certs
from txsmtpsrv import _selfsigned
from txsmtpsrv._selfsigned import cert_pem, key_pem, self_signed
from txsmtpsrv._testca import TestCA
from txsmtpsrv._tls import TLSConfigError, development_certificate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def san(cert: x509.Certificate) -> list:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def test_server_certificate():
    """A leaf: SAN = the name, CA:FALSE, serverAuth, self-issued, valid from just before now."""
    key, cert = self_signed("mx.example.test", days=2)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert cert.issuer == cert.subject
    assert san(cert) == [x509.DNSName("mx.example.test")]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    now = datetime.datetime.now(datetime.timezone.utc)
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
    assert datetime.timedelta(days=2) <= cert.not_valid_after_utc - cert.not_valid_before_utc


def test_ip_names_and_rsa():
    key, cert = self_signed("x", names=["[::1]", "127.0.0.1", "localhost"], key_type="rsa")
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert [type(n).__name__ for n in san(cert)] == ["IPAddress", "IPAddress", "DNSName"]


def test_internationalised_names():
    """
    A U-label name becomes its A-label, as certificates carry it: the
    development certificate for a server named in Unicode (it was made
    before the one builder existed) still builds.
    """
    assert _selfsigned.general_name("bücher.example") == x509.DNSName("xn--bcher-kva.example")
    _, cert = self_signed("xn--bcher-kva.example", names=["bücher.example"])
    assert san(cert) == [x509.DNSName("xn--bcher-kva.example")]
    with capturedLogs():
        config = development_certificate("bücher.example")
    cert = x509.load_pem_x509_certificate(config.cert)
    assert san(cert) == [x509.DNSName("xn--bcher-kva.example")]


def test_root_ca():
    key, cert = self_signed("Root", ca=True, path_length=0)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_unknown_key_type():
    with pytest.raises(ValueError, match="'dsa'"):
        _selfsigned.new_key("dsa")  # type: ignore[arg-type]


def test_pem_round_trip_serves_tls(tmp_path):
    """Its PEM loads into an ssl server context and a client trusting it verifies it (name checked)."""
    key, cert = self_signed("localhost")
    (tmp_path / "k.pem").write_bytes(key_pem(key))
    (tmp_path / "c.pem").write_bytes(cert_pem(cert))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    client = ssl.create_default_context(cadata=cert_pem(cert).decode())
    incoming, outgoing, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(incoming, outgoing, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(outgoing.read())
        incoming.write(s_out.read())
    c.do_handshake()  # raises if the certificate was not verified


def test_every_user_builds_with_it():
    """The development certificate, the test CA's root and the tests' certificates are the helper's."""
    with capturedLogs():
        dev = x509.load_pem_x509_certificate(development_certificate("Mail.Example.Test").cert)
    assert san(dev) == [x509.DNSName("mail.example.test")]
    with capturedLogs():
        dev_ip = x509.load_pem_x509_certificate(development_certificate("[::1]").cert)
    assert [str(n.value) for n in san(dev_ip)] == ["::1"]
    root = x509.load_pem_x509_certificate(TestCA().cert_pem)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert _certs.make_ca().cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert san(_certs.self_signed("proxy.test").cert) == [x509.DNSName("proxy.test")]


@pytest.mark.parametrize("hostname", ["a\u200db.test", "b\u00fccher..test", "bad..test"])
def test_development_certificate_refuses_a_bad_name(hostname):
    """A name that is no host name, U-label or not: a configuration error, as before the shared helper."""
    with pytest.raises(TLSConfigError, match="development certificate: invalid host name"):
        development_certificate(hostname)


def self_signing_calls(source: str) -> list:
    """
    Lines that build a certificate whose issuer is its own subject: a
    C{CertificateBuilder} chain given the same name as C{subject_name} and
    C{issuer_name}, or a builder function called with the same subject and
    issuer arguments.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr == "issuer_name" and node.args:
            inner = node.func.value  # ....subject_name(X).issuer_name(X)
            if (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute)
                    and inner.func.attr == "subject_name" and inner.args
                    and ast.dump(inner.args[0]) == ast.dump(node.args[0])):
                found.append(node.lineno)
        elif len(node.args) >= 2 and ast.dump(node.args[0]) == ast.dump(node.args[1]) and "Name" in ast.dump(node.args[0]) \
                and isinstance(node.func, ast.Name) and "builder" in node.func.id:
            found.append(node.lineno)
    return found


def test_the_check_finds_self_signing():
    """The check below finds the shapes the old builders had."""
    assert self_signing_calls("c = x509.CertificateBuilder().subject_name(subject).issuer_name(subject)") == [1]
    assert self_signing_calls("b = _builder(_name(cn), _name(cn), key.public_key(), 30)") == [1]
    assert self_signing_calls("c = x509.CertificateBuilder().subject_name(a).issuer_name(ca.subject)") == []


@pytest.mark.parametrize("path", ["txsmtpsrv", "tests", "bench"])
def test_no_other_self_signed_builder(path):
    """Nowhere but the helper builds a self-signed certificate."""
    offenders = []
    for root, _, files in os.walk(os.path.join(REPO, path)):
        for name in files:
            if not name.endswith(".py") or name in ("_selfsigned.py", "test_selfsigned.py"):
                continue
            file = os.path.join(root, name)
            with open(file, encoding="utf-8") as f:
                source = f.read()
            if "CertificateBuilder" in source or "_builder(" in source:
                offenders += [f"{os.path.relpath(file, REPO)}:{line}" for line in self_signing_calls(source)]
    assert offenders == []
