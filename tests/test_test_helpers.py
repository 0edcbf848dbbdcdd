"""
The tests' own shared helpers: made in one place, and doing what they say.
"""

from __future__ import annotations

import os
import ssl

from tests._certs import unverified_client_context

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_unverified_client_context_checks_nothing():
    """No certificate or name check (for the development certificate); C{version} pins both ends."""
    ctx = unverified_client_context()
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    pinned = unverified_client_context(version=ssl.TLSVersion.TLSv1_2)
    assert pinned.minimum_version == pinned.maximum_version == ssl.TLSVersion.TLSv1_2


def test_unverified_client_context_is_not_copied():
    """Test modules use the helper in tests/_certs.py rather than a copy of it."""
    copies = []
    for name in sorted(os.listdir(TESTS)):
        if name.endswith(".py") and name not in ("_certs.py", os.path.basename(__file__)):
            with open(os.path.join(TESTS, name), encoding="utf-8") as f:
                if "ssl.CERT_NONE" in f.read():
                    copies.append(name)
    assert copies == []
