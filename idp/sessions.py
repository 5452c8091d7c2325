"""The login-session lifecycle: start, find, check, touch, end, sweep.

``end`` is the one way a session stops, whatever the path (the user, an
administrator, the logout endpoint, a policy expiry, a password change, the
sweep): it marks the session, revokes every token family under it and writes
the audit event in the caller's transaction (DESIGN invariant 2).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm.attributes import set_committed_value

from . import audit, passwords
from .models import (
    Account,
    AuditEvent,
    AuthorizationCode,
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
    if now <= session.last_active_at:
        return False
    if now - session.last_active_at < interval and ip == session.ip_last:
        return False
    session.last_active_at = now
    session.updated_at = now
    session.ip_last = ip
    return True


def end(
    session: LoginSession,
    reason: EndReason,
    *,
    now: datetime,
    actor: str,
    ip: str | None = None,
) -> bool:
    """End the session and everything under it. False if it had already ended."""
    result = db.session.execute(
        sa.update(LoginSession)
        .where(LoginSession.id == session.id, LoginSession.ended_at.is_(None))
        .values(ended_at=now, end_reason=str(reason), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:
        db.session.refresh(session)
        return False
    set_committed_value(session, "ended_at", now)
    set_committed_value(session, "end_reason", str(reason))
    set_committed_value(session, "updated_at", now)
    families = db.session.execute(
        sa.update(TokenFamily)
        .where(TokenFamily.session_id == session.id, TokenFamily.revoked_at.is_(None))
        .values(revoked_at=now, revoke_reason="session_ended")
        .execution_options(synchronize_session="fetch")
    ).rowcount
    # Codes not yet exchanged die with the session too.
    db.session.execute(
        sa.update(AuthorizationCode)
        .where(AuthorizationCode.session_id == session.id, AuthorizationCode.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
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
