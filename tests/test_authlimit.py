"""Tests for counting failed AUTH attempts across connections, and the tarpit delay."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from txsmtpsrv._authlimit import BY_ADDRESS, BY_USER, AuthFailures


def test_per_address_limit_and_window():
    t = AuthFailures(max_per_address=3, window=300)
    for now in (0, 1, 2):
        assert t.blocked("192.0.2.1", "alice", now) is None
        t.failed("192.0.2.1", "alice", now)
    assert t.blocked("192.0.2.1", "bob", 3) == BY_ADDRESS  # whatever user it tries next
    assert t.blocked("192.0.2.2", "alice", 3) is None  # another address is not affected
    assert t.blocked("192.0.2.1", None, 299.9) == BY_ADDRESS  # also before naming a user
    assert t.blocked("192.0.2.1", "bob", 300) is None  # the window from the first failure passed
    assert t.failures("192.0.2.1", None, 300) == (0, 0)


def test_per_user_limit_across_addresses():
    """A botnet guessing one account from many addresses is stopped by the per-user count."""
    t = AuthFailures(max_per_user=5, window=600)
    for i in range(5):
        t.failed(f"198.51.100.{i}", "Alice", i)
    assert t.blocked("203.0.113.7", "alice", 10) == BY_USER  # case-folded
    assert t.blocked("203.0.113.7", "bob", 10) is None
    assert t.blocked("203.0.113.7", None, 10) is None


def test_off_by_default():
    t = AuthFailures()
    assert not t.enabled
    for _ in range(100):
        t.failed("a", "u", 0)
    assert t.blocked("a", "u", 0) is None
    assert t.delay_for(100) == 0.0


def test_tarpit_doubles_and_caps():
    t = AuthFailures(delay=1.0, max_delay=8.0)
    assert t.enabled
    assert [t.failed("192.0.2.1", None, 0) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert t.failed("192.0.2.2", None, 0) == 1.0  # its own count
    # A new connection from the first address keeps its count: reconnecting does not reset the tarpit.
    assert t.failed("192.0.2.1", None, 1) == 8.0
    assert t.delay_for(10_000) == 8.0  # no overflow for huge counts


def test_tarpit_uses_user_count_too():
    t = AuthFailures(delay=0.5, max_delay=60)
    for i in range(4):
        t.failed(f"10.0.0.{i}", "alice", 0)
    assert t.failed("10.0.0.99", "alice", 0) == 8.0  # fifth failure for alice: 0.5 * 2**4


def test_long_user_names_share_a_bounded_key():
    t = AuthFailures(max_per_user=1)
    t.failed(None, "x" * 10_000, 0)
    assert t.blocked(None, "x" * 256 + "y", 0) == BY_USER
    assert t.sizes == (0, 1)


def test_tables_bounded_under_rotation():
    """50,000 addresses each failing with a new user name: both tables stay at max_entries."""
    t = AuthFailures(max_per_address=3, max_per_user=3, max_entries=500)
    for i in range(50_000):
        t.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", f"user{i}", i * 0.001)
    assert t.sizes == (500, 500)


@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.floats(0, 100)), max_size=100),
       st.integers(1, 10), st.floats(1, 500))
def test_address_model(events, limit, window):
    """Blocked exactly when the failures since the window began reach the limit."""
    t = AuthFailures(max_per_address=limit, window=window)
    now = 0.0
    start = {"a": None, "b": None}
    count = {"a": 0, "b": 0}
    for key, step in events:
        now += step
        if start[key] is not None and now >= start[key] + window:
            start[key], count[key] = None, 0
        assert (t.blocked(key, None, now) == BY_ADDRESS) == (count[key] >= limit)
        if count[key] < limit:
            t.failed(key, None, now)
            if start[key] is None:
                start[key] = now
            count[key] += 1
