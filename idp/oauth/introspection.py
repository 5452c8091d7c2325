"""Introspection's common case in one database round trip (RFC 7662).

A resource server that authenticates with its secret (HTTP Basic or the form) and asks
about a token gets its answer from one statement: its own client row and the token's
standing (family, client, session, account policy, user). Authlib's endpoint classes cost
more than the rest of the request together, and on PostgreSQL every extra round trip
costs as much again. Anything else (private_key_jwt, missing or wrong credentials, bad
parameters) returns None here and goes the full Authlib path, which gives the protocol's
errors; both paths build the answer with ``body`` and judge the token with the rules in
``tokens`` (``AccessToken.active``, ``refresh_active``).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from urllib.parse import unquote

import sqlalchemy as sa

from .. import passwords, tokens
from ..models import Client, HotQuery, RefreshToken, RevokedAccessToken, TokenFamily, read_only
from ..signing import Signer
from .client_limits import authenticated
from .grants import user_info

TOKEN_TYPE_HINTS = ("access_token", "refresh_token")

_CALLER = Client.__table__.alias("caller")
_CALLER_COLUMNS = (_CALLER.c.secret_hash, _CALLER.c.token_endpoint_auth_method,
                   _CALLER.c.resource_server)
_ENABLED_CALLER = sa.and_(_CALLER.c.client_id == sa.bindparam("client_id"),
                          _CALLER.c.disabled_at.is_(None))
_F, _R = TokenFamily.__table__.c, RevokedAccessToken.__table__.c
_RT = RefreshToken.__table__

_WITH_ACCESS_TOKEN = HotQuery(
    sa.select(*_CALLER_COLUMNS, *tokens.HOLDER_COLUMNS, _R.jti)
    .select_from(_CALLER.outerjoin(tokens.holder_join(), _F.id == sa.bindparam("family_id"))
                 .outerjoin(RevokedAccessToken.__table__, _R.jti == sa.bindparam("jti")))
    .where(_ENABLED_CALLER))

_WITH_REFRESH_TOKEN = HotQuery(
    sa.select(*_CALLER_COLUMNS, *tokens.HOLDER_COLUMNS, _RT.c.secret_hash, _RT.c.issued_at,
              _RT.c.expires_at, _RT.c.rotated_at)
    .select_from(_CALLER.outerjoin(_RT.join(tokens.holder_join(), _F.id == _RT.c.family_id),
                                   _RT.c.id == sa.bindparam("token_id")))
    .where(_ENABLED_CALLER))

_CALLER_ONLY = HotQuery(sa.select(*_CALLER_COLUMNS).where(_ENABLED_CALLER))

INACTIVE = {"active": False}


def client_credentials(form, authorization: str | None) -> tuple[str, str] | None:
    """client_secret_basic (RFC 6749 §2.3.1, form-encoded id and secret), else
    client_secret_post; None for anything else (assertions, no credentials)."""
    if "client_assertion" in form:
        return None
    if authorization:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        client_id, colon, secret = decoded.partition(":")
        if not colon:
            return None
        client_id, secret = unquote(client_id), unquote(secret)
    else:
        client_id, secret = form.get("client_id"), form.get("client_secret")
    if not client_id or not secret or len(client_id) > 64:
        return None
    return client_id, secret


def answer(form, authorization: str | None, *, signer: Signer, issuer: str,
           now: datetime) -> dict | None:
    """The introspection response for an authenticated caller, or None to take the full
    path. The token's shape says what it is (a JWT or ``<id>.<secret>``), so the hint
    orders nothing here, as RFC 7662 §2.1 allows."""
    credentials = client_credentials(form, authorization)
    value, hint = form.get("token"), form.get("token_type_hint")
    if credentials is None or value is None or (hint and hint not in TOKEN_TYPE_HINTS):
        return None
    with read_only() as connection:
        answered, holder = _answer(connection, value, *credentials, signer=signer, issuer=issuer,
                                   now=now)
    if answered is not None:
        authenticated(credentials[0], "introspection")  # the operator's cap, if any
    if answered is INACTIVE and holder is not None:
        holder.settle(now)
    return answered


def _answer(connection: sa.Connection, value: str, client_id: str, secret: str, *,
            signer: Signer, issuer: str, now: datetime) -> tuple[dict | None, tokens.Holder | None]:
    """The answer (None: take the full path) and the standing it judged."""
    claims = tokens.access_claims(value, signer=signer, issuer=issuer, now=now) \
        if len(value) <= 16384 else None
    if claims is not None:
        row = _WITH_ACCESS_TOKEN.first(connection, {
            "client_id": client_id, "family_id": claims["fam"], "jti": claims["jti"]})
        if not _authenticated(row, secret):
            return None, None
        access = tokens.AccessToken(claims, tokens.holder_from(row[3:-1]), row[-1] is not None)
        audience = claims.get("aud", [])
        audience = [audience] if isinstance(audience, str) else list(audience)
        if not access.active(now) or not _permitted(client_id, row[2], access.holder, audience):
            return INACTIVE, access.holder
        return body(access.holder, issuer=issuer, scope=access.scope, claims=claims), None
    parts = passwords.split_token(value)
    if parts is None:
        row = _CALLER_ONLY.first(connection, {"client_id": client_id})
        return (INACTIVE if _authenticated(row, secret) else None), None
    row = _WITH_REFRESH_TOKEN.first(connection, {"client_id": client_id, "token_id": parts[0]})
    if not _authenticated(row, secret):
        return None, None
    holder = tokens.holder_from(row[3:-4])
    token_hash, issued_at, expires_at, rotated_at = row[-4:]
    if holder is None or not passwords.verify_secret(parts[1], token_hash):
        return INACTIVE, None
    if (not tokens.refresh_active(holder, expires_at, rotated_at, now)
            or not _permitted(client_id, row[2], holder, [holder.client_id])):
        return INACTIVE, holder
    return body(holder, issuer=issuer, scope=holder.scope, issued_at=issued_at,
                expires_at=expires_at), None


def _authenticated(row, secret: str) -> bool:
    """An enabled confidential client whose secret matches and that authenticates with
    it (a private_key_jwt client never does)."""
    if row is None:
        return False
    secret_hash, method = row[0], row[1]
    return (secret_hash is not None and method != "private_key_jwt"
            and passwords.verify_secret(secret, secret_hash))


def _permitted(client_id: str, resource_server: bool, holder: tokens.Holder,
               audience: list[str]) -> bool:
    """The client the token was issued to, or a resource server in its audience."""
    return holder.client_id == client_id or (bool(resource_server) and client_id in audience)


def body(holder: tokens.Holder, *, issuer: str, scope: str, claims: dict | None = None,
         issued_at: datetime | None = None, expires_at: datetime | None = None) -> dict:
    """RFC 7662 §2.2 for an active token: an access token's claims, or a refresh
    token's times. ``sub`` identifies the user; ``username`` (the address) only when the
    token's scope releases it, as userinfo does (``profile`` or ``email``)."""
    answer_body = {
        "active": True,
        "scope": scope,
        "client_id": holder.client_id,
        "token_type": "Bearer" if claims is not None else "refresh_token",
        "iss": issuer,
    }
    if holder.user is not None:
        answer_body["sub"] = holder.user.sub
        released = user_info(holder.user, scope)  # no more than userinfo would say
        username = released.get("preferred_username") or released.get("email")
        if username:
            answer_body["username"] = username
    else:
        answer_body["sub"] = holder.client_id  # client_credentials: the client acts for itself
    if holder.session_id is not None:
        answer_body["sid"] = holder.session_id
    if claims is not None:
        for name in ("exp", "iat", "nbf", "aud", "jti"):
            if name in claims:
                answer_body[name] = claims[name]
    else:
        answer_body["exp"] = int(expires_at.timestamp())
        answer_body["iat"] = int(issued_at.timestamp())
        answer_body["aud"] = holder.client_id
    return answer_body
