"""Accounts, users and clients: creating them with valid, safe values."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import secrets
from datetime import datetime
from urllib.parse import urlsplit

import sqlalchemy as sa

from . import passwords, verification
from .models import Account, Client, OnLimit, Role, User, db
from .passwords import Passwords


class AccountError(ValueError):
    """Bad input for an account, user or client; the message says what to change."""


EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}\.[^@\s]{1,63}$")
MIN_PASSWORD = 8


def create_account(
    name: str, *, now: datetime, max_duration: int, idle_timeout: int
) -> Account:
    name = name.strip()
    if not 1 <= len(name) <= 120:
        raise AccountError("account name must be 1 to 120 characters")
    if db.session.scalar(sa.select(Account.id).where(Account.name == name)):
        raise AccountError(f"an account named {name!r} already exists")
    account = Account(
        name=name,
        created_at=now,
        max_session_duration=max_duration,
        idle_timeout=idle_timeout,
        max_concurrent_sessions=None,
        on_concurrent_limit=OnLimit.DENY,
    )
    db.session.add(account)
    db.session.flush()
    return account


def find_account(name: str) -> Account:
    account = db.session.scalar(sa.select(Account).where(Account.name == name))
    if account is None:
        raise AccountError(f"no account named {name!r} (create it with: idp create-account NAME)")
    return account


def create_user(
    account: Account,
    *,
    email: str,
    password: str,
    role: str,
    name: str | None,
    hasher: Passwords,
    now: datetime,
    verified: bool = False,
) -> User:
    """A new user. Unless the operator vouches for the address (``verified``), it is sent
    a link to verify it (``verification``); until then no notice or reset goes there."""
    email = email.strip().lower()
    if not EMAIL.match(email):
        raise AccountError(f"not an email address: {email!r}")
    if db.session.scalar(sa.select(User.id).where(User.email == email)):
        raise AccountError(f"a user with email {email} already exists")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise AccountError("the password must have at most 1024 characters")
    try:
        role = Role(role)
    except ValueError:
        raise AccountError("role must be owner, admin or member") from None
    user = User(
        sub=passwords.new_id(),
        account_id=account.id,
        email=email,
        email_verified=verified,
        name=(name or "").strip()[:200] or None,
        role=role,
        password_hash=hasher.hash(password),
        created_at=now,
    )
    user.account = account
    db.session.add(user)
    db.session.flush()
    if not verified:
        verification.request(user, now=now)
    return user


def _check_uri(uri: str, *, what: str, web_only: bool = False) -> str:
    """Absolute, no fragment; https, or plain http only to a loopback host (RFC 8252 §7.3)."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise AccountError(f"{what} is not a valid URI: {uri!r}") from None
    if len(uri) > 500 or any(ord(c) < 33 for c in uri):
        raise AccountError(f"{what} must be at most 500 characters, without spaces: {uri!r}")
    if parts.fragment or "#" in uri:
        raise AccountError(f"{what} must not contain a fragment: {uri}")
    if parts.scheme == "https" and parts.hostname:
        return uri
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        loopback = host == "localhost"
        with contextlib.suppress(ValueError):
            loopback = loopback or ipaddress.ip_address(host).is_loopback
        if loopback:
            return uri
        raise AccountError(f"{what} must use https (http only for loopback): {uri}")
    # Private-use schemes for native apps (RFC 8252 §7.1), e.g. com.example.app:/cb
    if not web_only and "." in parts.scheme and parts.scheme not in ("javascript", "data", "file"):
        return uri
    raise AccountError(f"{what} is not an acceptable URI: {uri}")


def create_client(
    *,
    name: str,
    redirect_uris: list[str],
    now: datetime,
    public: bool = False,
    first_party: bool = False,
    resource_server: bool = False,
    backchannel_logout_uri: str | None = None,
    post_logout_redirect_uris: list[str] | None = None,
    scope: str = "openid profile email",
    id_token_alg: str = "RS256",
    client_credentials: bool = False,
    device: bool = False,
    jwks: dict | None = None,
) -> tuple[Client, str | None]:
    """Returns the client and its secret (None for public clients): shown once, stored hashed."""
    name = name.strip()
    if not 1 <= len(name) <= 120:
        raise AccountError("client name must be 1 to 120 characters")
    if not (redirect_uris or resource_server or client_credentials or device):
        raise AccountError(
            "give at least one --redirect-uri (or --device, --client-credentials, --resource-server)"
        )
    if public and (resource_server or client_credentials):
        raise AccountError("resource servers and machine clients authenticate; drop --public")
    if public and jwks:
        raise AccountError("a client with --jwks is confidential (private_key_jwt); drop --public")
    if jwks is not None:
        _check_jwks(jwks)
    uris = [_check_uri(u, what="redirect URI") for u in redirect_uris]
    post_logout = [
        _check_uri(u, what="post-logout redirect URI")
        for u in post_logout_redirect_uris or []
    ]
    if backchannel_logout_uri:
        _check_uri(backchannel_logout_uri, what="back-channel logout URI", web_only=True)
    scopes = scope.split()
    unknown = set(scopes) - {"openid", "profile", "email", "sessions", "admin"}
    if unknown:
        raise AccountError(f"unknown scope(s): {' '.join(sorted(unknown))}")
    if id_token_alg not in ("RS256", "ES256"):
        raise AccountError("id token algorithm must be RS256 or ES256")
    secret = None if public or jwks else secrets.token_urlsafe(32)
    grant_types = ["authorization_code", "refresh_token"] if uris else []
    if device:
        grant_types += ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"]
    if client_credentials:
        grant_types.append("client_credentials")
    grant_types = list(dict.fromkeys(grant_types))
    client = Client(
        client_id=secrets.token_urlsafe(16),
        name=name,
        secret_hash=passwords.hash_secret(secret) if secret else None,
        redirect_uris=uris,
        post_logout_redirect_uris=post_logout,
        grant_types=grant_types,
        scope=" ".join(scopes),
        first_party=first_party,
        resource_server=resource_server,
        id_token_signed_response_alg=id_token_alg,
        backchannel_logout_uri=backchannel_logout_uri,
        token_endpoint_auth_method="private_key_jwt" if jwks else None,
        jwks=jwks,
        created_at=now,
    )
    db.session.add(client)
    db.session.flush()
    return client, secret


def _check_jwks(jwks: dict) -> None:
    """Public keys only, each usable for RS256/ES256/PS256 signatures."""
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise AccountError('--jwks must be a JSON Web Key Set: {"keys": [...]}')
    for key in jwks["keys"]:
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC"):
            raise AccountError("--jwks keys must be RSA or EC public keys")
        if any(private in key for private in ("d", "p", "q", "dp", "dq", "qi")):
            raise AccountError("--jwks must hold public keys only: remove the private members")
    try:
        KeySet.import_key_set(jwks)
    except (JoseError, ValueError, TypeError) as exc:
        raise AccountError(f"--jwks is not a valid key set: {exc}") from None
