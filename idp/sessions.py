"""The login-session lifecycle: start, find, check, touch, end, sweep.

``end`` is the one way a session stops, whatever the path (the user, an
administrator, the logout endpoint, a policy expiry, a password change, the
sweep): it marks the session, revokes every token family under it and writes
the audit event in the caller's transaction (DESIGN invariant 2).
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

from . import audit, backchannel, passwords
from .metrics import EVENTS
from .models import (
    Account,
    AuditEvent,
    AuthorizationCode,
    Client,
    EndReason,
    LoginSession,
    LogoutDelivery,
    RefreshToken,
    TokenFamily,
    User,
    db,
)
from .policy import LoginDecision, SessionPolicy, decide_login


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


class SessionLimitReached(Exception):
    """The account's concurrent-session limit refuses this login."""

    def __init__(self, active: list[LoginSession]):
        super().__init__("concurrent session limit reached")
        self.active = active


@dataclass
class Started:
    session: LoginSession
    cookie: str
    ended: list[LoginSession] = field(default_factory=list)


def policy_of(session: LoginSession) -> SessionPolicy:
    return SessionPolicy.of(session.account)


def status(session: LoginSession, now: datetime) -> Status:
    """Derived, never stored: ended/expired by its end reason, or by the current policy."""
    if session.ended_at is not None:
        return Status.EXPIRED if EndReason(session.end_reason).is_expiry else Status.ENDED
    if policy_of(session).expiry_reason(session, now) is not None:
        return Status.EXPIRED
    return Status.ACTIVE


def active_sessions(user_id: int, now: datetime, *, lock: bool = False) -> list[LoginSession]:
    """The user's sessions that are active under the account's current policy."""
    if lock:
        # Serialises logins of one user: a row lock on PostgreSQL, the writer lock on
        # SQLite. Both hold until commit, so concurrent logins see each other's rows.
        db.session.execute(sa.update(User).where(User.id == user_id).values(id=User.id))
    rows = db.session.scalars(
        sa.select(LoginSession).where(
            LoginSession.user_id == user_id, LoginSession.ended_at.is_(None)
        )
    ).all()
    return [s for s in rows if policy_of(s).expiry_reason(s, now) is None]


