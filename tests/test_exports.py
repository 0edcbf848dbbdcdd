"""
Tests for the public surface of L{txsmtpsrv}: every name in C{__all__}
exists and is the object defined in its private module.
"""

from __future__ import annotations

import __future__
import importlib
import pkgutil
import types

import pytest

import txsmtpsrv
import txsmtpsrv.testing


def private_modules() -> list:
    """Every txsmtpsrv._xxx module, imported."""
    return [importlib.import_module(f"txsmtpsrv.{info.name}")
            for info in pkgutil.iter_modules(txsmtpsrv.__path__) if info.name.startswith("_")]


@pytest.mark.parametrize("name", txsmtpsrv.__all__)
def test_public_name_is_the_private_object(name):
    """Each name in __all__ exists and is the very object a private module defines."""
    obj = getattr(txsmtpsrv, name)
    owners = [m for m in private_modules() if getattr(m, name, None) is obj]
    assert owners, f"{name} is not re-exported from a private module"
    module = getattr(obj, "__module__", None)
    if isinstance(obj, (type, types.FunctionType)):
        assert module is not None and module.startswith("txsmtpsrv._")


def test_all_has_no_duplicates():
    """__all__ names each public object once."""
    assert len(set(txsmtpsrv.__all__)) == len(txsmtpsrv.__all__)


def test_foundation_names_exported():
    """The foundation API is public."""
    expected = {"SMTPServer", "SMTPError", "Reply", "Hooks", "Session", "Envelope", "Address", "MessageStream",
                "ServerOptions", "OBSERVER_EVENTS", "MessageDone", "MessageTooLarge", "BareLineEnding",
                "MessageDiscarded", "__version__"}
    assert expected <= set(txsmtpsrv.__all__)


def test_no_stray_public_names():
    """Every public attribute of the package is in __all__, a submodule, or the __future__ import."""
    for name in dir(txsmtpsrv):
        if name.startswith("_") or name in txsmtpsrv.__all__:
            continue
        obj = getattr(txsmtpsrv, name)
        assert isinstance(obj, (types.ModuleType, __future__._Feature)), name


def test_version_is_a_string():
    """__version__ is a non-empty string."""
    assert isinstance(txsmtpsrv.__version__, str) and txsmtpsrv.__version__


@pytest.mark.parametrize("name", txsmtpsrv.testing.__all__)
def test_testing_names_exist(name):
    """Each name in txsmtpsrv.testing.__all__ exists."""
    assert getattr(txsmtpsrv.testing, name) is not None


def test_testing_helpers_documented():
    """The testing helpers this suite dogfoods are public."""
    assert {"TestClient", "make_server", "parse_replies", "dot_stuff"} <= set(txsmtpsrv.testing.__all__)


def test_authentication_names_exported():
    """Sender authentication (issue 17) is public: the verifier hooks and the verdict values."""
    expected = {"AuthVerifier", "AuthResults", "SPFVerdict", "DKIMVerdict", "DMARCVerdict", "ARCVerdict"}
    assert expected <= set(txsmtpsrv.__all__)
