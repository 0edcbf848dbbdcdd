"""
Tests for the per-address tables: address keys, concurrency, connect rate,
log-once, and their memory bound under address rotation.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txsmtpsrv._addrlimits import (
    OVER_CONCURRENCY,
    OVER_RATE,
    ConnectionLimiter,
    ExpiringTable,
    OncePer,
    address_key,
)

# -- address keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("address, prefix, key", [
    ("192.0.2.1", 64, "192.0.2.1"),
    ("::ffff:192.0.2.1", 64, "192.0.2.1"),  # dual-stack socket: the IPv4 client
    ("::FFFF:c000:0201", 64, "192.0.2.1"),
    ("2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:2:3:4:5:6", 48, "2001:db8:1::/48"),
    ("2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6"),
    ("fe80::1%eth0", 64, "fe80::/64"),
    ("2001:db8::1", 0, "::/0"),
])
def test_address_key(address, prefix, key):
    assert address_key(address, prefix) == key


@pytest.mark.parametrize("address", [None, "", "/run/smtp.sock", "localhost", "300.1.1.1"])
def test_address_key_not_an_address(address):
    """UNIX sockets and the like have no key: no per-address limit applies."""
    assert address_key(address) is None


@given(st.integers(0, 2 ** 128 - 1), st.integers(0, 128))
def test_address_key_ipv6_network_holds_address(value, prefix):
    """Every non-mapped IPv6 address falls in the network its key names, of exactly that prefix."""
    addr = ipaddress.IPv6Address(value)
    key = address_key(str(addr), prefix)
    assert key is not None
    if addr.ipv4_mapped is not None:
        assert key == str(addr.ipv4_mapped)
        return
    net = ipaddress.ip_network(key)
    assert addr in net
    assert net.prefixlen == prefix or (prefix == 128 and net.prefixlen == 128)


@given(st.integers(0, 2 ** 32 - 1))
def test_address_key_ipv4_and_mapped_agree(value):
    v4 = ipaddress.IPv4Address(value)
    assert address_key(str(v4)) == address_key(f"::ffff:{v4}") == str(v4)


# -- the expiring table -------------------------------------------------------------------


def test_expiring_table_expiry_and_cap():
    t: ExpiringTable[int] = ExpiringTable(max_entries=3)
    t.put("a", 1, expires=10, now=0)
    t.put("b", 2, expires=11, now=1)
    assert t.get("a", now=9.9) == 1
    assert t.get("a", now=10) is None and len(t) == 1  # expired: dropped on read
    t.put("c", 3, expires=12, now=2)
    t.put("d", 4, expires=13, now=3)
    t.put("e", 5, expires=14, now=4)  # full of live keys: the oldest written ("b") goes
    assert len(t) == 3
    assert t.get("b", now=4) is None and t.get("c", now=4) == 3
    t.put("f", 6, expires=30, now=12.5)  # "c" (12) expired: purged rather than "d" evicted
    assert t.get("d", now=12.5) == 4


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 200), st.floats(0, 5)), max_size=400), st.integers(1, 20))
def test_expiring_table_never_exceeds_cap(ops, cap):
    t: ExpiringTable[int] = ExpiringTable(max_entries=cap)
    now = 0.0
    for key, step in ops:
        now += step
        t.put(str(key), key, now + 10, now)
        assert len(t) <= cap
        assert t.get(str(key), now) == key  # what was just written is there


# -- concurrency and rate --------------------------------------------------------------------


def test_concurrency_limit_per_address():
    lim = ConnectionLimiter(max_per_address=2)
    a, b = lim.key("127.0.0.2"), lim.key("127.0.0.3")
    assert lim.admit(a, 0) is None and lim.admit(a, 0) is None
    assert lim.admit(a, 0) == OVER_CONCURRENCY  # the third from a
    assert lim.admit(b, 0) is None  # b is not affected
    assert lim.open_connections(a) == 2  # the refused one is not counted
    lim.release(a)
    assert lim.admit(a, 0) is None
    for _ in range(3):
        lim.release(a)
    lim.release(b)
    assert lim.sizes == (0, 0)  # nothing left behind once connections end


def test_concurrency_ipv6_aggregated_and_mapped_ipv4():
    lim = ConnectionLimiter(max_per_address=1)
    assert lim.admit(lim.key("2001:db8::1"), 0) is None
    assert lim.admit(lim.key("2001:db8::ffff"), 0) == OVER_CONCURRENCY  # same /64
    assert lim.admit(lim.key("2001:db8:0:1::1"), 0) is None  # next /64
    assert lim.admit(lim.key("192.0.2.9"), 0) is None
    assert lim.admit(lim.key("::ffff:192.0.2.9"), 0) == OVER_CONCURRENCY


def test_rate_limit_window():
    lim = ConnectionLimiter(max_rate=3)
    a, b = lim.key("127.0.0.2"), lim.key("127.0.0.3")
    assert [lim.admit(a, t) for t in (0, 10, 20)] == [None, None, None]
    assert lim.admit(a, 30) == OVER_RATE
    assert lim.admit(b, 30) is None
    assert lim.admit(a, 59.9) == OVER_RATE  # refused attempts count too
    assert lim.admit(a, 60) is None  # a minute after the first: a new window


def test_exceptions_have_no_admission_key_but_keep_their_key():
    """Exempt addresses are not counted or limited (admission_key None); their key stays, for AUTH limits."""
    nets = [ipaddress.ip_network("127.0.0.0/30"), ipaddress.ip_network("2001:db8::1/128")]
    lim = ConnectionLimiter(max_per_address=1, max_rate=1, exceptions=nets)
    for address in ("127.0.0.1", "127.0.0.3", "::ffff:127.0.0.2", "2001:db8::1", "2001:db8::1%eth0"):
        assert lim.admission_key(address) is None
        assert lim.key(address) is not None
    assert lim.admission_key("127.0.0.4") == "127.0.0.4"
    assert lim.admission_key("2001:db8::2") == "2001:db8::/64"
    assert lim.admission_key(None) is None and lim.admission_key("not an address") is None
    assert ConnectionLimiter(max_per_address=1).admission_key("127.0.0.1") == "127.0.0.1"


def test_unix_socket_never_limited():
    lim = ConnectionLimiter(max_per_address=1, max_rate=1)
    assert [lim.admit(None, 0) for _ in range(5)] == [None] * 5


def test_rate_table_bounded_under_rotation():
    """A flood from 1,000,000 rotating IPv4 addresses: the rate table never holds more than max_entries."""
    lim = ConnectionLimiter(max_per_address=5, max_rate=10, max_entries=1000)
    for i in range(1_000_000 // 50):  # bounded: 20,000 distinct addresses, each connecting once
        key = lim.key(str(ipaddress.IPv4Address(0x0A000000 + i * 50)))
        assert lim.admit(key, i * 0.001) is None
        lim.release(key)
    assert lim.sizes == (0, 1000)


def test_ipv6_rotation_inside_a_prefix_is_one_key():
    """Rotating through a /64 gains nothing: one key, limited."""
    lim = ConnectionLimiter(max_rate=5)
    results = [lim.admit(lim.key(f"2001:db8::{i:x}"), 0) for i in range(1, 1001)]
    assert results.count(None) == 5
    assert lim.sizes == (0, 1)


@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=200))
def test_concurrency_model(ops):
    """Admit/release against a model: never more than the limit open, the count always right."""
    lim = ConnectionLimiter(max_per_address=3)
    model = {"a": 0, "b": 0, "c": 0}
    for key, opening in ops:
        if opening:
            refused = lim.admit(key, 0)
            assert (refused is None) == (model[key] < 3)
            if refused is None:
                model[key] += 1
        elif model[key]:
            lim.release(key)
            model[key] -= 1
        assert lim.open_connections(key) == model[key]
    assert lim.sizes[0] == sum(1 for v in model.values() if v)


# -- log once per address per minute ---------------------------------------------------------


def test_once_per_minute_counts_held_back():
    once = OncePer(60)
    assert once("a", 0) == 0
    assert [once("a", t) for t in (1, 2, 30)] == [None, None, None]
    assert once("b", 5) == 0  # another key logs at once
    assert once("a", 60) == 3  # due again: says how many were held back
    assert once("a", 61) is None
    assert once("a", 300) == 0  # long quiet: forgotten, nothing held back


def test_once_per_bounded():
    once = OncePer(60, max_entries=100)
    for i in range(10_000):
        assert once(str(i), i * 0.01) == 0
    assert len(once) == 100
