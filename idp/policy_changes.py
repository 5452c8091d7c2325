"""Changing an account's session policy: what it would do (the preview), and doing it.

A policy is read at every check, so a stricter one makes sessions inactive at once. A
change also *ends* them, in its own transaction: every open session that is past a
deadline under the values in force (recorded as the expiry it is, at its deadline) or
under the new values ("Ended: policy changed", now) is ended with its tokens revoked and
its back-channel logouts queued. So relaxing the policy later brings nothing back:
inactive is monotonic (DESIGN invariant 3). The preview is the same plan, not carried out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from . import audit, factors, sessions
from .models import ACR_MFA, Account, EndReason, LoginSession, User, db
from .policy import SessionPolicy


@dataclass(frozen=True)
class Impact:
    """What saving a new policy does at once; the preview shows the same numbers."""

    sessions_ended: int
    users_with_sessions_ended: int
    users_over_limit: int
    updated_sessions: int
    expired_closed: int
    users_without_second_factor: int = 0

    def as_dict(self) -> dict:
        return {
            "sessions_ended_now": self.sessions_ended,
            "users_with_sessions_ended_now": self.users_with_sessions_ended,
            "users_over_concurrent_limit": self.users_over_limit,
            "sessions_whose_deadlines_move": self.updated_sessions,
            "expired_sessions_closed": self.expired_closed,
            "users_without_second_factor": self.users_without_second_factor,
        }


@dataclass
class Plan:
    """The account's open sessions sorted by what a change from ``old`` to ``new`` does."""

    closed: list[sessions.Ending] = field(default_factory=list)  # already over under ``old``
    cut: list[sessions.Ending] = field(default_factory=list)  # active, over under ``new``
    moved: list[str] = field(default_factory=list)  # active; deadlines move
    users_over_limit: int = 0
    users_without_factor: int = 0

    def impact(self) -> Impact:
        return Impact(len(self.cut), len({e.user_id for e in self.cut}), self.users_over_limit,
                      len(self.moved), len(self.closed), self.users_without_factor)


def _plan(account: Account, old: SessionPolicy, new: SessionPolicy, now: datetime, *,
          end_password_only: bool = False) -> Plan:
    """Judge each open session of the account with the rule (``SessionPolicy.end_reason``)
    under the old values, then under the new; with ``end_password_only`` and a second
    factor required, sessions that signed in without one end too."""
    rows = db.session.execute(
        sa.select(LoginSession.id, LoginSession.account_id, LoginSession.user_id,
                  LoginSession.created_at, LoginSession.last_active_at, LoginSession.ended_at,
                  LoginSession.end_reason, LoginSession.amr, User.disabled_at)
        .join(User, User.id == LoginSession.user_id)
        .where(LoginSession.account_id == account.id, LoginSession.ended_at.is_(None))
    ).all()
    plan = Plan()
    moves = (new.max_duration, new.idle_timeout) != (old.max_duration, old.idle_timeout)
    remaining: dict[int, int] = {}
    for row in rows:
        reason = old.end_reason(row, now, user_disabled=row.disabled_at is not None)
        if reason is not None:
            plan.closed.append(sessions.Ending.of(row, reason, old, now))
            continue
        if moves:
            plan.moved.append(row.id)
        password_only = ACR_MFA not in (row.amr or ())
        if new.end_reason(row, now, user_disabled=False) is not None or (
                end_password_only and new.require_mfa and password_only):
            plan.cut.append(sessions.Ending.of(row, EndReason.POLICY_CHANGED, new, now))
        else:
            remaining[row.user_id] = remaining.get(row.user_id, 0) + 1
    if new.max_concurrent is not None:
        plan.users_over_limit = sum(1 for n in remaining.values() if n > new.max_concurrent)
    if new.require_mfa:
        users = list(db.session.scalars(sa.select(User.id).where(User.account_id == account.id)))
        plan.users_without_factor = len(users) - len(factors.enrolled_users(users))
    return plan


def preview(account: Account, new: SessionPolicy, now: datetime, *,
            end_password_only: bool = False) -> Impact:
    """What ``apply`` would do now, without changing anything."""
    return _plan(account, SessionPolicy.of(account), new, now,
                 end_password_only=end_password_only).impact()


@dataclass(frozen=True)
class Applied:
    changes: dict  # {field: [old, new]}
    impact: Impact


def apply(account: Account, new: SessionPolicy, *, now: datetime, actor: str,
          ip: str | None = None, end_password_only: bool = False) -> Applied:
    """Store the new policy and, in the same transaction, end what it ends (see the module
    docstring); sessions whose deadlines moved show "updated" now. The account's row is
    locked first, so two changes take turns. The caller commits."""
    db.session.execute(sa.update(Account).where(Account.id == account.id)
                       .values(id=Account.id).execution_options(synchronize_session=False))
    db.session.refresh(account)
    old = SessionPolicy.of(account)
    changes = {}
    for name, before, after in (
        ("max_duration", int(old.max_duration.total_seconds()),
         int(new.max_duration.total_seconds())),
        ("idle_timeout", int(old.idle_timeout.total_seconds()),
         int(new.idle_timeout.total_seconds())),
        ("max_concurrent", old.max_concurrent, new.max_concurrent),
        ("on_limit", str(old.on_limit), str(new.on_limit)),
        ("require_mfa", old.require_mfa, new.require_mfa),
        ("require_notices", old.require_notices, new.require_notices),
    ):
        if before != after:
            changes[name] = [before, after]
    if not changes and not (end_password_only and new.require_mfa):
        return Applied(changes, Impact(0, 0, 0, 0, 0))
    plan = _plan(account, old, new, now, end_password_only=end_password_only)
    for start in range(0, len(plan.moved), 500):
        db.session.execute(
            sa.update(LoginSession)
            .where(LoginSession.id.in_(plan.moved[start:start + 500]))
            .values(updated_at=now)
            .execution_options(synchronize_session=False)
        )
    account.max_session_duration = int(new.max_duration.total_seconds())
    account.idle_timeout = int(new.idle_timeout.total_seconds())
    account.max_concurrent_sessions = new.max_concurrent
    account.on_concurrent_limit = str(new.on_limit)
    account.require_mfa = new.require_mfa
    account.require_new_device_notices = new.require_notices
    account.policy_updated_at = now
    closed = sessions.end_many(plan.closed, now=now, actor="policy")
    cut = sessions.end_many(plan.cut, now=now, actor=actor)
    impact = plan.impact()
    audit.record("policy.changed", now=now, account_id=account.id, actor=actor, ip=ip,
                 changes=changes, sessions_ended=cut or None, expired_closed=closed or None)
    return Applied(changes, impact)
