"""Second factors: authenticator apps (TOTP, RFC 6238) and single-use recovery codes.

An authenticator app shares a secret with the provider, which must read it back to check
a code: it is stored sealed (``Sealer``, keyed from the provider's secret key, which never
enters the database), so a database dump still signs nobody in. A code is accepted for
the current 30-second step or the one before or after (clock drift), and never twice:
accepting it moves the factor's ``last_step`` in one conditional UPDATE, so two requests
racing with the same code cannot both pass. Recovery codes are random, shown once, stored
as SHA-256 hashes and spent the same way.
"""

from __future__ import annotations

import base64
import hmac
import io
import secrets
from dataclasses import dataclass
from datetime import datetime

import pyotp
import qrcode
import qrcode.image.svg
import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import audit, passwords, sessions
from .models import AuthFactor, EndReason, RecoveryCode, User, db

STEP = 30  # seconds per TOTP code
DRIFT = 1  # steps accepted on either side of the current one
RECOVERY_CODES = 10
TOTP = "totp"


class Sealer:
    """Encrypts factor secrets (Fernet: AES-128-CBC with HMAC-SHA256) with a key derived
    from the provider's secret key (HKDF-SHA256), kept out of the database."""

    def __init__(self, secret_key: str):
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"idp second-factor secrets").derive(secret_key.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def open(self, sealed: str) -> str | None:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:  # sealed under another secret key
            return None


@dataclass(frozen=True)
class Enrolment:
    """An authenticator app waiting for its first code: what the user scans or types."""

    factor_id: str
    secret: str
    uri: str  # otpauth://totp/…
    qr: str  # the URI as a QR code, an SVG data URI (drawn here, no network)


def confirmed(user: User) -> list[AuthFactor]:
    return list(db.session.scalars(
        sa.select(AuthFactor).where(AuthFactor.user_id == user.id,
                                    AuthFactor.confirmed_at.is_not(None))
        .order_by(AuthFactor.created_at)))


def enrolled_users(user_ids: list[int]) -> dict[int, list[str]]:
    """Which of these users have a second factor, and its kinds in words, e.g.
    ``["2 passkeys", "authenticator app"]`` (the administrators' list; never a secret)."""
    if not user_ids:
        return {}
    rows = db.session.execute(
        sa.select(AuthFactor.user_id, AuthFactor.kind, sa.func.count())
        .where(AuthFactor.user_id.in_(user_ids), AuthFactor.confirmed_at.is_not(None))
        .group_by(AuthFactor.user_id, AuthFactor.kind).order_by(AuthFactor.kind))
    enrolled: dict[int, list[str]] = {}
    for user_id, kind, count in rows:
        word = "passkey" if kind != TOTP else "authenticator app"
        enrolled.setdefault(user_id, []).append(f"{count} {word}s" if count > 1 else word)
    return enrolled


def has_authenticator_app(user: User) -> bool:
    return db.session.scalar(sa.select(AuthFactor.id).where(
        AuthFactor.user_id == user.id, AuthFactor.kind == TOTP,
        AuthFactor.confirmed_at.is_not(None)).limit(1)) is not None


def has_second_factor(user: User) -> bool:
    return db.session.scalar(sa.select(AuthFactor.id).where(
        AuthFactor.user_id == user.id, AuthFactor.confirmed_at.is_not(None)).limit(1)) is not None


def start_totp(user: User, *, issuer_name: str, sealer: Sealer, now: datetime) -> Enrolment:
    """A new authenticator app for ``user``, unconfirmed until ``confirm_totp``."""
    secret = pyotp.random_base32()
    factor = AuthFactor(id=passwords.new_id(), user_id=user.id, kind=TOTP,
                        label="Authenticator app", secret_sealed=sealer.seal(secret),
                        created_at=now, last_step=0)
    db.session.add(factor)
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=issuer_name)
    return Enrolment(factor.id, secret, uri, qr_data_uri(uri))


def enrolment(user: User, factor_id: str, *, issuer_name: str, sealer: Sealer
              ) -> Enrolment | None:
    """The unconfirmed authenticator app ``factor_id`` of ``user`` again (page reloads)."""
    factor = _unconfirmed(user, factor_id)
    secret = sealer.open(factor.secret_sealed) if factor else None
    if secret is None:
        return None
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=issuer_name)
    return Enrolment(factor.id, secret, uri, qr_data_uri(uri))


def _unconfirmed(user: User, factor_id: str) -> AuthFactor | None:
    factor = db.session.get(AuthFactor, factor_id) if len(factor_id or "") <= 32 else None
    if factor is None or factor.user_id != user.id or factor.confirmed_at is not None:
        return None
    return factor


