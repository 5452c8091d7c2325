"""The session policy enforced everywhere, over real HTTP against a served instance,
with the shared fake clock (nobody sleeps): the concurrent limit at login (also when
logins race), the deadlines on every request with the cookie, at refresh, at
introspection and userinfo, policy changes mid-session, and the sweep."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa

from idp import cli, sessions, tokens
from idp.models import AuditEvent, Client, LoginSession, RefreshToken, TokenFamily, User, db
from tests.compact import claims_of
from tests.conftest import PASSWORD
from tests.flows import obtain_tokens, start_session
from tests.relying_party import Browser, RelyingParty, csrf_token

pytestmark = pytest.mark.e2e

ADA = "ada@acme.test"
ADAM = "adam@acme.test"
CHROME = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
          "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36")
PHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
         "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1")
IDLE_MESSAGE = "You were signed out after a period of inactivity. Sign in again."
DURATION_MESSAGE = "Your session reached its maximum duration. Sign in again."
POLICY_MESSAGE = ("Your organisation changed its session policy, which ended this session. "
                  "Sign in again.")
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)


# -- the world ---------------------------------------------------------------------------------


@dataclass
class Env:
    app: object
    live: object
    clock: object
    rp: RelyingParty
    account_id: int
    ada: str
    adam: str

    # devices
    def device(self, ua: str = CHROME) -> httpx.Client:
        return httpx.Client(base_url=self.live.url, timeout=20, headers={"User-Agent": ua})

    def login(self, http: httpx.Client, email: str = ADA) -> httpx.Response:
        page = http.get("/login")
        return http.post("/login", data={"csrf_token": csrf_token(page.text), "email": email,
                                         "password": PASSWORD})

    def signed_in(self, ua: str = CHROME) -> httpx.Client:
        http = self.device(ua)
        response = self.login(http)
        assert response.status_code == 303, response.text[:300]
        return http

    def browser(self, ua: str = CHROME) -> Browser:
        return Browser(self.live.url, user_agent=ua)

    def tokens(self, browser: Browser | None = None, email: str = ADA, scope: str = "openid"):
        return obtain_tokens(self.rp, browser or self.browser(), email, scope=scope)

    # the admin API
    def set_policy(self, **values) -> dict:
        token = self.tokens(email=ADAM, scope="openid admin")
        response = httpx.put(f"{self.live.url}/api/v1/account/session-policy", json=values,
                             headers={"Authorization": f"Bearer {token['access_token']}"},
                             timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    # the database
    def row(self, session_id: str) -> LoginSession:
        with self.app.app_context():
            row = db.session.get(LoginSession, session_id)
            db.session.expunge(row)
            return row

    def rows(self, sub: str | None = None) -> list[LoginSession]:
        with self.app.app_context():
            query = sa.select(LoginSession).join(User).order_by(LoginSession.created_at)
            if sub:
                query = query.where(User.sub == sub)
            found = db.session.scalars(query).all()
            db.session.expunge_all()
            return list(found)

    def active_ids(self, sub: str) -> set[str]:
        return {s.id for s in self.rows(sub) if s.ended_at is None}

    def families(self, session_id: str) -> list[TokenFamily]:
        with self.app.app_context():
            found = db.session.scalars(
                sa.select(TokenFamily).where(TokenFamily.session_id == session_id)).all()
            db.session.expunge_all()
            return list(found)

    def events(self, name: str, session_id: str | None = None) -> list[AuditEvent]:
        with self.app.app_context():
            query = sa.select(AuditEvent).where(AuditEvent.event == name).order_by(AuditEvent.id)
            if session_id:
                query = query.where(AuditEvent.session_id == session_id)
            found = db.session.scalars(query).all()
            db.session.expunge_all()
            return list(found)


@pytest.fixture
def make_env(app, live_server, clock, make_account, make_user, make_client):
    def build(**policy) -> Env:
        account = make_account("acme", **policy)
        ada = make_user(ADA, account_id=account, name="Ada Lovelace")
        adam = make_user(ADAM, account_id=account, role="admin", name="Adam Admin")
        client = make_client("Console", scope="openid email sessions admin")
        rp = RelyingParty(live_server.url, client.client_id, client.client_secret,
                          client.redirect_uri)
        return Env(app, live_server, clock, rp, account, ada, adam)

    return build


def sid_of(http: httpx.Client | Browser) -> str:
    jar = http.http.cookies if isinstance(http, Browser) else http.cookies
    return jar.get("idp_session").split(".")[0]


def sid_in(token: dict) -> str:
    return claims_of(token["access_token"])["sid"]


def page(http: httpx.Client | Browser, path: str = "/account/sessions") -> httpx.Response:
    client = http.http if isinstance(http, Browser) else http
    base = http.base if isinstance(http, Browser) else ""
    return client.get(f"{base}{path}")


def login_page_message(http: httpx.Client | Browser) -> str:
    text = page(http, "/login").text
    return " ".join(re.findall(r'<p class="flash flash-info" role="status">([^<]*)</p>', text))


def introspect_refresh(env: Env, token: dict) -> dict:
    return env.rp.introspect(token["refresh_token"], token_type_hint="refresh_token").json()


# -- the concurrent limit at login ---------------------------------------------------------------


def race_logins(env: Env, count: int) -> list[httpx.Response | BaseException]:
    """``count`` sign-ins of ada, each from its own device, released at the same instant."""
    devices = []
    for _ in range(count):
        http = env.device()
        devices.append((http, csrf_token(http.get("/login").text)))
    barrier = threading.Barrier(count, timeout=20)
    results: list[httpx.Response | BaseException | None] = [None] * count

    def sign_in(index: int) -> None:
        http, token = devices[index]
        try:
            barrier.wait()
            results[index] = http.post("/login", data={"csrf_token": token, "email": ADA,
                                                       "password": PASSWORD})
        except BaseException as exc:  # reported by the test below, not lost in the thread
            results[index] = exc

    threads = [threading.Thread(target=sign_in, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a sign-in never returned"
    for http, _ in devices:
        http.close()
    assert all(isinstance(r, httpx.Response) for r in results), results
    return results


def test_racing_logins_under_deny_never_exceed_the_limit(make_env):
    env = make_env(max_concurrent_sessions=2, on_concurrent_limit="deny")
    # Five at once: as many password checks of one account as may be in progress at once
    # (IDP_LOGIN_MAX_FAILURES); more would be asked to wait a second.
    results = race_logins(env, 5)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [303, 303] + [409] * 3, [(r.status_code, r.text[:200]) for r in results]
    assert len(env.active_ids(env.ada)) == 2
    assert len(env.rows(env.ada)) == 2  # a refused sign-in leaves no row behind
    for refused in (r for r in results if r.status_code == 409):
        assert "You are signed in on too many devices" in refused.text
    assert len(env.events("session.denied")) == 3


def test_racing_logins_under_end_oldest_leave_at_most_the_limit(make_env):
    env = make_env(max_concurrent_sessions=2, on_concurrent_limit="end_oldest")
    results = race_logins(env, 5)
    assert [r.status_code for r in results] == [303] * 5, [r.text[:200] for r in results]
    rows = env.rows(env.ada)
    assert len(rows) == 5
    assert len([s for s in rows if s.ended_at is None]) == 2
    assert sorted(s.end_reason or "" for s in rows) == [""] * 2 + ["evicted_concurrent"] * 3


def test_deny_page_lists_the_sessions_and_ending_one_lets_the_login_through(make_env, clock):
    env = make_env(max_concurrent_sessions=2, on_concurrent_limit="deny")
    laptop = env.signed_in()
    clock.advance(minutes=1)
    phone = env.signed_in(PHONE)
    clock.advance(minutes=1)
    tablet = env.device()
    refused = env.login(tablet)
    assert refused.status_code == 409
    text = refused.text
    assert "acme allows 2 active sessions at a time." in " ".join(text.split())
    assert text.count(">End this session</button>") == 2
    assert "Chrome on macOS" in text and "Safari on iPhone" in text
    for http in (laptop, phone):
        assert f'action="/login/limit/{sid_of(http)}/end"' in text
    denied = env.events("session.denied")
    assert len(denied) == 1 and denied[0].detail == {"reason": "concurrent_limit", "limit": 2}

    ended = tablet.post(f"/login/limit/{sid_of(laptop)}/end",
                        data={"csrf_token": csrf_token(text)})
    assert ended.status_code == 303 and ended.headers["location"] == "/login"
    flash = tablet.get("/login").text
    assert "Ended the session on Chrome on macOS. Sign in again." in flash
    assert env.row(sid_of(laptop)).end_reason == "ended_by_user"
    assert page(laptop).headers["location"] == "/login"

    assert env.login(tablet).status_code == 303
    assert env.active_ids(env.ada) == {sid_of(phone), sid_of(tablet)}
    assert page(tablet).status_code == 200 and page(phone).status_code == 200


def test_end_oldest_ends_the_least_recently_active_session(make_env, clock):
    env = make_env(max_concurrent_sessions=2, on_concurrent_limit="end_oldest")
    first = env.browser()
    first_tokens = env.tokens(first)
    clock.advance(minutes=1)
    second = env.browser(PHONE)
    second_tokens = env.tokens(second)
    clock.advance(minutes=2)
    # The first session is older but was used more recently (past the write interval).
    assert page(first).status_code == 200
    assert env.row(sid_of(first)).last_active_at == clock.now()
    clock.advance(minutes=1)
    third = env.signed_in()
    assert env.active_ids(env.ada) == {sid_of(first), sid_of(third)}
    evicted = env.row(sid_of(second))
    assert evicted.end_reason == "evicted_concurrent" and evicted.ended_at == clock.now()
    assert [f.revoke_reason for f in env.families(sid_of(second))] == ["session_ended"]
    assert env.rp.refresh(second_tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert env.rp.introspect(second_tokens["access_token"]).json() == {"active": False}
    assert env.rp.introspect(first_tokens["access_token"]).json()["active"] is True
    event = env.events("session.ended", sid_of(second))[0]
    assert event.actor == "policy" and event.detail["reason"] == "evicted_concurrent"
    assert page(second).headers["location"] == "/login"
    assert "Ended: session limit reached" in page(first).text


def test_lowering_the_limit_ends_nothing_and_applies_at_the_next_login(make_env, clock):
    env = make_env()
    devices = []
    for _ in range(3):
        devices.append(env.signed_in())
        clock.advance(minutes=2)
    before = {s.id: (s.updated_at, s.ended_at) for s in env.rows(env.ada)}
    answer = env.set_policy(max_concurrent=2, on_limit="deny")
    assert answer["changes"] == {"max_concurrent": [None, 2]}
    assert answer["impact"]["users_over_concurrent_limit"] == 1
    assert answer["impact"]["sessions_ended_now"] == 0
    # Nothing ended, no deadline moved.
    assert {s.id: (s.updated_at, s.ended_at) for s in env.rows(env.ada)} == before
    for http in devices:
        assert page(http).status_code == 200
    # The next sign-in meets the limit: all three are listed.
    refused = env.login(env.device())
    assert refused.status_code == 409
    assert refused.text.count(">End this session</button>") == 3
    # Under end_oldest the next sign-in brings ada down to the limit at once.
    clock.advance(minutes=1)
    env.set_policy(on_limit="end_oldest")
    newest = env.signed_in()
    active = env.active_ids(env.ada)
    assert len(active) == 2 and sid_of(newest) in active
    ended = [s for s in env.rows(env.ada) if s.ended_at is not None]
    assert len(ended) == 2 and {s.end_reason for s in ended} == {"evicted_concurrent"}


# -- deadlines on every request with the cookie --------------------------------------------------


def test_an_idle_session_is_expired_at_the_next_request_and_the_user_told_why(make_env, clock):
    env = make_env()
    browser = env.browser()
    token = env.tokens(browser)
    session_id = sid_of(browser)
    clock.advance(hours=2)
    response = page(browser)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert "idp_session" not in browser.http.cookies  # the cookie is cleared
    assert login_page_message(browser) == IDLE_MESSAGE
    row = env.row(session_id)
    assert (row.ended_at, row.end_reason) == (clock.now(), "expired_idle")
    assert [(f.revoked_at, f.revoke_reason) for f in env.families(session_id)] == [
        (clock.now(), "session_ended")]
    event = env.events("session.expired", session_id)[0]
    assert event.actor == "policy" and event.detail["reason"] == "expired_idle"
    assert env.rp.refresh(token["refresh_token"]).json()["error"] == "invalid_grant"
    assert introspect_refresh(env, token) == {"active": False}


def test_a_busy_session_ends_at_its_maximum_duration(make_env, clock):
    env = make_env(max_session_duration=3 * 3600, idle_timeout=2 * 3600)
    browser = env.browser()
    token = env.tokens(browser)
    session_id = sid_of(browser)
    clock.advance(minutes=90)
    assert page(browser).status_code == 200  # activity: the idle deadline moves to 3 h 30
    clock.advance(minutes=90)
    # The relying party sends the user back to /authorize: the session is over.
    url, _ = env.rp.authorization_url(scope="openid", prompt="none")
    response = browser.go(url, stop_at=env.rp.redirect_uri)
    assert env.rp.callback_params(response)["error"] == "login_required"
    row = env.row(session_id)
    assert (row.ended_at, row.end_reason) == (clock.now(), "expired_duration")
    assert env.families(session_id)[0].revoked_at == clock.now()
    assert login_page_message(browser) == DURATION_MESSAGE
    assert env.rp.refresh(token["refresh_token"]).json()["error"] == "invalid_grant"


def test_idle_expiry_is_exact_given_the_activity_write_interval(make_env, clock):
    env = make_env()  # idle 2 h; activity is written at most once a minute
    start = clock.now()
    quiet = env.browser()
    quiet_tokens = env.tokens(quiet)
    busy = env.browser(PHONE)
    busy_tokens = env.tokens(busy)
    quiet_id, busy_id = sid_of(quiet), sid_of(busy)

    clock.advance(seconds=30)
    assert page(quiet).status_code == 200  # within the interval: not written
    assert env.row(quiet_id).last_active_at == start
    clock.advance(seconds=31)
    assert page(busy).status_code == 200  # past the interval: written
    assert env.row(busy_id).last_active_at == start + timedelta(seconds=61)

    # The quiet session's deadline is its last *written* activity + 2 h, to the second.
    clock.set(start + timedelta(hours=2) - SECOND)
    assert introspect_refresh(env, quiet_tokens)["active"] is True
    clock.advance(SECOND)
    assert introspect_refresh(env, quiet_tokens) == {"active": False}
    assert introspect_refresh(env, busy_tokens)["active"] is True
    # That answer recorded the expiry, at the deadline itself.
    row = env.row(quiet_id)
    assert (row.ended_at, row.end_reason) == (start + timedelta(hours=2), "expired_idle")
    assert page(quiet).headers["location"] == "/login"

    clock.set(start + timedelta(seconds=61) + timedelta(hours=2) - SECOND)
    assert introspect_refresh(env, busy_tokens)["active"] is True
    clock.advance(SECOND)
    assert introspect_refresh(env, busy_tokens) == {"active": False}
    assert page(busy).headers["location"] == "/login"
    row = env.row(busy_id)
    assert (row.ended_at, row.end_reason) == (clock.now(), "expired_idle")


# -- refresh -----------------------------------------------------------------------------------


def test_refresh_after_the_idle_deadline_fails_and_marks_the_session(make_env, clock):
    env = make_env()
    token = env.tokens()
    session_id = sid_in(token)
    clock.advance(hours=2)
    response = env.rp.refresh(token["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    row = env.row(session_id)
    assert (row.ended_at, row.end_reason) == (clock.now(), "expired_idle")
    assert env.families(session_id)[0].revoke_reason == "session_ended"


def test_refresh_after_the_maximum_duration_fails_and_marks_the_session(make_env, clock):
    env = make_env(max_session_duration=3600, idle_timeout=3600)
    token = env.tokens()
    session_id = sid_in(token)
    clock.advance(minutes=40)
    refreshed = env.rp.refresh(token["refresh_token"])
    assert refreshed.status_code == 200  # activity: idle deadline now at 1 h 40
    clock.advance(minutes=20)
    response = env.rp.refresh(refreshed.json()["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    row = env.row(session_id)
    assert (row.ended_at, row.end_reason) == (clock.now(), "expired_duration")
    assert env.families(session_id)[0].revoke_reason == "session_ended"


def test_refresh_under_an_ended_session_fails_and_keeps_its_reason(make_env, clock):
    env = make_env()
    browser = env.browser()
    token = env.tokens(browser)
    form = page(browser, "/account/sessions/end-others").text
    logout = browser.http.post(f"{env.live.url}/logout", data={"csrf_token": csrf_token(form)})
    assert logout.status_code == 303
    clock.advance(minutes=1)
    response = env.rp.refresh(token["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert env.row(sid_in(token)).end_reason == "logout"


def test_a_successful_refresh_counts_as_activity(make_env, clock):
    env = make_env()
    start = clock.now()
    browser = env.browser()
    token = env.tokens(browser)
    clock.advance(hours=1, minutes=59)
    token = env.rp.refresh(token["refresh_token"])
    assert token.status_code == 200
    row = env.row(sid_of(browser))
    assert row.last_active_at == row.updated_at == start + timedelta(hours=1, minutes=59)
    clock.advance(hours=1)  # well past the first idle deadline (start + 2 h)
    token = env.rp.refresh(token.json()["refresh_token"])
    assert token.status_code == 200
    assert page(browser).status_code == 200  # the browser's session lives on too
    assert env.row(sid_of(browser)).ended_at is None


def test_refresh_tokens_never_outlive_the_absolute_deadline(make_env, clock):
    env = make_env(max_session_duration=3 * 3600, idle_timeout=2 * 3600)
    start = clock.now()
    deadline = start + timedelta(hours=3)
    token = env.tokens()
    assert introspect_refresh(env, token)["exp"] == int(deadline.timestamp())
    clock.advance(minutes=90)
    token = env.rp.refresh(token["refresh_token"]).json()
    assert introspect_refresh(env, token)["exp"] == int(deadline.timestamp())
    clock.advance(minutes=89)
    token = env.rp.refresh(token["refresh_token"]).json()
    assert introspect_refresh(env, token)["exp"] == int(deadline.timestamp())
    assert token["expires_in"] == 60  # the access token stops at the deadline too
    family_ids = [f.id for f in env.families(sid_in(token))]
    with env.app.app_context():
        expiries = db.session.scalars(sa.select(RefreshToken.expires_at).where(
            RefreshToken.family_id.in_(family_ids))).all()
    assert len(expiries) == 3 and set(expiries) == {deadline}
    clock.advance(minutes=1)
    assert env.rp.refresh(token["refresh_token"]).json()["error"] == "invalid_grant"


# -- introspection and userinfo answer right without any write ------------------------------------


def test_tokens_of_a_session_that_silently_went_idle_are_inactive(make_env, clock):
    env = make_env(max_session_duration=3600, idle_timeout=600)  # access tokens: 10 min
    token = env.tokens(scope="openid email")
    session_id = sid_in(token)
    clock.advance(seconds=599)
    assert env.rp.introspect(token["access_token"]).json()["active"] is True
    assert env.rp.userinfo(token["access_token"]).status_code == 200
    assert introspect_refresh(env, token)["active"] is True
    clock.advance(SECOND)
    assert env.rp.introspect(token["access_token"]).json() == {"active": False}
    assert env.rp.userinfo(token["access_token"]).status_code == 401
    assert introspect_refresh(env, token) == {"active": False}
    # The first "inactive" answer ended the session as it found it: at its idle deadline,
    # its family revoked, so nothing (a later relaxed policy included) revives it.
    row = env.row(session_id)
    assert (row.end_reason, row.ended_at) == ("expired_idle", row.last_active_at + 10 * MINUTE)
    assert env.families(session_id)[0].revoke_reason == "session_ended"


def test_a_tightened_policy_ends_the_sessions_past_it_when_saved(make_env, clock):
    """Saving a shorter maximum duration ends, at once and in its own transaction, every
    session past it ("Ended: policy changed", at the change); the younger session keeps
    running until its own new deadline."""
    env = make_env()  # 24 h / 2 h
    start = clock.now()
    a = env.browser()  # signs in at once; holds tokens
    env.tokens(a, scope="openid email")
    c = env.browser(PHONE)  # signs in at once; browser only
    c.login(c.go(f"{env.live.url}/login"), ADA, PASSWORD)
    clock.advance(minutes=90)
    assert page(a).status_code == 200 and page(c).status_code == 200
    clock.advance(minutes=30)
    b = env.browser()  # two hours after the others
    b.login(b.go(f"{env.live.url}/login"), ADA, PASSWORD)
    clock.advance(minutes=60)
    token = env.tokens(a, scope="openid email")  # a fresh access token, 3 h into the session
    assert env.rp.introspect(token["access_token"]).json()["active"] is True

    clock.advance(minutes=1)
    answer = env.set_policy(max_duration="2h")
    changed_at = clock.now()
    assert answer["changes"] == {"max_duration": [86400, 7200]}
    assert answer["impact"]["sessions_ended_now"] == 2
    a_id, b_id, c_id = sid_of(a), sid_of(b), sid_of(c)
    for sid in (a_id, c_id):
        row = env.row(sid)
        assert (row.ended_at, row.end_reason, row.updated_at) == (
            changed_at, "policy_changed", changed_at)
    assert env.row(b_id).ended_at is None and env.row(b_id).updated_at == changed_at

    assert env.rp.introspect(token["access_token"]).json() == {"active": False}
    assert env.rp.userinfo(token["access_token"]).status_code == 401
    assert env.rp.refresh(token["refresh_token"]).json()["error"] == "invalid_grant"
    assert page(c).headers["location"] == "/login"
    assert login_page_message(c) == POLICY_MESSAGE
    # The younger session is fine until 2 h after its own start.
    assert page(b).status_code == 200
    clock.set(start + timedelta(hours=4) - SECOND)
    assert page(b).status_code == 200
    clock.advance(SECOND)
    assert page(b).headers["location"] == "/login"
    row = env.row(b_id)
    assert (row.ended_at, row.end_reason) == (start + timedelta(hours=4), "expired_duration")


# -- the sweep ---------------------------------------------------------------------------------


def test_sweep_expires_revokes_and_purges(make_env, clock, monkeypatch, capsys):
    env = make_env()
    now = clock.now()
    origin = sessions.Origin(ip="203.0.113.7")
    with env.app.app_context():
        ada = db.session.scalar(sa.select(User).where(User.sub == env.ada))
        client = db.session.scalar(sa.select(Client))

        def opened(at, last=None):
            s = start_session(ada, origin, now=at).session
            if last:
                s.last_active_at = s.updated_at = last
            family = tokens.start_family(session=s, client=client, scope="openid", now=at)
            tokens.issue_refresh(tokens.Holder.of(family, issuing=True), now=at, lifetime=timedelta(days=30))
            return s

        idle = opened(now - timedelta(hours=3))
        busy = opened(now - timedelta(hours=25), last=now - timedelta(minutes=5))
        live = opened(now - timedelta(minutes=10))
        ancient = opened(now - timedelta(days=40))
        sessions.end(ancient, sessions.EndReason.LOGOUT, now=now - timedelta(days=31), actor="t")
        recent = opened(now - timedelta(days=29, hours=1))
        sessions.end(recent, sessions.EndReason.LOGOUT, now=now - timedelta(days=29), actor="t")
        ids = {name: s.id for name, s in (("idle", idle), ("busy", busy), ("live", live),
                                           ("ancient", ancient), ("recent", recent))}
        db.session.commit()

    monkeypatch.setattr(cli, "_app", lambda: env.app)
    capsys.readouterr()
    cli.main(["sweep", "--json"])
    # spent: the "This wasn't me" link of the new-device notice about ``recent`` (no device
    # marker here: each sign-in is a new device), a week past its 24 hours.
    assert json.loads(capsys.readouterr().out) == {"expired": 2, "purged": 1, "spent": 1}

    with env.app.app_context():
        rows = {s.id: s for s in db.session.scalars(sa.select(LoginSession))}
        assert ids["ancient"] not in rows
        for kind in (TokenFamily, AuditEvent):
            assert not db.session.scalars(sa.select(kind).where(
                kind.session_id == ids["ancient"])).all()
        assert db.session.scalar(sa.select(sa.func.count()).select_from(RefreshToken)) == 4
        # Recorded as ended at the deadline each one crossed (an hour ago for both).
        deadline = now - timedelta(hours=1)
        assert (rows[ids["idle"]].ended_at, rows[ids["idle"]].end_reason) == (
            deadline, "expired_idle")
        assert (rows[ids["busy"]].ended_at, rows[ids["busy"]].end_reason) == (
            deadline, "expired_duration")
        assert rows[ids["live"]].ended_at is None
        assert rows[ids["recent"]].end_reason == "logout"
        for name in ("idle", "busy"):
            family = db.session.scalar(sa.select(TokenFamily).where(
                TokenFamily.session_id == ids[name]))
            assert (family.revoked_at, family.revoke_reason) == (now, "session_ended")
            event = db.session.scalar(sa.select(AuditEvent).where(
                AuditEvent.session_id == ids[name], AuditEvent.event == "session.expired"))
            assert event.actor == "sweep"

    # A second sweep a day and a half later: the live session has expired meanwhile,
    # the one ended 29 days ago has passed the 30-day retention.
    clock.advance(hours=36)
    with env.app.app_context():
        result = sessions.sweep(clock.now(), env.app.config["SESSION_RETENTION"])
        assert (result.expired, result.purged) == (1, 1)
        remaining = set(db.session.scalars(sa.select(LoginSession.id)))
        assert remaining == {ids["idle"], ids["busy"], ids["live"]}
        assert db.session.get(LoginSession, ids["live"]).end_reason == "expired_duration"
