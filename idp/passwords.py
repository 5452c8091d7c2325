"""Passwords (argon2id) and token secrets (SHA-256).

Only user passwords pay for argon2id; everything the provider generates itself
(cookies, codes, refresh tokens, client secrets) has 256 bits of entropy, so a
SHA-256 hash compared in constant time is enough and keeps hot paths fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_TOKEN = re.compile(r"([A-Za-z0-9_-]{16,32})\.([A-Za-z0-9_-]{43})")


def make_hasher(time_cost: int, memory_cost: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)


#: How much nicer than the process the threads that run argon2id are (Linux: per thread).
HASHING_NICENESS = 10


def _lower_priority() -> None:
    """Run this thread, and the lanes argon2 starts from it, behind request threads: a
    burst of sign-ins then takes the CPU the token endpoints leave, not theirs."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux: ordinary priority
        thread = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, thread) + HASHING_NICENESS
        os.setpriority(os.PRIO_PROCESS, thread, min(19, niceness))


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(size: int) -> ThreadPoolExecutor:
    """This process's hashing pool of ``size`` threads (made after a fork: a forked
    worker inherits the dictionary but no threads)."""
    key = (os.getpid(), size)
    pool = _POOLS.get(key)
    if pool is None:
        with _POOLS_LOCK:
            pool = _POOLS.get(key)
            if pool is None:
                pool = _POOLS[key] = ThreadPoolExecutor(size, "argon2",
                                                        initializer=_lower_priority)
    return pool


class Passwords:
    """argon2id with the configured parameters, plus constant work for unknown users.

    Every check and hash runs on a small pool per process (``concurrency`` threads) at a
    lower scheduling priority: sign-ins queue there instead of each taking every core
    with argon2's lanes, so introspection, userinfo and refresh keep their throughput
    while sign-ins run at full rate (bench/BASELINE.md)."""

    def __init__(self, hasher: PasswordHasher, *, concurrency: int = 1):
        self.hasher = hasher
        self.concurrency = concurrency
        # Verified when the user does not exist, so both paths cost one argon2 check.
        self._dummy_hash = hasher.hash(secrets.token_urlsafe(16))

    def _run(self, work, *args):
        return _pool(self.concurrency).submit(work, *args).result()

    def hash(self, password: str) -> str:
        return self._run(self.hasher.hash, password)

    def verify(self, password_hash: str | None, password: str) -> tuple[bool, str | None]:
        """(matches, new hash when the parameters changed and it should be stored)."""
        return self._run(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> tuple[bool, str | None]:
        try:
            self.hasher.verify(password_hash or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return False, None
        if password_hash is None:
            return False, None
        if self.hasher.check_needs_rehash(password_hash):
            return True, self.hasher.hash(password)
        return True, None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def verify_secret(secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), secret_hash)


def new_id() -> str:
    """A public row id: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


def new_token() -> tuple[str, str, str]:
    """(row id, secret, value) where value = ``<id>.<secret>`` and secret has 256 bits."""
    row_id = new_id()
    secret = secrets.token_urlsafe(32)
    return row_id, secret, f"{row_id}.{secret}"


def split_token(value: str | None) -> tuple[str, str] | None:
    """Parse ``<id>.<secret>``; anything else is refused before touching the database."""
    if not value or len(value) > 80:
        return None
    match = _TOKEN.fullmatch(value)
    return (match.group(1), match.group(2)) if match else None
