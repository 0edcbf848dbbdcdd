# -*- test-case-name: tests.test_tls_tickets -*-
"""
The few OpenSSL functions session-ticket keys need that no Python binding offers.

pyOpenSSL and C{cryptography} expose neither C{SSL_CTX_set_tlsext_ticket_key_evp_cb}
nor the C{EVP} calls such a callback makes (checked: pyOpenSSL 26, cryptography
50). Without them every process encrypts tickets with OpenSSL's own random
key, which is never rotated and cannot be shared by C{--workers} processes.

This module, and only this one, reaches past the bindings: it finds the
functions in the very OpenSSL that pyOpenSSL's contexts come from.

  1. C{cryptography}'s cffi module gives the address of a function it binds
     (C{SSL_CTX_new}); C{dladdr} names the shared object holding it and
     where it is loaded.
  2. When that object exports the wanted functions (an OpenSSL linked as a
     shared library, as distributions build C{cryptography}), C{dlsym}
     finds them. Otherwise (the PyPI wheels link OpenSSL statically and hide
     its symbols) they are read from the object's ELF symbol table.
  3. Either way the result is trusted only if the same lookup finds
     C{SSL_CTX_new} exactly where the binding has it, so the addresses
     belong to the loaded code and not to some other OpenSSL.

Anything unexpected (another platform, a stripped library, an OpenSSL older
than 3.0) makes L{load} return C{None}: the caller then leaves tickets off
and says so once. Nothing is called before every address is found and checked.
"""

from __future__ import annotations

import ctypes
import importlib
import struct
import sys
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Native", "load"]

#: The functions needed, with the C signature cffi calls them by.
_FUNCTIONS = {
    "SSL_CTX_set_tlsext_ticket_key_evp_cb": "int(*)(void *, int(*)(void *, unsigned char *, unsigned char *, "
                                            "void *, void *, int))",
    "EVP_CipherInit_ex": "int(*)(void *, const void *, void *, const unsigned char *, const unsigned char *, int)",
    "EVP_MAC_CTX_set_params": "int(*)(void *, const OSSL_PARAM *)",
    "EVP_aes_256_cbc": "const void *(*)(void)",
}
#: Found when present; nothing depends on them.
_OPTIONAL = {
    "SSL_CTX_set_num_tickets": "int(*)(void *, size_t)",
}
_ANCHOR = "SSL_CTX_new"

_CDEF = """
typedef struct {
    const char *key;
    unsigned int data_type;
    void *data;
    size_t data_size;
    size_t return_size;
} OSSL_PARAM;
"""

#: OSSL_PARAM data types (openssl/core.h).
OSSL_PARAM_UTF8_STRING = 4
OSSL_PARAM_OCTET_STRING = 5


@dataclass(frozen=True)
class Native:
    """
    The located functions, callable through C{ffi}.

    @ivar ffi: a cffi C{FFI} that knows C{OSSL_PARAM}; use it for callbacks.
    @ivar set_ticket_cb: C{SSL_CTX_set_tlsext_ticket_key_evp_cb}.
    @ivar cipher_init: C{EVP_CipherInit_ex}.
    @ivar mac_set_params: C{EVP_MAC_CTX_set_params}.
    @ivar aes_256_cbc: the C{EVP_CIPHER} tickets are encrypted with.
    @ivar where: the shared object the functions were found in, for logs.
    @ivar set_num_tickets: C{SSL_CTX_set_num_tickets} (TLS 1.3 tickets per
        full handshake), or C{None} where it was not found.
    """

    ffi: Any
    set_ticket_cb: Any
    cipher_init: Any
    mac_set_params: Any
    aes_256_cbc: Any
    where: str
    set_num_tickets: Any = None

    def context_pointer(self, context: Any) -> Any:
        """The C{SSL_CTX *} of a pyOpenSSL C{Context}, as this module's cffi C{void *}."""
        from OpenSSL._util import ffi as binding_ffi

        address = int(binding_ffi.cast("uintptr_t", context._context))
        return self.ffi.cast("void *", address)


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _anchor_address() -> int:
    """Where the binding's C{SSL_CTX_new} is, i.e. the OpenSSL that pyOpenSSL uses."""
    rust = importlib.import_module("cryptography.hazmat.bindings._rust")
    _openssl: Any = getattr(rust, "_openssl", None)
    if _openssl is None:  # older cryptography: a module of its own
        _openssl = importlib.import_module("cryptography.hazmat.bindings._openssl")
    pointer = _openssl.ffi.addressof(_openssl.lib, _ANCHOR)
    return int(_openssl.ffi.cast("uintptr_t", pointer))


