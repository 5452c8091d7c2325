"""The login-session lifecycle as users and relying parties see it: start, find, check,
touch, end (and everything that hangs off a session dying with it), end all, sweep.

Time only moves through the fake clock; every test runs on SQLite and, when
IDP_TEST_DATABASE_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from idp import audit, passwords, sessions, tokens
from idp.models import (
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
from idp.sessions import Origin, SessionLimitReached, Status
from tests.flows import start_session

SECOND = timedelta(seconds=1)
ORIGIN = Origin(
    ip="203.0.113.7",
    user_agent="Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    device_label="Firefox on Linux",
    device_type="desktop",
    location="Berlin, Germany",
)
PHONE = Origin(ip="198.51.100.20", device_label="Safari on iPhone", device_type="mobile",
               location="Paris, France")

def family_active(family_id: str, now) -> bool:
    """The family's standing as introspection, userinfo and refresh read it, judged by the
    one rule (``Holder.active``)."""
    found = tokens.load_holder(family_id, "no-such-jti")
    return found is not None and found[0].active(now)


@pytest.fixture

def new_user(ctx, make_account, make_user):
    """A user in an account of their own, with the given policy columns."""
    counter = itertools.count()

    def make(**policy) -> User:
        n = next(counter)
        account_id = make_account(f"account-{n}", **policy)
        sub = make_user(f"user{n}@example.com", account_id=account_id)
        return db.session.scalar(sa.select(User).where(User.sub == sub))

    return make


@pytest.fixture
def ada(new_user) -> User:
    return new_user()


@pytest.fixture
def photos(ctx, make_client) -> Client:
    return db.session.get(Client, make_client("Photos").client_id)


@pytest.fixture
def interval(ctx) -> timedelta:
    return ctx.config["ACTIVITY_WRITE_INTERVAL"]


def login(user: User, clock, origin: Origin = ORIGIN) -> sessions.Started:
    started = start_session(user, origin, now=clock.now())
    db.session.commit()
    return started


def grant(session: LoginSession, client: Client, clock) -> tuple[TokenFamily, str]:
    """What a code exchange leaves behind: a family with a refresh token."""
    family = tokens.start_family(session=session, client=client, scope="openid", now=clock.now())
    value = tokens.issue_refresh(tokens.Holder.of(family, issuing=True),
                                 now=clock.now(), lifetime=timedelta(hours=720))
    db.session.commit()
    return family, value


def pending_code(session: LoginSession, client: Client, clock) -> str:
    value = passwords.new_token()[2]
    tokens.save_code(
        value, client=client, session=session, redirect_uri=client.redirect_uris[0], scope="openid",
        nonce=None, code_challenge=None, code_challenge_method=None, now=clock.now(),
        lifetime=timedelta(seconds=60),
    )
    db.session.commit()
    return value


def events(name: str, session_id: str | None = None) -> list[AuditEvent]:
    query = sa.select(AuditEvent).where(AuditEvent.event == name)
    if session_id is not None:
        query = query.where(AuditEvent.session_id == session_id)
    return list(db.session.scalars(query.order_by(AuditEvent.id)))


def fresh(model, key):
    """The row as another request (or node) would read it now."""
    db.session.expire_all()
    return db.session.get(model, key)


def open_sessions(user: User) -> list[LoginSession]:
    return list(db.session.scalars(
        sa.select(LoginSession).where(LoginSession.user_id == user.id, LoginSession.ended_at.is_(None))
    ))


# -- start ---------------------------------------------------------------------------------------


def test_sign_in_records_the_device_ip_location_and_time(ctx, clock, ada):
    started = login(ada, clock)
    s = fresh(LoginSession, started.session.id)
    assert s.user_id == ada.id and s.account_id == ada.account_id
    assert s.kind == "browser"
    assert s.created_at == s.last_active_at == s.updated_at == clock.now()
    assert s.ended_at is None and s.end_reason is None
    assert s.ip_first == s.ip_last == "203.0.113.7"
    assert s.user_agent == ORIGIN.user_agent
    assert (s.device_label, s.device_type, s.location) == ("Firefox on Linux", "desktop", "Berlin, Germany")
    assert s.amr == ["pwd"]
    assert sessions.status(s, clock.now()) is Status.ACTIVE


def test_the_cookie_names_the_session_but_its_secret_is_only_stored_hashed(ctx, clock, ada):
    started = login(ada, clock)
    row_id, secret = passwords.split_token(started.cookie)
    s = fresh(LoginSession, started.session.id)
    assert row_id == s.id  # lookup by primary key
    assert started.cookie != s.id  # the sid alone never opens the session
    assert s.secret_hash == passwords.hash_secret(secret)
    assert secret not in s.secret_hash


def test_sign_in_is_recorded_in_the_session_history(ctx, clock, ada):
    started = login(ada, clock)
    [event] = events("session.started", started.session.id)
    assert event.at == clock.now()
    assert event.user_id == ada.id and event.account_id == ada.account_id
    assert event.ip == "203.0.113.7"
    assert event.actor == f"user:{ada.sub}"
    assert event.detail["device"] == "Firefox on Linux"
    assert event.detail["location"] == "Berlin, Germany"


def test_a_cli_device_login_is_kept_as_a_device_session(ctx, clock, ada):
    started = start_session(ada, ORIGIN, now=clock.now(), kind="device", amr=("pwd", "otp"))
    db.session.commit()
    s = fresh(LoginSession, started.session.id)
    assert s.kind == "device" and s.amr == ["pwd", "otp"]


# -- find ----------------------------------------------------------------------------------------


def test_the_right_cookie_finds_its_session(ctx, clock, ada):
    started = login(ada, clock)
    db.session.expire_all()
    assert sessions.find(started.cookie).id == started.session.id


def test_a_cookie_with_the_right_id_but_a_wrong_secret_finds_nothing(ctx, clock, ada):
    started = login(ada, clock)
    forged = f"{started.session.id}.{passwords.new_token()[1]}"
    assert sessions.find(forged) is None


def test_another_users_cookie_secret_does_not_open_this_session(ctx, clock, ada, new_user):
    mine = login(ada, clock)
    theirs = login(new_user(), clock)
    spliced = f"{mine.session.id}.{passwords.split_token(theirs.cookie)[1]}"
    assert sessions.find(spliced) is None


@pytest.mark.parametrize(
    "cookie", [None, "", "garbage", "a" * 200, "no-dot-" + "x" * 40, "AAAAAAAAAAAAAAAAAAAAAA.short"]
)
def test_a_malformed_cookie_finds_nothing(ctx, clock, ada, cookie):
    login(ada, clock)
    assert sessions.find(cookie) is None


def test_a_well_formed_cookie_for_an_unknown_session_finds_nothing(ctx):
    assert sessions.find(passwords.new_token()[2]) is None


def test_an_ended_session_is_still_found_so_the_user_can_be_told_why(ctx, clock, ada):
    started = login(ada, clock)
    sessions.end(started.session, EndReason.ENDED_BY_ADMIN, now=clock.now(), actor="admin:x")
    db.session.commit()
    found = sessions.find(started.cookie)
    assert found is not None
    assert sessions.check(found, clock.now()) is EndReason.ENDED_BY_ADMIN


# -- check: expiry at the deadlines --------------------------------------------------------------


def test_idle_session_is_still_active_one_second_before_the_idle_deadline(ctx, clock, ada):
    started = login(ada, clock)  # idle timeout 2 h
    clock.advance(hours=2, seconds=-1)
    assert sessions.check(started.session, clock.now()) is None
    assert started.session.ended_at is None


def test_idle_session_expires_exactly_at_the_deadline_and_its_tokens_die(ctx, clock, ada, photos):
    started = login(ada, clock)
    family, _refresh = grant(started.session, photos, clock)
    clock.advance(hours=2)

    assert sessions.check(started.session, clock.now()) is EndReason.EXPIRED_IDLE
    db.session.commit()

    s = fresh(LoginSession, started.session.id)
    assert s.ended_at == clock.now() and s.end_reason == "expired_idle"
    assert s.updated_at == clock.now()
    assert sessions.status(s, clock.now()) is Status.EXPIRED
    f = fresh(TokenFamily, family.id)
    assert f.revoked_at == clock.now() and f.revoke_reason == "session_ended"
    assert not family_active(f.id, clock.now())
    [event] = events("session.expired", s.id)
    assert event.detail["reason"] == "expired_idle" and event.detail["families_revoked"] == 1


def test_a_busy_session_expires_at_its_maximum_duration(ctx, clock, new_user, interval, photos):
    user = new_user(max_session_duration=3600, idle_timeout=1800)
    started = login(user, clock)
    family, _refresh = grant(started.session, photos, clock)
    for _ in range(2):  # keep it busy: active every 25 minutes
        clock.advance(minutes=25)
        assert sessions.check(started.session, clock.now()) is None
        assert sessions.touch(started.session, clock.now(), ORIGIN.ip, interval)
        db.session.commit()
    clock.advance(minutes=10, seconds=-1)
    assert sessions.check(started.session, clock.now()) is None
    clock.advance(seconds=1)  # 1 h after sign-in, 10 min after the last activity

    assert sessions.check(started.session, clock.now()) is EndReason.EXPIRED_DURATION
    db.session.commit()
    assert fresh(LoginSession, started.session.id).end_reason == "expired_duration"
    assert fresh(TokenFamily, family.id).revoked_at == clock.now()


def test_checking_an_ended_session_again_changes_nothing(ctx, clock, ada):
    started = login(ada, clock)
    clock.advance(hours=3)
    assert sessions.check(started.session, clock.now()) is EndReason.EXPIRED_IDLE
    db.session.commit()
    ended_at = started.session.ended_at
    clock.advance(hours=30)
    assert sessions.check(started.session, clock.now()) is EndReason.EXPIRED_IDLE
    db.session.commit()
    assert fresh(LoginSession, started.session.id).ended_at == ended_at
    assert len(events("session.expired", started.session.id)) == 1


def test_a_stricter_idle_timeout_expires_an_existing_session_at_its_next_check(ctx, clock, ada, photos):
    started = login(ada, clock)
    family, _refresh = grant(started.session, photos, clock)
    clock.advance(minutes=45)
    assert sessions.check(sessions.find(started.cookie), clock.now()) is None

    ada.account.idle_timeout = 30 * 60  # the admin tightens the policy
    db.session.commit()
    db.session.expire_all()

    s = sessions.find(started.cookie)  # the next request
    assert sessions.status(s, clock.now()) is Status.EXPIRED
    assert not family_active(family.id, clock.now())
    assert sessions.check(s, clock.now()) is EndReason.EXPIRED_IDLE
    db.session.commit()
    s = fresh(LoginSession, started.session.id)
    assert s.end_reason == "expired_idle" and s.updated_at == clock.now()


def test_a_looser_policy_extends_an_existing_session(ctx, clock, ada):
    started = login(ada, clock)
    clock.advance(hours=2, minutes=30)
    ada.account.idle_timeout = 4 * 3600
    db.session.commit()
    assert sessions.check(sessions.find(started.cookie), clock.now()) is None


# -- touch ---------------------------------------------------------------------------------------


def test_activity_within_the_write_interval_is_not_written(ctx, clock, ada, interval):
    started = login(ada, clock)
    signed_in = clock.now()
    clock.advance(interval - SECOND)
    assert sessions.touch(started.session, clock.now(), ORIGIN.ip, interval) is False
    db.session.commit()
    assert fresh(LoginSession, started.session.id).last_active_at == signed_in


def test_activity_after_the_write_interval_moves_last_active_and_the_idle_deadline(
    ctx, clock, ada, interval
):
    started = login(ada, clock)
    clock.advance(interval)
    assert sessions.touch(started.session, clock.now(), ORIGIN.ip, interval) is True
    db.session.commit()
    s = fresh(LoginSession, started.session.id)
    assert s.last_active_at == s.updated_at == clock.now()
    clock.advance(hours=2, seconds=-1)
    assert sessions.check(s, clock.now()) is None


def test_a_new_ip_is_recorded_at_once_even_within_the_interval(ctx, clock, ada, interval):
    started = login(ada, clock)
    clock.advance(seconds=5)
    assert sessions.touch(started.session, clock.now(), "192.0.2.99", interval) is True
    db.session.commit()
    s = fresh(LoginSession, started.session.id)
    assert (s.ip_first, s.ip_last) == ("203.0.113.7", "192.0.2.99")
    assert s.last_active_at == clock.now()


def test_a_clock_set_back_never_moves_last_active_backwards(ctx, clock, ada, interval):
    started = login(ada, clock)
    clock.advance(minutes=10)
    assert sessions.touch(started.session, clock.now(), ORIGIN.ip, interval)
    db.session.commit()
    latest = clock.now()
    clock.advance(minutes=-5)
    assert sessions.touch(started.session, clock.now(), "192.0.2.99", interval) is False
    db.session.commit()
    assert fresh(LoginSession, started.session.id).last_active_at == latest


# -- end -----------------------------------------------------------------------------------------


def test_ending_a_session_revokes_every_family_under_it(ctx, clock, ada, photos, make_client):
    other = db.session.get(Client, make_client("Mail").client_id)
    started = login(ada, clock)
    one, _ = grant(started.session, photos, clock)
    two, _ = grant(started.session, other, clock)
    clock.advance(minutes=3)

    assert sessions.end(started.session, EndReason.ENDED_BY_USER, now=clock.now(), actor="user:x",
                        ip="203.0.113.7") is True
    db.session.commit()

    s = fresh(LoginSession, started.session.id)
    assert (s.ended_at, s.end_reason) == (clock.now(), "ended_by_user")
    assert sessions.status(s, clock.now()) is Status.ENDED
    for family_id in (one.id, two.id):
        f = fresh(TokenFamily, family_id)
        assert f.revoked_at == clock.now() and f.revoke_reason == "session_ended"
        assert not family_active(f.id, clock.now())
    [event] = events("session.ended", s.id)
    assert event.detail == {"reason": "ended_by_user", "families_revoked": 2}
    assert event.actor == "user:x" and event.ip == "203.0.113.7"


def test_ending_and_revoking_happen_in_one_transaction(ctx, clock, ada, photos):
    started = login(ada, clock)
    family, _refresh = grant(started.session, photos, clock)

    sessions.end(started.session, EndReason.LOGOUT, now=clock.now(), actor="user:x")
    db.session.rollback()  # the request failed after end(): nothing half-done remains
    assert fresh(LoginSession, started.session.id).ended_at is None
    assert fresh(TokenFamily, family.id).revoked_at is None
    assert events("session.ended") == []

    s = db.session.get(LoginSession, started.session.id)
    sessions.end(s, EndReason.LOGOUT, now=clock.now(), actor="user:x")
    db.session.commit()
    assert fresh(LoginSession, started.session.id).ended_at == clock.now()
    assert fresh(TokenFamily, family.id).revoked_at == clock.now()


def test_ending_twice_is_harmless_and_recorded_once(ctx, clock, ada):
    started = login(ada, clock)
    assert sessions.end(started.session, EndReason.LOGOUT, now=clock.now(), actor="user:x")
    db.session.commit()
    first_end = clock.now()
    clock.advance(minutes=1)
    assert sessions.end(started.session, EndReason.ENDED_BY_ADMIN, now=clock.now(), actor="admin:y") is False
    db.session.commit()
    s = fresh(LoginSession, started.session.id)
    assert (s.ended_at, s.end_reason) == (first_end, "logout")
    assert len(events("session.ended", s.id)) == 1


def test_ending_a_stale_copy_of_a_session_ended_elsewhere_returns_false(ctx, clock, ada, app):
    started = login(ada, clock)
    with app.app_context():  # another node ends it
        other = db.session.get(LoginSession, started.session.id)
        assert sessions.end(other, EndReason.ENDED_BY_ADMIN, now=clock.now(), actor="admin:y")
        db.session.commit()
    assert sessions.end(started.session, EndReason.LOGOUT, now=clock.now(), actor="user:x") is False
    assert started.session.end_reason == "ended_by_admin"
    assert len(events("session.ended", started.session.id)) == 1


def test_codes_not_yet_exchanged_die_with_the_session(ctx, clock, ada, photos):
    started = login(ada, clock)
    code = pending_code(started.session, photos, clock)
    sessions.end(started.session, EndReason.LOGOUT, now=clock.now(), actor="user:x")
    db.session.commit()
    row = fresh(AuthorizationCode, passwords.split_token(code)[0])
    assert row.used_at == clock.now()
    claim = tokens.claim_code(code, photos.client_id, now=clock.now())
    assert claim.row is None and claim.reused is False


def test_other_users_sessions_are_untouched_when_one_ends(ctx, clock, ada, new_user, photos):
    mine = login(ada, clock)
    theirs = login(new_user(), clock)
    their_family, _ = grant(theirs.session, photos, clock)
    sessions.end(mine.session, EndReason.LOGOUT, now=clock.now(), actor="user:x")
    db.session.commit()
    assert fresh(LoginSession, theirs.session.id).ended_at is None
    assert family_active(their_family.id, clock.now())


# -- end all -------------------------------------------------------------------------------------


def test_sign_out_everywhere_else_keeps_the_current_session(ctx, clock, ada, photos):
    here = login(ada, clock)
    phone = login(ada, clock, PHONE)
    laptop = login(ada, clock)
    here_family, _ = grant(here.session, photos, clock)
    phone_family, _ = grant(phone.session, photos, clock)

    ended = sessions.end_all(ada, EndReason.ENDED_ALL, now=clock.now(), actor="user:x",
                             keep=here.session.id)
    db.session.commit()

    assert {s.id for s in ended} == {phone.session.id, laptop.session.id}
    assert [s.id for s in open_sessions(ada)] == [here.session.id]
    assert fresh(LoginSession, phone.session.id).end_reason == "ended_all"
    assert family_active(here_family.id, clock.now())
    assert not family_active(phone_family.id, clock.now())


def test_sign_out_everywhere_ends_every_session(ctx, clock, ada):
    login(ada, clock)
    login(ada, clock, PHONE)
    ended = sessions.end_all(ada, EndReason.PASSWORD_CHANGED, now=clock.now(), actor="user:x")
    db.session.commit()
    assert len(ended) == 2
    assert open_sessions(ada) == []
    assert {e.detail["reason"] for e in events("session.ended")} == {"password_changed"}


def test_end_all_ends_a_sign_in_that_committed_after_its_request_read_the_clock(ctx, clock, ada):
    """"End all" asked at T (its request read the clock, then worked), while a sign-in
    committed at T + 1 s: that session exists when the end-all commits, so it ends too
    (no request-start cut-off, DESIGN invariant 9), and is never recorded ended before
    it began."""
    asked_at = clock.now()
    earlier = login(ada, clock)
    clock.advance(seconds=1)
    later = login(ada, clock, PHONE)
    ended = sessions.end_all(ada, EndReason.ENDED_ALL, now=asked_at, actor="user:x")
    db.session.commit()
    assert sorted(s.id for s in ended) == sorted([earlier.session.id, later.session.id])
    assert open_sessions(ada) == []
    for started in (earlier, later):
        row = fresh(LoginSession, started.session.id)
        assert row.ended_at >= row.created_at


def test_sessions_already_past_a_deadline_are_recorded_as_expired_not_ended(ctx, clock, ada, interval):
    stale = login(ada, clock)
    clock.advance(hours=3)
    live = login(ada, clock, PHONE)
    sessions.end_all(ada, EndReason.ENDED_ALL, now=clock.now(), actor="user:x")
    db.session.commit()
    assert fresh(LoginSession, stale.session.id).end_reason == "expired_idle"
    assert fresh(LoginSession, live.session.id).end_reason == "ended_all"


# -- the concurrent-session limit ----------------------------------------------------------------


def test_deny_policy_refuses_a_login_over_the_limit_and_lists_the_sessions(ctx, clock, new_user):
    user = new_user(max_concurrent_sessions=2, on_concurrent_limit="deny")
    first = login(user, clock)
    second = login(user, clock, PHONE)
    clock.advance(minutes=1)

    with pytest.raises(SessionLimitReached) as refused:
        start_session(user, ORIGIN, now=clock.now())
    db.session.commit()  # the login page commits the audit event

    assert {s.id for s in refused.value.active} == {first.session.id, second.session.id}
    assert len(open_sessions(user)) == 2
    [event] = events("session.denied")
    assert event.user_id == user.id and event.session_id is None
    assert event.ip == ORIGIN.ip and event.at == clock.now()
    assert event.detail == {"reason": "concurrent_limit", "limit": 2}


def test_racing_logins_never_exceed_the_limit(app, ctx, clock, new_user):
    user_id = new_user(max_concurrent_sessions=1, on_concurrent_limit="deny").id
    start = threading.Barrier(3)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def sign_in() -> None:
        try:
            with app.app_context():
                user = db.session.get(User, user_id)
                start.wait(timeout=10)
                try:
                    start_session(user, ORIGIN, now=clock.now())
                    outcomes.append("started")
                except SessionLimitReached:
                    outcomes.append("denied")
                db.session.commit()
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    racers = [threading.Thread(target=sign_in) for _ in range(3)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=60)

    assert errors == []
    assert sorted(outcomes) == ["denied", "denied", "started"]
    assert len(open_sessions(db.session.get(User, user_id))) == 1
    assert len(events("session.denied")) == 2


def test_an_expired_session_does_not_count_towards_the_limit(ctx, clock, new_user):
    user = new_user(max_concurrent_sessions=1, on_concurrent_limit="deny")
    login(user, clock)
    clock.advance(hours=2)  # idle past its deadline, never marked
    started = login(user, clock, PHONE)
    assert started.session.id in {s.id for s in open_sessions(user)}


def test_end_oldest_policy_ends_the_least_recently_used_session(ctx, clock, new_user, interval, photos):
    user = new_user(max_concurrent_sessions=2, on_concurrent_limit="end_oldest")
    laptop = login(user, clock)
    clock.advance(minutes=1)
    phone = login(user, clock, PHONE)
    phone_family, _ = grant(phone.session, photos, clock)
    clock.advance(minutes=4)
    assert sessions.touch(laptop.session, clock.now(), ORIGIN.ip, interval)  # laptop used again
    db.session.commit()
    clock.advance(minutes=1)

    newest = login(user, clock)

    assert [s.id for s in newest.ended] == [phone.session.id]
    assert {s.id for s in open_sessions(user)} == {laptop.session.id, newest.session.id}
    evicted = fresh(LoginSession, phone.session.id)
    assert (evicted.end_reason, evicted.ended_at) == ("evicted_concurrent", clock.now())
    assert not family_active(phone_family.id, clock.now())
    [event] = events("session.ended", phone.session.id)
    assert event.actor == "policy" and event.detail["reason"] == "evicted_concurrent"


# -- status --------------------------------------------------------------------------------------


def test_status_is_derived_from_the_current_policy_and_the_end_reason(ctx, clock, ada):
    active = login(ada, clock)
    logged_out = login(ada, clock)
    sessions.end(logged_out.session, EndReason.LOGOUT, now=clock.now(), actor="user:x")
    db.session.commit()
    assert sessions.status(active.session, clock.now()) is Status.ACTIVE
    assert sessions.status(logged_out.session, clock.now()) is Status.ENDED

    clock.advance(hours=2)  # past the idle deadline; nothing written yet
    assert sessions.status(active.session, clock.now()) is Status.EXPIRED
    assert fresh(LoginSession, active.session.id).ended_at is None
    assert sessions.status(fresh(LoginSession, logged_out.session.id), clock.now()) is Status.ENDED

    sessions.check(active.session, clock.now())
    db.session.commit()
    assert sessions.status(fresh(LoginSession, active.session.id), clock.now()) is Status.EXPIRED


def test_active_sessions_lists_only_the_users_live_ones(ctx, clock, ada, new_user):
    other = new_user()
    stale = login(ada, clock)
    clock.advance(hours=1, minutes=30)
    live = login(ada, clock, PHONE)
    ended = login(ada, clock)
    sessions.end(ended.session, EndReason.LOGOUT, now=clock.now(), actor="user:x")
    db.session.commit()
    login(other, clock)
    clock.advance(minutes=31)  # stale is now idle for 2 h 1 min
    assert [s.id for s in sessions.active_sessions(ada, clock.now())] == [live.session.id]
    assert fresh(LoginSession, stale.session.id).ended_at is None


def test_history_brings_each_sessions_newest_events_only_and_none_when_none_are_asked(
        ctx, clock, ada):
    busy, quiet = login(ada, clock), login(ada, clock, PHONE)
    for minute in range(1, 8):
        clock.advance(minutes=1)
        audit.record(f"test.step{minute}", now=clock.now(), session_id=busy.session.id)
    db.session.commit()
    retention = timedelta(days=30)
    page = sessions.history(ada, clock.now(), retention=retention, events_per_session=3)
    by_id = {view.session.id: view for view in page.views}
    assert [e.event for e in by_id[busy.session.id].events] == [
        "test.step7", "test.step6", "test.step5"]
    assert [e.event for e in by_id[quiet.session.id].events] == ["session.started"]
    bare = sessions.history(ada, clock.now(), retention=retention, events_per_session=0)
    assert all(view.events == [] for view in bare.views)


# -- sweep ---------------------------------------------------------------------------------------


def test_sweep_expires_sessions_past_their_deadline_and_revokes_their_tokens(ctx, clock, ada, photos):
    idle = login(ada, clock)
    family, _refresh = grant(idle.session, photos, clock)
    clock.advance(hours=1, minutes=59)
    busy = login(ada, clock, PHONE)
    clock.advance(minutes=1)

    result = sessions.sweep(clock.now(), ctx.config["SESSION_RETENTION"])

    assert (result.expired, result.purged) == (1, 0)
    s = fresh(LoginSession, idle.session.id)
    assert (s.end_reason, s.ended_at) == ("expired_idle", clock.now())
    assert fresh(TokenFamily, family.id).revoke_reason == "session_ended"
    assert fresh(LoginSession, busy.session.id).ended_at is None
    [event] = events("session.expired", s.id)
    assert event.actor == "sweep"


def test_sweep_uses_each_accounts_current_policy(ctx, clock, new_user):
    strict = login(new_user(idle_timeout=600), clock)
    lax = login(new_user(), clock)
    clock.advance(minutes=10)
    assert sessions.sweep(clock.now(), ctx.config["SESSION_RETENTION"]).expired == 1
    assert fresh(LoginSession, strict.session.id).end_reason == "expired_idle"
    assert fresh(LoginSession, lax.session.id).ended_at is None


def test_sweep_purges_history_older_than_retention_with_everything_under_it(ctx, clock, ada, photos):
    retention = ctx.config["SESSION_RETENTION"]
    old = login(ada, clock)
    old_family, old_refresh = grant(old.session, photos, clock)
    old_code = pending_code(old.session, photos, clock)
    sessions.end(old.session, EndReason.LOGOUT, now=clock.now(), actor="user:x")
    db.session.commit()

    clock.advance(retention - timedelta(hours=1))
    recent = login(ada, clock)
    recent_family, _ = grant(recent.session, photos, clock)
    sessions.end(recent.session, EndReason.LOGOUT, now=clock.now(), actor="user:x")
    db.session.commit()
    clock.advance(hours=1)
    assert sessions.sweep(clock.now(), retention).purged == 0  # exactly at retention: kept

    clock.advance(seconds=1)
    old_id, old_family_id = old.session.id, old_family.id
    recent_id, recent_family_id = recent.session.id, recent_family.id
    result = sessions.sweep(clock.now(), retention)

    assert result.purged == 1
    db.session.expire_all()
    assert db.session.get(LoginSession, old_id) is None
    assert db.session.get(TokenFamily, old_family_id) is None
    assert db.session.get(RefreshToken, passwords.split_token(old_refresh)[0]) is None
    assert db.session.get(AuthorizationCode, passwords.split_token(old_code)[0]) is None
    assert db.session.scalars(sa.select(AuditEvent).where(AuditEvent.session_id == old_id)).all() == []
    assert db.session.get(LoginSession, recent_id) is not None
    assert db.session.get(TokenFamily, recent_family_id) is not None
    assert len(events("session.ended", recent_id)) == 1


def test_sweep_works_in_batches_smaller_than_the_work(ctx, clock, ada):
    started = [login(ada, clock) for _ in range(5)]
    clock.advance(hours=2)
    seen: list[int] = []
    result = sessions.sweep(clock.now(), ctx.config["SESSION_RETENTION"], batch=2, progress=seen.append)
    assert result.expired == 5
    assert sum(seen) == 5
    assert all(fresh(LoginSession, s.session.id).end_reason == "expired_idle" for s in started)
    clock.advance(ctx.config["SESSION_RETENTION"] + SECOND)
    assert sessions.sweep(clock.now(), ctx.config["SESSION_RETENTION"], batch=2).purged == 5