def members_with_active_counts(account: Account, now: datetime) -> list[tuple[User, int]]:
    """The account's users (by email) and how many active sessions each has now."""
    policy = SessionPolicy.of(account)
    counts = dict(db.session.execute(
        sa.select(LoginSession.user_id, sa.func.count())
        .where(LoginSession.account_id == account.id, LoginSession.ended_at.is_(None),
               LoginSession.created_at > now - policy.max_duration,
               LoginSession.last_active_at > now - policy.idle_timeout)
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
    kind: str = "browser",
    amr: Iterable[str] = ("pwd",),
) -> Started:
    """Open a session under the account's policy (may end the oldest, or refuse)."""
    policy = SessionPolicy.of(user.account)
    ended: list[LoginSession] = []
    active = active_sessions(user.id, now, lock=True)
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
        raise SessionLimitReached(active)
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
    crossed a deadline is marked expired here (the caller commits)."""
    if session.ended_at is not None:
        return EndReason(session.end_reason)
    reason = policy_of(session).expiry_reason(session, now)
    if reason is not None:
        end(session, reason, now=now, actor="policy")
    return reason


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
    """End the session and everything under it. False if it had already ended.
    An expired session is recorded as ended at its deadline, not when it was noticed."""
    ended_at = now
    if reason is EndReason.EXPIRED_DURATION:
        ended_at = min(now, policy_of(session).absolute_deadline(session))
    elif reason is EndReason.EXPIRED_IDLE:
        ended_at = min(now, policy_of(session).idle_deadline(session))
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


def end_all(
    user: User,
    reason: EndReason,
    *,
    now: datetime,
    actor: str,
    ip: str | None = None,
    keep: str | None = None,
) -> list[LoginSession]:
    """End every open session of the user that had started by ``now``, except ``keep``
    (a session id). A sign-in that commits while this request runs, after its instant,
    is a new session, not one the user asked to end (and ending it "at ``now``" would
    record it ended before it started)."""
    query = sa.select(LoginSession).where(
        LoginSession.user_id == user.id, LoginSession.ended_at.is_(None),
        LoginSession.created_at <= now,
    )
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


# The sweep is set-based: candidates come from indexes over open sessions (created_at and
# last_active_at, partial on ended_at IS NULL), a batch at a time, each batch its own short
# transaction. On PostgreSQL a batch locks its sessions FOR NO KEY UPDATE SKIP LOCKED, so two
# sweeps (two nodes, two cron jobs) share the work without ending a session twice and never
# wait for each other, and a request ending or touching one of them waits at most one batch.
# NO KEY UPDATE (what a plain UPDATE takes) leaves foreign-key checks free: a token exchange
# inserting a family under a locked session is not blocked.

_RETRIES = 5  # a batch chosen as a deadlock victim (PostgreSQL) is retried this many times


def _expiry(max_duration: timedelta, idle_timeout: timedelta, created_at: datetime,
            last_active_at: datetime, now: datetime) -> tuple[EndReason, datetime] | None:
    """``SessionPolicy.expiry_reason`` and the deadline crossed, from plain values."""
    absolute = created_at + max_duration
    if now >= absolute:
        return EndReason.EXPIRED_DURATION, absolute
    idle = last_active_at + idle_timeout
    if now >= idle:
        return EndReason.EXPIRED_IDLE, idle
    return None


def _limit_of(column) -> sa.ScalarSelect:
    """The account's current limit for a deadline column, in seconds, per session row."""
    limit = Account.max_session_duration if column is LoginSession.created_at else (
        Account.idle_timeout)
    return sa.select(limit).where(Account.id == LoginSession.account_id).scalar_subquery()


def _past_own_limit(column, now: datetime):
    """``column <= now - <the account's limit>`` evaluated by PostgreSQL for each row the
    index range yields (accounts is small and cached), so a batch locks only sessions
    really past their deadline. None elsewhere: the caller filters in Python."""
    if not _postgresql():
        return None
    return column <= sa.literal(now, column.type) - sa.func.make_interval(
        0, 0, 0, 0, 0, 0, _limit_of(column))


def due_for_expiry(now: datetime) -> int:
    """How many open sessions are past a deadline under their account's current policy:
    those past the maximum duration, plus those (not past it) idle too long. Each count
    is one range of a partial index (from the loosest cutoff any account allows), judged
    per row by its account's policy."""
    loosest = db.session.execute(sa.select(sa.func.min(Account.max_session_duration),
                                           sa.func.min(Account.idle_timeout))).one()
    if loosest[0] is None:
        return 0
    if not _postgresql():
        return len(_due_rows(now, loosest))
    created, last = LoginSession.created_at, LoginSession.last_active_at
    over_duration = db.session.scalar(
        sa.select(sa.func.count()).select_from(LoginSession).where(
            LoginSession.ended_at.is_(None), created <= now - timedelta(seconds=loosest[0]),
            _past_own_limit(created, now)))
    idle_only = db.session.scalar(
        sa.select(sa.func.count()).select_from(LoginSession).where(
            LoginSession.ended_at.is_(None), last <= now - timedelta(seconds=loosest[1]),
            _past_own_limit(last, now), sa.not_(_past_own_limit(created, now))))
    return (over_duration or 0) + (idle_only or 0)


def _due_rows(now: datetime, loosest: tuple[int, int]) -> set[str]:
    """The ids of open sessions past a deadline, judged in Python (SQLite)."""
    due = set()
    for column, seconds in ((LoginSession.created_at, loosest[0]),
                            (LoginSession.last_active_at, loosest[1])):
        for row in db.session.execute(
            sa.select(LoginSession.id, LoginSession.created_at, LoginSession.last_active_at,
                      _limit_of(LoginSession.created_at), _limit_of(LoginSession.last_active_at))
            .where(LoginSession.ended_at.is_(None), column <= now - timedelta(seconds=seconds))
        ):
            if _expiry(timedelta(seconds=row[3]), timedelta(seconds=row[4]), row[1], row[2], now):
                due.add(row[0])
    return due


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

    Two passes: sessions past their maximum duration, then those idle too long. Each walks
    one partial index (open sessions by created_at, by last_active_at) once, by keyset,
    from the loosest cutoff any account's policy allows; each row is judged by its
    account's current policy (in the query on PostgreSQL, which also locks the batch's
    sessions FOR NO KEY UPDATE SKIP LOCKED, so concurrent sweeps share the work)."""
    loosest = db.session.execute(sa.select(sa.func.min(Account.max_session_duration),
                                           sa.func.min(Account.idle_timeout))).one()
    db.session.commit()
    if loosest[0] is None:
        return 0
    expired = 0
    for column, seconds in ((LoginSession.created_at, loosest[0]),
                            (LoginSession.last_active_at, loosest[1])):
        query = (
            sa.select(LoginSession.id, LoginSession.account_id, LoginSession.user_id,
                      LoginSession.created_at, LoginSession.last_active_at,
                      _limit_of(LoginSession.created_at).label("max_duration"),
                      _limit_of(LoginSession.last_active_at).label("idle_timeout"))
            .where(LoginSession.ended_at.is_(None), column <= now - timedelta(seconds=seconds))
            .order_by(column, LoginSession.id)
            .limit(batch)
            .with_for_update(of=LoginSession, skip_locked=True, key_share=True)
        )
        exact = _past_own_limit(column, now)
        if exact is not None:
            query = query.where(exact)
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
    transaction holds) a page of candidates and end those past a deadline."""
    _batch_settings()
    rows = db.session.execute(query).all()
    limits: dict[tuple[int, int], tuple[timedelta, timedelta]] = {}
    endings = []
    for row in rows:
        key = (row.max_duration, row.idle_timeout)
        if key not in limits:
            limits[key] = (timedelta(seconds=key[0]), timedelta(seconds=key[1]))
        expiry = _expiry(*limits[key], row.created_at, row.last_active_at, now)
        if expiry:
            endings.append(_Ending(row.id, row.account_id, row.user_id, expiry[0],
                                   min(now, expiry[1])))
    return rows, end_many(endings, now=now, actor=actor)


