"""The tables. Behaviour lives in the domain modules; these classes hold data and
the few Authlib mixin methods Authlib calls on them.

Secrets are never stored: cookies, refresh tokens, codes and client secrets are
kept as SHA-256 hashes (``passwords.hash_secret``), passwords as argon2id. Every
opaque secret has the form ``<row id>.<secret>`` so a lookup is by primary key.
"""

from __future__ import annotations

import contextlib
import enum
import json
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime

import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, registry, relationship

from . import passwords


class UTCDateTime(sa.types.TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite drops the zone otherwise)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


class seconds_before(sa.sql.functions.FunctionElement):  # noqa: N801 - reads as SQL
    """``instant - seconds`` (a number of seconds, usually a column) as a timestamp, exact
    to the microsecond on both databases: PostgreSQL's interval arithmetic; on SQLite a
    function registered on every connection (``sqlite.seconds_before``), since SQLite's
    own date functions drop the microseconds."""

    type = UTCDateTime()
    name = "idp_seconds_before"
    inherit_cache = True


@compiles(seconds_before)
def _seconds_before(element, compiler, **kw) -> str:
    return f"idp_seconds_before({compiler.process(element.clauses, **kw)})"


@compiles(seconds_before, "postgresql")
def _seconds_before_postgresql(element, compiler, **kw) -> str:
    instant, seconds = element.clauses
    return (f"({compiler.process(instant, **kw)} - "
            f"make_interval(secs => {compiler.process(seconds, **kw)}))")


class Base(DeclarativeBase):
    registry = registry(type_annotation_map={datetime: UTCDateTime})


# Objects stay readable after commit: pages render what they loaded without a query per row.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})


#: A hot path's connection stays with its thread while requests come back to back, and
#: goes back to the pool after this long unused (the pool pings it on the way out again).
HOLD_WHILE_BUSY = 1.0

_HELD = threading.local()


@contextlib.contextmanager
def read_only() -> Iterator[sa.Connection]:
    """A connection in autocommit for one read-only hot path (introspection, userinfo): no
    ORM session to set up, and on PostgreSQL no BEGIN and ROLLBACK round trips around the
    one query. Under load it is the thread's own from one request to the next: taking a
    connection from the pool and wrapping it cost a tenth of an introspection. A failed
    statement gives it back (an invalidated one is discarded by the pool)."""
    engine = db.engine
    reader = _READERS.get(engine)
    if reader is None:
        # (SQLite: switching a connection's isolation level costs PRAGMAs, not round trips)
        reader = _READERS[engine] = engine.execution_options(
            isolation_level="AUTOCOMMIT") if engine.dialect.name == "postgresql" else engine
    held, _HELD.reader = getattr(_HELD, "reader", None), None
    connection = None
    if held is not None:
        connection, owner, last_used = held
        if (owner is not reader or connection.invalidated or connection.closed
                or time.monotonic() - last_used > HOLD_WHILE_BUSY):
            connection.close()
            connection = None
    if connection is None:
        connection = reader.connect()
    try:
        yield connection
    except BaseException:
        connection.close()
        raise
    _HELD.reader = (connection, reader, time.monotonic())


_READERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class HotQuery:
    """A statement of a hot path, compiled once per dialect and run on the driver's own
    cursor. SQLAlchemy's execution layer (execution context, result objects) cost as
    much as the query on SQLite and 2.5 times the driver's round trip on PostgreSQL
    (``bench/BASELINE.md``). What stays SQLAlchemy's: the SQL, each parameter's and
    column's type conversion, and ``Connection._cursor_execute`` (SQLAlchemy's own path
    for such statements): cursor events fire (without an execution context) and a driver
    error is wrapped, a dead connection invalidated, as for any statement. Reads (and a
    write's RETURNING row) use ``first``, writes (one row's UPDATE or INSERT) ``run``."""

    def __init__(self, statement: sa.Select | sa.Update | sa.Insert):
        self.statement = statement
        self._prepared: dict = {}

    def first(self, connection: sa.Connection, params: dict) -> tuple | None:
        prepared, cursor = self._execute(connection, params)
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()
        processors = prepared[3]
        if row is None or not processors:
            return row
        row = list(row)
        for index, process in processors:
            if row[index] is not None:
                row[index] = process(row[index])
        return tuple(row)

    def run(self, connection: sa.Connection, params: dict) -> int:
        """Execute a write; the number of rows it matched."""
        _prepared, cursor = self._execute(connection, params)
        try:
            return cursor.rowcount
        finally:
            cursor.close()

    def _execute(self, connection: sa.Connection, params: dict):
        dialect = connection.dialect
        prepared = self._prepared.get(dialect)
        if prepared is None:
            prepared = self._prepared[dialect] = self._prepare(dialect)
        sql, names, binds, _processors = prepared
        if binds:
            params = {name: binds[name](value) if name in binds else value
                      for name, value in params.items()}
        parameters = [params[name] for name in names] if names else params
        cursor = None
        try:
            cursor = connection.connection.cursor()
            connection._cursor_execute(cursor, sql, parameters)
        except dialect.loaded_dbapi.Error as error:  # (_cursor_execute has wrapped its own)
            if cursor is not None:
                cursor.close()
            connection._handle_dbapi_exception(error, sql, parameters, cursor, None)
        except BaseException:
            if cursor is not None:
                cursor.close()
            raise
        return prepared, cursor

    def _prepare(self, dialect) -> tuple:
        compiled = self.statement.compile(dialect=dialect)
        names = compiled.positiontup if dialect.positional else None
        binds = dict(compiled._bind_processors)  # by parameter name
        columns = self.statement.exported_columns  # a SELECT's columns, or what it RETURNs
        processors = [(index, process) for index, process in enumerate(
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in columns) if process is not None]
        return compiled.string, names, binds, processors


#: Authentication context classes (``acr``) this provider achieves, weakest first: a
#: password alone, or a password and a second factor (``step_up`` forces the latter).
ACR_PASSWORD, ACR_MFA = "pwd", "mfa"


def acr_of(amr) -> str:
    """The class a session's methods (RFC 8176 ``amr``) achieve."""
    return ACR_MFA if "mfa" in (amr or ()) else ACR_PASSWORD


class Role(enum.StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class OnLimit(enum.StrEnum):
    DENY = "deny"
    END_OLDEST = "end_oldest"


class EndReason(enum.StrEnum):
    LOGOUT = "logout"
    ENDED_BY_USER = "ended_by_user"
    ENDED_ALL = "ended_all"
    ENDED_BY_ADMIN = "ended_by_admin"
    EXPIRED_DURATION = "expired_duration"
    EXPIRED_IDLE = "expired_idle"
    EVICTED_CONCURRENT = "evicted_concurrent"
    PASSWORD_CHANGED = "password_changed"
    DISABLED = "disabled"
    POLICY_CHANGED = "policy_changed"
    LOCKED_OUT = "locked_out"
    FACTORS_CHANGED = "factors_changed"
    REPORTED = "reported"  # "This wasn't me" in a new-device notice

    @property
    def is_expiry(self) -> bool:
        return self in (EndReason.EXPIRED_DURATION, EndReason.EXPIRED_IDLE)


class Account(db.Model):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(120), unique=True)
    created_at: Mapped[datetime]
    # The session policy (seconds; None = unlimited concurrent sessions).
    max_session_duration: Mapped[int]
    idle_timeout: Mapped[int]
    max_concurrent_sessions: Mapped[int | None]
    on_concurrent_limit: Mapped[str] = mapped_column(sa.String(16), default=OnLimit.DENY)
    #: Every user must sign in with a second factor (users without one enrol at sign-in).
    require_mfa: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    #: Every user gets new-device sign-in notices (users cannot turn them off).
    require_new_device_notices: Mapped[bool] = mapped_column(default=False,
                                                             server_default=sa.false())
    policy_updated_at: Mapped[datetime | None]

    users: Mapped[list[User]] = relationship(back_populates="account")


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    sub: Mapped[str] = mapped_column(sa.String(64), unique=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"), index=True)
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)
    email_verified: Mapped[bool] = mapped_column(default=False)
    name: Mapped[str | None] = mapped_column(sa.String(200))
    role: Mapped[str] = mapped_column(sa.String(16), default=Role.MEMBER)
    password_hash: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]
    #: Moves on every password change and every disable. A sign-in opens its session only
    #: if the version it verified the password under is still the user's (read under the
    #: user's row lock): one that raced a change is refused (DESIGN invariant 9).
    credentials_version: Mapped[int] = mapped_column(default=0, server_default="0")
    #: An email at each sign-in from a device new to the user (``notices``).
    new_device_notices: Mapped[bool] = mapped_column(default=True, server_default=sa.true())

    account: Mapped[Account] = relationship(back_populates="users", lazy="joined")

    def get_user_id(self) -> int:
        return self.id


