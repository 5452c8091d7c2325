"""Where security counters live: shared by every worker that can answer.

Without Redis, a SQLite file in the instance folder (``NodeStore``) that every worker of
the node opens: a sign-in counted by one worker is seen by the next, whichever answers,
and an administrator's "Clear lockout" clears it for all. With ``IDP_REDIS_URL`` the
counters live in Redis and every node shares them; while Redis is unreachable each node
falls back to its own ``NodeStore`` (``ResilientStrategy``), so a dead Redis neither stops
sign-in nor lifts the limits. Nothing counts per process: a limit checked in one worker
of four would allow four times the attempts.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from limits import parse_many
from limits.storage import Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter


class NodeStore(Storage):
    """``limits`` counters in a SQLite file shared by the processes of one node. Each
    change is one statement in autocommit (an upsert that starts a new window when the
    old one has expired), so concurrent workers never lose a count; WAL lets readers
    run beside the writer. Expired rows are deleted at most once a minute."""

    STORAGE_SCHEME = ["idp-node"]
    PURGE_INTERVAL = 60.0

    def __init__(self, path: str | Path, wrap_exceptions: bool = False, **options):
        super().__init__(None, wrap_exceptions=wrap_exceptions, **options)
        self.path = str(path)
        self._local = threading.local()
        self._next_purge = 0.0
        with self._connection() as connection:  # create it now: fail at start, not later
            connection.execute("SELECT 1")

    @property
    def base_exceptions(self):
        return sqlite3.Error

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (a forked worker opens its own)."""
        held = getattr(self._local, "held", None)
        if held is not None and held[0] == os.getpid():
            return held[1]
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                     check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, "
                           "count INTEGER NOT NULL, expires REAL NOT NULL)")
        self._local.held = (os.getpid(), connection)
        return connection

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        current = time.time()
        connection = self._connection()
        if current >= self._next_purge:
            self._next_purge = current + self.PURGE_INTERVAL
            connection.execute("DELETE FROM counters WHERE expires <= ?", (current,))
        return connection.execute(
            "INSERT INTO counters (key, count, expires) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET "
            "count = CASE WHEN expires <= ? THEN excluded.count ELSE count + excluded.count END, "
            "expires = CASE WHEN expires <= ? THEN excluded.expires ELSE expires END "
            "RETURNING count", (key, amount, current + expiry, current, current)).fetchone()[0]

    def get(self, key: str) -> int:
        row = self._connection().execute(
            "SELECT count FROM counters WHERE key = ? AND expires > ?",
            (key, time.time())).fetchone()
        return row[0] if row else 0

    def get_expiry(self, key: str) -> float:
        row = self._connection().execute(
            "SELECT expires FROM counters WHERE key = ? AND expires > ?",
            (key, time.time())).fetchone()
        return row[0] if row else time.time()

    def check(self) -> bool:
        return self._connection().execute("SELECT 1").fetchone() == (1,)

    def reset(self) -> int | None:
        return self._connection().execute("DELETE FROM counters").rowcount

    def clear(self, key: str) -> None:
        self._connection().execute("DELETE FROM counters WHERE key = ?", (key,))


