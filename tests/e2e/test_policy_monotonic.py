"""Inactive is monotonic under policy changes, over real HTTP against a served instance with
an independent relying party (tests/relying_party.py), on both databases.

A stricter policy ends every session past it at once ("Ended: policy changed"), with its
token families revoked and a back-channel logout token per client; relaxing it afterwards
brings nothing back. Sessions that silently went past a deadline stay inactive when an
administrator then raises that limit: one the relying party asked about (inactive) and one
nobody touched (nothing recorded it, so the change must) are each recorded as the expiry
they were, at their deadline, with one logout token each.

Every change is made by an administrator through the settings page (the form, with its
CSRF token) or through the JSON API; each scenario runs through both. The admin's preview
(page and ``?dry_run=true``) is held equal to what saving reports and to what the database
shows afterwards. Time moves with the shared fake clock; nobody sleeps.
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import joserfc.jwt as jwt
import pytest
import sqlalchemy as sa
from werkzeug.wrappers import Request, Response

from idp.models import AuditEvent, LoginSession, LogoutDelivery, TokenFamily, db
from tests.e2e.processes import serving
from tests.flows import obtain_tokens
from tests.relying_party import Browser, RelyingParty, csrf_token

pytestmark = pytest.mark.e2e

ADA = "ada@acme.test"
BOB = "bob@acme.test"
ADAM = "adam@acme.test"
EVENT = "http://schemas.openid.net/event/backchannel-logout"
SETTINGS = "/admin/settings/sessions"
POLICY_API = "/api/v1/account/session-policy"
POLICY_MESSAGE = ("Your organisation changed its session policy, which ended this session. "
                  "Sign in again.")
IDLE_MESSAGE = "You were signed out after a period of inactivity. Sign in again."
DURATION_MESSAGE = "Your session reached its maximum duration. Sign in again."
TILES = {"max_duration": "duration", "idle_timeout": "idle"}
EXPIRIES = ("expired_idle", "expired_duration")
IMPACT = re.compile(
    r"If you save these values: (\d+) active sessions? of (\d+) users? would end at once; "
    r"(\d+) users? would be above the concurrent-session limit \(it applies at their next "
    r"sign-in\); (\d+) sessions? would get new deadlines"
    r"(?:; (\d+) sessions? already past the current limits would be closed)?\. "
    r"Nothing has been saved yet\.")
IMPACT_KEYS = ("sessions_ended_now", "users_with_sessions_ended_now", "users_over_concurrent_limit",
               "sessions_whose_deadlines_move", "expired_sessions_closed")


# -- a relying party's back-channel logout endpoint on a loopback port ------------------------------


@dataclass
class Receiver:
    """Records every logout token POSTed to /bc/<name>; answers 200."""

    posts: list[tuple[str, str]] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        request = Request(environ)
        with self.lock:
            if request.method == "POST" and request.path.startswith("/bc/"):
                self.posts.append((request.path.removeprefix("/bc/"),
                                   request.form.get("logout_token", "")))
            else:
                self.strays.append(f"{request.method} {request.path}")
        return Response("", 200, {"Cache-Control": "no-store"})(environ, start_response)

    def tokens(self, name: str) -> list[str]:
        with self.lock:
            return [token for who, token in self.posts if who == name]


# -- the world --------------------------------------------------------------------------------------


@dataclass
class Signed:
    """One sign-in in its own browser, holding Photos' tokens under that session."""

    email: str
    browser: Browser
    tokens: dict
    sid: str
    sub: str


