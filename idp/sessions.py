"""The login-session lifecycle: start, find, check, touch, end, sweep.

``end`` is the one way a session stops, whatever the path (the user, an
administrator, the logout endpoint, a policy expiry, a password change, the
sweep): it marks the session, revokes every token family under it and writes
the audit event in the caller's transaction (DESIGN invariant 2); ``end_many`` does
the same for many sessions at once.

Creating a session and ending all of a user's sessions both start by locking the
user's row (``lock_user``), so they happen one after the other: an end-all ends every
session that exists when it commits, and a sign-in that waited for it re-checks what
vouches for it afterwards (DESIGN invariant 9).
"""

from __future__ import annotations

import base64
import enum
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm.attributes import set_committed_value

from . import audit, backchannel, notices, passwords
from .metrics import EVENTS
from .models import (
    Account,
    AuditEvent,
    AuthorizationCode,
    Client,
    DeviceCode,
    EmailLink,
    EndReason,
    LoginSession,
    LogoutAttempt,
    LogoutDelivery,
    MailAttempt,
    MailMessage,
    OnLimit,
    PasskeyChallenge,
    RefreshToken,
    RevokedAccessToken,
    TokenFamily,
    UsedAssertion,
    User,
    db,
)
from .policy import (
    LoginDecision,
    SessionPolicy,
    account_value,
    active_sql,
    decide_login,
    end_reason_sql,
)


