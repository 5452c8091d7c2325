"""Passkeys: WebAuthn discoverable credentials, to sign in alone or as a second factor.

The ceremonies are the ``webauthn`` library's: it checks the browser's answer against the
challenge, the origin (the issuer's) and the RP ID (the issuer's host), and the
signature against the public key stored at registration. Only that public key, the
credential id and the authenticator's signature counter are stored: nothing here signs
anyone in if the database leaks.

Each ceremony's challenge lives in ``passkey_challenges`` and is spent by one DELETE when
the answer arrives, so an answer is accepted once, on any node, however many requests race
with it. Browsers refuse an IP address as RP ID and need a secure context (https, or
``localhost``): ``relying_party`` says when the configured issuer cannot have passkeys.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import sqlalchemy as sa
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from . import audit, factors, passwords
from .models import AuthFactor, PasskeyChallenge, User, db

KIND = "passkey"
CEREMONY_TIMEOUT = timedelta(minutes=5)
MAX_ANSWER = 64 * 1024  # bytes of JSON a browser's answer may take

# What a ceremony is for. Signing in with a passkey alone, or confirming it is you with
# one, needs user verification (the authenticator's PIN or biometric: two factors in one);
# after a right password, presence is enough.
REGISTER, SIGN_IN, SECOND_FACTOR, CONFIRM = "register", "sign_in", "second_factor", "confirm"
PURPOSES = (REGISTER, SIGN_IN, SECOND_FACTOR, CONFIRM)


@dataclass(frozen=True)
class RelyingParty:
    """The WebAuthn relying party the issuer makes: ``id`` is None when browsers would
    refuse it, and ``problem`` says why in words for the user."""

    id: str | None
    origin: str
    name: str
    problem: str | None


def relying_party(issuer: str) -> RelyingParty:
    parts = urlsplit(issuer)
    host = parts.hostname or ""
    origin = f"{parts.scheme}://{parts.netloc}"
    problem = None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if parts.scheme != "https" and host != "localhost" and not host.endswith(".localhost"):
            problem = ("Passkeys need a secure address: browsers offer them only over "
                       "https, or on localhost.")
    else:
        port = f":{parts.port}" if parts.port else ""
        problem = (f"Passkeys cannot work at this address: browsers refuse an IP address "
                   f"({host}) for passkeys. The administrator can set "
                   f"IDP_ISSUER=http://localhost{port} on this computer, or an https "
                   f"address with a domain name.")
    return RelyingParty(None if problem else host, origin, host, problem)


class PasskeyRefused(Exception):
    """The browser's answer does not prove what was asked; the message is for the user."""


@dataclass(frozen=True)
class Ceremony:
    """A challenge the browser must answer: its id (kept in the browser's session) and
    the options for ``navigator.credentials``, as JSON."""

    id: str
    options: str


@dataclass(frozen=True)
class Answer:
    """A browser's answer (``PublicKeyCredential`` as JSON) to the ceremony ``ceremony``."""

    ceremony: str
    credential: str
    rp: RelyingParty


@dataclass(frozen=True)
class Added:
    """A new passkey, and the recovery codes made with it when it is the user's first
    second factor (shown once)."""

    factor: AuthFactor
    recovery_codes: list[str] | None
    method: str  # RFC 8176: "hwk" (bound to one device) or "swk" (synced)


@dataclass(frozen=True)
class Assertion:
    """A verified passkey answer: whose, which passkey, and the RFC 8176 method it proves
    (``hwk`` for a passkey bound to one device, ``swk`` for one synced between devices)."""

    user: User
    factor: AuthFactor
    method: str
    user_verified: bool

    @property
    def amr(self) -> tuple[str, ...]:
        """A passkey alone, with the authenticator's PIN or biometric: multi-factor."""
        return (self.method, "mfa") if self.user_verified else (self.method,)


def passkeys(user: User) -> list[AuthFactor]:
    return list(db.session.scalars(sa.select(AuthFactor).where(
        AuthFactor.user_id == user.id, AuthFactor.kind == KIND).order_by(AuthFactor.created_at)))


def registration_options(user: User, rp: RelyingParty, *, now: datetime) -> Ceremony:
    """Options to create a discoverable credential for ``user`` (none they already have)."""
    options = generate_registration_options(
        rp_id=_usable(rp), rp_name=rp.name, user_name=user.email, user_id=user.sub.encode(),
        user_display_name=user.email, timeout=int(CEREMONY_TIMEOUT.total_seconds() * 1000),
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.PREFERRED),
        exclude_credentials=_descriptors(user))
    return Ceremony(_remember(options.challenge, REGISTER, user.id, now), options_to_json(options))


def register(user: User, answer: Answer, label: str, *, now: datetime,
             ip: str | None = None) -> Added:
    """Verify the browser's new credential and keep its public key. Raises
    ``PasskeyRefused``; the caller commits."""
    challenge = _spend(answer.ceremony, REGISTER, user.id, now)
    try:
        verified = verify_registration_response(
            credential=_bounded(answer.credential), expected_challenge=challenge,
            expected_rp_id=_usable(answer.rp), expected_origin=answer.rp.origin)
    except (WebAuthnException, ValueError, TypeError, KeyError, RecursionError) as refused:
        raise PasskeyRefused("Your browser's answer could not be verified. Try again.") \
            from refused
    credential_id = bytes_to_base64url(verified.credential_id)
    if db.session.scalar(sa.select(AuthFactor.id).where(
            AuthFactor.credential_id == credential_id)) is not None:
        raise PasskeyRefused("That passkey is already registered.")
    factor = AuthFactor(
        id=passwords.new_id(), user_id=user.id, kind=KIND, label=(label or "").strip()[:80]
        or "Passkey", created_at=now, confirmed_at=now, credential_id=credential_id,
        public_key=verified.credential_public_key, sign_count=verified.sign_count, last_step=0)
    db.session.add(factor)
    codes = factors.new_recovery_codes(user, now=now) \
        if factors.recovery_codes_left(user) == 0 else None
    audit.record("factor.added", now=now, account_id=user.account_id, user_id=user.id,
                 actor=f"user:{user.sub}", ip=ip, kind=KIND, label=factor.label)
    return Added(factor, codes, _method(verified.credential_device_type))


