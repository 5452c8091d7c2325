"""Introspection (RFC 7662), revocation (RFC 7009) and userinfo, answered from
``tokens``: a token is active only while its family and its session are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import joserfc.jwt as joserfc_jwt
import sqlalchemy as sa
from authlib.consts import default_json_headers
from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.oauth2.rfc6749.errors import InvalidClientError, UnauthorizedClientError
from authlib.oauth2.rfc6750 import BearerTokenValidator as _BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint as _DeviceAuthorizationEndpoint
from authlib.oidc.core import UserInfoEndpoint as _UserInfoEndpoint
from flask import request as flask_request
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy.exc import IntegrityError

from .. import audit, devices, passwords, tokens
from ..models import Client, DeviceCode, UsedAssertion, db, read_only
from ..runtime import client_ip, config, now, services
from ..signing import Signer
from . import introspection, scopes
from .client_limits import unverified_sub
from .grants import Principal, user_info

INTROSPECTION_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
REVOCATION_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
ASSERTION_ALGORITHMS = ["RS256", "ES256", "PS256"]


@dataclass
class FoundToken:
    """An access or refresh token, shaped as Authlib's endpoints expect."""

    kind: str  # "access_token" | "refresh_token"
    holder: tokens.Holder | None
    access: tokens.AccessToken | None = None
    refresh: tokens.PresentedRefresh | None = None

    @property
    def client_id(self) -> str | None:
        return self.holder.client_id if self.holder else None

    @property
    def scope(self) -> str:
        return self.access.scope if self.access else self.holder.scope

    def get_scope(self) -> str:
        return self.scope

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def is_expired(self) -> bool:
        current = now()
        if self.access:
            return self.access.claims["exp"] <= current.timestamp()
        return self.refresh.expires_at <= current or self.refresh.rotated_at is not None

    def is_revoked(self) -> bool:
        if self.access:
            return not self.access.active(now())
        return not tokens.refresh_active(self.holder, self.refresh.expires_at,
                                         self.refresh.rotated_at, now())

    def audience(self) -> list[str]:
        if self.access:
            aud = self.access.claims.get("aud", [])
            return [aud] if isinstance(aud, str) else list(aud)
        return [self.holder.client_id]

    # -- for the userinfo endpoint
    def get_user(self) -> Principal:
        return Principal(self.holder.user, None)


def find_token(value: str, hint: str | None) -> FoundToken | None:
    """The hint only orders the search (RFC 7662 §2.1): a wrong hint hides nothing."""
    if not value or len(value) > 16384:
        return None
    lookups = [_find_access, _find_refresh]
    if hint == "refresh_token":
        lookups.reverse()
    for lookup in lookups:
        found = lookup(value)
        if found is not None:
            return found
    return None


def _find_access(value: str) -> FoundToken | None:
    access = tokens.find_access_token(
        value, signer=services().signer, issuer=config()["ISSUER"], now=now()
    )
    if access is None:
        return None
    return FoundToken("access_token", access.holder, access=access)


def _find_refresh(value: str) -> FoundToken | None:
    refresh = tokens.find_refresh(value)
    if refresh is None:
        return None
    return FoundToken("refresh_token", refresh.holder, refresh=refresh)


class IntrospectionEndpoint(_IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = INTROSPECTION_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None):
        found = find_token(token_string, token_type_hint)
        if found is not None and found.holder is not None:
            found.holder.settle(now())
        return found

    def check_permission(self, token: FoundToken, client: Client, request) -> bool:
        """The client the token was issued to, or a resource server in its audience."""
        if token.check_client(client):
            return True
        return client.resource_server and client.client_id in token.audience()

    def introspect_token(self, token: FoundToken) -> dict:
        if token.access:
            return introspection.body(token.holder, issuer=config()["ISSUER"],
                                      scope=token.scope, claims=token.access.claims)
        return introspection.body(token.holder, issuer=config()["ISSUER"], scope=token.scope,
                                  issued_at=token.refresh.issued_at,
                                  expires_at=token.refresh.expires_at)


class RevocationEndpoint(_RevocationEndpoint):
    CLIENT_AUTH_METHODS = REVOCATION_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None):
        return find_token(token_string, token_type_hint)

    def revoke_token(self, token: FoundToken, request) -> None:
        """A refresh token takes its whole family with it; an access token only itself."""
        family = token.holder
        if family is None:
            return
        if token.refresh is not None:
            revoked = tokens.revoke_family(family.family_id, "revoked_by_client", now=now())
        else:
            tokens.revoke_access_token(token.access, now=now())
            revoked = False
        audit.record(
            "token.revoked",
            now=now(),
            user_id=family.user_id,
            session_id=family.session_id,
            client_id=family.client_id,
            actor=f"client:{family.client_id}",
            ip=client_ip(),
            token_type=token.kind,
            family_revoked=revoked,
        )


class BearerTokenValidator(_BearerTokenValidator):
    def authenticate_token(self, token_string: str) -> FoundToken | None:
        access = tokens.find_access_token(
            token_string, signer=services().signer, issuer=config()["ISSUER"], now=now()
        )
        if access is None or access.holder is None or access.holder.user is None:
            return None
        access.holder.settle(now())
        return FoundToken("access_token", access.holder, access=access)


class UserInfoEndpoint(_UserInfoEndpoint):
    def __call__(self, request):
        """Plain JSON claims: signed userinfo is not offered (nor advertised), so no
        client row is needed on this hot path."""
        token = self.resource_protector.acquire_token("openid")
        return 200, self.generate_user_info(token.get_user(), token.scope), default_json_headers

    def get_issuer(self) -> str:
        return config()["ISSUER"]

    def generate_user_info(self, user: Principal, scope: str):
        return user_info(user.user, scope)


