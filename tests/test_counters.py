"""The shared counters: the node store every worker of a node shares (exact under
concurrent processes, windows that expire, nothing per process), and request-rate limits
over Redis counted locally between syncs (``SharedCounts``: what reaches the store, when,
and what is refused; a fake store stands in for Redis here, the two-node tests in
tests/security/test_brute_force.py use the real one)."""

from __future__ import annotations

import multiprocessing

import pytest
from limits import parse

from idp import counters
from idp.counters import NodeStore, SharedCounts


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
    monkeypatch.setattr(counters.time, "monotonic", lambda: now[0])
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


# -- the node store ---------------------------------------------------------------------------


def _add_many(path: str, key: str, times: int) -> None:
    store = NodeStore(path)
    for _ in range(times):
        store.incr(key, 60)


def test_workers_of_a_node_count_on_one_store_and_lose_nothing(tmp_path):
    """Four processes (as four gunicorn workers) adding at once: every count arrives."""
    path = str(tmp_path / "counters.db")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_add_many, args=(path, "k", 250)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert NodeStore(path).get("k") == 1000


def test_a_window_expires_and_starts_afresh(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(counters.time, "time", lambda: now[0])
    store = NodeStore(tmp_path / "counters.db")
    assert [store.incr("k", 10) for _ in range(3)] == [1, 2, 3]
    assert store.get_expiry("k") == 1010.0
    now[0] = 1009.9
    assert store.get("k") == 3
    now[0] = 1010.0
    assert store.get("k") == 0
    assert store.incr("k", 10) == 1 and store.get_expiry("k") == 1020.0
    assert store.incr("k", 10, amount=-1) == 0
    store.incr("other", 10)
    store.clear("k")
    assert store.get("k") == 0 and store.get("other") == 1
    assert store.reset() == 1 and store.get("other") == 0