class Status(enum.StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    ENDED = "ended"


@dataclass(frozen=True)
class Origin:
    """Where a request came from, as the surface determined it."""

    ip: str
    user_agent: str = ""
    device_label: str = "Unknown browser"
    device_type: str = "other"
    location: str = "Unknown location"
    #: The browser's private marker (its device cookie; ``notices``), if it sent one.
    device_marker: str | None = None


class CredentialsChanged(Exception):
    """What vouched for a new session no longer holds: the password was changed or the
    user disabled since the password was verified, or the approving session ended."""


class SessionLimitReached(Exception):
    """The account's concurrent-session limit refuses this login."""

    def __init__(self, user: User, active: list[LoginSession]):
        super().__init__("concurrent session limit reached")
        self.user = user
        self.active = active


@dataclass
class Started:
    session: LoginSession
    cookie: str
    ended: list[LoginSession] = field(default_factory=list)


def policy_of(session: LoginSession) -> SessionPolicy:
    return SessionPolicy.of(session.account)


def end_reason(session: LoginSession, now: datetime) -> EndReason | None:
    """``SessionPolicy.end_reason`` of a session under its account's current policy:
    None while it is active."""
    return policy_of(session).end_reason(session, now,
                                         user_disabled=session.user.disabled_at is not None)


def status(session: LoginSession, now: datetime) -> Status:
    """Derived, never stored: active, or expired / ended by its end reason."""
    reason = end_reason(session, now)
    if reason is None:
        return Status.ACTIVE
    return Status.EXPIRED if reason.is_expiry else Status.ENDED


def lock_user(user: User) -> None:
    """Lock the user's row until commit (PostgreSQL's row lock; on SQLite the one write
    turn) and read the user's credentials as they are now into ``user``. Creating a
    session, changing the password, disabling the user and ending all sessions take it
    first, so they happen one after the other, never interleaved (DESIGN invariant 9)."""
    row = db.session.execute(
        sa.update(User).where(User.id == user.id).values(id=User.id)
        .returning(User.password_hash, User.credentials_version, User.disabled_at)
        .execution_options(synchronize_session=False)
    ).one()
    for name, value in zip(("password_hash", "credentials_version", "disabled_at"), row,
                           strict=True):
        set_committed_value(user, name, value)


def active_sessions(user: User, now: datetime) -> list[LoginSession]:
    """The user's sessions that are active now, read afresh."""
    rows = db.session.scalars(
        sa.select(LoginSession)
        .where(LoginSession.user_id == user.id, LoginSession.ended_at.is_(None))
        .execution_options(populate_existing=True)
    ).all()
    return [s for s in rows if end_reason(s, now) is None]


def members_with_active_counts(account: Account, now: datetime) -> list[tuple[User, int]]:
    """The account's users (by email) and how many active sessions each has now."""
    counts = dict(db.session.execute(
        sa.select(LoginSession.user_id, sa.func.count())
        .where(LoginSession.account_id == account.id, active_sql(now))
        .group_by(LoginSession.user_id)
    ).all())
    users = db.session.scalars(
        sa.select(User).where(User.account_id == account.id).order_by(User.email)).all()
    return [(user, counts.get(user.id, 0)) for user in users]


def start(
    user: User,
    origin: Origin,
    *,
    now: datetime,
    verified_version: int | None = None,
    approved_by: LoginSession | None = None,
    replacing: LoginSession | None = None,
    kind: str = "browser",
    amr: Iterable[str] = ("pwd",),
) -> Started:
    """Open a session under the account's policy (may end the oldest, or refuse).

    What vouches for it is checked under the user's row lock, so after any password
    change, disable or end-all that committed first: either the password was verified
    under the ``credentials_version`` the user still has, or the session that approved
    this one (a device login) is still active; and the user is not disabled. Otherwise
    ``CredentialsChanged``, with nothing written. ``replacing`` (the browser's previous
    session) is ended after the lock, in the order every ending takes."""
    if (verified_version is None) == (approved_by is None):
        raise TypeError("a session needs one proof: verified_version or approved_by")
    lock_user(user)
    if user.disabled_at is not None or (
            verified_version is not None and verified_version != user.credentials_version):
        raise CredentialsChanged()
    if approved_by is not None:
        db.session.refresh(approved_by)
        if approved_by.user_id != user.id or end_reason(approved_by, now) is not None:
            raise CredentialsChanged()
    if replacing is not None:
        end(replacing, EndReason.LOGOUT, now=now, actor=f"user:{replacing.user.sub}",
            ip=origin.ip)
    policy = SessionPolicy.of(user.account)
    ended: list[LoginSession] = []
    active = active_sessions(user, now)
    decision = decide_login(policy, active)
    if decision.outcome is LoginDecision.DENY:
        audit.record(
            "session.denied",
            now=now,
            account_id=user.account_id,
            user_id=user.id,
            actor=f"user:{user.sub}",
            ip=origin.ip,
            reason="concurrent_limit",
            limit=policy.max_concurrent,
        )
        raise SessionLimitReached(user, active)
    for victim in decision.to_end:
        if end(victim, EndReason.EVICTED_CONCURRENT, now=now, actor="policy", ip=origin.ip):
            ended.append(victim)
    row_id, secret, cookie = passwords.new_token()
    session = LoginSession(
        id=row_id,
        secret_hash=passwords.hash_secret(secret),
        user_id=user.id,
        account_id=user.account_id,
        kind=kind,
        created_at=now,
        last_active_at=now,
        updated_at=now,
        amr=list(amr),
        authenticated_at=now,
        ip_first=origin.ip,
        ip_last=origin.ip,
        user_agent=origin.user_agent,
        device_label=origin.device_label,
        device_type=origin.device_type,
        location=origin.location,
    )
    session.user = user
    session.account = user.account
    db.session.add(session)
    audit.record(
        "session.started",
        now=now,
        account_id=user.account_id,
        user_id=user.id,
        session_id=row_id,
        actor=f"user:{user.sub}",
        ip=origin.ip,
        device=origin.device_label,
        location=origin.location,
        kind=kind,
    )
    notices.on_sign_in(session, origin.device_marker, now=now)
    return Started(session, cookie, ended)


def find(cookie: str | None) -> LoginSession | None:
    """The session a cookie names, if the cookie's secret matches (ended ones included)."""
    parts = passwords.split_token(cookie)
    if parts is None:
        return None
    session = db.session.get(LoginSession, parts[0])
    if session is None or not passwords.verify_secret(parts[1], session.secret_hash):
        return None
    return session


def check(session: LoginSession, now: datetime) -> EndReason | None:
    """None while the session is active; otherwise why not. A session that has just
    crossed a deadline (or whose user was disabled) is ended here (the caller commits)."""
    reason = end_reason(session, now)
    if reason is not None and session.ended_at is None:
        end(session, reason, now=now, actor="policy")
    return reason


def recently_authenticated(session: LoginSession, now: datetime, window: timedelta) -> bool:
    """Whether the user proved who they are in this session within ``window``."""
    return now - (session.authenticated_at or session.created_at) <= window


def reauthenticated(session: LoginSession, methods: Iterable[str], *, now: datetime,
                    ip: str | None = None) -> None:
    """The user proved again who they are in this session (a step-up, or before a
    sensitive action): its methods and last authentication change, its id does not."""
    session.amr = list(methods)
    session.authenticated_at = now
    session.updated_at = now
    audit.record("session.reauthenticated", now=now, account_id=session.account_id,
                 user_id=session.user_id, session_id=session.id, actor=f"user:{session.user.sub}",
                 ip=ip, amr=list(methods))


def settle(session_id: str, reason: EndReason, ended_at: datetime, *, now: datetime) -> None:
    """Record the end that a read-only check (introspection, userinfo, the refresh grant's
    read) found — as it found it, whatever policy change committed since — in a
    transaction of its own: once any path has said "inactive", the session is ended, and
    no later policy change can revive it (DESIGN invariant 3). Nothing if already ended."""
    session = db.session.get(LoginSession, session_id)
    if session is not None and end_many(
            [Ending(session.id, session.account_id, session.user_id, reason, ended_at)],
            now=now, actor="policy"):
        db.session.commit()


def touch(session: LoginSession, now: datetime, ip: str, interval: timedelta) -> bool:
    """Record activity, at most one write per ``interval`` unless the IP changed.
    Time never moves backwards here: a clock set back cannot extend a session."""
    values = activity(session.last_active_at, session.ip_last, now, ip, interval)
    for name, value in (values or {}).items():
        setattr(session, name, value)
    return values is not None


def activity(last_active_at: datetime, ip_last: str | None, now: datetime, ip: str,
             interval: timedelta) -> dict | None:
    """The columns ``touch`` would write for a session last active at ``last_active_at``
    from ``ip_last``, or None when nothing needs writing."""
    if now <= last_active_at:
        return None
    if now - last_active_at < interval and ip == ip_last:
        return None
    return {"last_active_at": now, "updated_at": now, "ip_last": ip}


def end(
    session: LoginSession,
    reason: EndReason,
    *,
    now: datetime,
    actor: str,
    ip: str | None = None,
) -> bool:
    """End the session and everything under it. False if it had already ended."""
    ended_at = ended_at_for(reason, policy_of(session), session, now)
    # Codes not yet exchanged die with the session too. First: an exchange that already
    # claimed one holds it until it commits, so this waits for that exchange, and the
    # family it created is there to be revoked below (invariant 2).
    db.session.execute(
        sa.update(AuthorizationCode)
        .where(AuthorizationCode.session_id == session.id, AuthorizationCode.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    result = db.session.execute(
        sa.update(LoginSession)
        .where(LoginSession.id == session.id, LoginSession.ended_at.is_(None))
        .values(ended_at=ended_at, end_reason=str(reason), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:
        db.session.refresh(session)
        return False
    set_committed_value(session, "ended_at", ended_at)
    set_committed_value(session, "end_reason", str(reason))
    set_committed_value(session, "updated_at", now)
    families = db.session.execute(
        sa.update(TokenFamily)
        .where(TokenFamily.session_id == session.id, TokenFamily.revoked_at.is_(None))
        .values(revoked_at=now, revoke_reason="session_ended")
        .execution_options(synchronize_session="fetch")
    ).rowcount
    deliveries = backchannel.enqueue(session, now=now)
    audit.record(
        "session.expired" if reason.is_expiry else "session.ended",
        now=now,
        account_id=session.account_id,
        user_id=session.user_id,
        session_id=session.id,
        actor=actor,
        ip=ip,
        reason=str(reason),
        families_revoked=families,
        logout_notices=len(deliveries) or None,
    )
    return True


def ended_at_for(reason: EndReason, policy: SessionPolicy, session, now: datetime) -> datetime:
    """When an ending is recorded: an expiry at the deadline crossed, not when it was
    noticed; any other ending now, but never before the session's last activity (the
    ending request may have read its clock before a sign-in it waited for)."""
    if reason is EndReason.EXPIRED_DURATION:
        return min(now, policy.absolute_deadline(session))
    if reason is EndReason.EXPIRED_IDLE:
        return min(now, policy.idle_deadline(session))
    return max(now, session.last_active_at)


def end_all(
    user: User,
    reason: EndReason,
    *,
    now: datetime,
    actor: str,
    ip: str | None = None,
    keep: str | None = None,
) -> list[LoginSession]:
    """End every session of the user that exists when this commits, except ``keep`` (a
    session id). The user's row is locked first: a sign-in that committed before is
    ended here; one that waits for the lock starts after, and must pass its own checks
    then. No clock reading decides which sessions existed."""
    lock_user(user)
    query = (sa.select(LoginSession)
             .where(LoginSession.user_id == user.id, LoginSession.ended_at.is_(None))
             .execution_options(populate_existing=True))
    if keep is not None:
        query = query.where(LoginSession.id != keep)
    ended = []
    for session in db.session.scalars(query).all():
        expiry = policy_of(session).expiry_reason(session, now)
        if end(session, expiry or reason, now=now, actor=actor, ip=ip):
            ended.append(session)
    return ended


@dataclass
class SweepResult:
    expired: int = 0
    purged: int = 0
    spent: int = 0  # device codes, used assertions, revocations past their time


# The sweep is set-based: candidates come from indexes over open sessions (created_at and
# last_active_at, partial on ended_at IS NULL), a batch at a time, each batch its own short
# transaction. On PostgreSQL a batch locks its sessions FOR NO KEY UPDATE SKIP LOCKED, so two
# sweeps (two nodes, two cron jobs) share the work without ending a session twice and never
# wait for each other, and a request ending or touching one of them waits at most one batch.
# NO KEY UPDATE (what a plain UPDATE takes) leaves foreign-key checks free: a token exchange
# inserting a family under a locked session is not blocked.

_RETRIES = 5  # a batch chosen as a deadlock victim (PostgreSQL) is retried this many times


def _loosest() -> tuple[timedelta, timedelta] | None:
    """The shortest maximum duration and inactivity timeout of any account: no open session
    is past a deadline unless it is past one of these cutoffs (an index range)."""
    duration, idle = db.session.execute(sa.select(sa.func.min(Account.max_session_duration),
                                                  sa.func.min(Account.idle_timeout))).one()
    if duration is None:
        return None
    return timedelta(seconds=duration), timedelta(seconds=idle)


def _due(now: datetime, column, cutoff: timedelta):
    """Open sessions in one partial index's range that the rule (``end_reason_sql``, under
    each row's account's current policy) says are no longer active."""
    return sa.and_(LoginSession.ended_at.is_(None), column <= now - cutoff,
                   end_reason_sql(now).is_not(None))


def due_for_expiry(now: datetime) -> int:
    """How many open sessions the sweep would end now: those in the range of the maximum
    duration's index, plus those (not in it) in the range of the inactivity index."""
    loosest = _loosest()
    if loosest is None:
        return 0
    by_duration = _due(now, LoginSession.created_at, loosest[0])
    by_idle = sa.and_(_due(now, LoginSession.last_active_at, loosest[1]),
                      LoginSession.created_at > now - loosest[0])
    return sum(db.session.scalar(sa.select(sa.func.count()).select_from(LoginSession)
                                 .where(where)) or 0 for where in (by_duration, by_idle))


def due_for_purge(now: datetime, retention: timedelta) -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(LoginSession).where(
        LoginSession.ended_at < now - retention)) or 0


def _is_retryable(exc: sa.exc.DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in ("40P01", "40001", "55P03")


def _with_retries(work):
    for attempt in range(_RETRIES):
        try:
            result = work()
            db.session.commit()
            return result
        except sa.exc.DBAPIError as exc:
            db.session.rollback()
            if not _is_retryable(exc) or attempt == _RETRIES - 1:
                raise
    return None  # pragma: no cover - the loop returns or raises


def expire_due(now: datetime, *, batch: int = 500, progress=None, actor: str = "sweep") -> int:
    """End every open session past a deadline, ``batch`` at a time; returns how many.
    (The rule decides each; a disabled user's session found there ends as "disabled".
    Disabling a user ends their sessions itself.)

    Two passes: sessions past the loosest maximum duration, then those idle past the
    loosest timeout. Each walks one partial index (open sessions by created_at, by
    last_active_at) once, by keyset; each row is judged by the rule in SQL under its
    account's current policy (``end_reason_sql``), and on PostgreSQL the batch's sessions
    are locked FOR NO KEY UPDATE SKIP LOCKED, so concurrent sweeps share the work."""
    loosest = _loosest()
    db.session.commit()
    if loosest is None:
        return 0
    expired = 0
    for column, cutoff in ((LoginSession.created_at, loosest[0]),
                           (LoginSession.last_active_at, loosest[1])):
        query = (
            sa.select(LoginSession.id, LoginSession.account_id, LoginSession.user_id,
                      LoginSession.created_at, LoginSession.last_active_at,
                      account_value(Account.max_session_duration).label("max_duration"),
                      account_value(Account.idle_timeout).label("idle_timeout"),
                      end_reason_sql(now).label("reason"))
            .where(_due(now, column, cutoff))
            .order_by(column, LoginSession.id)
            .limit(batch)
            .with_for_update(of=LoginSession, skip_locked=True, key_share=True)
        )
        position: tuple[datetime, str] | None = None
        while True:
            page = query
            if position is not None:
                page = page.where(sa.tuple_(column, LoginSession.id) > position)
            rows, ended = _with_retries(lambda page=page: _expire_page(page, now=now, actor=actor))
            if not rows:
                break
            position = (getattr(rows[-1], column.key), rows[-1].id)
            expired += ended
            if progress and ended:
                progress(ended)
    return expired


def _expire_page(query, *, now: datetime, actor: str) -> tuple[list, int]:
    """One batch, one transaction: read (and on PostgreSQL lock, skipping sessions another
    transaction holds) a page of sessions the rule says are over, and end them."""
    _batch_settings()
    rows = db.session.execute(query).all()
    policies: dict[tuple[int, int], SessionPolicy] = {}
    endings = []
    for row in rows:
        key = (row.max_duration, row.idle_timeout)
        if key not in policies:
            policies[key] = SessionPolicy(timedelta(seconds=key[0]), timedelta(seconds=key[1]),
                                          None, OnLimit.DENY)
        endings.append(Ending.of(row, EndReason(row.reason), policies[key], now))
    return rows, end_many(endings, now=now, actor=actor)


@dataclass(frozen=True)
class Ending:
    """One session for ``end_many`` to end: why, and the instant recorded."""

    session_id: str
    account_id: int
    user_id: int
    reason: EndReason
    ended_at: datetime

    @classmethod
    def of(cls, row, reason: EndReason, policy: SessionPolicy, now: datetime) -> Ending:
        """``row``: the session's id, account_id, user_id, created_at, last_active_at."""
        return cls(row.id, row.account_id, row.user_id, reason,
                   ended_at_for(reason, policy, row, now))


def end_many(endings: list[Ending], *, now: datetime, actor: str) -> int:
    """``end`` for many sessions in a few statements, with the same outcome row for row:
    session marked (ended at its deadline), families revoked, pending codes spent, one
    back-channel logout per client with a URI that holds a family, one audit event.
    A session another transaction ended first is left as it is (and not counted); no
    lock is needed beforehand. The caller commits; keep in step with ``end``."""
    if not endings:
        return 0
    ids = [e.session_id for e in endings]
    # Pending codes first, as ``end`` does: an exchange that already claimed one holds it
    # until it commits, so this waits for it and the family it made is revoked below.
    db.session.execute(
        sa.update(AuthorizationCode)
        .where(_among(AuthorizationCode.session_id, ids), AuthorizationCode.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if _postgresql():
        ended = set(db.session.execute(_PG_END_SESSIONS, {
            "ids": _joined(ids), "ended": _joined(_naive(e.ended_at).isoformat() for e in endings),
            "reasons": _joined(str(e.reason) for e in endings), "now": _naive(now)}).scalars())
    else:
        # This transaction holds SQLite's one write turn since the statement above: what
        # is open now stays open until it commits.
        ended = set(db.session.scalars(sa.select(LoginSession.id).where(
            LoginSession.id.in_(ids), LoginSession.ended_at.is_(None))))
        table = LoginSession.__table__
        if ended:
            db.session.connection().execute(
                sa.update(table)
                .where(table.c.id == sa.bindparam("b_id"), table.c.ended_at.is_(None))
                .values(ended_at=sa.bindparam("b_ended_at"), end_reason=sa.bindparam("b_reason"),
                        updated_at=now),
                [{"b_id": e.session_id, "b_ended_at": e.ended_at, "b_reason": str(e.reason)}
                 for e in endings if e.session_id in ended],
            )
    endings = [e for e in endings if e.session_id in ended]
    if not endings:
        return 0
    ids = [e.session_id for e in endings]
    revoked: dict[str, int] = {}
    for (session_id,) in db.session.execute(
        sa.update(TokenFamily)
        .where(_among(TokenFamily.session_id, ids), TokenFamily.revoked_at.is_(None))
        .values(revoked_at=now, revoke_reason="session_ended")
        .returning(TokenFamily.session_id)
        .execution_options(synchronize_session=False)
    ):
        revoked[session_id] = revoked.get(session_id, 0) + 1
    notices: dict[str, int] = {}
    for delivery in _enqueue_logouts(ids, now=now):
        notices[delivery.session_id] = notices.get(delivery.session_id, 0) + 1
    events, details = [], []
    for e in endings:
        detail = {"reason": str(e.reason), "families_revoked": revoked.get(e.session_id, 0)}
        if notices.get(e.session_id):
            detail["logout_notices"] = notices[e.session_id]
        events.append("session.expired" if e.reason.is_expiry else "session.ended")
        details.append(detail)
    if _postgresql():
        db.session.execute(_PG_AUDIT, {
            "at": _naive(now), "actor": actor, "events": _joined(events),
            "accounts": _joined(e.account_id for e in endings),
            "users": _joined(e.user_id for e in endings), "sessions": _joined(ids),
            "details": _joined((json.dumps(d) for d in details), _SEP), "sep": _SEP})
    else:
        db.session.execute(sa.insert(AuditEvent), [
            {"at": now, "event": event, "account_id": e.account_id, "user_id": e.user_id,
             "session_id": e.session_id, "client_id": None, "actor": actor, "ip": None,
             "detail": detail} for e, event, detail in zip(endings, events, details, strict=True)])
    for (event, reason), count in Counter(
            (event, d["reason"]) for event, d in zip(events, details, strict=True)).items():
        EVENTS.labels(event, reason).inc(count)
    return len(endings)


# PostgreSQL: one statement per batch whatever its size, its lists passed as one string
# each and split by the server (ids are URL-safe base64, JSON text never holds a raw
# control character): binding a thousand-element array costs more than the statement.
# Datetimes go in naive UTC, as UTCDateTime stores them.
_SEP = "\x1f"
_PG_END_SESSIONS = sa.text(
    "UPDATE login_sessions AS s SET ended_at = v.ended_at, end_reason = v.reason, "
    "updated_at = :now "
    "FROM unnest(string_to_array(:ids, ','), CAST(string_to_array(:ended, ',') AS timestamp[]), "
    "string_to_array(:reasons, ',')) AS v(id, ended_at, reason) "
    "WHERE s.id = v.id AND s.ended_at IS NULL RETURNING s.id")
_PG_AUDIT = sa.text(
    "INSERT INTO audit_events (at, event, account_id, user_id, session_id, client_id, actor, "
    "ip, detail) "
    "SELECT :at, v.event, v.account_id, v.user_id, v.session_id, NULL, :actor, NULL, "
    "CAST(v.detail AS json) "
    "FROM unnest(string_to_array(:events, ','), CAST(string_to_array(:accounts, ',') AS integer[]), "
    "CAST(string_to_array(:users, ',') AS integer[]), string_to_array(:sessions, ','), "
    "string_to_array(:details, :sep)) AS v(event, account_id, user_id, session_id, detail)")


def _joined(values, sep: str = ",") -> str:
    return sep.join(map(str, values))


def _batch_settings() -> None:
    """For one sweep transaction (PostgreSQL):

    - its commit need not wait for the disk: were the server to crash right after, the
      batch is simply undone, its sessions are still past their deadlines (inactive at
      every check) and the next sweep ends them again; waiting would cost a flush of the
      batch's WAL per transaction;
    - it gives up waiting for a row lock before the deadlock detector (1 s) would pick a
      victim: a request that holds a code or a family of a session the batch has locked,
      and then wants that session, is never the one aborted; the batch is retried."""
    if _postgresql():
        db.session.execute(sa.text("SET LOCAL synchronous_commit = off"))
        db.session.execute(sa.text("SET LOCAL lock_timeout = '500ms'"))


def _postgresql() -> bool:
    return db.session.get_bind().dialect.name == "postgresql"


def _naive(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(tzinfo=None)


def _among(column, values: list):
    """``column IN values``: one array parameter on PostgreSQL (a short statement, whatever
    the batch size), an expanded list elsewhere."""
    if _postgresql():
        return column == sa.any_(sa.cast(sa.func.string_to_array(_joined(values), ","),
                                         postgresql.ARRAY(column.type)))
    return column.in_(values)


@dataclass(frozen=True)
class QueuedDelivery:
    """A delivery written by ``end_many``: what the after-commit attempt needs (its id)."""

    id: int
    session_id: str


def _enqueue_logouts(session_ids: list[str], *, now: datetime) -> list[QueuedDelivery]:
    """``backchannel.enqueue`` for many sessions in one INSERT ... SELECT: one delivery per
    (session, client with a back-channel URI that holds a family under it), picked up
    after commit like theirs."""
    targets = (
        sa.select(TokenFamily.session_id, TokenFamily.client_id, User.sub,
                  Client.backchannel_logout_uri, sa.literal(now, LogoutDelivery.created_at.type),
                  sa.literal(now, LogoutDelivery.next_attempt_at.type), sa.literal(0))
        .join(Client, Client.client_id == TokenFamily.client_id)
        .join(LoginSession, LoginSession.id == TokenFamily.session_id)
        .join(User, User.id == LoginSession.user_id)
        .where(_among(TokenFamily.session_id, session_ids),
               Client.backchannel_logout_uri.is_not(None))
        .distinct()
    )
    deliveries = [QueuedDelivery(row.id, row.session_id) for row in db.session.execute(
        sa.insert(LogoutDelivery)
        .from_select(["session_id", "client_id", "subject", "uri", "created_at",
                      "next_attempt_at", "attempts"], targets)
        .returning(LogoutDelivery.id, LogoutDelivery.session_id)
    )]
    if deliveries:
        db.session.info.setdefault(backchannel.PENDING_KEY, []).extend(deliveries)
    return deliveries


def purge_before(cutoff: datetime, *, batch: int = 500, progress=None) -> int:
    """Delete sessions that ended before ``cutoff`` and everything under them, in batches."""
    purged = 0

    def one_batch() -> tuple[int, int]:
        _batch_settings()
        ids = db.session.scalars(
            sa.select(LoginSession.id)
            .where(LoginSession.ended_at < cutoff)
            .order_by(LoginSession.ended_at, LoginSession.id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).all()
        return len(ids), purge(ids) if ids else 0

    while True:
        found, deleted = _with_retries(one_batch)
        if not found:
            break
        purged += deleted
        if progress:
            progress(deleted)
    return purged


#: A device code is kept this long after it expired, so a device still polling hears
#: ``expired_token`` rather than ``invalid_grant``.
DEVICE_CODE_GRACE = timedelta(hours=1)


#: Email links, and reset requests' outbox rows (addresses as typed), are kept this long.
EMAIL_GRACE = timedelta(days=7)


def purge_spent(now: datetime, *, batch: int = 500) -> int:
    """Rows that only wait for an approval or guard against a replay, once past their
    time: expired device codes, used client assertions, single access-token
    revocations past the token's own expiry, passkey challenges never answered, email
    links a week past their expiry and password-reset requests a week old.
    Batches of their own transactions; returns how many rows went."""
    purged = 0
    for model, column, cutoff in (
            (DeviceCode, DeviceCode.expires_at, now - DEVICE_CODE_GRACE),
            (UsedAssertion, UsedAssertion.expires_at, now),
            (RevokedAccessToken, RevokedAccessToken.expires_at, now),
            (PasskeyChallenge, PasskeyChallenge.expires_at, now),
            (EmailLink, EmailLink.expires_at, now - EMAIL_GRACE),
            (MailMessage, MailMessage.created_at, now - EMAIL_GRACE)):
        key = model.__mapper__.primary_key[0]
        only = MailMessage.session_id.is_(None) if model is MailMessage else sa.true()
        while True:
            due = sa.select(key).where(column <= cutoff, only).order_by(column)
            deleted = _with_retries(lambda due=due, model=model, key=key: _delete_batch(
                model, key, due.limit(batch)))
            purged += deleted
            if deleted < batch:
                break
    return purged


def _delete_batch(model, key, due: sa.Select) -> int:
    """Delete the rows ``due`` selects (a message with its attempts); returns how many."""
    ids = db.session.scalars(due).all()
    if ids and model is MailMessage:
        db.session.execute(sa.delete(MailAttempt).where(MailAttempt.message_id.in_(ids))
                           .execution_options(synchronize_session=False))
    return db.session.execute(sa.delete(model).where(key.in_(ids))
                              .execution_options(synchronize_session=False)).rowcount if ids else 0


def sweep(now: datetime, retention: timedelta, *, batch: int = 500, progress=None,
          purge_progress=None) -> SweepResult:
    """Mark sessions past their deadlines expired and purge old history, in batches.
    Each batch is its own short transaction so logins are never stalled for long, and
    several sweeps may run at once (PostgreSQL): each session is ended exactly once."""
    expired = expire_due(now, batch=batch, progress=progress)
    purged = purge_before(now - retention, batch=batch, progress=purge_progress)
    return SweepResult(expired=expired, purged=purged, spent=purge_spent(now, batch=batch))


def purge(session_ids: list[str]) -> int:
    """Delete sessions and everything that hangs off them (their logout deliveries and
    attempts, the email about them and its links included); returns how many sessions."""
    family_ids = sa.select(TokenFamily.id).where(_among(TokenFamily.session_id, session_ids))
    delivery_ids = sa.select(LogoutDelivery.id).where(
        _among(LogoutDelivery.session_id, session_ids))
    for statement in (
        sa.delete(LogoutAttempt).where(LogoutAttempt.delivery_id.in_(delivery_ids)),
        sa.delete(LogoutDelivery).where(_among(LogoutDelivery.session_id, session_ids)),
        sa.delete(RefreshToken).where(RefreshToken.family_id.in_(family_ids)),
        sa.delete(TokenFamily).where(_among(TokenFamily.session_id, session_ids)),
        sa.delete(AuthorizationCode).where(_among(AuthorizationCode.session_id, session_ids)),
        sa.delete(AuditEvent).where(_among(AuditEvent.session_id, session_ids)),
        sa.delete(MailAttempt).where(MailAttempt.message_id.in_(
            sa.select(MailMessage.id).where(_among(MailMessage.session_id, session_ids)))),
        sa.delete(MailMessage).where(_among(MailMessage.session_id, session_ids)),
        sa.delete(EmailLink).where(_among(EmailLink.session_id, session_ids)),
    ):
        db.session.execute(statement.execution_options(synchronize_session=False))
    return db.session.execute(
        sa.delete(LoginSession).where(_among(LoginSession.id, session_ids))
        .execution_options(synchronize_session=False)
    ).rowcount


# -- what users and administrators see -----------------------------------------------

REASON_TEXT = {
    EndReason.LOGOUT: "Signed out",
    EndReason.ENDED_BY_USER: "Ended by you",
    EndReason.ENDED_ALL: "Ended by you",
    EndReason.ENDED_BY_ADMIN: "Ended by an administrator",
    EndReason.EXPIRED_DURATION: "Expired: maximum duration",
    EndReason.EXPIRED_IDLE: "Expired: inactivity",
    EndReason.EVICTED_CONCURRENT: "Ended: session limit reached",
    EndReason.PASSWORD_CHANGED: "Ended: password changed",
    EndReason.DISABLED: "Ended: account disabled",
    EndReason.POLICY_CHANGED: "Ended: policy changed",
    EndReason.LOCKED_OUT: "Ended: too many wrong passwords",
    EndReason.FACTORS_CHANGED: "Ended: sign-in methods changed",
    EndReason.REPORTED: "Ended: reported by you",
}


def methods_text(amr: Iterable[str] | None) -> str:
    """How a session signed in, in words (RFC 8176 method names)."""
    methods = set(amr or ())
    if methods & {"hwk", "swk"}:
        return "Passkey" if "pwd" not in methods else "Password and passkey"
    if "otp" in methods:
        return "Password and authenticator app"
    if "pwd" in methods:
        return "Password"
    return "Unknown"


EVENT_TEXT = {
    "session.started": "Signed in",
    "session.ended": "Session ended",
    "session.expired": "Session expired",
    "session.denied": "Sign-in refused: session limit",
    "refresh.reused": "Refresh token reused: that app's access was revoked",
    "code.reused": "Authorization code replayed: that app's access was revoked",
    "token.revoked": "An app gave up a token",
    "factor.recovery_code_used": "Signed in with a recovery code",
    "session.reauthenticated": "Confirmed it was you",
    "factor.added": "Added a passkey or authenticator app",
    "factor.removed": "Removed a passkey or authenticator app",
    "session.reported": "Reported as not you, from the email about a new sign-in",
}


@dataclass
class AppGrant:
    """One client holding tokens under a session."""

    client_id: str
    name: str
    scopes: list[str]
    first_issued: datetime
    last_issued: datetime
    active: bool


@dataclass
class SessionView:
    session: LoginSession
    status: Status
    reason: EndReason | None
    absolute_deadline: datetime
    idle_deadline: datetime
    apps: list[AppGrant] = field(default_factory=list)
    events: list[AuditEvent] = field(default_factory=list)

    @property
    def reason_text(self) -> str:
        return REASON_TEXT.get(self.reason, "") if self.reason else ""

    @property
    def methods_text(self) -> str:
        return methods_text(self.session.amr)

    @property
    def active_apps(self) -> list[AppGrant]:
        return [a for a in self.apps if a.active]


def describe(session: LoginSession, now: datetime) -> SessionView:
    """Status and deadlines of one session under the account's current policy."""
    policy = policy_of(session)
    return SessionView(
        session=session,
        status=status(session, now),
        reason=end_reason(session, now),
        absolute_deadline=policy.absolute_deadline(session),
        idle_deadline=policy.idle_deadline(session),
    )


def _attach_details(views: list[SessionView], events_per_session: int) -> None:
    """Apps and the newest events for a page of sessions in two queries, whatever its size
    (one when no events are asked for)."""
    if not views:
        return
    by_id = {v.session.id: v for v in views}
    rows = db.session.execute(
        sa.select(TokenFamily, Client.name)
        .join(Client, Client.client_id == TokenFamily.client_id)
        .where(TokenFamily.session_id.in_(by_id))
        .order_by(TokenFamily.created_at)
    ).all()
    grouped: dict[tuple[str, str], AppGrant] = {}
    for family, name in rows:
        key = (family.session_id, family.client_id)
        grant = grouped.get(key)
        if grant is None:
            grant = grouped[key] = AppGrant(
                family.client_id, name, [], family.created_at, family.last_issued_at, False
            )
            by_id[family.session_id].apps.append(grant)
        grant.scopes = sorted(set(grant.scopes) | set(family.scope.split()))
        grant.first_issued = min(grant.first_issued, family.created_at)
        grant.last_issued = max(grant.last_issued, family.last_issued_at)
        grant.active = grant.active or family.revoked_at is None
    if events_per_session <= 0:
        return
    # The newest few of each session only: a long-lived session's history can be long.
    ranked = (sa.select(AuditEvent.id, sa.func.row_number().over(
        partition_by=AuditEvent.session_id,
        order_by=(AuditEvent.at.desc(), AuditEvent.id.desc())).label("rank"))
        .where(AuditEvent.session_id.in_(by_id)).subquery())
    events = db.session.scalars(
        sa.select(AuditEvent)
        .join(ranked, ranked.c.id == AuditEvent.id)
        .where(ranked.c.rank <= events_per_session)
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
    ).all()
    for event in events:
        by_id[event.session_id].events.append(event)


@dataclass
class Page:
    views: list[SessionView]
    next_cursor: str | None


def _encode_cursor(session: LoginSession) -> str:
    raw = f"{session.last_active_at.isoformat()}|{session.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, session_id = raw.split("|", 1)
        parsed = datetime.fromisoformat(when)
        # Cursors are handed out in UTC; any other offset is not one of ours (and may
        # not even be convertible: 0001-01-01T00:00:00+01:00).
        if parsed.utcoffset() != timedelta(0) or not 0 < len(session_id) <= 32:
            return None
        return parsed, session_id
    except (ValueError, UnicodeDecodeError):
        return None


class BadCursor(ValueError):
    """A pagination cursor that this provider did not hand out."""


def history(
    user: User,
    now: datetime,
    *,
    retention: timedelta,
    only_active: bool = False,
    cursor: str | None = None,
    limit: int = 50,
    events_per_session: int = 20,
) -> Page:
    """The user's sessions, newest activity first: active, expired and ended within
    the retention period (or active only), one page at a time."""
    query = sa.select(LoginSession).where(LoginSession.user_id == user.id)
    if only_active:
        query = query.where(active_sql(now))
    else:
        query = query.where(
            sa.or_(LoginSession.ended_at.is_(None), LoginSession.ended_at >= now - retention)
        )
    if cursor:
        position = _decode_cursor(cursor)
        if position is None:
            raise BadCursor(cursor)
        when, session_id = position
        query = query.where(
            sa.or_(
                LoginSession.last_active_at < when,
                sa.and_(LoginSession.last_active_at == when, LoginSession.id < session_id),
            )
        )
    rows = db.session.scalars(
        query.order_by(LoginSession.last_active_at.desc(), LoginSession.id.desc()).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    views = [describe(s, now) for s in rows]
    _attach_details(views, events_per_session)
    return Page(views, _encode_cursor(rows[-1]) if more and rows else None)


def get_for_user(user: User, session_id: str, now: datetime) -> SessionView | None:
    """One of the user's own sessions, or None (someone else's looks like nothing)."""
    if not session_id or len(session_id) > 32:
        return None
    session = db.session.get(LoginSession, session_id)
    if session is None or session.user_id != user.id:
        return None
    view = describe(session, now)
    _attach_details([view], 50)
    return view