def userinfo_answer(authorization: str | None, *, signer: Signer, issuer: str,
                    now: datetime) -> dict | None:
    """The claims for an active bearer token with the openid scope, in one query; None
    takes the full path, which gives RFC 6750's errors and challenges."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    with read_only() as connection:
        access = tokens.find_access_token(value.strip(), signer=signer, issuer=issuer, now=now,
                                          connection=connection)
    if access is None or access.holder is None or access.holder.user is None \
            or not access.active(now) or "openid" not in access.scope.split():
        return None
    return user_info(access.holder.user, access.scope)


def resource_protector() -> ResourceProtector:
    protector = ResourceProtector()
    protector.register_token_validator(BearerTokenValidator())
    return protector


class DeviceAuthorizationEndpoint(_DeviceAuthorizationEndpoint):
    """RFC 8628 §3.1-3.2: a device code for polling and a short code for the user."""

    CLIENT_AUTH_METHODS = REVOCATION_AUTH_METHODS
    USER_CODE_TYPE = "string"

    def create_endpoint_response(self, request):
        lifetime = config()["DEVICE_CODE_LIFETIME"]
        self.EXPIRES_IN = int(lifetime.total_seconds())
        self.INTERVAL = int(config()["DEVICE_POLL_INTERVAL"].total_seconds())
        limits = services().limits  # every authorization writes a row: counted per IP, client
        limits.reserve("DEVICE_AUTHORIZATIONS_PER_IP", client_ip())
        self.authenticate_client(request)
        limits.reserve("DEVICE_AUTHORIZATIONS_PER_CLIENT", request.client.client_id)
        if not request.client.check_grant_type(DEVICE_CODE_GRANT_TYPE):
            raise UnauthorizedClientError("This client may not use the device flow.")
        scopes.requested(request.payload.scope, request.client)
        return super().create_endpoint_response(request)

    def generate_device_code(self) -> str:
        return passwords.new_token()[2]

    def get_verification_uri(self) -> str:
        return f"{config()['ISSUER']}/device"

    def save_device_credential(self, client_id: str, scope: str | None, data: dict) -> None:
        client = db.session.get(Client, client_id)
        allowed = client.get_allowed_scope(scope)
        row_id, secret = passwords.split_token(data["device_code"])
        current = now()
        db.session.add(DeviceCode(
            id=row_id, secret_hash=passwords.hash_secret(secret), user_code=data["user_code"],
            client_id=client_id, scope=allowed, created_at=current,
            expires_at=current + config()["DEVICE_CODE_LIFETIME"], interval=data["interval"],
            ip=client_ip(), user_agent=devices.truncate_user_agent(
                flask_request.headers.get("User-Agent")),
        ))


class PrivateKeyJWT(JWTBearerClientAssertion):
    """RFC 7523 client assertions signed with a key the client registered. The audience
    is the issuer identifier alone: an endpoint URL as audience is what the 2025
    audience-injection attacks replay from one server to another. An assertion lives at
    most ``MAX_LIFETIME`` (so its replay record does too); each ``jti`` is accepted once
    until it expires; a ``client_id`` beside it must name the assertion's ``sub``."""

    CLIENT_AUTH_METHOD = "private_key_jwt"
    MAX_LIFETIME = 300  # seconds, exp - iat (or exp - now without iat)

    def __init__(self):
        super().__init__(validate_jti=True, leeway=30)

    def get_audiences(self) -> list[str]:
        return [config()["ISSUER"]]

    def verify_claims(self, claims) -> None:
        current = now().timestamp()
        times = [claims.get("exp"), claims.get("iat", current)]
        if any(isinstance(t, bool) or not isinstance(t, int | float) or not -1e11 < t < 1e11
               for t in times):
            raise InvalidClientError(description="exp and iat must be NumericDate values.")
        expires, issued = times
        if issued > current + self.leeway:
            raise InvalidClientError(description="The assertion was issued in the future.")
        if expires - issued > self.MAX_LIFETIME:
            raise InvalidClientError(
                description=f"The assertion may live at most {self.MAX_LIFETIME} seconds.")
        super().verify_claims(claims)

    def process_assertion_claims(self, assertion, resolve_key):
        try:
            token = joserfc_jwt.decode(assertion, resolve_key, algorithms=ASSERTION_ALGORITHMS)
        except JoseError as exc:
            raise InvalidClientError(description="The client assertion is not valid.") from exc
        self.verify_claims(token.claims)
        return token.claims

    def __call__(self, query_client, request):
        claimed, assertion = request.form.get("client_id"), request.form.get("client_assertion")
        try:
            if claimed and assertion and unverified_sub(assertion) != claimed:
                raise InvalidClientError(
                    description="client_id names another client than the assertion's sub.")
            return super().__call__(query_client, request)
        except InvalidClientError as error:
            error.status_code = 401  # like a wrong secret (RFC 6749 §5.2)
            raise

    def validate_jti(self, claims: dict, jti: str) -> bool:
        """Recorded in its own committed transaction: a request that fails later (and
        rolls back) must not make its assertion usable again."""
        if not isinstance(jti, str) or len(jti) > 128:
            return False
        key = f"{claims['sub']}:{jti}"
        expires = datetime.fromtimestamp(int(claims["exp"]), tz=UTC)
        try:
            with db.engine.begin() as connection:
                connection.execute(sa.insert(UsedAssertion).values(key=key, expires_at=expires))
        except IntegrityError:
            return False
        return True

    def resolve_client_public_key(self, client: Client):
        if not client.jwks:
            raise InvalidClientError(description="The client has no registered keys.")
        return KeySet.import_key_set(client.jwks)
