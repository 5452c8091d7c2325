"""Authlib grants wired to the domain: authorization code + PKCE + OpenID, refresh.

Each hook is a short call into ``tokens``/``sessions``. Hooks only flush; the
token view commits once. The exceptions are reuse detection and a session found
expired at refresh: those are their own state change, committed before the
error is returned so the rollback of the failed request cannot undo them. The
refresh grant also commits its own writes, in its last step, to keep them short.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

import sqlalchemy as sa
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import (
    AccessDeniedError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
)
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc8628 import DeviceCodeGrant as _DeviceCodeGrant
from authlib.oauth2.rfc8628.errors import (
    AuthorizationPendingError,
    ExpiredTokenError,
    SlowDownError,
)
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode as _OpenIDCode
from authlib.oidc.core.grants.util import create_half_hash

from .. import passwords, sessions, tokens
from ..models import (
    AuthorizationCode,
    DeviceCode,
    EndReason,
    HotQuery,
    LoginSession,
    TokenFamily,
    User,
    acr_of,
    db,
)
from ..runtime import client_ip, config, now, services
from . import scopes

CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
CONFIDENTIAL_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]


@dataclass
class Principal:
    """What Authlib calls "the user": a user acting through one live session and,
    at the token endpoint, the family being issued."""

    user: User | tokens.HolderUser
    session: LoginSession | None
    family: TokenFamily | None = None
    #: Refresh-token rows the grant writes itself, last (see ``RefreshTokenGrant``).
    pending: list | None = None
    #: What the family stands on, when the grant read it without the ORM (refresh).
    holder: tokens.Holder | None = None

    def get_user_id(self) -> int:
        return self.user.id

    def standing(self) -> tokens.Holder:
        """The family tokens are issued on, with its session's deadlines."""
        return self.holder or tokens.Holder.of(self.family, issuing=True)


def user_info(user: User, scope: str) -> UserInfo:
    """Standard claims released per scope (OIDC Core §5.4)."""
    scopes = set(scope.split())
    info = UserInfo(sub=user.sub)
    if "profile" in scopes:
        info["name"] = user.name or ""
        info["preferred_username"] = user.email
        info["updated_at"] = int(user.created_at.timestamp())
    if "email" in scopes:
        info["email"] = user.email
        info["email_verified"] = bool(user.email_verified)
    return info


def _session_or_error(session: LoginSession | None) -> LoginSession:
    """The live session behind a code, device code or refresh token, or invalid_grant.
    A session found past a deadline (or whose user was disabled) is ended and committed
    first (``sessions.check``, the rule every caller asks)."""
    if session is None:
        raise InvalidGrantError("The session behind this grant no longer exists.")
    if sessions.check(session, now()) is not None:
        # Undo whatever this request claimed (a rotated refresh token would look like
        # reuse on a retry), then record only the session's end.
        session_id = session.id
        db.session.rollback()
        sessions.check(db.session.get(LoginSession, session_id), now())
        db.session.commit()
        raise InvalidGrantError("The login session behind this grant has ended.")
    return session


def _session_over(holder: tokens.Holder, current) -> InvalidGrantError:
    """A grant's session found over by this read: the end recorded as the read found it
    (``Holder.settle``), and the error to answer with."""
    holder.settle(current)
    if holder.session_end(current) is EndReason.DISABLED:
        return InvalidGrantError("The user is disabled.")
    return InvalidGrantError("The login session behind this grant has ended.")


def _locked_session(session_id: str) -> LoginSession | None:
    """The session a new family will stand on, read FOR SHARE (PostgreSQL): an ending in
    progress holds the row, so this waits for it and sees the end, or the ending waits for
    this family and revokes it (invariant 2). KEY SHARE would not do: it does not conflict
    with the ending's UPDATE. (SQLite: the exchange already holds the one write lock.)"""
    return db.session.get(LoginSession, session_id, populate_existing=True,
                          with_for_update={"read": True, "of": LoginSession})


class ClientScope:
    """Unknown scope values ignored; known ones the client may not have refused."""

    def validate_requested_scope(self) -> None:
        scopes.requested(self.request.payload.scope, self.request.client)


