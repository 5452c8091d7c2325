"""Request-rate limits over a shared store, counted locally between syncs (``SharedCounts``):
what reaches the store, when, and what is refused. A fake store stands in for Redis (the
two-node tests in tests/security/test_brute_force.py use the real one)."""

from __future__ import annotations

import pytest
from limits import parse

from idp.web import throttle
from idp.web.throttle import SharedCounts


class Store:
    """The shared counter: what ``ResilientStrategy.add`` does against Redis."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.calls: list[tuple[str, int]] = []

    def add(self, item, identifiers, amount):
        key = item.key_for(*identifiers)
        self.calls.append((key, amount))
        self.counts[key] = self.counts.get(key, 0) + amount
        return self.counts[key]


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(throttle.time, "monotonic", lambda: now[0])
    return now


LIMIT = parse("10 per minute")


def test_requests_between_syncs_are_counted_here_and_added_in_one_step(clock):
    store = Store()
    counts = SharedCounts(store, interval=0.25)
    assert all(counts.hit(LIMIT, "client:a") for _ in range(5))
    assert [amount for _key, amount in store.calls] == [1]  # the first request synced
    clock[0] += 0.3
    assert counts.hit(LIMIT, "client:a")
    assert [amount for _key, amount in store.calls] == [1, 5]  # four waiting, plus this one
    assert store.counts[LIMIT.key_for("client:a")] == 6


def test_reaching_the_limit_asks_the_store_and_refuses_on_its_count(clock):
    store = Store()
    counts = SharedCounts(store, interval=60)
    store.counts[LIMIT.key_for("client:a")] = 8  # the other nodes' requests, already shared
    results = [counts.hit(LIMIT, "client:a") for _ in range(3)]
    # First request: synced, 9 shared. Second: estimate 10, allowed locally. Third: the
    # estimate passes the limit, so it syncs (11 shared) and is refused.
    assert results == [True, True, False]
    assert store.counts[LIMIT.key_for("client:a")] == 11
    assert counts.hit(LIMIT, "client:b")  # another client has its own counter


def test_an_interval_of_zero_syncs_every_request(clock):
    store = Store()
    counts = SharedCounts(store, interval=0)
    for _ in range(3):
        counts.hit(LIMIT, "client:a")
    assert [amount for _key, amount in store.calls] == [1, 1, 1]


def test_idle_keys_are_forgotten_once_many_have_piled_up(clock):
    store = Store()
    counts = SharedCounts(store, interval=0.25)
    for n in range(10001):
        counts.hit(LIMIT, f"ip:{n}")
    counts.hit(LIMIT, "ip:busy")
    counts.hit(LIMIT, "ip:busy")  # one request counted here, not yet shared
    clock[0] += 61
    counts.hit(LIMIT, "ip:new")
    assert set(counts.counts) == {LIMIT.key_for("ip:busy"), LIMIT.key_for("ip:new")}