class Client(db.Model):
    """A relying party or resource server, registered by the operator."""

    __tablename__ = "clients"

    client_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(120))
    secret_hash: Mapped[str | None] = mapped_column(sa.String(64))
    redirect_uris: Mapped[list] = mapped_column(sa.JSON, default=list)
    post_logout_redirect_uris: Mapped[list] = mapped_column(sa.JSON, default=list)
    grant_types: Mapped[list] = mapped_column(sa.JSON, default=list)
    scope: Mapped[str] = mapped_column(sa.String(500), default="openid profile email")
    first_party: Mapped[bool] = mapped_column(default=False)
    resource_server: Mapped[bool] = mapped_column(default=False)
    id_token_signed_response_alg: Mapped[str] = mapped_column(sa.String(8), default="RS256")
    backchannel_logout_uri: Mapped[str | None] = mapped_column(sa.String(500))
    backchannel_logout_session_required: Mapped[bool] = mapped_column(default=True)
    # "private_key_jwt" clients authenticate with assertions signed by a key in ``jwks``.
    token_endpoint_auth_method: Mapped[str | None] = mapped_column(sa.String(32))
    jwks: Mapped[dict | None] = mapped_column(sa.JSON)
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]

    @property
    def is_public(self) -> bool:
        return self.secret_hash is None

    @property
    def client_metadata(self) -> dict:
        """What Authlib's userinfo endpoint reads (no signed userinfo: plain JSON)."""
        return {}

    # -- Authlib ClientMixin
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # Only an unambiguous single registration may be implied (OIDC Core 3.1.2.1
        # makes redirect_uri required; we accept omission for one registered URI).
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        allowed = self.scope.split()
        if not scope:
            return " ".join(allowed)
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        """Exact string match only (RFC 9700 §4.1.3)."""
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.secret_hash is None:
            return False
        return passwords.verify_secret(client_secret, self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.token_endpoint_auth_method == "private_key_jwt":
            return method == "private_key_jwt"
        if self.is_public:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


class LoginSession(db.Model):
    """One sign-in of one user on one device. ``id`` is public: it is the ``sid``."""

    __tablename__ = "login_sessions"
    __table_args__ = (
        sa.Index("ix_login_sessions_user_ended", "user_id", "ended_at"),
        # The sweep: open sessions by each deadline's column (partial: only open sessions
        # are indexed, so the indexes stay the size of what is live; account_id last, so
        # a sweep for the accounts of one policy filters in the index, not the table),
        # and ended ones by when they ended (retention purge).
        sa.Index("ix_login_sessions_open_created", "created_at", "id", "account_id",
                 postgresql_where=sa.text("ended_at IS NULL"),
                 sqlite_where=sa.text("ended_at IS NULL")),
        sa.Index("ix_login_sessions_open_last_active", "last_active_at", "id", "account_id",
                 postgresql_where=sa.text("ended_at IS NULL"),
                 sqlite_where=sa.text("ended_at IS NULL")),
        sa.Index("ix_login_sessions_ended", "ended_at", "id",
                 postgresql_where=sa.text("ended_at IS NOT NULL"),
                 sqlite_where=sa.text("ended_at IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(sa.String(64))
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16), default="browser")
    created_at: Mapped[datetime]
    last_active_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(sa.String(32))
    amr: Mapped[list] = mapped_column(sa.JSON, default=list)
    #: The last time the user proved who they are in this session (sign-in, or a step-up).
    authenticated_at: Mapped[datetime | None]
    ip_first: Mapped[str] = mapped_column(sa.String(64))
    ip_last: Mapped[str] = mapped_column(sa.String(64))
    user_agent: Mapped[str] = mapped_column(sa.String(600), default="")
    device_label: Mapped[str] = mapped_column(sa.String(120))
    device_type: Mapped[str] = mapped_column(sa.String(16))
    location: Mapped[str] = mapped_column(sa.String(120))

    user: Mapped[User] = relationship(lazy="joined")
    account: Mapped[Account] = relationship(lazy="joined")


class TokenFamily(db.Model):
    """Everything one authorization of one client produced under one session."""

    __tablename__ = "token_families"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    session_id: Mapped[str | None] = mapped_column(sa.ForeignKey("login_sessions.id"), index=True)
    client_id: Mapped[str] = mapped_column(sa.ForeignKey("clients.client_id"), index=True)
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    scope: Mapped[str] = mapped_column(sa.String(500))
    created_at: Mapped[datetime]
    last_issued_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoke_reason: Mapped[str | None] = mapped_column(sa.String(32))

    session: Mapped[LoginSession | None] = relationship()
    client: Mapped[Client] = relationship(lazy="joined")


class RefreshToken(db.Model):
    """Stored as a hash. A rotated token presented again is reuse (RFC 9700 §4.14.2)."""

    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(sa.String(64))
    family_id: Mapped[str] = mapped_column(sa.ForeignKey("token_families.id"), index=True)
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    rotated_at: Mapped[datetime | None]

    family: Mapped[TokenFamily] = relationship(lazy="joined")

    # -- Authlib TokenMixin (what the refresh grant asks)
    def check_client(self, client: Client) -> bool:
        return self.family.client_id == client.client_id

    def get_scope(self) -> str:
        return self.family.scope


class RevokedAccessToken(db.Model):
    """A JWT access token revoked on its own (RFC 7009); kept until it expires."""

    __tablename__ = "revoked_access_tokens"
    __table_args__ = (sa.Index("ix_revoked_access_tokens_expires_at", "expires_at"),)

    jti: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(sa.String(32))
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime]


class AuthorizationCode(db.Model):
    """One-time, short-lived, bound to a session, a client and a redirect URI."""

    __tablename__ = "authorization_codes"
    # Codes not yet used, by session: what ending a session spends (a handful at any time,
    # where the session_id index holds every code ever issued).
    __table_args__ = (
        sa.Index("ix_authorization_codes_pending", "session_id",
                 postgresql_where=sa.text("used_at IS NULL"),
                 sqlite_where=sa.text("used_at IS NULL")),
        # The OpenID nonce replay check at /authorize (Authlib's ``exists_nonce``).
        sa.Index("ix_authorization_codes_client_nonce", "client_id", "nonce",
                 postgresql_where=sa.text("nonce IS NOT NULL"),
                 sqlite_where=sa.text("nonce IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(sa.String(64))
    client_id: Mapped[str] = mapped_column(sa.ForeignKey("clients.client_id"))
    session_id: Mapped[str] = mapped_column(sa.ForeignKey("login_sessions.id"), index=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    redirect_uri: Mapped[str] = mapped_column(sa.String(500))
    scope: Mapped[str] = mapped_column(sa.String(500))
    nonce: Mapped[str | None] = mapped_column(sa.String(500))
    code_challenge: Mapped[str | None] = mapped_column(sa.String(128))
    code_challenge_method: Mapped[str | None] = mapped_column(sa.String(8))
    auth_time: Mapped[datetime]
    amr: Mapped[list] = mapped_column(sa.JSON, default=list)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    family_id: Mapped[str | None] = mapped_column(sa.String(32))


class Consent(db.Model):
    """A user's remembered approval of a client's scopes."""

    __tablename__ = "consents"

    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), primary_key=True)
    client_id: Mapped[str] = mapped_column(sa.ForeignKey("clients.client_id"), primary_key=True)
    scope: Mapped[str] = mapped_column(sa.String(500))
    granted_at: Mapped[datetime]


class AuthFactor(db.Model):
    """A second factor of a user, or a way to sign in on its own.

    - An authenticator app (``kind`` "totp", RFC 6238): its shared secret must be readable
      to check codes, so it is stored sealed (``factors.Sealer``: encrypted with a key
      derived from the provider's secret key, which the database never holds);
      ``last_step`` is the newest time step accepted, so a code is never accepted twice.
    - A passkey (``kind`` "passkey", WebAuthn): only its credential id, public key (COSE)
      and the authenticator's signature counter; nothing secret.

    ``confirmed_at`` is empty while an authenticator app's enrolment waits for its first
    code."""

    __tablename__ = "auth_factors"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    label: Mapped[str] = mapped_column(sa.String(80))
    secret_sealed: Mapped[str | None] = mapped_column(sa.String(300))
    created_at: Mapped[datetime]
    confirmed_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    last_step: Mapped[int] = mapped_column(default=0)
    credential_id: Mapped[str | None] = mapped_column(sa.String(1400), unique=True)
    public_key: Mapped[bytes | None] = mapped_column(sa.LargeBinary(2048))
    sign_count: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class PasskeyChallenge(db.Model):
    """A WebAuthn ceremony in progress: its random challenge, spent (deleted) by the one
    answer that uses it, before ``expires_at``."""

    __tablename__ = "passkey_challenges"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    challenge: Mapped[str] = mapped_column(sa.String(128))
    purpose: Mapped[str] = mapped_column(sa.String(16))
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    expires_at: Mapped[datetime] = mapped_column(index=True)


class RecoveryCode(db.Model):
    """A single-use recovery code, stored as a hash (shown to the user once)."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    code_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class AuditEvent(db.Model):
    """Append-only record of what happened to sessions, tokens and policies."""

    __tablename__ = "audit_events"
    __table_args__ = (sa.Index("ix_audit_events_session", "session_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime]
    event: Mapped[str] = mapped_column(sa.String(48))
    account_id: Mapped[int | None] = mapped_column(index=True)
    user_id: Mapped[int | None]
    session_id: Mapped[str | None] = mapped_column(sa.String(32))
    client_id: Mapped[str | None] = mapped_column(sa.String(64))
    actor: Mapped[str | None] = mapped_column(sa.String(120))
    ip: Mapped[str | None] = mapped_column(sa.String(64))
    detail: Mapped[dict] = mapped_column(sa.JSON, default=dict)

    def __repr__(self) -> str:
        return f"<AuditEvent {self.event} {json.dumps(self.detail, sort_keys=True)}>"


class LogoutDelivery(db.Model):
    """Back-channel logout outbox: written in the transaction that ends the session,
    delivered after commit and retried by the worker until delivered or given up."""

    __tablename__ = "logout_deliveries"
    __table_args__ = (
        sa.Index("ix_logout_deliveries_due", "delivered_at", "given_up_at", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(sa.String(32), index=True)
    client_id: Mapped[str] = mapped_column(sa.ForeignKey("clients.client_id"))
    subject: Mapped[str] = mapped_column(sa.String(64))
    uri: Mapped[str] = mapped_column(sa.String(500))
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(default=0)
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(sa.String(300))
    delivered_at: Mapped[datetime | None]
    given_up_at: Mapped[datetime | None]

    client: Mapped[Client] = relationship(lazy="joined")


class MailMessage(db.Model):
    """The email outbox: written in the transaction of the event that causes the message,
    rendered and delivered by the worker, retried until delivered or given up (``mail``)."""

    __tablename__ = "mail_outbox"
    __table_args__ = (
        sa.Index("ix_mail_outbox_due", "delivered_at", "given_up_at", "next_attempt_at"),
        # Password-reset requests (no session), by age: what the sweep purges.
        sa.Index("ix_mail_outbox_requests", "created_at",
                 postgresql_where=sa.text("session_id IS NULL"),
                 sqlite_where=sa.text("session_id IS NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    #: None for a password-reset request not yet matched to an account (the worker looks
    #: the address up, so the request costs the same whether or not the address exists).
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"), index=True)
    to_address: Mapped[str] = mapped_column(sa.String(254))
    session_id: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    #: The single-use link the message carries (its secret is derived when rendered).
    link_id: Mapped[str | None] = mapped_column(sa.String(32))
    subject: Mapped[str | None] = mapped_column(sa.String(200))
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(default=0)
    last_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.String(300))
    delivered_at: Mapped[datetime | None]
    given_up_at: Mapped[datetime | None]


class MailAttempt(db.Model):
    """One try at handing a message to the mail server: what administrators see."""

    __tablename__ = "mail_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(sa.ForeignKey("mail_outbox.id"), index=True)
    at: Mapped[datetime]
    error: Mapped[str | None] = mapped_column(sa.String(300))
    duration_ms: Mapped[int]


class EmailLink(db.Model):
    """A single-use link sent by email, bound to its user (and session). Its secret is
    derived when the message is rendered (``mail.link_secret``); until then the hash is
    empty and the link answers nothing."""

    __tablename__ = "email_links"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    secret_hash: Mapped[str | None] = mapped_column(sa.String(64))
    purpose: Mapped[str] = mapped_column(sa.String(16))
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    session_id: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None]
    followed_up_at: Mapped[datetime | None]


class KnownDevice(db.Model):
    """A browser that has signed in as the user: the hash of its private marker cookie."""

    __tablename__ = "known_devices"
    __table_args__ = (sa.UniqueConstraint("user_id", "marker_hash",
                                          name="uq_known_devices_user_marker"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    marker_hash: Mapped[str] = mapped_column(sa.String(64))
    device_label: Mapped[str] = mapped_column(sa.String(120), default="")
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]


class LogoutAttempt(db.Model):
    """One try at delivering a logout token: what administrators see."""

    __tablename__ = "logout_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(sa.ForeignKey("logout_deliveries.id"), index=True)
    at: Mapped[datetime]
    status: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(sa.String(300))
    duration_ms: Mapped[int]


class DeviceCode(db.Model):
    """An RFC 8628 device authorization: the device polls with its code while the
    user approves it in a browser; approval opens a session of kind "device"."""

    __tablename__ = "device_codes"
    __table_args__ = (sa.Index("ix_device_codes_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(sa.String(64))
    user_code: Mapped[str] = mapped_column(sa.String(16), unique=True)
    client_id: Mapped[str] = mapped_column(sa.ForeignKey("clients.client_id"))
    scope: Mapped[str] = mapped_column(sa.String(500))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    interval: Mapped[int] = mapped_column(default=5)
    last_polled_at: Mapped[datetime | None]
    ip: Mapped[str] = mapped_column(sa.String(64))
    user_agent: Mapped[str] = mapped_column(sa.String(600), default="")
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    approved: Mapped[bool | None]
    decided_at: Mapped[datetime | None]
    session_id: Mapped[str | None] = mapped_column(sa.String(32))
    used_at: Mapped[datetime | None]

    client: Mapped[Client] = relationship(lazy="joined")

    # -- Authlib DeviceCredentialMixin
    def get_client_id(self) -> str:
        return self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_user_code(self) -> str:
        return self.user_code


class UsedAssertion(db.Model):
    """jti of private_key_jwt client assertions already seen (replay protection)."""

    __tablename__ = "used_assertions"

    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
