"""An account's session policy: its limits, their bounds, and what they mean for a session.

The policy is read at check time, never copied into sessions, so a stricter
policy reaches existing sessions at their next check (DESIGN invariant 3).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from . import audit
from .config import parse_duration
from .models import Account, EndReason, LoginSession, OnLimit, db


@dataclass(frozen=True)
class SessionPolicy:
    max_duration: timedelta
    idle_timeout: timedelta
    max_concurrent: int | None
    on_limit: OnLimit

    @classmethod
    def of(cls, account: Account) -> SessionPolicy:
        return cls(
            max_duration=timedelta(seconds=account.max_session_duration),
            idle_timeout=timedelta(seconds=account.idle_timeout),
            max_concurrent=account.max_concurrent_sessions,
            on_limit=OnLimit(account.on_concurrent_limit),
        )

    def absolute_deadline(self, session: LoginSession) -> datetime:
        return session.created_at + self.max_duration

    def idle_deadline(self, session: LoginSession) -> datetime:
        return session.last_active_at + self.idle_timeout

    def deadline(self, session: LoginSession) -> datetime:
        """The moment the session stops being active if nobody uses it."""
        return min(self.absolute_deadline(session), self.idle_deadline(session))

    def expiry_reason(self, session: LoginSession, now: datetime) -> EndReason | None:
        """Why the session is past a deadline at ``now`` (a deadline is the first
        instant at which the session is no longer active), or None."""
        if now >= self.absolute_deadline(session):
            return EndReason.EXPIRED_DURATION
        if now >= self.idle_deadline(session):
            return EndReason.EXPIRED_IDLE
        return None


@dataclass(frozen=True)
class PolicyBounds:
    """What administrators may set; from config so operators can tighten them."""

    duration_min: timedelta
    duration_max: timedelta
    idle_min: timedelta
    idle_max: timedelta
    concurrent_max: int

    @classmethod
    def from_config(cls, config: dict) -> PolicyBounds:
        return cls(
            duration_min=config["SESSION_DURATION_MIN"],
            duration_max=config["SESSION_DURATION_MAX"],
            idle_min=config["IDLE_TIMEOUT_MIN"],
            idle_max=config["IDLE_TIMEOUT_MAX"],
            concurrent_max=config["CONCURRENT_SESSIONS_MAX"],
        )


class PolicyError(ValueError):
    """Out-of-bounds input; ``errors`` maps each field to a message for that field."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _hours(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def validate(
    bounds: PolicyBounds,
    *,
    max_duration: object,
    idle_timeout: object,
    max_concurrent: object,
    on_limit: object,
) -> SessionPolicy:
    """Parse and check new values; raise PolicyError naming each bad field."""
    errors: dict[str, str] = {}
    duration = idle = None
    try:
        duration = parse_duration(max_duration)
        if not bounds.duration_min <= duration <= bounds.duration_max:
            errors["max_duration"] = (
                f"must be between {_hours(bounds.duration_min)} and {_hours(bounds.duration_max)}"
            )
    except ValueError as exc:
        errors["max_duration"] = str(exc)
    try:
        idle = parse_duration(idle_timeout)
        if not bounds.idle_min <= idle <= bounds.idle_max:
            errors["idle_timeout"] = (
                f"must be between {_hours(bounds.idle_min)} and {_hours(bounds.idle_max)}"
            )
        elif duration is not None and "max_duration" not in errors and idle > duration:
            errors["idle_timeout"] = "must not be longer than the maximum session duration"
    except ValueError as exc:
        errors["idle_timeout"] = str(exc)
    concurrent: int | None = None
    if max_concurrent in (None, "", "unlimited"):
        concurrent = None
    else:
        try:
            concurrent = int(str(max_concurrent))
            if not 1 <= concurrent <= bounds.concurrent_max:
                errors["max_concurrent"] = f"must be between 1 and {bounds.concurrent_max}"
        except ValueError:
            errors["max_concurrent"] = "must be a whole number or 'unlimited'"
    try:
        limit = OnLimit(str(on_limit))
    except ValueError:
        errors["on_limit"] = "must be 'deny' or 'end_oldest'"
        limit = OnLimit.DENY
    if errors:
        raise PolicyError(errors)
    return SessionPolicy(duration, idle, concurrent, limit)


