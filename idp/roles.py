"""Who in an account may act on whom, and the owner every account keeps.

Two rules, each with one owner here:

- **The role ordering** (``may_manage``): owner > admin > member. An owner may act on
  anyone of the account, other owners included; an admin only on members (and on
  themselves); a member on nobody; nobody across accounts. A role change must also be
  one the actor could act on afterwards: only owners grant roles, any of them; an admin
  may only step down to member.
- **An account keeps an enabled owner** (``leaves_an_owner``): the last enabled owner is
  never disabled or demoted — by an owner, by themselves, or by the operator's CLI
  unless it says ``force`` (the operator's recovery path: ``idp enable-user``,
  ``idp set-role``).

Every surface that acts on another user (the admin pages, the admin JSON API, the CLI)
calls one of the actions below. Each takes the account's row lock (PostgreSQL's row
lock; SQLite's single writer), reads the actor's and the target's roles and states
afresh under it, checks both rules, then acts, in the caller's transaction: two owners
demoting each other at the same instant take turns, and the second sees the first's
result and is refused. A refusal (``Refused``) has written nothing. ``by`` is the
acting user, or None for the operator (the CLI), who is not bound by the ordering;
the audit names ``admin:<sub>`` or ``operator:cli``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from . import audit, credentials, factors, sessions
from .lockout import Lockout
from .models import Account, EndReason, LoginSession, Role, User, db

RANK = {Role.MEMBER: 0, Role.ADMIN: 1, Role.OWNER: 2}
OPERATOR = "operator:cli"


class Refused(Exception):
    """The action was refused and nothing was written. ``code`` is public and stable
    (the API's ``error``); the message says why, in words for the actor."""

    code = "forbidden"

    def __init__(self, message: str, *, actor: str | None = None, target: User | None = None,
                 action: str | None = None):
        super().__init__(message)
        self.message = message
        # Who tried what on whom, for the audit trail (``record_refusal``).
        self.actor, self.action = actor, action
        self.account_id = target.account_id if target is not None else None
        self.user_id = target.id if target is not None else None


class NotAllowed(Refused):
    """The role ordering forbids it."""

    code = "forbidden"


class LastOwner(Refused):
    """It would leave the account without an enabled owner."""

    code = "last_owner"


def _above(actor_role: str, role: str) -> bool:
    """An owner is above every role (owners included); others only strictly."""
    return actor_role == Role.OWNER or RANK[Role(role)] < RANK[Role(actor_role)]


def may_manage(actor: User, target: User, role: str | None = None) -> bool:
    """THE ordering rule: may ``actor`` act on ``target`` (end their sessions, disable or
    enable them, reset their second factors, clear their lockout) and, with ``role``,
    give them that role? Same account, an enabled owner or admin, acting on themselves
    or on someone below (an owner: anyone); a new role must be below the actor too (an
    owner: any)."""
    if actor.account_id != target.account_id or actor.disabled_at is not None:
        return False
    if actor.role not in (Role.OWNER, Role.ADMIN):
        return False
    if role is not None and not _above(actor.role, role):
        return False
    return actor.id == target.id or _above(actor.role, target.role)


def require(actor: User, target: User, role: str | None = None, *, action: str = "view"
            ) -> None:
    """``may_manage``, or ``NotAllowed`` saying why (for a page that only asks to confirm;
    the action itself checks again under the lock)."""
    if not may_manage(actor, target, role):
        raise NotAllowed(_not_allowed(actor, target, role), actor=_actor(actor), target=target,
                         action=action)


def record_refusal(refusal: Refused, *, now: datetime, ip: str | None) -> None:
    """Write a refused attempt to the audit trail (in the caller's transaction, after the
    refused one was rolled back): who tried what on whom, and why it was refused."""
    audit.record("user.action_refused", now=now, account_id=refusal.account_id,
                 user_id=refusal.user_id, actor=refusal.actor, ip=ip, action=refusal.action,
                 reason=refusal.code)


def leaves_an_owner(target: User, owners: set[int], *, disabled: bool, role: str) -> bool:
    """THE owner rule: after ``target`` becomes (``disabled``, ``role``), does the account
    still have an enabled owner? ``owners`` are the ids of its enabled owners now. An
    account that had none (created that way) loses nothing by a change to someone else."""
    if target.id not in owners:
        return True
    return (not disabled and role == Role.OWNER) or bool(owners - {target.id})


def enabled_owners(account_id: int) -> set[int]:
    return set(db.session.scalars(sa.select(User.id).where(
        User.account_id == account_id, User.role == Role.OWNER, User.disabled_at.is_(None))))


@dataclass(frozen=True)
class Offer:
    """What the users page offers its viewer for one user (the rules above, read
    without a lock: the action itself checks again)."""

    manage: bool  # sessions, factors, lockout, enable
    disable: bool
    roles: tuple[str, ...]  # roles the user may be given (their current one excluded)


def offers(actor: User, users: list[User]) -> dict[int, Offer]:
    owners = {u.id for u in users if u.role == Role.OWNER and u.disabled_at is None}
    result = {}
    for user in users:
        manage = may_manage(actor, user)
        result[user.id] = Offer(
            manage=manage,
            disable=manage and user.id != actor.id and user.disabled_at is None
            and leaves_an_owner(user, owners, disabled=True, role=user.role),
            roles=tuple(str(r) for r in (Role.OWNER, Role.ADMIN, Role.MEMBER)
                        if r != user.role and may_manage(actor, user, r)
                        and leaves_an_owner(user, owners, disabled=user.disabled_at is not None,
                                            role=r)),
        )
    return result


def _actor(by: User | None) -> str:
    return OPERATOR if by is None else f"admin:{by.sub}"


def _check(by: User | None, target: User, *, action: str, role: str | None = None,
           disabled: bool | None = None, force: bool = False) -> bool:
    """Under the target's and then the account's lock, with the actor and target read
    afresh: the ordering (unless the operator acts) and, for a change of role or a
    disable, the owner rule. Raises ``Refused``; True when the operator's ``force``
    overrode the owner rule.

    The user's row first, as every credential change takes it (``sessions.lock_user``),
    then the account's: a sign-in holds only the user's row (its session's foreign key
    shares the account's row without waiting for this lock), a policy change only the
    account's, so no two of them wait for each other in a circle."""
    sessions.lock_user(target)
    db.session.execute(sa.update(Account).where(Account.id == target.account_id)
                       .values(id=Account.id).execution_options(synchronize_session=False))
    db.session.refresh(target)
    if by is not None:
        db.session.refresh(by)
        require(by, target, role, action=action)
    if role is None and disabled is None:
        return False
    after_role = target.role if role is None else role
    after_disabled = target.disabled_at is not None if disabled is None else disabled
    if leaves_an_owner(target, enabled_owners(target.account_id),
                       disabled=after_disabled, role=after_role):
        return False
    if force and by is None:
        return True
    raise LastOwner(f"{target.email} is the last enabled owner of {target.account.name}, "
                    "which must keep one: make another user owner first.", actor=_actor(by),
                    target=target, action=action)


def _a(role: str) -> str:
    return f"{'an' if role in (Role.ADMIN, Role.OWNER) else 'a'} {role}"


def _not_allowed(by: User, target: User, role: str | None) -> str:
    if by.account_id != target.account_id:
        return "That user is not in your account."
    if by.disabled_at is not None or by.role not in (Role.OWNER, Role.ADMIN):
        return "Only the account's owners and admins can do that."
    if role is not None and not _above(by.role, role):
        return f"Only an owner can make someone {_a(role)}."
    return f"As {_a(by.role)} you cannot act on {_a(target.role)}: ask an owner."


# -- the actions on another user -------------------------------------------------------------


def end_session(by: User | None, session: LoginSession, *, now: datetime,
                ip: str | None = None) -> bool:
    """End one session of another user ("Ended by an administrator"). False if it had
    already ended."""
    _check(by, session.user, action="end_session")
    return sessions.end(session, EndReason.ENDED_BY_ADMIN, now=now, actor=_actor(by), ip=ip)


def end_sessions(by: User | None, user: User, *, now: datetime, ip: str | None = None
                 ) -> list[LoginSession]:
    """End every session of another user ("Ended by an administrator")."""
    _check(by, user, action="end_sessions")
    return sessions.end_all(user, EndReason.ENDED_BY_ADMIN, now=now, actor=_actor(by), ip=ip)


def disable(by: User | None, user: User, *, now: datetime, ip: str | None = None,
            force: bool = False) -> list[LoginSession] | None:
    """The user can no longer sign in and every session of theirs ends now, with its
    tokens and back-channel logout notices (``credentials.disable``). None if they were
    already disabled (nothing changes)."""
    forced = _check(by, user, action="disable", disabled=True, force=force)
    if user.disabled_at is not None:
        return None
    ended = credentials.disable(user, now=now, actor=_actor(by), ip=ip)
    if forced:
        audit.record("account.owner_rule_overridden", now=now, account_id=user.account_id,
                     user_id=user.id, actor=OPERATOR, action="disable")
    return ended


def enable(by: User | None, user: User, *, now: datetime, ip: str | None = None) -> bool:
    """The user may sign in again (no session comes back). False if they were enabled."""
    _check(by, user, action="enable")
    if user.disabled_at is None:
        return False
    credentials.enable(user, now=now, actor=_actor(by), ip=ip)
    return True


def set_role(by: User | None, user: User, role: str, *, now: datetime, ip: str | None = None,
             force: bool = False) -> str:
    """Give the user ``role``; returns their previous role (the same when nothing
    changed, and then nothing is written). Sessions stay: what a role allows is read
    from the user's row on every request."""
    role = str(Role(role))
    forced = _check(by, user, action=f"set_role:{role}", role=role, force=force)
    previous = user.role
    if previous == role:
        return previous
    user.role = role
    audit.record("user.role_changed", now=now, account_id=user.account_id, user_id=user.id,
                 actor=_actor(by), ip=ip, previous=previous, role=role,
                 forced=forced or None)
    return previous


def reset_factors(by: User | None, user: User, *, now: datetime, ip: str | None = None
                  ) -> list[LoginSession]:
    """Remove every second factor of the user (they lost their phone and recovery codes);
    every session of theirs ends (``factors.remove``)."""
    _check(by, user, action="reset_factors")
    return factors.remove(user, None, now=now, actor=_actor(by), ip=ip)


def unlock(by: User | None, user: User, *, lockout: Lockout, now: datetime,
           ip: str | None = None) -> None:
    """Clear the user's sign-in lockout (too many failed passwords) before it runs out.
    Under the ordering too: clearing it again and again would let an admin guess an
    owner's password without limit."""
    _check(by, user, action="unlock")
    lockout.reset(user.email)
    audit.record("login.unlocked", now=now, account_id=user.account_id, user_id=user.id,
                 actor=_actor(by), ip=ip)
