"""A user's credentials: signing in with a password, changing it, disabling the user.

Argon2 runs first, outside any lock (it takes tens of milliseconds). What it decided is
then re-checked under the user's row lock (``sessions.lock_user``), the lock that every
session creation, password change, disable and end-all takes: a sign-in opens its session
only if the ``credentials_version`` it verified the password under is still the user's,
and a password change or disable ends every session that exists when it commits. So a
credential change wins every race with a sign-in, on any node (DESIGN invariant 9).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from . import audit, sessions
from .accounts import MIN_PASSWORD
from .models import EndReason, LoginSession, User, db
from .passwords import Passwords


@dataclass(frozen=True)
class Verified:
    """A password found right for ``user`` under ``version`` of the user's credentials."""

    user: User
    version: int
    new_hash: str | None  # the same password under current argon2 parameters, if they moved


def verify(email: str, password: str, hasher: Passwords) -> Verified | None:
    """The user whose password this is, if enabled; None otherwise (constant work for an
    unknown email)."""
    user = db.session.scalar(sa.select(User).where(User.email == email))
    ok, new_hash = hasher.verify(user.password_hash if user else None, password)
    if not ok or user is None or user.disabled_at is not None:
        return None
    return Verified(user, user.credentials_version, new_hash)


def sign_in(verified: Verified, origin: sessions.Origin, *, now: datetime,
            replacing: LoginSession | None = None) -> sessions.Started:
    """Open a session for a verified password, replacing the browser's previous one.
    Raises ``sessions.CredentialsChanged`` when the password was changed or the user
    disabled since it was verified (answer it as a wrong password), and
    ``sessions.SessionLimitReached``; the caller commits."""
    started = sessions.start(verified.user, origin, now=now, verified_version=verified.version,
                             replacing=replacing)
    if verified.new_hash:
        verified.user.password_hash = verified.new_hash
    return started


class PasswordChangeRefused(ValueError):
    """The change was refused; the message says why, in words for the user."""


def change_password(user: User, *, current: str, new: str, confirm: str, hasher: Passwords,
                    keep: LoginSession, now: datetime, ip: str) -> list[LoginSession]:
    """Set a new password and end every other session of the user (``keep`` stays): those
    that exist when this commits, and any sign-in verified with the old password waits
    and is then refused. Returns the sessions ended; the caller commits."""
    if new != confirm:
        raise PasswordChangeRefused("The new passwords do not match.")
    if len(new) < MIN_PASSWORD:
        raise PasswordChangeRefused(f"Use at least {MIN_PASSWORD} characters.")
    if len(new) > 1024:
        raise PasswordChangeRefused("Use at most 1024 characters.")
    version = user.credentials_version
    ok, _ = hasher.verify(user.password_hash, current)
    if not ok:
        audit.record("password.change_failed", now=now, account_id=user.account_id,
                     user_id=user.id, ip=ip, actor=f"user:{user.sub}")
        raise PasswordChangeRefused("The current password is not right.")
    new_hash = hasher.hash(new)
    sessions.lock_user(user)
    if user.credentials_version != version or user.disabled_at is not None:
        # Changed (or disabled) by another request since the current password was checked.
        raise PasswordChangeRefused("The current password is not right.")
    user.password_hash = new_hash
    user.credentials_version = version + 1
    ended = sessions.end_all(user, EndReason.PASSWORD_CHANGED, now=now,
                             actor=f"user:{user.sub}", ip=ip, keep=keep.id)
    audit.record("password.changed", now=now, account_id=user.account_id, user_id=user.id,
                 session_id=keep.id, ip=ip, actor=f"user:{user.sub}", sessions_ended=len(ended))
    return ended


def disable(user: User, *, now: datetime, actor: str, ip: str | None = None
            ) -> list[LoginSession]:
    """The user can no longer sign in, and every session of theirs ends now ("Ended:
    account disabled"), including one whose sign-in is committing at this instant.
    Returns the sessions ended; the caller commits."""
    sessions.lock_user(user)
    user.disabled_at = now
    user.credentials_version += 1
    ended = sessions.end_all(user, EndReason.DISABLED, now=now, actor=actor, ip=ip)
    audit.record("user.disabled", now=now, account_id=user.account_id, user_id=user.id,
                 actor=actor, ip=ip, sessions_ended=len(ended))
    return ended


def enable(user: User, *, now: datetime, actor: str, ip: str | None = None) -> None:
    """The user may sign in again (no session comes back)."""
    user.disabled_at = None
    audit.record("user.enabled", now=now, account_id=user.account_id, user_id=user.id,
                 actor=actor, ip=ip)