def authentication_options(rp: RelyingParty, purpose: str, *, now: datetime,
                           user: User | None = None) -> Ceremony:
    """Options to prove a passkey: any discoverable one of this site (``user`` None: the
    browser offers the user's passkeys, no email typed), or one of ``user``'s."""
    verification = (UserVerificationRequirement.PREFERRED if purpose == SECOND_FACTOR
                    else UserVerificationRequirement.REQUIRED)
    options = generate_authentication_options(
        rp_id=_usable(rp), timeout=int(CEREMONY_TIMEOUT.total_seconds() * 1000),
        allow_credentials=_descriptors(user) if user is not None else None,
        user_verification=verification)
    return Ceremony(_remember(options.challenge, purpose, user.id if user else None, now),
                    options_to_json(options))


def authenticate(answer: Answer, purpose: str, *, now: datetime, user: User | None = None
                 ) -> Assertion:
    """Verify a passkey's answer (one of ``user``'s when given) and move its signature
    counter: a counter that did not move means a cloned authenticator, refused. Raises
    ``PasskeyRefused``; the caller commits."""
    challenge = _spend(answer.ceremony, purpose, user.id if user else None, now)
    rp = answer.rp
    refused = PasskeyRefused("That passkey was not accepted. Try again, or use another way "
                             "to sign in.")
    try:
        parsed = json.loads(_bounded(answer.credential))
        credential_id = parsed.get("id") if isinstance(parsed, dict) else None
        handle = (parsed.get("response") or {}).get("userHandle") if credential_id else None
    except (ValueError, TypeError, AttributeError, RecursionError):  # deep nesting too
        raise refused from None
    factor = db.session.scalar(sa.select(AuthFactor).where(
        AuthFactor.credential_id == credential_id, AuthFactor.kind == KIND)) \
        if isinstance(credential_id, str) and len(credential_id) <= 1400 else None
    if factor is None or (user is not None and factor.user_id != user.id):
        raise refused
    owner = db.session.get(User, factor.user_id)
    if handle and handle != bytes_to_base64url(owner.sub.encode()):
        raise refused
    try:
        verified = verify_authentication_response(
            credential=answer.credential, expected_challenge=challenge,
            expected_rp_id=_usable(rp),
            expected_origin=rp.origin, credential_public_key=factor.public_key,
            credential_current_sign_count=factor.sign_count,
            require_user_verification=purpose != SECOND_FACTOR)
    except (WebAuthnException, ValueError, TypeError, KeyError, RecursionError):
        raise refused from None
    counted = (AuthFactor.sign_count < verified.new_sign_count if verified.new_sign_count
               else AuthFactor.sign_count == 0)  # 0: this authenticator does not count
    if db.session.execute(
            sa.update(AuthFactor).where(AuthFactor.id == factor.id, counted)
            .values(sign_count=verified.new_sign_count, last_used_at=now)
            .execution_options(synchronize_session=False)).rowcount != 1:
        raise refused
    return Assertion(owner, factor, _method(verified.credential_device_type),
                     verified.user_verified)


def _method(device_type: CredentialDeviceType) -> str:
    return "swk" if device_type == CredentialDeviceType.MULTI_DEVICE else "hwk"


def _usable(rp: RelyingParty) -> str:
    if rp.id is None:
        raise PasskeyRefused(rp.problem)
    return rp.id


def _bounded(answer: str) -> str:
    if not isinstance(answer, str) or not answer or len(answer) > MAX_ANSWER:
        raise PasskeyRefused("Your browser's answer could not be read. Try again.")
    return answer


def _descriptors(user: User) -> list[PublicKeyCredentialDescriptor]:
    return [PublicKeyCredentialDescriptor(id=base64url_to_bytes(f.credential_id))
            for f in passkeys(user)]


def _remember(challenge: bytes, purpose: str, user_id: int | None, now: datetime) -> str:
    ceremony_id = secrets.token_urlsafe(16)
    db.session.add(PasskeyChallenge(id=ceremony_id, challenge=bytes_to_base64url(challenge),
                                    purpose=purpose, user_id=user_id,
                                    expires_at=now + CEREMONY_TIMEOUT))
    return ceremony_id


def _spend(ceremony_id: str | None, purpose: str, user_id: int | None, now: datetime) -> bytes:
    """The ceremony's challenge, deleted in the same statement: one answer per challenge."""
    if not isinstance(ceremony_id, str) or len(ceremony_id) > 32:
        raise PasskeyRefused("That request expired. Try again.")
    row = db.session.execute(
        sa.delete(PasskeyChallenge)
        .where(PasskeyChallenge.id == ceremony_id, PasskeyChallenge.expires_at > now)
        .returning(PasskeyChallenge.challenge, PasskeyChallenge.purpose,
                   PasskeyChallenge.user_id)
        .execution_options(synchronize_session=False)).first()
    if row is None or row.purpose != purpose or row.user_id != user_id:
        raise PasskeyRefused("That request expired. Try again.")
    return base64url_to_bytes(row.challenge)
