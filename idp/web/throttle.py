"""Abuse resistance with ``limits``: request rates per client IP and per OAuth
client, and the per-account password-guessing throttle (growing delays, then a
temporary lockout).

Counters live in a ``limits`` storage: in memory by default, Redis for several
nodes (``IDP_REDIS_URL=redis://…``). The lockout is keyed by the
normalised email whether or not such a user exists, so its answers never tell an
attacker which accounts exist.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from authlib.oauth2.rfc6749.util import extract_basic_authorization
from flask import Flask, current_app, request
from limits import RateLimitItemPerSecond, parse, parse_many
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

from ..runtime import client_ip


class LocalStorage(MemoryStorage):
    """limits' in-process storage without its expiry thread: the stock one starts a new
    ``threading.Timer`` every 10 ms under load (a thread start per request on a busy
    endpoint). Reads already drop an expired counter; the full sweep of stale keys
    runs inline at most once a second."""

    STORAGE_SCHEME = ["idp-memory"]
    SWEEP_INTERVAL = 1.0

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._next_sweep = time.monotonic() + self.SWEEP_INTERVAL

    def _MemoryStorage__schedule_expiry(self) -> None:  # replaces the thread-starting one
        current = time.monotonic()
        if current >= self._next_sweep:
            self._next_sweep = current + self.SWEEP_INTERVAL
            self._MemoryStorage__expire_events()


def storage_uri(configured: str) -> str:
    """``memory://`` means this process's counters, kept by ``LocalStorage``."""
    return "idp-memory://" if configured.startswith("memory://") else configured


class ResilientStrategy:
    """The limiter's strategy, falling back to this node's memory while the shared
    store (Redis) is unreachable, so a dead Redis neither stops sign-in nor lifts the
    limits; the shared store is tried again after ``retry`` seconds."""

    def __init__(self, primary, retry: float = 30.0):
        self.primary = primary
        self.fallback = MovingWindowRateLimiter(LocalStorage())
        self.retry = retry
        self.down_until = 0.0

    def _run(self, action):
        """``action(strategy)`` on the shared store's strategy, or on this node's while the
        store is unreachable."""
        if time.monotonic() >= self.down_until:
            try:
                return action(self.primary)
            except Exception:  # noqa: BLE001 - any storage failure
                logging.getLogger("idp").warning("rate-limit storage unreachable; using memory")
                self.down_until = time.monotonic() + self.retry
        return action(self.fallback)

    def hit(self, *args, **kwargs):
        return self._run(lambda strategy: strategy.hit(*args, **kwargs))

    def test(self, *args, **kwargs):
        return self._run(lambda strategy: strategy.test(*args, **kwargs))

    def get_window_stats(self, *args, **kwargs):
        return self._run(lambda strategy: strategy.get_window_stats(*args, **kwargs))

    def clear(self, *args, **kwargs):
        return self._run(lambda strategy: strategy.clear(*args, **kwargs))

    def add(self, item, identifiers: tuple, amount: int) -> int:
        """Add ``amount`` to the current window's counter; its new value."""
        key, expiry = item.key_for(*identifiers), item.get_expiry()
        return self._run(lambda strategy: strategy.storage.incr(key, expiry, amount=amount))


class SharedCounts:
    """Request-rate limits over a shared store (Redis), counted here between syncs: a key's
    requests are added to the store in one step at most every ``interval`` seconds, and at
    once when this node's estimate (the store's count at the last sync plus what it counted
    since) reaches the limit. One Redis round trip per request cost introspection a quarter
    of its throughput; this makes it one per client per interval. Each node may admit what
    it receives in one interval beyond the shared count; refusals are exact (they always ask
    the store). The login lockout does not use this: its counters are exact."""

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


@dataclass(frozen=True)
class LoginState:
    locked: bool
    retry_after: int  # seconds until the next attempt is considered


