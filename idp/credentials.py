"""A user's credentials: signing in with a password, changing it, disabling the user.

Every password check first reserves an attempt on the account's lockout counter
(``lockout.Lockout``, shared by every worker and node), so guesses, in parallel or not,
at the sign-in form or at the password-change form, never get more checks than the limit.

Argon2 runs outside any lock (it takes tens of milliseconds). What it decided is then
re-checked under the user's row lock (``sessions.lock_user``), the lock that every session
creation, password change, disable and end-all takes: a sign-in opens its session only if
the ``credentials_version`` it verified the password under is still the user's, and a
password change or disable ends every session that exists when it commits. So a
credential change wins every race with a sign-in, on any node (DESIGN invariant 9).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from . import audit, factors, passkeys, sessions
from .accounts import MIN_PASSWORD
from .counters import Limits
from .factors import Sealer
from .lockout import Attempt, Lockout
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


class Throttled(Exception):
    """Too many failed password checks for this account: wait ``attempt.retry_after``."""

    def __init__(self, attempt: Attempt):
        super().__init__("too many failed attempts")
        self.attempt = attempt


class SecondFactorNeeded(Exception):
    """The password was right; the user has a second factor, whose code comes next
    (``complete_second_factor``) under the same credentials ``version``."""

    def __init__(self, user: User, version: int):
        super().__init__("second factor needed")
        self.user = user
        self.version = version


class EnrolmentNeeded(SecondFactorNeeded):
    """The password was right; the account requires a second factor and this user has
    none yet: they set one up before the session opens (``enrol_and_sign_in``)."""


class SignInRefused(Exception):
    """Wrong email or password, a disabled user, or credentials changed since the password
    was verified: one answer for all, so nothing tells them apart."""


def sign_in(email: str, password: str, origin: sessions.Origin, *, now: datetime,
            hasher: Passwords, lockout: Lockout, limits: Limits,
            replacing: LoginSession | None = None) -> sessions.Started:
    """Check a password and open a session, replacing the browser's previous one. The
    attempt is counted before argon2 runs, against the caller's IP
    (``IDP_LOGIN_IP_LIMIT``: ``counters.Limited``) and the account (``Throttled``), and
    given back when the password was right. Raises ``SignInRefused`` (a failure, counted
    and audited) or ``sessions.SessionLimitReached``; the caller commits."""
    limits.reserve("LOGIN_IP_LIMIT", origin.ip)
    attempt = lockout.begin(email)
    if not attempt.allowed:
        limits.release("LOGIN_IP_LIMIT", origin.ip)
        audit.record("login.throttled", now=now, ip=origin.ip, actor="anonymous",
                     locked=attempt.locked or None, retry_after=attempt.retry_after)
        raise Throttled(attempt)
    verified = verify(email, password, hasher)
    if verified is not None and (factors.has_second_factor(verified.user)
                                 or verified.user.account.require_mfa):
        if verified.new_hash:
            verified.user.password_hash = verified.new_hash
        lockout.passed(email)
        limits.release("LOGIN_IP_LIMIT", origin.ip)
        needed = SecondFactorNeeded if factors.has_second_factor(verified.user) \
            else EnrolmentNeeded
        raise needed(verified.user, verified.version)
    if verified is not None:
        try:
            started = sessions.start(verified.user, origin, now=now,
                                     verified_version=verified.version, replacing=replacing)
        except sessions.CredentialsChanged:
            db.session.rollback()  # only the lock was taken: verified, but wrong by now
        except sessions.SessionLimitReached:
            _right_password(email, origin, lockout, limits)
            raise
        else:
            if verified.new_hash:
                verified.user.password_hash = verified.new_hash
            _right_password(email, origin, lockout, limits)
            return started
    lockout.failed(email, attempt)
    user = db.session.scalar(sa.select(User).where(User.email == email))
    audit.record("login.failed", now=now, account_id=user.account_id if user else None,
                 user_id=user.id if user else None, ip=origin.ip, actor="anonymous")
    raise SignInRefused()


def sign_in_with_passkey(passkey: passkeys.Answer, origin: sessions.Origin, *, now: datetime,
                         limits: Limits, replacing: LoginSession | None = None
                         ) -> sessions.Started:
    """Sign in with a passkey alone (no email typed: the browser offered the user's
    passkeys). The passkey must verify its user (PIN or biometric), so the session is
    multi-factor. Counted against the caller's IP like a password; not against the
    account's lockout, which only password guesses fill (a passkey cannot be guessed, and
    someone guessing the password must not lock the owner's passkey out). Raises
    ``SignInRefused`` or ``sessions.SessionLimitReached``; the caller commits."""
    limits.reserve("LOGIN_IP_LIMIT", origin.ip)
    try:
        proved = passkeys.authenticate(passkey, passkeys.SIGN_IN, now=now)
    except passkeys.PasskeyRefused:
        audit.record("login.failed", now=now, ip=origin.ip, actor="anonymous", step="passkey")
        raise SignInRefused() from None
    user = proved.user
    try:
        started = sessions.start(user, origin, now=now, verified_version=user.credentials_version,
                                 replacing=replacing, amr=proved.amr)
    except sessions.CredentialsChanged:
        db.session.rollback()
        raise SignInRefused() from None
    finally:
        limits.release("LOGIN_IP_LIMIT", origin.ip)
    return started


def complete_second_factor(user_id: int, version: int, proof: str | passkeys.Answer,
                           origin: sessions.Origin, *, now: datetime, lockout: Lockout,
                           limits: Limits, sealer: Sealer,
                           replacing: LoginSession | None = None) -> sessions.Started:
    """The second step of a sign-in whose password was right: a code from the user's
    authenticator app, a recovery code, or one of their passkeys. Counted like a password
    (the IP's limit, the account's lockout: wrong codes lock the account as wrong
    passwords do); the session opens only if the credentials are still the ones the
    password was verified under. Raises as ``sign_in`` does; the caller commits."""
    user = db.session.get(User, user_id)
    if user is None:
        raise SignInRefused()
    limits.reserve("LOGIN_IP_LIMIT", origin.ip)
    attempt = lockout.begin(user.email)
    if not attempt.allowed:
        limits.release("LOGIN_IP_LIMIT", origin.ip)
        audit.record("login.throttled", now=now, ip=origin.ip, actor="anonymous",
                     locked=attempt.locked or None, retry_after=attempt.retry_after)
        raise Throttled(attempt)
    method = _second_factor(user, proof, sealer=sealer, now=now)
    if method is None:
        lockout.failed(user.email, attempt)
        audit.record("login.failed", now=now, account_id=user.account_id, user_id=user.id,
                     ip=origin.ip, actor="anonymous", step="second_factor")
        raise SignInRefused()
    try:
        started = sessions.start(user, origin, now=now, verified_version=version,
                                 replacing=replacing,
                                 amr=("pwd", "otp" if method == "recovery" else method, "mfa"))
    except sessions.CredentialsChanged:
        db.session.rollback()
        raise SignInRefused() from None
    except sessions.SessionLimitReached:
        _right_password(user.email, origin, lockout, limits)
        raise
    if method == "recovery":
        audit.record("factor.recovery_code_used", now=now, account_id=user.account_id,
                     user_id=user.id, session_id=started.session.id, ip=origin.ip,
                     actor=f"user:{user.sub}", left=factors.recovery_codes_left(user))
    _right_password(user.email, origin, lockout, limits)
    return started


def _second_factor(user: User, proof: str | passkeys.Answer, *, sealer: Sealer,
                   now: datetime) -> str | None:
    """The method a second factor's proof shows (``otp``, ``recovery``, ``hwk``, ``swk``),
    spent; None when it shows nothing."""
    if isinstance(proof, passkeys.Answer):
        try:
            return passkeys.authenticate(proof, passkeys.SECOND_FACTOR, now=now,
                                         user=user).method
        except passkeys.PasskeyRefused:
            return None
    method = factors.check_code(user, proof, sealer=sealer, now=now)
    return "otp" if method == factors.TOTP else method


def enrol_and_sign_in(user_id: int, version: int, factor_id: str, code: str,
                     origin: sessions.Origin, *, now: datetime, sealer: Sealer,
                     replacing: LoginSession | None = None
                     ) -> tuple[sessions.Started, list[str]]:
    """The sign-in of a user whose account requires a second factor they did not have:
    the authenticator app they just scanned is confirmed by its first code, then the
    session opens (with both factors), under the credentials the password was verified
    with. Returns the session and the new recovery codes; ``SignInRefused`` for a wrong
    code. The caller commits."""
    user = db.session.get(User, user_id)
    codes = factors.confirm_totp(user, factor_id, code, sealer=sealer, now=now,
                                 ip=origin.ip) if user is not None else None
    if codes is None:
        raise SignInRefused()
    try:
        started = sessions.start(user, origin, now=now, verified_version=version,
                                 replacing=replacing, amr=("pwd", "otp", "mfa"))
    except sessions.CredentialsChanged:
        db.session.rollback()
        raise SignInRefused() from None
    return started, codes


def enrol_passkey_and_sign_in(user_id: int, version: int, answer: passkeys.Answer, label: str,
                              origin: sessions.Origin, *, now: datetime,
                              replacing: LoginSession | None = None
                              ) -> tuple[sessions.Started, list[str]]:
    """As ``enrol_and_sign_in``, with a passkey made now: it is kept, then the session opens
    (password and passkey) under the credentials the password was verified with. Returns
    the session and the new recovery codes; ``SignInRefused`` when the browser's answer
    does not verify. The caller commits."""
    user = db.session.get(User, user_id)
    try:
        added = passkeys.register(user, answer, label, now=now, ip=origin.ip) \
            if user is not None else None
    except passkeys.PasskeyRefused:
        added = None
    if added is None:
        db.session.rollback()
        raise SignInRefused()
    try:
        started = sessions.start(user, origin, now=now, verified_version=version,
                                 replacing=replacing, amr=("pwd", added.method, "mfa"))
    except sessions.CredentialsChanged:
        db.session.rollback()
        raise SignInRefused() from None
    return started, added.recovery_codes or factors.new_recovery_codes(user, now=now)


def reauthenticate(session: LoginSession, password: str | None, code: str | None, *,
                   mfa: bool, now: datetime, ip: str, hasher: Passwords, lockout: Lockout,
                   limits: Limits, sealer: Sealer, passkey: passkeys.Answer | None = None
                   ) -> None:
    """Prove again, in the same session, who its user is: one of their passkeys (with
    its PIN or biometric: both factors at once), or the password and, when ``mfa``, a
    second factor's code. Counted like a sign-in (``Throttled``; a wrong answer is
    ``SignInRefused``, counted and audited). The session keeps its id; its methods and
    last authentication change. The caller commits."""
    user = session.user
    limits.reserve("LOGIN_IP_LIMIT", ip)
    attempt = lockout.begin(user.email)
    if not attempt.allowed:
        limits.release("LOGIN_IP_LIMIT", ip)
        raise Throttled(attempt)
    if passkey is not None:
        try:
            methods = passkeys.authenticate(passkey, passkeys.CONFIRM, now=now,
                                            user=user).amr
        except passkeys.PasskeyRefused:
            methods = None
        ok = methods is not None
    else:
        ok, _ = hasher.verify(user.password_hash, password or "")
        methods = ("pwd", "otp", "mfa") if mfa else ("pwd",)
        if ok and mfa:
            ok = factors.check_code(user, code or "", sealer=sealer, now=now) is not None
    if not ok:
        lockout.failed(user.email, attempt)
        audit.record("login.failed", now=now, account_id=user.account_id, user_id=user.id,
                     session_id=session.id, ip=ip, actor=f"user:{user.sub}", step="reauthenticate")
        raise SignInRefused()
    sessions.reauthenticated(session, methods, now=now, ip=ip)
    lockout.succeeded(user.email)
    limits.release("LOGIN_IP_LIMIT", ip)


def _right_password(email: str, origin: sessions.Origin, lockout: Lockout,
                    limits: Limits) -> None:
    lockout.succeeded(email)
    limits.release("LOGIN_IP_LIMIT", origin.ip)


class PasswordChangeRefused(ValueError):
    """The change was refused; the message says why, in words for the user."""


class LockedOut(PasswordChangeRefused):
    """This wrong current password reached the account's limit: the session that sent it
    was ended ("Ended: too many wrong passwords")."""


def check_new_password(new: str, confirm: str) -> None:
    """The rules a new password meets, in words for the user (``PasswordChangeRefused``)."""
    if new != confirm:
        raise PasswordChangeRefused("The new passwords do not match.")
    if len(new) < MIN_PASSWORD:
        raise PasswordChangeRefused(f"Use at least {MIN_PASSWORD} characters.")
    if len(new) > 1024:
        raise PasswordChangeRefused("Use at most 1024 characters.")


def change_password(user: User, *, current: str, new: str, confirm: str, hasher: Passwords,
                    lockout: Lockout, keep: LoginSession, now: datetime, ip: str
                    ) -> list[LoginSession]:
    """Set a new password and end every other session of the user (``keep`` stays): those
    that exist when this commits, and any sign-in verified with the old password waits
    and is then refused. The current password is checked under the same lockout as
    sign-in. Returns the sessions ended; the caller commits."""
    check_new_password(new, confirm)
    attempt = lockout.begin(user.email)
    if not attempt.allowed:
        raise PasswordChangeRefused(
            f"Too many wrong passwords. Wait {attempt.retry_after} seconds and try again.")
    version = user.credentials_version
    ok, _ = hasher.verify(user.password_hash, current)
    if not ok:
        locked = lockout.failed(user.email, attempt)
        audit.record("password.change_failed", now=now, account_id=user.account_id,
                     user_id=user.id, ip=ip, actor=f"user:{user.sub}", locked=locked or None)
        if locked:
            sessions.end(keep, EndReason.LOCKED_OUT, now=now, actor=f"user:{user.sub}", ip=ip)
            raise LockedOut("Too many wrong passwords: you have been signed out. "
                            f"Sign in again in {attempt_minutes(lockout)}.")
        raise PasswordChangeRefused("The current password is not right.")
    lockout.succeeded(user.email)
    return set_password(user, hasher.hash(new), version=version, now=now, ip=ip, keep=keep,
                        event="password.changed")


def set_password(user: User, new_hash: str, *, version: int, now: datetime, ip: str | None,
                 event: str, keep: LoginSession | None = None) -> list[LoginSession]:
    """Store ``new_hash`` and end every session of the user but ``keep``, under the user's
    lock: refused (as a wrong current password) if the credentials changed, or the user
    was disabled, since ``version`` was read. Returns the sessions ended."""
    sessions.lock_user(user)
    if user.credentials_version != version or user.disabled_at is not None:
        raise PasswordChangeRefused("The current password is not right.")
    user.password_hash = new_hash
    user.credentials_version = version + 1
    ended = sessions.end_all(user, EndReason.PASSWORD_CHANGED, now=now,
                             actor=f"user:{user.sub}", ip=ip, keep=keep.id if keep else None)
    audit.record(event, now=now, account_id=user.account_id, user_id=user.id,
                 session_id=keep.id if keep else None, ip=ip, actor=f"user:{user.sub}",
                 sessions_ended=len(ended))
    return ended


def attempt_minutes(lockout: Lockout) -> str:
    minutes = max(1, round(lockout.window / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


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