@dataclass
class Admin:
    """Adam, signed in in his own browser, with an access token of scope ``admin``."""

    world: World
    browser: Browser
    token: dict

    def _api(self, values: dict, **params) -> dict:
        response = httpx.put(f"{self.world.base}{POLICY_API}", params=params, json=values,
                             headers={"Authorization": f"Bearer {self.token['access_token']}"},
                             timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def _form(self, values: dict, confirm: str) -> httpx.Response:
        [name] = values  # one tile at a time, as the page offers
        page = self.browser.http.get(f"{self.world.base}{SETTINGS}")
        assert page.status_code == 200, page.text[:300]
        return self.browser.go(f"{self.world.base}{SETTINGS}", method="POST", data={
            "csrf_token": csrf_token(page.text), "tile": TILES[name], **values,
            "confirm": confirm})

    def preview(self, **values) -> dict:
        """The impact shown on the page and answered by ``?dry_run=true``, held equal."""
        response = self._form(values, "preview")
        assert response.status_code == 200, response.text[:300]
        on_page = impact_on_page(response.text)
        dry_run = self._api(values, dry_run="true")
        assert dry_run["dry_run"] is True and dry_run["changes"] == {}
        assert dry_run["impact"] == on_page
        return on_page

    def save(self, surface: str, **values) -> dict:
        """Save through ``surface``; what saving reported, in the preview's terms."""
        if surface == "api":
            body = self._api(values)
            assert body["dry_run"] is False and set(body["changes"]) == set(values)
            return body["impact"]
        response = self._form(values, "save")
        assert response.status_code == 200 and response.url.path == SETTINGS, response.text[:300]
        return {"message": flashes(response.text, "success")}

    def renew(self) -> None:
        """A fresh access token under the same session (they last ten minutes)."""
        self.token = obtain_tokens(self.world.console, self.browser, ADAM, scope="openid admin")

    def policy(self) -> dict:
        response = httpx.get(f"{self.world.base}{POLICY_API}", timeout=10,
                             headers={"Authorization": f"Bearer {self.token['access_token']}"})
        assert response.status_code == 200, response.text
        return response.json()


@dataclass
class World:
    live: object
    clock: object
    receiver: Receiver
    photos: RelyingParty  # registered a back-channel logout URI on the receiver
    console: RelyingParty  # the administrators' console (scope admin), no back-channel URI
    subs: dict[str, str]

    @property
    def base(self) -> str:
        return self.live.url

    def sign_in(self, email: str) -> Signed:
        browser = Browser(self.base)
        tokens = obtain_tokens(self.photos, browser, email)
        claims = self.verify_id_token(tokens["id_token"])
        assert claims["sub"] == self.subs[email]
        return Signed(email, browser, tokens, claims["sid"], claims["sub"])

    def verify_id_token(self, id_token: str) -> dict:
        """The RP's check (published JWKS, joserfc), at the shared clock's now: the clock
        runs hours ahead of the wall clock in these tests."""
        token = jwt.decode(id_token, self.photos.keys(), algorithms=["RS256", "ES256"])
        jwt.JWTClaimsRegistry(
            now=int(self.clock.now().timestamp()),
            iss={"essential": True, "value": self.base},
            aud={"essential": True, "value": self.photos.client_id},
            sub={"essential": True},
            sid={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
        ).validate(token.claims)
        return token.claims

    def admin(self) -> Admin:
        browser = Browser(self.base)
        token = obtain_tokens(self.console, browser, ADAM, scope="openid admin")
        return Admin(self, browser, token)

    def use(self, signed: Signed) -> None:
        """The app refreshes (activity, and a fresh access token)."""
        response = self.photos.refresh(signed.tokens["refresh_token"])
        assert response.status_code == 200, response.text
        signed.tokens.update(response.json())

    # back-channel logout
    def drain(self) -> None:
        assert self.live.app.extensions["idp.logout"].drain(10), "logout attempts did not finish"

    def run_due(self) -> dict:
        with self.live.app.app_context():
            try:
                return self.live.app.extensions["idp.logout"].run_due()
            finally:
                db.session.remove()

    def verify_logout(self, logout_token: str, *, sid: str, sub: str) -> dict:
        """Back-Channel Logout 1.0 §2.4/§2.6 with joserfc and the published JWKS only."""
        token = jwt.decode(logout_token, self.photos.keys(), algorithms=["RS256", "ES256"])
        assert token.header["typ"] == "logout+jwt"
        jwt.JWTClaimsRegistry(
            now=int(self.clock.now().timestamp()),
            iss={"essential": True, "value": self.base},
            aud={"essential": True, "value": self.photos.client_id},
            iat={"essential": True},
            exp={"essential": True},
            jti={"essential": True},
            sub={"essential": True, "value": sub},
            sid={"essential": True, "value": sid},
            events={"essential": True},
        ).validate(token.claims)
        assert token.claims["events"] == {EVENT: {}}
        assert "nonce" not in token.claims
        return token.claims

    # the database, read directly
    def _read(self, query) -> list:
        with self.live.app.app_context():
            try:
                found = list(db.session.scalars(query).all())
                db.session.expunge_all()
                return found
            finally:
                db.session.remove()

    def row(self, sid: str) -> LoginSession:
        [row] = self._read(sa.select(LoginSession).where(LoginSession.id == sid))
        return row

    def rows(self) -> list[LoginSession]:
        return self._read(sa.select(LoginSession).order_by(LoginSession.created_at))

    def families(self, sid: str) -> list[TokenFamily]:
        return self._read(sa.select(TokenFamily).where(TokenFamily.session_id == sid))

    def deliveries(self) -> list[LogoutDelivery]:
        return self._read(sa.select(LogoutDelivery).order_by(LogoutDelivery.id))

    def events(self, name: str) -> list[AuditEvent]:
        return self._read(sa.select(AuditEvent).where(AuditEvent.event == name)
                          .order_by(AuditEvent.id))


@pytest.fixture
def make_world(live_server, make_account, make_user, make_client):
    stack = []

    def build(**policy) -> World:
        receiver = Receiver()
        ctx = serving(receiver)
        port = ctx.__enter__()
        stack.append(ctx)
        account = make_account("acme", **policy)
        subs = {ADA: make_user(ADA, account_id=account, name="Ada Lovelace"),
                BOB: make_user(BOB, account_id=account, name="Bob Babbage"),
                ADAM: make_user(ADAM, account_id=account, role="admin", name="Adam Admin")}
        photos = make_client("Photos", redirect_uri="http://127.0.0.1:9/photos/cb",
                             backchannel_logout_uri=f"http://127.0.0.1:{port}/bc/photos")
        console = make_client("Console", redirect_uri="http://127.0.0.1:9/console/cb",
                              scope="openid email sessions admin")
        rps = [RelyingParty(live_server.url, c.client_id, c.client_secret, c.redirect_uri)
               for c in (photos, console)]
        return World(live_server, live_server.clock, receiver, *rps, subs)

    yield build
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


# -- reading pages -----------------------------------------------------------------------------------


def words(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def impact_on_page(html: str) -> dict:
    block = re.search(r'<div class="flash" role="status" id="impact">(.*?)</div>', html, re.S)
    assert block, "the page shows no preview"
    match = IMPACT.fullmatch(words(block.group(1)))
    assert match, words(block.group(1))
    shown = {key: int(value or 0) for key, value in zip(IMPACT_KEYS, match.groups(), strict=True)}
    return {**shown, "users_without_second_factor": 0}  # (no second factor required here)


def flashes(html: str, category: str) -> str:
    return " ".join(re.findall(rf'<p class="flash flash-{category}" role="status">([^<]*)</p>', html))


def row_on_page(html: str, sid: str) -> tuple[str, str]:
    """(status, reason text) of one session on a sessions page."""
    [chunk] = [c for c in html.split('<li class="session ')[1:] if f'id="session-{sid}"' in c]
    status = re.match(r"status-(\w+)", chunk).group(1)
    reason = re.search(r'<span class="reason">([^<]*)</span>', chunk)
    return status, reason.group(1) if reason else ""


def saved_as_reported(impact: dict) -> dict:
    """What the form's flash says after saving, given the impact (admin.saved_message)."""
    ended = impact["sessions_ended_now"]
    message = "Session policy saved."
    if ended:
        message += f" Ended {ended} active session{'s' if ended != 1 else ''} past the new limits."
    return {"message": message}


def reported(surface: str, preview: dict) -> dict:
    return preview if surface == "api" else saved_as_reported(preview)


@contextmanager
def presenting(browser: Browser):
    """Present the session cookie the browser holds now, and hold it again afterwards (the
    provider clears it on the way to /login): a stale cookie, replayed, must stay dead."""
    kept = [c for c in browser.http.cookies.jar if c.name == "idp_session"]
    assert kept, "the browser holds no session cookie"
    try:
        yield
    finally:
        for cookie in kept:
            browser.http.cookies.jar.set_cookie(cookie)


# -- the checks ----------------------------------------------------------------------------------------


def assert_active(world: World, s: Signed) -> None:
    """Active at every check, untouched in the database, and its app can still refresh."""
    rp = world.photos
    assert rp.introspect(s.tokens["refresh_token"],
                         token_type_hint="refresh_token").json()["active"] is True
    row = world.row(s.sid)
    assert row.ended_at is None and row.end_reason is None
    assert all(f.revoked_at is None for f in world.families(s.sid))
    page = s.browser.http.get(f"{world.base}/account/sessions")
    assert page.status_code == 200 and row_on_page(page.text, s.sid) == ("active", "")
    world.use(s)  # access tokens last ten minutes: a fresh one
    assert rp.introspect(s.tokens["access_token"]).json()["active"] is True
    assert rp.userinfo(s.tokens["access_token"]).status_code == 200


def assert_inactive_everywhere(world: World, s: Signed, *, message: str) -> None:
    """No token of the session, nor its browser cookie, gets anything anywhere."""
    rp = world.photos
    assert rp.introspect(s.tokens["access_token"]).json() == {"active": False}
    assert rp.introspect(s.tokens["refresh_token"], token_type_hint="refresh_token").json() == {
        "active": False}
    assert rp.userinfo(s.tokens["access_token"]).status_code == 401
    refused = rp.refresh(s.tokens["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    with presenting(s.browser):
        url, _ = rp.authorization_url(scope="openid", prompt="none")
        response = s.browser.go(url, stop_at=rp.redirect_uri)
        assert rp.callback_params(response)["error"] == "login_required"
    with presenting(s.browser):
        landed = s.browser.http.get(f"{world.base}/account/sessions")
        assert landed.status_code == 303 and landed.headers["location"] == "/login"
        assert flashes(s.browser.http.get(f"{world.base}/login").text, "info") == message


def assert_shown(viewer: Browser, path: str, sid: str, status: str, reason: str) -> None:
    page = viewer.http.get(f"{viewer.base}{path}")
    assert page.status_code == 200, page.text[:300]
    assert row_on_page(page.text, sid) == (status, reason)


def impact_in_database(world: World, changed_at) -> dict:
    """The change's impact as the rows show it: every session it moved or ended carries its
    instant in updated_at; those it ended now are 'policy_changed', those it closed carry
    the expiry they were."""
    touched = [r for r in world.rows() if r.updated_at == changed_at]
    cut = [r for r in touched if r.end_reason == "policy_changed" and r.ended_at == changed_at]
    closed = [r for r in touched if r.end_reason in EXPIRIES]
    return {"sessions_ended_now": len(cut),
            "users_with_sessions_ended_now": len({r.user_id for r in cut}),
            "users_over_concurrent_limit": 0,  # no concurrent limit in these worlds
            "sessions_whose_deadlines_move": len(touched) - len(closed),
            "expired_sessions_closed": len(closed), "users_without_second_factor": 0}


def assert_change_recorded(world: World, changed_at, impact: dict, changes: dict) -> None:
    assert impact_in_database(world, changed_at) == impact
    [event] = [e for e in world.events("policy.changed") if e.at == changed_at]
    assert event.detail["changes"] == changes
    assert event.detail.get("sessions_ended") == (impact["sessions_ended_now"] or None)
    assert event.detail.get("expired_closed") == (impact["expired_sessions_closed"] or None)


def assert_one_logout_each(world: World, ended: list[Signed]) -> None:
    """One logout token per ended session at the Photos receiver, nothing else anywhere."""
    world.drain()
    received = world.receiver.tokens("photos")
    assert len(received) == len(ended) == len(world.receiver.posts)
    by_sid = {}
    for token in received:
        sid = jwt.decode(token, world.photos.keys(), algorithms=["RS256", "ES256"]).claims["sid"]
        by_sid[sid] = token
    assert set(by_sid) == {s.sid for s in ended}
    for s in ended:
        world.verify_logout(by_sid[s.sid], sid=s.sid, sub=s.sub)
    deliveries = world.deliveries()
    assert sorted(d.session_id for d in deliveries) == sorted(s.sid for s in ended)
    assert all(d.delivered_at is not None and d.attempts == 1 and d.last_status == 200
               for d in deliveries)
    assert world.receiver.strays == []


def assert_no_further_logout(world: World, count: int) -> None:
    world.drain()
    world.clock.advance(minutes=5)
    assert world.run_due()["attempted"] == 0
    assert len(world.receiver.posts) == count and len(world.deliveries()) == count
    assert world.receiver.strays == []


def assert_revoked_at(world: World, s: Signed, at) -> None:
    families = world.families(s.sid)
    assert families and {(f.revoked_at, f.revoke_reason) for f in families} == {
        (at, "session_ended")}


# -- 1 and 2: tightening ends what is past the new limits; relaxing brings nothing back -----------------


def tightened_world(make_world):
    """Under 24 h / 2 h: ada and bob signed in three hours ago (kept in use), ada once more
    half an hour ago."""
    world = make_world(max_session_duration=24 * 3600, idle_timeout=2 * 3600)
    ada_old, bob_old = world.sign_in(ADA), world.sign_in(BOB)
    world.clock.advance(minutes=90)
    world.use(ada_old)
    world.use(bob_old)
    world.clock.advance(hours=1)
    ada_new = world.sign_in(ADA)
    world.clock.advance(minutes=30)
    for s in (ada_old, bob_old, ada_new):
        assert_active(world, s)
    return world, ada_old, bob_old, ada_new


def tighten(world: World, surface: str, ada_old: Signed, bob_old: Signed, ada_new: Signed):
    admin = world.admin()
    world.clock.advance(minutes=1)
    preview = admin.preview(max_duration="2h")
    # The two three-hour-old sessions of two users end; everything active gets new deadlines.
    assert preview == {"sessions_ended_now": 2, "users_with_sessions_ended_now": 2,
                       "users_over_concurrent_limit": 0, "sessions_whose_deadlines_move": 4,
                       "expired_sessions_closed": 0,
                       "users_without_second_factor": 0}
    assert all(r.ended_at is None for r in world.rows())  # previewing changed nothing
    assert admin.save(surface, max_duration="2h") == reported(surface, preview)
    changed_at = world.clock.now()
    assert_change_recorded(world, changed_at, preview, {"max_duration": [86400, 7200]})
    assert admin.policy()["max_duration"] == 7200
    for s in (ada_old, bob_old):
        row = world.row(s.sid)
        assert (row.ended_at, row.end_reason) == (changed_at, "policy_changed")
        assert_revoked_at(world, s, changed_at)
    return admin, changed_at


@pytest.mark.parametrize("surface", ["form", "api"])
def test_tightening_ends_every_session_past_the_new_maximum_at_once(make_world, surface):
    world, ada_old, bob_old, ada_new = tightened_world(make_world)
    admin, _ = tighten(world, surface, ada_old, bob_old, ada_new)

    assert_one_logout_each(world, [ada_old, bob_old])
    for s in (ada_old, bob_old):
        assert_inactive_everywhere(world, s, message=POLICY_MESSAGE)
    # Ada sees her ended session from the one that lives on; the admin sees Bob's.
    assert_shown(ada_new.browser, "/account/sessions", ada_old.sid, "ended", "Ended: policy changed")
    assert_shown(admin.browser, f"/admin/users/{bob_old.sub}/sessions", bob_old.sid, "ended",
                 "Ended: policy changed")
    # The session within the new limits is untouched: active everywhere, and it still works.
    assert_active(world, ada_new)
    assert_no_further_logout(world, 2)


@pytest.mark.parametrize(("first", "then"), [("form", "api"), ("api", "form")],
                         ids=["tighten-form-relax-api", "tighten-api-relax-form"])
def test_relaxing_afterwards_brings_nothing_back(make_world, first, then):
    world, ada_old, bob_old, ada_new = tightened_world(make_world)
    admin, tightened_at = tighten(world, first, ada_old, bob_old, ada_new)
    assert_one_logout_each(world, [ada_old, bob_old])
    for s in (ada_old, bob_old):
        assert_inactive_everywhere(world, s, message=POLICY_MESSAGE)

    world.clock.advance(minutes=5)
    admin.renew()
    world.clock.advance(minutes=1)
    preview = admin.preview(max_duration="24h")
    # Only the two sessions still active (ada's new one, the admin's) are concerned.
    assert preview == {"sessions_ended_now": 0, "users_with_sessions_ended_now": 0,
                       "users_over_concurrent_limit": 0, "sessions_whose_deadlines_move": 2,
                       "expired_sessions_closed": 0,
                       "users_without_second_factor": 0}
    assert admin.save(then, max_duration="24h") == reported(then, preview)
    relaxed_at = world.clock.now()
    assert_change_recorded(world, relaxed_at, preview, {"max_duration": [7200, 86400]})
    assert admin.policy()["max_duration"] == 86400

    for s in (ada_old, bob_old):
        row = world.row(s.sid)
        assert (row.ended_at, row.end_reason, row.updated_at) == (
            tightened_at, "policy_changed", tightened_at)
        assert_revoked_at(world, s, tightened_at)
        assert_inactive_everywhere(world, s, message=POLICY_MESSAGE)
    assert_shown(ada_new.browser, "/account/sessions", ada_old.sid, "ended", "Ended: policy changed")
    assert_shown(admin.browser, f"/admin/users/{bob_old.sub}/sessions", bob_old.sid, "ended",
                 "Ended: policy changed")
    assert_active(world, ada_new)
    assert_no_further_logout(world, 2)  # no second logout token for the same ending


# -- 3 and 4: raising a limit after sessions silently passed it revives nothing -----------------------


def raise_after_the_deadline(world: World, surface: str, *, checked: Signed, untouched: Signed,
                             survivor: Signed, deadline, reason: str, values: dict, changes: dict,
                             message: str, reason_text: str) -> None:
    """``checked`` and ``untouched`` are past ``deadline``, nothing recorded it, and ``survivor``
    is within the limits. The relying party asks about ``checked`` (inactive); nobody asks
    about ``untouched``. Then the admin raises the limit: under the new value both would be
    active again. Neither is: each is recorded as the expiry it was, at its deadline, once."""
    for s in (checked, untouched):
        row = world.row(s.sid)
        assert (row.ended_at, row.end_reason) == (None, None)
    checked_at = world.clock.now()
    rp = world.photos
    assert rp.introspect(checked.tokens["refresh_token"],
                         token_type_hint="refresh_token").json() == {"active": False}
    assert rp.introspect(checked.tokens["access_token"]).json() == {"active": False}
    # Whatever that check recorded is the expiry as it found it; nothing asked about the other.
    early = world.row(checked.sid)
    assert (early.ended_at, early.end_reason) in ((None, None), (deadline, reason))
    row = world.row(untouched.sid)
    assert (row.ended_at, row.end_reason) == (None, None)
    assert_active(world, survivor)

    world.clock.advance(minutes=1)
    admin = world.admin()
    still_open = [s for s in (checked, untouched) if world.row(s.sid).ended_at is None]
    assert untouched in still_open
    preview = admin.preview(**values)
    assert preview == {"sessions_ended_now": 0, "users_with_sessions_ended_now": 0,
                       "users_over_concurrent_limit": 0, "sessions_whose_deadlines_move": 2,
                       "expired_sessions_closed": len(still_open),
                       "users_without_second_factor": 0}
    assert world.row(untouched.sid).ended_at is None  # previewing changed nothing
    assert admin.save(surface, **values) == reported(surface, preview)
    changed_at = world.clock.now()
    assert_change_recorded(world, changed_at, preview, changes)
    policy = admin.policy()
    assert {name: policy[name] for name in changes} == {k: v[1] for k, v in changes.items()}

    for s in (checked, untouched):
        recorded_at = changed_at if s in still_open else checked_at
        row = world.row(s.sid)
        assert (row.ended_at, row.end_reason) == (deadline, reason)
        assert_revoked_at(world, s, recorded_at)
        [expired] = [e for e in world.events("session.expired") if e.session_id == s.sid]
        assert (expired.at, expired.actor, expired.detail["reason"]) == (
            recorded_at, "policy", reason)
    assert not [e for e in world.events("session.ended")
                if e.session_id in (checked.sid, untouched.sid)]
    assert_one_logout_each(world, [checked, untouched])
    for s in (checked, untouched):
        assert_inactive_everywhere(world, s, message=message)
    assert_shown(survivor.browser, "/account/sessions", checked.sid, "expired", reason_text)
    assert_shown(admin.browser, f"/admin/users/{untouched.sub}/sessions", untouched.sid, "expired",
                 reason_text)
    assert_active(world, survivor)
    world.clock.advance(minutes=10)  # still well within the raised limit
    for s in (checked, untouched):
        assert_inactive_everywhere(world, s, message=message)
        assert (world.row(s.sid).ended_at, world.row(s.sid).end_reason) == (deadline, reason)
    assert_no_further_logout(world, 2)


@pytest.mark.parametrize("surface", ["form", "api"])
def test_raising_the_idle_timeout_never_revives_a_session_idle_past_it(make_world, surface):
    world = make_world(max_session_duration=24 * 3600, idle_timeout=2 * 3600)
    start = world.clock.now()
    checked, untouched, busy = world.sign_in(ADA), world.sign_in(BOB), world.sign_in(ADA)
    world.clock.advance(hours=1)
    world.use(busy)
    world.clock.advance(hours=1, seconds=1)
    # checked and untouched are idle past start + 2 h; under 8 h they would not be.
    raise_after_the_deadline(
        world, surface, checked=checked, untouched=untouched, survivor=busy,
        deadline=start + timedelta(hours=2), reason="expired_idle",
        values={"idle_timeout": "8h"}, changes={"idle_timeout": [7200, 28800]},
        message=IDLE_MESSAGE, reason_text="Expired: inactivity")


@pytest.mark.parametrize("surface", ["form", "api"])
def test_raising_the_maximum_duration_never_revives_a_session_past_it(make_world, surface):
    world = make_world(max_session_duration=3 * 3600, idle_timeout=2 * 3600)
    start = world.clock.now()
    checked, untouched = world.sign_in(ADA), world.sign_in(BOB)
    world.clock.advance(minutes=90)
    world.use(checked)  # in use: idle deadlines move to start + 3 h 30
    world.use(untouched)
    young = world.sign_in(ADA)
    world.clock.advance(minutes=90, seconds=1)
    # Both are past start + 3 h, not idle; under 8 h they would be active until start + 3 h 30.
    raise_after_the_deadline(
        world, surface, checked=checked, untouched=untouched, survivor=young,
        deadline=start + timedelta(hours=3), reason="expired_duration",
        values={"max_duration": "8h"}, changes={"max_duration": [10800, 28800]},
        message=DURATION_MESSAGE, reason_text="Expired: maximum duration")