class LoginDecision(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    END_OLDEST = "end_oldest"


@dataclass(frozen=True)
class Decision:
    outcome: LoginDecision
    to_end: tuple[LoginSession, ...] = ()


def decide_login(policy: SessionPolicy, active: list[LoginSession]) -> Decision:
    """What a new login does given the user's currently active sessions."""
    limit = policy.max_concurrent
    if limit is None or len(active) < limit:
        return Decision(LoginDecision.ALLOW)
    if policy.on_limit is OnLimit.DENY:
        return Decision(LoginDecision.DENY)
    excess = len(active) - limit + 1
    oldest = sorted(active, key=lambda s: (s.last_active_at, s.created_at, s.id))[:excess]
    return Decision(LoginDecision.END_OLDEST, tuple(oldest))


# -- changing an account's policy ---------------------------------------------------


@dataclass(frozen=True)
class Impact:
    """What saving a new policy would do at once, shown before it is saved."""

    sessions_ended: int
    users_with_sessions_ended: int
    users_over_limit: int
    updated_sessions: int

    def as_dict(self) -> dict:
        return {
            "sessions_ended_now": self.sessions_ended,
            "users_with_sessions_ended_now": self.users_with_sessions_ended,
            "users_over_concurrent_limit": self.users_over_limit,
            "sessions_whose_deadlines_move": self.updated_sessions,
        }


def _active_rows(account: Account, now: datetime) -> list[tuple[str, int, datetime, datetime]]:
    current = SessionPolicy.of(account)
    return db.session.execute(
        sa.select(LoginSession.id, LoginSession.user_id, LoginSession.created_at,
                  LoginSession.last_active_at)
        .where(
            LoginSession.account_id == account.id,
            LoginSession.ended_at.is_(None),
            LoginSession.created_at > now - current.max_duration,
            LoginSession.last_active_at > now - current.idle_timeout,
        )
    ).all()


def impact(account: Account, new: SessionPolicy, now: datetime) -> Impact:
    """Count, without changing anything, what the new values would end or move."""
    rows = _active_rows(account, now)
    ended = [
        r for r in rows
        if now >= r.created_at + new.max_duration or now >= r.last_active_at + new.idle_timeout
    ]
    per_user: dict[int, int] = {}
    for r in rows:
        if r not in ended:
            per_user[r.user_id] = per_user.get(r.user_id, 0) + 1
    over = 0
    if new.max_concurrent is not None:
        over = sum(1 for count in per_user.values() if count > new.max_concurrent)
    current = SessionPolicy.of(account)
    moved = len(rows) if (new.max_duration, new.idle_timeout) != (
        current.max_duration, current.idle_timeout) else 0
    return Impact(len(ended), len({r.user_id for r in ended}), over, moved)


def change(account: Account, new: SessionPolicy, *, now: datetime, actor: str,
           ip: str | None = None) -> dict:
    """Store the new policy. Sessions are judged by it at their next check (a shorter
    duration can expire them at once); those whose deadlines moved show "updated" now.
    Returns {field: [old, new]} for what changed."""
    old = SessionPolicy.of(account)
    changes = {}
    for name, before, after in (
        ("max_duration", int(old.max_duration.total_seconds()),
         int(new.max_duration.total_seconds())),
        ("idle_timeout", int(old.idle_timeout.total_seconds()),
         int(new.idle_timeout.total_seconds())),
        ("max_concurrent", old.max_concurrent, new.max_concurrent),
        ("on_limit", str(old.on_limit), str(new.on_limit)),
    ):
        if before != after:
            changes[name] = [before, after]
    if not changes:
        return changes
    if "max_duration" in changes or "idle_timeout" in changes:
        ids = [r.id for r in _active_rows(account, now)]
        for start in range(0, len(ids), 500):
            db.session.execute(
                sa.update(LoginSession)
                .where(LoginSession.id.in_(ids[start:start + 500]))
                .values(updated_at=now)
                .execution_options(synchronize_session=False)
            )
    account.max_session_duration = int(new.max_duration.total_seconds())
    account.idle_timeout = int(new.idle_timeout.total_seconds())
    account.max_concurrent_sessions = new.max_concurrent
    account.on_concurrent_limit = str(new.on_limit)
    account.policy_updated_at = now
    audit.record("policy.changed", now=now, account_id=account.id, actor=actor, ip=ip,
                 changes=changes)
    return changes
