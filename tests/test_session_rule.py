"""The one rule of whether a login session is active, in Python
(``SessionPolicy.end_reason``) and in SQL (``end_reason_sql``, ``active_sql``), gives the
same answer for every session, at the exact deadlines to the microsecond, on SQLite and
PostgreSQL. Every caller asks one of the two (DESIGN invariant 10), so this is what keeps
the sweep, the "active" lists and counts, introspection, userinfo, refresh and the cookie
check in agreement."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from idp import accounts, passwords, sessions
from idp.models import EndReason, LoginSession, User, db
from idp.policy import SessionPolicy, active_sql, end_reason_sql

MICRO = timedelta(microseconds=1)
# Limits that are not whole minutes, so no arithmetic can round its way to agreement.
DURATION = timedelta(hours=8, seconds=7)
IDLE = timedelta(hours=1, seconds=3)


def offsets() -> list[tuple[str, timedelta, timedelta]]:
    """(name, age since sign-in, time since last activity) around both deadlines."""
    cases = [("fresh", timedelta(0), timedelta(0))]
    for name, delta in (("just before", -MICRO), ("exactly at", timedelta(0)),
                        ("just after", MICRO)):
        cases.append((f"duration {name}", DURATION + delta, timedelta(minutes=5)))
        cases.append((f"idle {name}", timedelta(hours=3), IDLE + delta))
    cases.append(("both past", DURATION + timedelta(hours=1), IDLE + timedelta(hours=1)))
    return cases


@pytest.fixture
def world(ctx, clock):
    account = accounts.create_account("acme", now=clock.now(),
                                      max_duration=int(DURATION.total_seconds()),
                                      idle_timeout=int(IDLE.total_seconds()))
    hasher = ctx.extensions["idp"].passwords

    def user(email: str, disabled: bool = False) -> User:
        made = accounts.create_user(account, email=email, password="a long password",
                                    role="member", name=None, hasher=hasher, now=clock.now())
        made.disabled_at = clock.now() if disabled else None
        return made

    return account, user("ada@example.com"), user("bob@example.com", disabled=True)


def add_session(user: User, created, last_active, *, ended=None, reason=None) -> str:
    sid = passwords.new_id()
    db.session.add(LoginSession(
        id=sid, secret_hash="0" * 64, user_id=user.id, account_id=user.account_id,
        created_at=created, last_active_at=last_active, updated_at=last_active,
        ended_at=ended, end_reason=reason, ip_first="127.0.0.1", ip_last="127.0.0.1",
        device_label="Firefox on Linux", device_type="desktop", location="This computer"))
    return sid


def test_python_and_sql_agree_on_every_session_at_the_exact_deadlines(world, clock):
    account, ada, bob = world
    # An instant with microseconds, so the deadlines fall between whole seconds.
    now = clock.now() + timedelta(microseconds=654321)
    made = {}
    for name, age, idle in offsets():
        made[name] = add_session(ada, now - age, now - idle)
        made[f"disabled user, {name}"] = add_session(bob, now - age, now - idle)
    for reason in EndReason:
        made[f"ended: {reason}"] = add_session(ada, now - timedelta(hours=2), now - MICRO,
                                               ended=now - MICRO, reason=str(reason))
    db.session.commit()

    policy = SessionPolicy.of(account)
    by_sql = dict(db.session.execute(sa.select(LoginSession.id, end_reason_sql(now))).all())
    active_by_sql = set(db.session.scalars(sa.select(LoginSession.id).where(active_sql(now))))
    answers = {}
    for name, sid in made.items():
        row = db.session.get(LoginSession, sid)
        python = policy.end_reason(row, now, user_disabled=row.user.disabled_at is not None)
        answers[name] = (python, by_sql[sid], sid in active_by_sql)
    assert {name: (str(p) if p else None) for name, (p, _, _) in answers.items()} == \
        {name: sql for name, (_, sql, _) in answers.items()}
    assert {name for name, (p, _, _) in answers.items() if p is None} == \
        {name for name, (_, _, active) in answers.items() if active}
    # And the boundaries are where the rule says: active up to the instant, not at it.
    expected = {"fresh": None, "duration just before": None, "idle just before": None,
                "duration exactly at": EndReason.EXPIRED_DURATION,
                "duration just after": EndReason.EXPIRED_DURATION,
                "idle exactly at": EndReason.EXPIRED_IDLE, "idle just after": EndReason.EXPIRED_IDLE,
                "both past": EndReason.EXPIRED_DURATION}
    assert {name: answers[name][0] for name in expected} == expected
    assert all(answers[f"disabled user, {name}"][0] is EndReason.DISABLED
               for name, _, _ in offsets())
    assert all(answers[f"ended: {reason}"][0] is reason for reason in EndReason)


def test_the_sweep_and_the_lists_use_the_rule(world, clock):
    """What the sweep counts and ends, and what "active" lists show, are the sessions the
    rule judges over, at the same instant. (A disabled user's sessions are ended by the
    disable itself; one left open by a direct database write is still inactive everywhere,
    and the sweep ends it once it is past a deadline.)"""
    account, ada, bob = world
    now = clock.now() + timedelta(microseconds=250)
    made = {name: add_session(ada, now - age, now - idle) for name, age, idle in offsets()}
    db.session.commit()
    disabled = add_session(bob, now - timedelta(hours=3), now)
    db.session.commit()
    policy = SessionPolicy.of(account)
    live = {sid for sid in made.values()
            if policy.end_reason(db.session.get(LoginSession, sid), now, user_disabled=False) is None}

    page = sessions.history(ada, now, retention=timedelta(days=30), only_active=True, limit=100)
    assert {v.session.id for v in page.views} == live
    assert sessions.history(bob, now, retention=timedelta(days=30), only_active=True).views == []
    counts = dict((u.id, n) for u, n in sessions.members_with_active_counts(account, now))
    assert counts == {ada.id: len(live), bob.id: 0}
    assert sessions.due_for_expiry(now) == len(made) - len(live)
    assert sessions.expire_due(now) == len(made) - len(live)
    db.session.expire_all()
    assert {sid for sid in made.values()
            if db.session.get(LoginSession, sid).ended_at is None} == live
    later = now + DURATION
    assert sessions.expire_due(later) == len(live) + 1
    assert db.session.get(LoginSession, disabled).end_reason == "disabled"