def confirm_totp(user: User, factor_id: str, code: str, *, sealer: Sealer, now: datetime,
                 ip: str | None = None) -> list[str] | None:
    """Confirm an enrolment with its first code. Returns new recovery codes (every unused
    one before is replaced), shown once; None when the code is wrong."""
    factor = _unconfirmed(user, factor_id)
    secret = sealer.open(factor.secret_sealed) if factor else None
    step = _matching_step(secret, code, now, after=0) if secret else None
    if step is None:
        return None
    factor.confirmed_at = now
    factor.last_step = step
    factor.last_used_at = now
    codes = new_recovery_codes(user, now=now)
    audit.record("factor.added", now=now, account_id=user.account_id, user_id=user.id,
                 actor=f"user:{user.sub}", ip=ip, kind=TOTP)
    return codes


def new_recovery_codes(user: User, *, now: datetime) -> list[str]:
    """Ten fresh single-use codes (``abcd-efgh-ij``), replacing the unused ones."""
    db.session.execute(sa.delete(RecoveryCode).where(RecoveryCode.user_id == user.id,
                                                     RecoveryCode.used_at.is_(None)))
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(alphabet) for _ in range(10))
        codes.append(f"{raw[:4]}-{raw[4:8]}-{raw[8:]}")
        db.session.add(RecoveryCode(user_id=user.id, code_hash=passwords.hash_secret(raw),
                                    created_at=now))
    return codes


def check_code(user: User, code: str, *, sealer: Sealer, now: datetime) -> str | None:
    """Spend a code from the user's authenticator app or a recovery code: which it was
    (``"totp"``, ``"recovery"``), or None. Each is accepted once, however many requests
    race with it."""
    code = (code or "").strip().replace(" ", "").replace("-", "").lower()
    if len(code) == 6 and code.isdigit():
        for factor in confirmed(user):
            if factor.kind != TOTP:
                continue
            secret = sealer.open(factor.secret_sealed)
            step = _matching_step(secret, code, now, after=factor.last_step) if secret else None
            if step is not None and db.session.execute(
                    sa.update(AuthFactor)
                    .where(AuthFactor.id == factor.id, AuthFactor.last_step < step)
                    .values(last_step=step, last_used_at=now)
                    .execution_options(synchronize_session=False)).rowcount == 1:
                return TOTP
        return None
    if len(code) != 10:
        return None
    row = db.session.scalar(sa.select(RecoveryCode.id).where(
        RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None),
        RecoveryCode.code_hash == passwords.hash_secret(code)))
    if row is not None and db.session.execute(
            sa.update(RecoveryCode).where(RecoveryCode.id == row, RecoveryCode.used_at.is_(None))
            .values(used_at=now).execution_options(synchronize_session=False)).rowcount == 1:
        return "recovery"
    return None


def recovery_codes_left(user: User) -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(RecoveryCode).where(
        RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))) or 0


def _matching_step(secret: str, code: str, now: datetime, *, after: int) -> int | None:
    """The time step (around ``now``, newer than ``after``) whose code this is."""
    code = (code or "").strip().replace(" ", "")
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = int(now.timestamp()) // STEP
    for step in range(current - DRIFT, current + DRIFT + 1):
        if step > after and hmac.compare_digest(totp.at(step * STEP), code):
            return step
    return None


def qr_data_uri(text: str) -> str:
    """``text`` as a QR code in an SVG data URI (the page's CSP allows data: images)."""
    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, box_size=8)
    buffer = io.BytesIO()
    image.save(buffer)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()


def remove(user: User, factor_id: str | None, *, now: datetime, actor: str,
           keep: str | None = None, ip: str | None = None) -> list:
    """Remove one confirmed factor (``factor_id``) or all of them (None: an administrator's
    reset), with the recovery codes when none is left. Weaker sign-in from now on, so the
    user's credentials version moves (a sign-in verified before waits and is refused) and
    every other session ends ("Ended: sign-in methods changed"), as a password change
    does. Returns the sessions ended; the caller commits."""
    sessions.lock_user(user)
    query = sa.delete(AuthFactor).where(AuthFactor.user_id == user.id)
    if factor_id is not None:
        query = query.where(AuthFactor.id == factor_id, AuthFactor.confirmed_at.is_not(None))
    kinds = sorted(set(db.session.scalars(query.returning(AuthFactor.kind)
                                          .execution_options(synchronize_session=False))))
    if not kinds:
        return []
    if not has_second_factor(user):
        db.session.execute(sa.delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    user.credentials_version += 1
    ended = sessions.end_all(user, EndReason.FACTORS_CHANGED, now=now, actor=actor, ip=ip,
                             keep=keep)
    audit.record("factor.removed", now=now, account_id=user.account_id, user_id=user.id,
                 actor=actor, ip=ip, all=factor_id is None or None, kinds=kinds,
                 sessions_ended=len(ended))
    return ended