class ResilientStrategy:
    """The limiter's strategy on the configured store, falling back to this node's
    ``NodeStore`` while that store (Redis) is unreachable; it is tried again after
    ``retry`` seconds. Without Redis the node store is the primary and nothing falls back."""

    def __init__(self, primary: FixedWindowRateLimiter, fallback: FixedWindowRateLimiter | None,
                 retry: float = 30.0):
        self.primary = primary
        self.fallback = fallback
        self.retry = retry
        self.down_until = 0.0

    @property
    def shared_between_nodes(self) -> bool:
        return self.fallback is not None

    def _run(self, action):
        """``action(strategy)`` on the primary store's strategy, or on the node's while the
        primary is unreachable."""
        if self.fallback is None:
            return action(self.primary)
        if time.monotonic() >= self.down_until:
            try:
                return action(self.primary)
            except Exception:  # noqa: BLE001 - any storage failure
                logging.getLogger("idp").warning(
                    "rate-limit storage unreachable; counting on this node until it is back")
                self.down_until = time.monotonic() + self.retry
        return action(self.fallback)

    def hit(self, *args, **kwargs) -> bool:
        return self._run(lambda strategy: strategy.hit(*args, **kwargs))

    def test(self, *args, **kwargs) -> bool:
        return self._run(lambda strategy: strategy.test(*args, **kwargs))

    def get_window_stats(self, *args, **kwargs):
        return self._run(lambda strategy: strategy.get_window_stats(*args, **kwargs))

    def clear(self, *args, **kwargs) -> None:
        return self._run(lambda strategy: strategy.clear(*args, **kwargs))

    def add(self, item, identifiers: tuple, amount: int) -> int:
        """Add ``amount`` to the current window's counter of a rate-limit item; its value."""
        return self.incr(item.key_for(*identifiers), item.get_expiry(), amount)

    # Plain counters by key, for counts that are not a request rate (the lockout).
    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Add ``amount`` (may be negative) to ``key``, which starts afresh for ``expiry``
        seconds if it had expired; its new value, atomically."""
        return self._run(lambda strategy: strategy.storage.incr(key, expiry, amount=amount))

    def get(self, key: str) -> int:
        return self._run(lambda strategy: strategy.storage.get(key))

    def seconds_left(self, key: str) -> int:
        """Whole seconds until ``key`` expires (at least 1)."""
        expiry = self._run(lambda strategy: strategy.storage.get_expiry(key))
        return max(1, int(expiry - time.time() + 0.999))

    def forget(self, key: str) -> None:
        self._run(lambda strategy: strategy.storage.clear(key))


def strategy_for(uri: str | None, node_path: str | Path) -> ResilientStrategy:
    """The counters of this deployment: ``uri`` (Redis) with the node store behind it, or
    the node store alone."""
    node = FixedWindowRateLimiter(NodeStore(node_path))
    if not uri:
        return ResilientStrategy(node, None)
    shared = storage_from_string(uri, key_prefix="idp")
    return ResilientStrategy(FixedWindowRateLimiter(shared), node)


class SharedCounts:
    """Request-rate limits over a store that costs a round trip (Redis), counted here
    between syncs: a key's requests are added to the store in one step at most every
    ``interval`` seconds, and at once when this process's estimate (the store's count at
    the last sync plus what it counted since) reaches the limit. One Redis round trip per
    request cost introspection a quarter of its throughput; this makes it one per client
    per interval. Each process may admit what it receives in one interval beyond the
    shared count; refusals are exact (they always ask the store). The sign-in lockout and
    the failure counters do not use this: they are exact."""

    def __init__(self, strategy: ResilientStrategy, interval: float):
        self.strategy = strategy
        self.interval = interval
        self.lock = threading.Lock()
        self.counts: dict[str, list] = {}  # key -> [count at last sync, counted since, synced at]

    def hit(self, item, *identifiers: str) -> bool:
        key = item.key_for(*identifiers)
        current = time.monotonic()
        with self.lock:
            entry = self.counts.get(key)
            if entry is None:
                if len(self.counts) > 10000:
                    self._forget(current)
                entry = self.counts[key] = [0, 0, float("-inf")]
            entry[1] += 1
            if entry[0] + entry[1] <= item.amount and current - entry[2] < self.interval:
                return True
            pending, entry[1], entry[2] = entry[1], 0, current
        shared = self.strategy.add(item, identifiers, pending)
        with self.lock:
            entry[0] = shared
        return shared <= item.amount

    def _forget(self, current: float) -> None:
        """Drop keys with nothing left to add and no sync for a minute (client IPs pile up)."""
        for key in [key for key, (_count, pending, synced) in self.counts.items()
                    if not pending and current - synced > 60]:
            del self.counts[key]

    def get_window_stats(self, *args, **kwargs):
        return self.strategy.get_window_stats(*args, **kwargs)


class Limited(Exception):
    """Over the limit ``name``: the caller answers 429 with ``Retry-After: retry_after``."""

    def __init__(self, retry_after: int, name: str = "other"):
        super().__init__(f"over {name}; retry after {retry_after} s")
        self.retry_after = retry_after
        self.name = name


class Limits:
    """The configured limits, by setting name (a ``limits`` string such as "30 per minute",
    several joined by ";"; empty: no limit), counted on the shared store per key.

    - ``reserve`` counts one attempt before the work it guards and refuses past the limit
      (exact under concurrency); ``release`` gives it back when the attempt turned out
      not to count (a success, where only failures are limited).
    - ``failed`` counts a failure known only afterwards, and says how long to wait when
      it went past a limit.
    - ``hit`` counts a request of an authenticated caller against an operator's cap,
      batched between syncs on Redis (``SharedCounts``)."""

    def __init__(self, strategy: ResilientStrategy, settings: dict, *,
                 batched: ResilientStrategy | SharedCounts | None = None):
        self.strategy = strategy
        self.batched = batched or strategy
        self.settings = settings
        self._items: dict[str, list] = {}

    def items(self, name: str) -> list:
        items = self._items.get(name)
        if items is None:
            value = self.settings[name]
            items = self._items[name] = parse_many(value) if value else []
        return items

    def _retry_after(self, item, name: str, key: str) -> int:
        stats = self.strategy.get_window_stats(item, name, key)
        return max(1, int(stats.reset_time - time.time() + 0.999))

    def reserve(self, name: str, key: str) -> None:
        taken = []
        for item in self.items(name):
            taken.append(item)
            if self.strategy.add(item, (name, key), 1) > item.amount:
                for undo in taken:  # a refusal is not an attempt
                    self.strategy.add(undo, (name, key), -1)
                raise Limited(self._retry_after(item, name, key), name)

    def release(self, name: str, key: str) -> None:
        for item in self.items(name):
            self.strategy.add(item, (name, key), -1)

    def failed(self, name: str, key: str) -> int | None:
        """Count a failure known only afterwards; past a limit, the seconds to wait."""
        waits = [self._retry_after(item, name, key) for item in self.items(name)
                 if self.strategy.add(item, (name, key), 1) > item.amount]
        return max(waits) if waits else None

    def hit(self, name: str, key: str) -> None:
        for item in self.items(name):
            if not self.batched.hit(item, name, key):
                raise Limited(self._retry_after(item, name, key), name)
