"""The Authlib authorization server of one app: grants, endpoints, token generator.

Built per app (no module-global server), so tests and two-node setups can run
several apps in one process.
"""

from __future__ import annotations

import sqlalchemy as sa
from authlib.integrations.flask_oauth2 import AuthorizationServer as _AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidClientError
from flask import Flask
from flask import request as flask_request

from .. import passwords, tokens
from ..models import Client, HotQuery, db
from ..runtime import config, now, services
from . import scopes
from .client_limits import authenticated, claimed_client_id, client_authentication_failed
from .endpoints import (
    DeviceAuthorizationEndpoint,
    IntrospectionEndpoint,
    PrivateKeyJWT,
    RevocationEndpoint,
    UserInfoEndpoint,
    resource_protector,
)
from .grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    DeviceCodeGrant,
    DeviceOpenID,
    OpenIDCode,
    Principal,
    RefreshTokenGrant,
    S256CodeChallenge,
)

SCOPES_SUPPORTED = list(scopes.SUPPORTED)


_CLIENTS = Client.__table__
_ENABLED_CLIENT = HotQuery(sa.select(_CLIENTS).where(
    _CLIENTS.c.client_id == sa.bindparam("client_id"), _CLIENTS.c.disabled_at.is_(None)))
_CLIENT_KEYS = tuple(column.key for column in _CLIENTS.columns)


class AuthorizationServer(_AuthorizationServer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clients: dict[str, tuple[tuple, Client]] = {}

    def validate_requested_scope(self, scope) -> None:
        """Unknown scope values are ignored, not refused; what the client may ask for is
        checked where the client is known (``scopes.requested``)."""

    def query_client(self, client_id: str) -> Client | None:
        """The enabled client, read from the database on every call (a disabled client
        or a new secret counts at once). The row becomes a detached ``Client`` that is
        reused while the row is unchanged: building ORM objects cost a quarter of an
        introspection. Nothing attaches it to a session: rows refer to it by id."""
        if not client_id or len(client_id) > 64 or not client_id.isprintable():
            return None
        values = _ENABLED_CLIENT.first(db.session.connection(), {"client_id": client_id})
        if values is None:
            return None
        cached = self._clients.get(client_id)
        if cached is not None and cached[0] == values:
            return cached[1]
        client = Client(**dict(zip(_CLIENT_KEYS, values, strict=True)))
        if len(self._clients) > 1000:
            self._clients.clear()
        self._clients[client_id] = (values, client)
        return client

    def authenticate_client(self, request, methods, endpoint="token"):
        """Authlib's client authentication, with the limits that belong to it: a failure
        counts against the client id it claimed and against the caller's IP, and past
        either limit is answered 429 instead of 401 (``counters.Limited``); an
        authenticated client is never refused for others' failures, and meets only the
        operator's optional per-client cap (none by default)."""
        try:
            client = super().authenticate_client(request, methods, endpoint)
        except InvalidClientError:
            client_authentication_failed(claimed_client_id(request.headers, request.form))
            raise
        authenticated(client.client_id, endpoint)
        return client

    def save_token(self, token: dict, request) -> None:
        """Rows were added by the generator; nothing else to store (flush only)."""

    def handle_response(self, status_code, payload, headers):
        response = super().handle_response(status_code, payload, headers)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        return response


def generate_token(
    grant_type: str,
    client: Client,
    user: Principal | None = None,
    scope: str | None = None,
    expires_in: int | None = None,
    include_refresh_token: bool = True,
) -> dict:
    """A JWT access token (RFC 9068) and a rotating refresh token, neither of which
    can outlive the session it was issued under."""
    cfg = config()
    current = now()
    if user is None:
        # client_credentials: a family of its own, no user, no session (one INSERT).
        scope = scopes.requested(scope, client)  # as the grant checked it, unknowns left out
        holder = tokens.Holder(passwords.new_id(), client.client_id, scope or "", None, None,
                               None, None)
        tokens.open_family(holder, now=current)
        subject = client.client_id
    else:
        holder, subject = user.standing(), user.user.sub
    lifetime = holder.lifetime(cfg["ACCESS_TOKEN_LIFETIME"], current)
    claims = tokens.access_token_claims(
        issuer=cfg["ISSUER"],
        holder=holder,
        subject=subject,
        now=current,
        expires_in=lifetime,
    )
    claims["scope"] = holder.scope if scope is None else scope
    audience = [holder.client_id, *resource_servers(flask_request.form.getlist("resource"))]
    claims["aud"] = audience[0] if len(audience) == 1 else audience
    token = {
        "token_type": "Bearer",
        "access_token": services().signer.sign(
            claims, alg=cfg["ACCESS_TOKEN_ALG"], typ=tokens.ACCESS_TOKEN_TYP, now=current
        ),
        "expires_in": lifetime,
        "scope": claims["scope"],
    }
    if include_refresh_token and holder.session_id is not None:
        token["refresh_token"] = tokens.issue_refresh(
            holder, now=current, lifetime=cfg["REFRESH_TOKEN_LIFETIME"],
            pending=user.pending if user is not None else None)
    return token


class InvalidTargetError(OAuth2Error):
    """RFC 8707 §2: a resource this server does not know."""

    error = "invalid_target"


def resource_servers(resources: list[str]) -> list[str]:
    """RFC 8707 resource indicators name registered resource servers (by client id);
    their ids join the access token's audience so they may introspect it."""
    if not resources:
        return []
    if len(resources) > 5:
        raise InvalidTargetError("Too many resource indicators.")
    with db.session.no_autoflush:  # nothing pending bears on clients; keep writes for last
        known = set(db.session.scalars(
            sa.select(Client.client_id).where(Client.client_id.in_(resources),
                                              Client.resource_server.is_(True),
                                              Client.disabled_at.is_(None))))
    unknown = [r for r in resources if r not in known]
    if unknown:
        raise InvalidTargetError("Unknown resource: register it as a resource server.")
    return list(dict.fromkeys(resources))


def build(app: Flask) -> AuthorizationServer:
    server = AuthorizationServer()
    server.init_app(app)
    server.scopes_supported = SCOPES_SUPPORTED
    server.register_token_generator("default", generate_token)
    server.register_grant(
        AuthorizationCodeGrant, [S256CodeChallenge(required=True), OpenIDCode(require_nonce=False)]
    )
    server.register_grant(RefreshTokenGrant)
    server.register_grant(ClientCredentialsGrant)
    server.register_grant(DeviceCodeGrant, [DeviceOpenID()])
    server.register_client_auth_method("private_key_jwt", PrivateKeyJWT())
    server.register_endpoint(DeviceAuthorizationEndpoint)
    server.register_endpoint(IntrospectionEndpoint)
    server.register_endpoint(RevocationEndpoint)
    server.register_endpoint(UserInfoEndpoint(resource_protector=resource_protector()))
    return server
