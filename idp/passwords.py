"""Passwords (argon2id) and token secrets (SHA-256).

Only user passwords pay for argon2id; everything the provider generates itself
(cookies, codes, refresh tokens, client secrets) has 256 bits of entropy, so a
SHA-256 hash compared in constant time is enough and keeps hot paths fast.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_TOKEN = re.compile(r"([A-Za-z0-9_-]{16,32})\.([A-Za-z0-9_-]{43})")


def make_hasher(time_cost: int, memory_cost: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)


class Passwords:
    """argon2id with the configured parameters, plus constant work for unknown users."""

    def __init__(self, hasher: PasswordHasher):
        self.hasher = hasher
        # Verified when the user does not exist, so both paths cost one argon2 check.
        self._dummy_hash = hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> tuple[bool, str | None]:
        """(matches, new hash when the parameters changed and it should be stored)."""
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
