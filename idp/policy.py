"""An account's session policy: its limits, their bounds, and what they mean for a session.

The policy is read at check time, never copied into sessions, so a stricter
policy reaches existing sessions at their next check (DESIGN invariant 3).

``SessionPolicy.end_reason`` is the one rule of whether a login session is still active,
and ``end_reason_sql`` the same rule in SQL for bulk work (the sweep, the "active" lists
and counts); ``tests/test_policy.py`` holds them equal at the exact deadlines on both
databases. Every other check of a session or a token asks one of these two.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from .config import parse_duration
from .models import Account, EndReason, LoginSession, OnLimit, User, UTCDateTime, seconds_before


@dataclass(frozen=True)
class SessionPolicy:
    max_duration: timedelta
    idle_timeout: timedelta
    max_concurrent: int | None
    on_limit: OnLimit
    require_mfa: bool = False
    #: Every user gets new-device sign-in notices (``notices``), whatever they chose.
    require_notices: bool = False

    @classmethod
    def of(cls, account: Account) -> SessionPolicy:
        return cls(
            max_duration=timedelta(seconds=account.max_session_duration),
            idle_timeout=timedelta(seconds=account.idle_timeout),
            max_concurrent=account.max_concurrent_sessions,
            on_limit=OnLimit(account.on_concurrent_limit),
            require_mfa=bool(account.require_mfa),
            require_notices=bool(account.require_new_device_notices),
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

    def end_reason(self, session: LoginSession, now: datetime, *,
                   user_disabled: bool) -> EndReason | None:
        """None while the session is active under this policy; otherwise why not: the end
        recorded on it, its user disabled, or the deadline it is past. The rule every
        check asks (DESIGN invariant 10); ``end_reason_sql`` is its SQL form. ``session``
        is anything with the session's ``ended_at``, ``end_reason``, ``created_at`` and
        ``last_active_at`` (a ``LoginSession``, a ``tokens.Holder``, a row)."""
        if session.ended_at is not None:
            return EndReason(session.end_reason)
        if user_disabled:
            return EndReason.DISABLED
        return self.expiry_reason(session, now)


def account_value(column) -> sa.ScalarSelect:
    """The session's account's current value of ``column``, per session row."""
    return sa.select(column).where(Account.id == LoginSession.account_id).scalar_subquery()


def end_reason_sql(now: datetime) -> sa.Case:
    """``SessionPolicy.end_reason`` of each ``login_sessions`` row under its account's
    current policy, as one SQL expression: the reason as text, NULL while the session is
    active. Deadlines are computed to the microsecond on both databases
    (``models.seconds_before``), so the two forms agree at the exact instant."""
    at = sa.literal(now, UTCDateTime())
    disabled = sa.select(User.disabled_at).where(User.id == LoginSession.user_id).scalar_subquery()
    return sa.case(
        (LoginSession.ended_at.is_not(None), LoginSession.end_reason),
        (disabled.is_not(None), sa.literal(str(EndReason.DISABLED))),
        (LoginSession.created_at <= seconds_before(at, account_value(Account.max_session_duration)),
         sa.literal(str(EndReason.EXPIRED_DURATION))),
        (LoginSession.last_active_at <= seconds_before(at, account_value(Account.idle_timeout)),
         sa.literal(str(EndReason.EXPIRED_IDLE))),
        else_=sa.null(),
    )


def active_sql(now: datetime) -> sa.ColumnElement[bool]:
    """Sessions active at ``now`` (``end_reason_sql`` is NULL), with "open" spelled out so
    the partial indexes over open sessions apply."""
    return sa.and_(LoginSession.ended_at.is_(None), end_reason_sql(now).is_(None))


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
    require_mfa: object = False,
    require_notices: object = False,
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
    mfa = _flag(require_mfa)
    if mfa is None:
        errors["require_mfa"] = "must be true or false"
    notify = _flag(require_notices)
    if notify is None:
        errors["require_notices"] = "must be true or false"
    if errors:
        raise PolicyError(errors)
    return SessionPolicy(duration, idle, concurrent, limit, mfa, notify)


def _flag(value: object) -> bool | None:
    """A yes/no field from a form ("on"), JSON (true) or the CLI; None when neither."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    return None


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