class AuthorizationCodeGrant(ClientScope, grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def generate_authorization_code(self) -> str:
        return passwords.new_token()[2]

    def save_authorization_code(self, code: str, request) -> None:
        principal: Principal = request.user
        payload = request.payload
        tokens.save_code(
            code,
            client=request.client,
            session=principal.session,
            # As sent: RFC 6749 §4.1.3 requires it at the token endpoint only when it was
            # in the authorization request ("" when it was not).
            redirect_uri=payload.redirect_uri or "",
            scope=scopes.approvable(request.scope, principal.user),
            nonce=payload.data.get("nonce"),
            code_challenge=payload.data.get("code_challenge"),
            code_challenge_method=payload.data.get("code_challenge_method"),
            now=now(),
            lifetime=config()["CODE_LIFETIME"],
        )

    def query_authorization_code(self, code: str, client) -> tokens.PresentedCode | None:
        self.family_id = passwords.new_id()  # the family this exchange starts
        claim = tokens.claim_code(code, client.client_id, now=now(), ip=client_ip(),
                                  family_id=self.family_id)
        if claim.reused:
            db.session.commit()
        return claim.row

    def delete_authorization_code(self, authorization_code: tokens.PresentedCode) -> None:
        """Kept, marked used: a second presentation must be recognised as reuse."""

    def authenticate_user(self, authorization_code: tokens.PresentedCode) -> Principal:
        """The code's session, live (``Holder.session_end``, the rule every caller asks),
        and the new family on it, written with one statement: no ORM objects on this path.
        A session found over is ended first, as the code's claim is undone."""
        current = now()
        holder = tokens.code_standing(authorization_code)
        if holder is None:
            raise InvalidGrantError("The session behind this grant no longer exists.")
        if holder.session_end(current) is not None:
            db.session.rollback()
            raise _session_over(holder, current)
        tokens.open_family(holder, now=current)
        return Principal(holder.user, None, holder=holder)


_FAMILY_ISSUED = HotQuery(sa.update(TokenFamily.__table__)
                          .where(TokenFamily.__table__.c.id == sa.bindparam("family_id"),
                                 TokenFamily.__table__.c.revoked_at.is_(None))
                          .values(last_issued_at=sa.bindparam("now")))
_SESSION_ACTIVE = HotQuery(sa.update(LoginSession.__table__)
                           .where(LoginSession.__table__.c.id == sa.bindparam("session_id"))
                           .values(last_active_at=sa.bindparam("last_active_at"),
                                   updated_at=sa.bindparam("updated_at"),
                                   ip_last=sa.bindparam("ip_last")))


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> tokens.PresentedRefresh | None:
        """Checked here, used up in ``revoke_old_credential``: all reads and the
        signing happen first, so the write (SQLite's database lock, PostgreSQL's row
        lock) lasts only for the few statements before the commit. Read with one Core
        query, as introspection reads: no ORM objects on this path."""
        claim = tokens.present_refresh(refresh_token, now=now(), ip=client_ip())
        if claim.reused:
            db.session.commit()
        elif claim.row is None:
            # Expired with its session's deadline: say so on the session too.
            stale = tokens.find_refresh(refresh_token)
            if stale is not None:
                stale.holder.settle(now())
        return claim.row

    def authenticate_user(self, refresh_token: tokens.PresentedRefresh) -> Principal:
        holder, current = refresh_token.holder, now()
        if not holder.active(current):
            if holder.revoked_at is None and holder.client_disabled_at is None:
                raise _session_over(holder, current)
            raise InvalidGrantError("The grant has been revoked.")
        # Seen now (so the new tokens' deadlines count from now), written at the end.
        self.activity = sessions.activity(holder.last_active_at, refresh_token.ip_last, current,
                                          client_ip(), config()["ACTIVITY_WRITE_INTERVAL"]) or {}
        if self.activity:
            holder = replace(holder, last_active_at=self.activity["last_active_at"])
        self.principal = Principal(holder.user, None, pending=[], holder=holder)
        return self.principal

    def revoke_old_credential(self, refresh_token: tokens.PresentedRefresh) -> None:
        """Rotate, atomically, as the last step, then record the activity, the family's
        issue and the new refresh token, and commit: the only writes of the grant, back
        to back, so SQLite's write lock and PostgreSQL's row locks last only that long.
        Losing a race to a concurrent presentation of the same token makes this one
        reuse: nothing of this request is kept, the family is revoked (RFC 9700 §4.14.2)."""
        if tokens.rotate_refresh(refresh_token, now=now()):
            holder = refresh_token.holder
            connection = db.session.connection()
            if self.activity:  # the session before the family: the order sessions.end takes
                _SESSION_ACTIVE.run(connection, {"session_id": holder.session_id, **self.activity})
            # Still unrevoked at write time: a session ended (or a family revoked) since
            # the reads above wins, and nothing is issued after it (invariant 2).
            if _FAMILY_ISSUED.run(connection, {"family_id": holder.family_id, "now": now()}):
                tokens.insert_refresh(self.principal.pending)
                db.session.commit()  # nothing after this step can fail
                return
            db.session.rollback()
            raise InvalidGrantError("The grant has been revoked.")
        db.session.rollback()
        tokens.refresh_reused(refresh_token, now=now(), ip=client_ip())
        db.session.commit()
        raise InvalidGrantError("The refresh token has already been used.")


class S256CodeChallenge(CodeChallenge):
    """PKCE with S256 only (RFC 9700 §2.1.1); required for public clients at the
    authorization request, not only at the token request."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": CodeChallenge.CODE_CHALLENGE_METHODS["S256"]}

    def validate_code_challenge(self, grant, redirect_uri) -> None:
        data = grant.request.payload.data
        if data.get("code_challenge") and not data.get("code_challenge_method"):
            raise InvalidRequestError("'code_challenge_method' must be S256.")
        if not data.get("code_challenge") and grant.request.client.is_public:
            raise InvalidRequestError("Public clients must use PKCE with S256.")
        super().validate_code_challenge(grant, redirect_uri)


class OpenIDCode(_OpenIDCode):
    """ID tokens signed with our keys and our clock, carrying ``sid``."""

    def exists_nonce(self, nonce: str, request) -> bool:
        return (
            db.session.query(AuthorizationCode.id)
            .filter_by(client_id=request.payload.client_id, nonce=nonce)
            .first()
            is not None
        )

    def generate_user_info(self, user: Principal, scope: str) -> UserInfo:
        return user_info(user.user, scope)

    def encode_id_token(self, token: dict, request) -> str:
        principal: Principal = request.user
        client = request.client
        alg = client.id_token_signed_response_alg or "RS256"
        current = now()
        issued = int(current.timestamp())
        standing = principal.standing()
        lifetime = standing.lifetime(config()["ID_TOKEN_LIFETIME"], current)
        claims = {
            "iss": config()["ISSUER"],
            "aud": client.client_id,
            "azp": client.client_id,
            "iat": issued,
            "exp": issued + lifetime,
            "sid": standing.session_id,
        }
        code = getattr(request, "authorization_code", None)
        if code is not None:
            claims.update(self.get_authorization_code_claims(code))
        else:  # device flow: the session says when and how the user signed in
            session = principal.session
            claims["auth_time"] = int((session.authenticated_at or session.created_at).timestamp())
            claims["amr"] = list(session.amr or [])
            claims["acr"] = acr_of(session.amr)
        at_hash = create_half_hash(token["access_token"], alg)
        claims["at_hash"] = at_hash.decode()
        claims.update(user_info(principal.user, token["scope"]))
        return services().signer.sign(claims, alg=alg, typ=tokens.ID_TOKEN_TYP, now=now())


USER_SCOPES = {"openid", "profile", "email", "sessions", "admin"}


class ClientCredentialsGrant(ClientScope, grants.ClientCredentialsGrant):
    """Machine clients: tokens with no user and no session, never refreshable."""

    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_AUTH_METHODS

    def validate_token_request(self):
        super().validate_token_request()
        requested = set((self.request.payload.scope or "").split())
        if requested & USER_SCOPES:
            raise InvalidScopeError("User scopes cannot be granted to a machine client.")


class DeviceCodeGrant(_DeviceCodeGrant):
    """RFC 8628 polling. Every answer but success is its own state change (the poll
    time, a slowed interval), committed before the error goes back."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_device_credential(self, device_code: str) -> DeviceCode | None:
        parts = passwords.split_token(device_code)
        if parts is None:
            return None
        row = db.session.get(DeviceCode, parts[0])
        if row is None or not passwords.verify_secret(parts[1], row.secret_hash):
            return None
        return row

    def validate_device_credential(self, credential: DeviceCode) -> Principal:
        current = now()
        if credential.used_at is not None:
            raise InvalidGrantError("This device code has already been used.")
        if credential.expires_at <= current:
            raise ExpiredTokenError()
        if credential.approved is None:
            too_fast = (credential.last_polled_at is not None
                        and current - credential.last_polled_at
                        < timedelta(seconds=credential.interval))
            if too_fast:
                credential.interval += 5
            credential.last_polled_at = current
            db.session.commit()
            raise SlowDownError() if too_fast else AuthorizationPendingError()
        if not credential.approved:
            raise AccessDeniedError()
        claimed = db.session.execute(
            sa.update(DeviceCode).where(DeviceCode.id == credential.id,
                                        DeviceCode.used_at.is_(None))
            .values(used_at=current).execution_options(synchronize_session=False)
        ).rowcount
        if not claimed:
            raise InvalidGrantError("This device code has already been used.")
        session = _session_or_error(_locked_session(credential.session_id))
        family = tokens.start_family(session=session, client=credential.client,
                                     scope=credential.scope, now=current)
        return Principal(session.user, session, family)

    def query_user_grant(self, user_code):  # pragma: no cover - replaced above
        raise NotImplementedError

    def should_slow_down(self, credential):  # pragma: no cover - replaced above
        raise NotImplementedError


class DeviceOpenID(OpenIDCode):
    """ID tokens for the device grant when ``openid`` was asked for (no nonce there)."""

    def __call__(self, grant):
        grant.register_hook("after_create_token_response", self.process_token)