class LoginThrottle:
    """Failures per account: after ``delay_after`` failures each new attempt must wait
    1, 2, 4, … seconds; after ``max_failures`` within ``window`` the account is locked
    until the window has passed or an administrator clears it."""

    def __init__(self, strategy: ResilientStrategy, *, max_failures: int, window: int,
                 delay_after: int = 2):
        self.strategy = strategy
        self.failures = parse(f"{max_failures} per {window} seconds")
        self.max_failures = max_failures
        self.delay_after = delay_after

    def _delay_item(self, count: int):
        return RateLimitItemPerSecond(1, 2 ** (count - self.delay_after))

    def _count(self, email: str) -> int:
        stats = self.strategy.get_window_stats(self.failures, "login-failures", email)
        return self.max_failures - stats.remaining

    def state(self, email: str) -> LoginState:
        count = self._count(email)
        if count >= self.max_failures:
            stats = self.strategy.get_window_stats(self.failures, "login-failures", email)
            return LoginState(True, max(1, int(stats.reset_time - time.time())))
        if count >= self.delay_after:
            item = self._delay_item(count)
            if not self.strategy.test(item, "login-delay", email, str(count)):
                stats = self.strategy.get_window_stats(item, "login-delay", email, str(count))
                return LoginState(False, max(1, int(stats.reset_time - time.time())))
        return LoginState(False, 0)

    def failed(self, email: str) -> None:
        self.strategy.hit(self.failures, "login-failures", email)
        count = self._count(email)
        if self.delay_after <= count < self.max_failures:
            self.strategy.hit(self._delay_item(count), "login-delay", email, str(count))

    def locked(self, email: str) -> bool:
        return self._count(email) >= self.max_failures

    def reset(self, email: str) -> None:
        """Successful sign-in or an administrator: the counters start again."""
        self.strategy.clear(self.failures, "login-failures", email)
        for count in range(self.delay_after, self.max_failures):
            self.strategy.clear(self._delay_item(count), "login-delay", email, str(count))


def requesting_client_id() -> str:
    """The client an OAuth request comes from (Basic auth, form, or assertion)."""
    basic_id, _ = extract_basic_authorization(request.headers)
    client_id = basic_id or request.form.get("client_id")
    return f"client:{(client_id or 'anonymous')[:64]}"


def setup(app: Flask) -> None:
    """Counters from ``limits`` (the library under Flask-Limiter), used directly: every
    limit here is checked where it applies (``limit``, the login throttle), so no
    per-request hooks run on the endpoints that have none."""
    config = app.config
    storage = storage_from_string(storage_uri(config["RATELIMIT_STORAGE_URI"]),
                                  key_prefix="idp")
    strategy = ResilientStrategy(FixedWindowRateLimiter(storage))
    app.extensions["idp.limits"] = strategy
    interval = config["RATE_LIMIT_SYNC"].total_seconds()
    shared = not isinstance(storage, MemoryStorage)
    app.extensions["idp.request_limits"] = SharedCounts(strategy, interval) \
        if shared and interval > 0 else strategy
    app.extensions["idp.login_throttle"] = LoginThrottle(
        strategy,
        max_failures=config["LOGIN_MAX_FAILURES"],
        window=int(config["LOGIN_LOCKOUT"].total_seconds()),
    )


@contextmanager
def limit(rule_setting: str, key: str | None = None, scope: str | None = None):
    """Count one request against ``config[rule_setting]`` for ``key`` (the client IP by
    default); over it, answer 429 with Retry-After in the caller's format. Uses the
    limiter's storage and strategy directly: no per-request decorator bookkeeping."""
    strategy: ResilientStrategy | SharedCounts = current_app.extensions["idp.request_limits"]
    rules = current_app.extensions.setdefault("idp.rules", {})
    items = rules.get(rule_setting)
    if items is None:
        items = rules[rule_setting] = parse_many(current_app.config[rule_setting])
    identity = key or client_ip()
    for item in items:
        if not strategy.hit(item, scope or rule_setting, identity):
            stats = strategy.get_window_stats(item, scope or rule_setting, identity)
            raise TooManyRequests(retry_after=max(1, int(stats.reset_time - time.time())))
    yield


def login_throttle() -> LoginThrottle:
    return current_app.extensions["idp.login_throttle"]
