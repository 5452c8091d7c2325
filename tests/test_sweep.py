"""The sweep at scale: set-based, in batches, exactly the sessions past their deadlines,
the same outcome as ``sessions.end`` row for row, safe to run twice at once (PostgreSQL),
and ``idp sweep`` with its progress bars and ``--json``.

Time only moves through the fake clock; every test runs on SQLite and, when
IDP_TEST_DATABASE_URL is set, on PostgreSQL (the concurrent one on PostgreSQL only).
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa

from idp import cli, passwords, sessions
from idp.models import (
    Account,
    AuditEvent,
    AuthorizationCode,
    EndReason,
    LoginSession,
    LogoutDelivery,
    TokenFamily,
    User,
    db,
)
from idp.policy import SessionPolicy

HOUR = 3600
BACKCHANNEL = "http://127.0.0.1:9/backchannel"
# (max duration, idle timeout) per account, seconds
POLICIES = [(24 * HOUR, 2 * HOUR), (HOUR, 600), (720 * HOUR, 24 * HOUR)]


class World:
    """Accounts with different policies, users, a plain client and one with a back-channel
    logout URI, and a fast way to write many sessions with families and pending codes."""

    def __init__(self, ctx, make_account, make_user, make_client):
        self.users: list[User] = []
        for n, (duration, idle) in enumerate(POLICIES):
            account_id = make_account(f"acct-{n}", max_session_duration=duration,
                                      idle_timeout=idle)
            for k in range(2):
                sub = make_user(f"u{n}-{k}@example.com", account_id=account_id)
                self.users.append(db.session.scalar(sa.select(User).where(User.sub == sub)))
        self.photos = make_client("Photos").client_id
        self.mail = make_client("Mail", redirect_uri="http://127.0.0.1:9998/cb",
                                backchannel_logout_uri=BACKCHANNEL).client_id

    def add(self, specs: list[dict]) -> None:
        """specs: user, created, last (aware datetimes), mail (bool), code (bool), ended."""
        rows, families, codes = [], [], []
        for spec in specs:
            user, sid = spec["user"], passwords.new_id()
            spec["id"] = sid
            ended = spec.get("ended")
            rows.append(dict(
                id=sid, secret_hash="0" * 64, user_id=user.id, account_id=user.account_id,
                kind="browser", created_at=spec["created"], last_active_at=spec["last"],
                updated_at=spec["last"], ended_at=ended, end_reason="logout" if ended else None,
                amr=["pwd"], ip_first="203.0.113.7", ip_last="203.0.113.7", user_agent="",
                device_label="Firefox on Linux", device_type="desktop", location="Berlin"))
            spec["families"] = []
            for client_id in [self.photos] + ([self.mail] if spec.get("mail") else []):
                fid = passwords.new_id()
                spec["families"].append(fid)
                families.append(dict(id=fid, session_id=sid, client_id=client_id,
                                     user_id=user.id, scope="openid", created_at=spec["created"],
                                     last_issued_at=spec["created"]))
            if spec.get("code"):
                spec["code_id"] = passwords.new_id()
                codes.append(dict(
                    id=spec["code_id"], secret_hash="0" * 64, client_id=self.photos,
                    session_id=sid, user_id=user.id, redirect_uri="http://127.0.0.1:9999/callback",
                    scope="openid", auth_time=spec["created"], amr=["pwd"],
                    created_at=spec["last"], expires_at=spec["last"] + timedelta(seconds=60)))
        for model, values in ((LoginSession, rows), (TokenFamily, families),
                              (AuthorizationCode, codes)):
            for start in range(0, len(values), 500):
                db.session.execute(sa.insert(model), values[start:start + 500])
        db.session.commit()


@pytest.fixture
def world(ctx, make_account, make_user, make_client, monkeypatch) -> World:
    # Outbox rows stay as written: no delivery attempt after commit changes them under us.
    monkeypatch.setitem(ctx.config, "BACKCHANNEL_IMMEDIATE", False)
    return World(ctx, make_account, make_user, make_client)


def policy_of(user: User) -> SessionPolicy:
    return SessionPolicy.of(db.session.get(Account, user.account_id))


def expected_end(spec: dict, now) -> tuple[EndReason, object] | None:
    policy = policy_of(spec["user"])
    if spec.get("ended"):
        return None
    if now >= spec["created"] + policy.max_duration:
        return EndReason.EXPIRED_DURATION, spec["created"] + policy.max_duration
    if now >= spec["last"] + policy.idle_timeout:
        return EndReason.EXPIRED_IDLE, spec["last"] + policy.idle_timeout
    return None


def audit_events(session_id: str) -> list[AuditEvent]:
    return db.session.scalars(sa.select(AuditEvent).where(AuditEvent.session_id == session_id)
                              .order_by(AuditEvent.id)).all()


def test_sweep_over_thousands_ends_exactly_those_past_their_deadlines(ctx, clock, world):
    now = clock.now()
    rng = random.Random(7)
    specs = []
    for i in range(3000):
        user = world.users[i % len(world.users)]
        created = now - timedelta(seconds=rng.uniform(0, 60 * HOUR))
        last = created + (now - created) * rng.random()
        specs.append(dict(user=user, created=created, last=last, mail=i % 3 == 0,
                          code=i % 10 == 0,
                          ended=now - timedelta(minutes=1) if i % 17 == 0 else None))
    # Exactly at a deadline is past it; a microsecond before is not.
    for user in world.users:
        policy = policy_of(user)
        tick = timedelta(microseconds=1)
        specs += [
            dict(user=user, created=now - policy.max_duration, last=now, mail=True),
            dict(user=user, created=now - policy.max_duration + tick, last=now),
            dict(user=user, created=now - policy.idle_timeout, last=now - policy.idle_timeout),
            dict(user=user, created=now - policy.idle_timeout,
                 last=now - policy.idle_timeout + tick),
        ]
    world.add(specs)
    expected = {s["id"]: expected_end(s, now) for s in specs}
    due = {sid for sid, end in expected.items() if end}
    assert 500 < len(due) < 2900  # a real mix of both
    assert sessions.due_for_expiry(now) == len(due)

    seen: list[int] = []
    result = sessions.sweep(now, timedelta(days=30), batch=250, progress=seen.append)

    assert result.expired == len(due) and sum(seen) == len(due)
    assert result.purged == 0
    db.session.expire_all()
    rows = {s.id: s for s in db.session.scalars(sa.select(LoginSession))}
    families = {f.id: f for f in db.session.scalars(sa.select(TokenFamily))}
    deliveries = Counter((d.session_id, d.client_id, d.subject, d.uri, d.next_attempt_at)
                         for d in db.session.scalars(sa.select(LogoutDelivery)))
    for spec in specs:
        row, end = rows[spec["id"]], expected[spec["id"]]
        code = db.session.get(AuthorizationCode, spec["code_id"]) if spec.get("code") else None
        if end is None:
            assert row.end_reason == ("logout" if spec.get("ended") else None)
            assert all(families[f].revoked_at is None for f in spec["families"])
            assert code is None or code.used_at is None
            assert [e.event for e in audit_events(spec["id"])] == []
            continue
        reason, deadline = end
        assert (row.end_reason, row.ended_at, row.updated_at) == (str(reason), deadline, now)
        assert all((families[f].revoked_at, families[f].revoke_reason) == (now, "session_ended")
                   for f in spec["families"])
        assert code is None or code.used_at == now
        [event] = audit_events(spec["id"])
        detail = {"reason": str(reason), "families_revoked": len(spec["families"])}
        if spec.get("mail"):
            detail["logout_notices"] = 1
        assert (event.event, event.actor, event.ip, event.at, event.detail) == (
            "session.expired", "sweep", None, now, detail)
        assert (event.account_id, event.user_id) == (spec["user"].account_id, spec["user"].id)
        if spec.get("mail"):
            key = (spec["id"], world.mail, spec["user"].sub, BACKCHANNEL, now)
            assert deliveries.pop(key) == 1
    assert not deliveries  # none for sessions that did not end, none twice

    # Nothing left to do: a second sweep at the same instant changes nothing.
    assert sessions.sweep(now, timedelta(days=30), batch=250).expired == 0


@pytest.mark.parametrize("reason", [EndReason.EXPIRED_IDLE, EndReason.EXPIRED_DURATION])
def test_the_sweep_ends_a_session_exactly_as_end_does(ctx, clock, world, reason):
    """Same rows as ``sessions.end`` (what every other path uses), column for column."""
    user = world.users[0]
    policy = policy_of(user)
    now = clock.now()
    if reason is EndReason.EXPIRED_IDLE:
        created, last = now - 2 * policy.idle_timeout, now - policy.idle_timeout - timedelta(minutes=5)
    else:
        created, last = now - policy.max_duration - timedelta(minutes=5), now - timedelta(minutes=1)
    by_end, by_sweep = (dict(user=user, created=created, last=last, mail=True, code=True)
                        for _ in range(2))
    world.add([by_end, by_sweep])
    tokens_family = db.session.get(TokenFamily, by_end["families"][0])
    tokens_family.revoked_at, tokens_family.revoke_reason = now, "refresh_reuse"  # one already
    db.session.get(TokenFamily, by_sweep["families"][0]).revoked_at = now
    db.session.get(TokenFamily, by_sweep["families"][0]).revoke_reason = "refresh_reuse"
    db.session.commit()

    clock.advance(minutes=3)
    later = clock.now()
    assert sessions.end(db.session.get(LoginSession, by_end["id"]), reason, now=later,
                        actor="sweep")
    db.session.commit()
    assert sessions.sweep(later, timedelta(days=30)).expired == 1

    def snapshot(spec: dict) -> dict:
        db.session.expire_all()
        s = db.session.get(LoginSession, spec["id"])
        fams = [db.session.get(TokenFamily, f) for f in spec["families"]]
        [event] = audit_events(spec["id"])
        return {
            "session": (s.ended_at, s.end_reason, s.updated_at),
            "families": [(f.client_id, f.revoked_at, f.revoke_reason) for f in fams],
            "code": db.session.get(AuthorizationCode, spec["code_id"]).used_at,
            "event": (event.at, event.event, event.account_id, event.user_id, event.client_id,
                      event.actor, event.ip, event.detail),
            "deliveries": sorted(
                (d.client_id, d.subject, d.uri, d.created_at, d.next_attempt_at, d.attempts,
                 d.delivered_at, d.given_up_at)
                for d in db.session.scalars(sa.select(LogoutDelivery).where(
                    LogoutDelivery.session_id == spec["id"]))),
        }

    assert snapshot(by_sweep) == snapshot(by_end)
    assert snapshot(by_sweep)["event"][-1]["families_revoked"] == 1


def test_two_sweeps_at_once_end_each_session_exactly_once(app, ctx, clock, world, backend):
    if backend.kind != "postgresql":
        pytest.skip("concurrent sweeps need row locks (FOR NO KEY UPDATE SKIP LOCKED): "
                    "PostgreSQL only; SQLite serialises writers")
    now = clock.now()
    specs = []
    for i in range(2400):
        user = world.users[i % len(world.users)]
        policy = policy_of(user)
        specs.append(dict(user=user, created=now - policy.max_duration - timedelta(seconds=i),
                          last=now - timedelta(seconds=i % 50), mail=i % 2 == 0))
    world.add(specs)
    ids = [s["id"] for s in specs]
    by_user = ids[::10]  # a user ends some of them at the same moment
    barrier = threading.Barrier(3)
    results: dict[str, object] = {}

    def sweeper(name: str) -> None:
        with app.app_context():
            try:
                barrier.wait()
                results[name] = sessions.sweep(now, timedelta(days=30), batch=40).expired
            except Exception as exc:  # noqa: BLE001 - reported below
                results[name] = exc
            finally:
                db.session.remove()

    def user_ends() -> None:
        with app.app_context():
            try:
                barrier.wait()
                ended = 0
                for sid in by_user:
                    session = db.session.get(LoginSession, sid)
                    ended += sessions.end(session, EndReason.ENDED_BY_USER, now=now,
                                          actor="user:x")
                    db.session.commit()
                results["user"] = ended
            except Exception as exc:  # noqa: BLE001 - reported below
                results["user"] = exc
            finally:
                db.session.remove()

    threads = [threading.Thread(target=sweeper, args=("a",)),
               threading.Thread(target=sweeper, args=("b",)), threading.Thread(target=user_ends)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(isinstance(v, Exception) for v in results.values()), results
    assert results["a"] + results["b"] + results["user"] == len(ids)

    db.session.expire_all()
    events = Counter(db.session.scalars(
        sa.select(AuditEvent.session_id).where(AuditEvent.event.in_(
            ["session.expired", "session.ended"]))))
    assert set(events) == set(ids) and set(events.values()) == {1}
    deliveries = Counter(db.session.execute(
        sa.select(LogoutDelivery.session_id, LogoutDelivery.client_id)).all())
    assert set(deliveries.values()) == {1}
    assert set(deliveries) == {(s["id"], world.mail) for s in specs if s["mail"]}
    open_left = db.session.scalar(sa.select(sa.func.count()).select_from(LoginSession).where(
        LoginSession.ended_at.is_(None)))
    assert open_left == 0
    assert db.session.scalar(sa.select(sa.func.count()).select_from(TokenFamily).where(
        TokenFamily.revoked_at.is_(None))) == 0


def test_idp_sweep_json_and_progress(app, ctx, clock, world, monkeypatch, capsys):
    now = clock.now()
    stale = [dict(user=u, created=now - timedelta(hours=80), last=now - timedelta(hours=79),
                  mail=True) for u in world.users]
    live = [dict(user=u, created=now - timedelta(minutes=1), last=now) for u in world.users]
    old = [dict(user=u, created=now - timedelta(days=40), last=now - timedelta(days=40),
                ended=now - timedelta(days=31)) for u in world.users]
    world.add(stale + live + old)
    submitted: list = []
    monkeypatch.setitem(app.config, "BACKCHANNEL_IMMEDIATE", True)
    monkeypatch.setattr(app.extensions["idp.logout"], "submit", submitted.extend)
    monkeypatch.setattr(cli, "_app", lambda: app)
    db.session.remove()

    capsys.readouterr()
    cli.main(["sweep", "--json", "--batch", "2", "--parallel", "2"])
    out, err = capsys.readouterr()
    assert json.loads(out) == {"expired": len(stale), "purged": len(old), "spent": 0}
    assert err == ""
    # The notices wait in the outbox for `idp worker`; this process does not deliver them.
    assert submitted == []
    assert app.config["BACKCHANNEL_IMMEDIATE"] is True
    assert db.session.scalar(sa.select(sa.func.count()).select_from(LogoutDelivery).where(
        LogoutDelivery.delivered_at.is_(None))) == len(stale)

    clock.advance(hours=25)  # the live ones are idle now, under every policy
    cli.main(["sweep"])
    out, err = capsys.readouterr()
    assert out.strip() == (f"Expired {len(live)} sessions; purged 0 old ones and 0 spent "
                           "device codes, assertions and revocations.")
    assert "Expiring sessions past their deadlines" in err
    assert "Purging history past retention" in err