def _containing_object(address: int) -> tuple[str, int]:
    """C{dladdr}: the file of the shared object holding C{address}, and its load base."""
    libc = ctypes.CDLL(None)  # the global scope: libc's dladdr
    dladdr = libc.dladdr
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    dladdr.restype = ctypes.c_int
    info = _DlInfo()
    if not dladdr(ctypes.c_void_p(address), ctypes.byref(info)) or not info.dli_fname:
        raise LookupError("dladdr does not know the OpenSSL of the binding")
    return info.dli_fname.decode(sys.getfilesystemencoding()), int(info.dli_fbase or 0)


def _exported(path: str, names: list[str]) -> dict[str, int]:
    """Addresses of C{names} that the shared object exports (C{dlsym}); missing ones are left out."""
    library = ctypes.CDLL(path)
    found = {}
    for name in names:
        try:
            found[name] = ctypes.cast(getattr(library, name), ctypes.c_void_p).value or 0
        except AttributeError:
            pass
    return found


def _string_offsets(data: bytes, start: int, end: int, names: set[str]) -> dict[int, str]:
    """Offsets (relative to C{start}) of C{names} in the string table C{data[start:end]}."""
    offsets = {}
    for name in names:
        needle = b"\0" + name.encode("ascii") + b"\0"
        at = data.find(needle, start, end)
        while at != -1:
            offsets[at + 1 - start] = name
            at = data.find(needle, at + 1, end)
    return offsets


def _symbol_table(path: str, names: set[str]) -> dict[str, int]:
    """
    Values of the function symbols C{names} in an ELF64 little-endian file.

    A name defined twice with different values is left out (ambiguous).
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise LookupError(f"{path} is not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    found: dict[str, int] = {}
    ambiguous: set[str] = set()
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind not in (2, 11) or entsize != 24:  # SHT_SYMTAB, SHT_DYNSYM
            continue
        strings = sections[link]
        wanted = _string_offsets(data, strings[4], strings[4] + strings[5], names)
        for st_name, st_info, _, st_shndx, st_value, _ in struct.iter_unpack("<IBBHQQ", data[offset:offset + size]):
            name = wanted.get(st_name)
            if name is None or st_info & 0xF != 2 or st_shndx == 0 or not st_value:  # STT_FUNC, defined
                continue
            if found.get(name, st_value) != st_value:
                ambiguous.add(name)
            found[name] = st_value
    for name in ambiguous:
        del found[name]
    return found


def _locate(*extra: str) -> tuple[dict[str, int], str]:
    """
    Addresses of C{_FUNCTIONS} (all of them), and of C{_OPTIONAL} and
    C{extra} where found; and the shared object they are in.
    """
    anchor = _anchor_address()  # cffi's wrapper around SSL_CTX_new in the binding's module
    path, base = _containing_object(anchor)
    optional = [*_OPTIONAL, *extra]
    exported = _exported(path, [_ANCHOR, *_FUNCTIONS, *optional])
    if all(name in exported for name in _FUNCTIONS):
        # A shared OpenSSL the binding's module links to: dlsym through that
        # module finds what the module itself calls; all from one library.
        libraries = {_containing_object(address)[0] for address in exported.values()}
        if len(libraries) == 1:
            return exported, libraries.pop()
        raise LookupError(f"OpenSSL functions come from several libraries: {sorted(libraries)}")
    wrapper = "_cffi_d_" + _ANCHOR
    values = _symbol_table(path, {wrapper, *_FUNCTIONS, *optional})
    if wrapper not in values or base + values[wrapper] != anchor:
        raise LookupError(f"the symbol table of {path} does not match the loaded code")
    missing = [name for name in _FUNCTIONS if name not in values]
    if missing:
        raise LookupError(f"{path} lacks {', '.join(missing)} (OpenSSL 3.0 or newer is needed)")
    return {name: base + value for name, value in values.items() if name != wrapper}, path


_loaded: Native | None = None
_error: str | None = None


def load() -> Native | None:
    """The located functions, or C{None} (see L{error} for why); looked up once per process."""
    global _loaded, _error
    if _loaded is None and _error is None:
        try:
            import cffi  # type: ignore[import-untyped]  # no stubs

            addresses, where = _locate()
            ffi = cffi.FFI()
            ffi.cdef(_CDEF)
            calls: dict[str, Callable[..., Any]] = {
                name: ffi.cast(signature, addresses[name]) for name, signature in _FUNCTIONS.items()
            }
            optional = {name: ffi.cast(signature, addresses[name])
                        for name, signature in _OPTIONAL.items() if name in addresses}
            _loaded = Native(ffi, calls["SSL_CTX_set_tlsext_ticket_key_evp_cb"], calls["EVP_CipherInit_ex"],
                             calls["EVP_MAC_CTX_set_params"], calls["EVP_aes_256_cbc"](), where,
                             optional.get("SSL_CTX_set_num_tickets"))
        except Exception as e:  # any surprise: no tickets rather than a crash
            _error = f"{type(e).__name__}: {e}"
    return _loaded


def error() -> str | None:
    """Why L{load} returned C{None}, once it has."""
    return _error
