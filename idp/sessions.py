"""The login-session lifecycle: start, find, check, touch, end, sweep.

``end`` is the one way a session stops, whatever the path (the user, an
administrator, the logout endpoint, a policy expiry, a password change, the
sweep): it marks the session, revokes every token family under it and writes
the audit event in the caller's transaction (DESIGN invariant 2).
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm.attributes import set_committed_value

from . import audit, backchannel, passwords
from .models import (
    Account,
    AuditEvent,
    AuthorizationCode,
    Client,
    EndReason,
    LoginSession,
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
    values = activity(session, now, ip, interval)
    for name, value in (values or {}).items():
        setattr(session, name, value)
    return values is not None


def activity(session: LoginSession, now: datetime, ip: str, interval: timedelta) -> dict | None:
    """The columns ``touch`` would write, or None when nothing needs writing."""
    if now <= session.last_active_at:
        return None
    if now - session.last_active_at < interval and ip == session.ip_last:
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
    """End every open session of the user except ``keep`` (a session id)."""
    query = sa.select(LoginSession).where(
        LoginSession.user_id == user.id, LoginSession.ended_at.is_(None)
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


def sweep(now: datetime, retention: timedelta, *, batch: int = 500, progress=None) -> SweepResult:
    """Mark sessions past their deadlines expired and purge old history, in batches.
    Each batch is its own transaction so logins are never stalled for long."""
    result = SweepResult()
    accounts = {a.id: SessionPolicy.of(a) for a in db.session.scalars(sa.select(Account))}
    last_id = ""
    while True:
        rows = db.session.scalars(
            sa.select(LoginSession)
            .where(LoginSession.ended_at.is_(None), LoginSession.id > last_id)
            .order_by(LoginSession.id)
            .limit(batch)
        ).all()
        if not rows:
            break
        last_id = rows[-1].id
        for session in rows:
            reason = accounts[session.account_id].expiry_reason(session, now)
            if reason is not None and end(session, reason, now=now, actor="sweep"):
                result.expired += 1
        db.session.commit()
        if progress:
            progress(len(rows))
    cutoff = now - retention
    while True:
        ids = db.session.scalars(
            sa.select(LoginSession.id).where(LoginSession.ended_at < cutoff).limit(batch)
        ).all()
        if not ids:
            break
        purge(ids)
        db.session.commit()
        result.purged += len(ids)
    return result


def purge(session_ids: list[str]) -> None:
    """Delete sessions and everything that hangs off them."""
    family_ids = sa.select(TokenFamily.id).where(TokenFamily.session_id.in_(session_ids))
    db.session.execute(sa.delete(RefreshToken).where(RefreshToken.family_id.in_(family_ids)))
    db.session.execute(sa.delete(TokenFamily).where(TokenFamily.session_id.in_(session_ids)))
    db.session.execute(
        sa.delete(AuthorizationCode).where(AuthorizationCode.session_id.in_(session_ids))
    )
    db.session.execute(sa.delete(AuditEvent).where(AuditEvent.session_id.in_(session_ids)))
    db.session.execute(sa.delete(LoginSession).where(LoginSession.id.in_(session_ids)))


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
    """Apps and events for a page of sessions in two queries, whatever its size."""
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
    events = db.session.scalars(
        sa.select(AuditEvent)
        .where(AuditEvent.session_id.in_(by_id))
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
    ).all()
    for event in events:
        view = by_id[event.session_id]
        if len(view.events) < events_per_session:
            view.events.append(event)


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