@dataclass(frozen=True)
class _Ending:
    session_id: str
    account_id: int
    user_id: int
    reason: EndReason
    ended_at: datetime


def end_many(endings: list[_Ending], *, now: datetime, actor: str) -> int:
    """``end`` for many sessions in a few statements, with the same outcome row for row:
    session marked (ended at its deadline), families revoked, pending codes spent, one
    back-channel logout per client with a URI that holds a family, one audit event. The
    caller holds the sessions' locks (or SQLite's writer lock) and commits; keep in step
    with ``end``."""
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
        updated = db.session.execute(_PG_END_SESSIONS, {
            "ids": _joined(ids), "ended": _joined(_naive(e.ended_at).isoformat() for e in endings),
            "reasons": _joined(str(e.reason) for e in endings), "now": _naive(now)}).rowcount
    else:
        table = LoginSession.__table__
        updated = db.session.connection().execute(
            sa.update(table)
            .where(table.c.id == sa.bindparam("b_id"), table.c.ended_at.is_(None))
            .values(ended_at=sa.bindparam("b_ended_at"), end_reason=sa.bindparam("b_reason"),
                    updated_at=now),
            [{"b_id": e.session_id, "b_ended_at": e.ended_at, "b_reason": str(e.reason)}
             for e in endings],
        ).rowcount
    if updated != len(endings):
        # Only without row locks (another writer got in between): fall back to one at a time.
        db.session.rollback()
        return sum(end(db.session.get(LoginSession, e.session_id), e.reason, now=now, actor=actor)
                   for e in endings)
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
    "WHERE s.id = v.id AND s.ended_at IS NULL")
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


def sweep(now: datetime, retention: timedelta, *, batch: int = 500, progress=None,
          purge_progress=None) -> SweepResult:
    """Mark sessions past their deadlines expired and purge old history, in batches.
    Each batch is its own short transaction so logins are never stalled for long, and
    several sweeps may run at once (PostgreSQL): each session is ended exactly once."""
    expired = expire_due(now, batch=batch, progress=progress)
    purged = purge_before(now - retention, batch=batch, progress=purge_progress)
    return SweepResult(expired=expired, purged=purged)


def purge(session_ids: list[str]) -> int:
    """Delete sessions and everything that hangs off them; returns how many sessions."""
    family_ids = sa.select(TokenFamily.id).where(_among(TokenFamily.session_id, session_ids))
    for statement in (
        sa.delete(RefreshToken).where(RefreshToken.family_id.in_(family_ids)),
        sa.delete(TokenFamily).where(_among(TokenFamily.session_id, session_ids)),
        sa.delete(AuthorizationCode).where(_among(AuthorizationCode.session_id, session_ids)),
        sa.delete(AuditEvent).where(_among(AuditEvent.session_id, session_ids)),
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
}


EVENT_TEXT = {
    "session.started": "Signed in",
    "session.ended": "Session ended",
    "session.expired": "Session expired",
    "session.denied": "Sign-in refused: session limit",
    "refresh.reused": "Refresh token reused: that app's access was revoked",
    "code.reused": "Authorization code replayed: that app's access was revoked",
    "token.revoked": "An app gave up a token",
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
    def active_apps(self) -> list[AppGrant]:
        return [a for a in self.apps if a.active]


def describe(session: LoginSession, now: datetime) -> SessionView:
    """Status and deadlines of one session under the account's current policy."""
    policy = policy_of(session)
    current = status(session, now)
    reason = None
    if session.ended_at is not None:
        reason = EndReason(session.end_reason)
    elif current is Status.EXPIRED:
        reason = policy.expiry_reason(session, now)
    return SessionView(
        session=session,
        status=current,
        reason=reason,
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
        if parsed.tzinfo is None or not 0 < len(session_id) <= 32:
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
    policy = SessionPolicy.of(user.account)
    query = sa.select(LoginSession).where(LoginSession.user_id == user.id)
    if only_active:
        query = query.where(
            LoginSession.ended_at.is_(None),
            LoginSession.created_at > now - policy.max_duration,
            LoginSession.last_active_at > now - policy.idle_timeout,
        )
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
