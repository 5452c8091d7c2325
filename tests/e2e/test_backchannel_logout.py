"""OpenID Connect Back-Channel Logout 1.0 as relying parties see it: a receiver on a
loopback port records every logout token POSTed to it. Each way a session can end
sends one valid logout token per client holding tokens under it; failures are
recorded and retried by the worker; a crash between commit and delivery loses
nothing; redirects are never followed; a delivery is given up after a day."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import joserfc.jwt as jwt
import pytest
import sqlalchemy as sa
from joserfc.jwk import KeySet
from werkzeug.wrappers import Request, Response

from idp import create_app, sessions
from idp.models import LoginSession, LogoutAttempt, LogoutDelivery, db
from tests.conftest import PASSWORD
from tests.e2e.processes import serving
from tests.flows import obtain_tokens
from tests.relying_party import Browser, RelyingParty, csrf_token

pytestmark = pytest.mark.e2e

ADA = "ada@example.com"
ADAM = "adam@example.com"
EVENT = "http://schemas.openid.net/event/backchannel-logout"


# -- the relying parties' receiver -------------------------------------------------------------------


@dataclass
class Receiver:
    """Back-channel logout endpoints of several RPs (/bc/<name>) on one loopback port.
    ``status`` is what it answers: 200, 503, or 302 (to /elsewhere, never to be called)."""

    status: int = 200
    posts: list[tuple[str, dict, int]] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    url: str = ""

    def __post_init__(self):
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        request = Request(environ)
        with self.lock:
            if request.method != "POST" or not request.path.startswith("/bc/"):
                self.strays.append(f"{request.method} {request.path}")
                return Response("stray", 200)(environ, start_response)
            status = self.status
            self.posts.append((request.path.removeprefix("/bc/"), request.form.to_dict(), status))
        headers = {"Cache-Control": "no-store"}
        if status == 302:
            headers["Location"] = f"{self.url}/elsewhere"
        return Response("", status, headers)(environ, start_response)

    def tokens(self, name: str | None = None, *, accepted_only: bool = True) -> list[str]:
        with self.lock:
            return [form["logout_token"] for who, form, status in self.posts
                    if (name is None or who == name) and (status == 200 or not accepted_only)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the world ---------------------------------------------------------------------------------------


@dataclass
class World:
    live: object
    clock: object
    settings: dict
    receiver: Receiver
    port: int
    photos: RelyingParty
    mail: RelyingParty
    notes: RelyingParty  # holds tokens but registered no back-channel URI
    calendar: str  # registered a URI but never holds tokens under the session
    ada: str
    adam: str

    @property
    def base(self) -> str:
        return self.live.url

    @property
    def deliverer(self):
        return self.live.app.extensions["idp.logout"]

    def drain(self) -> None:
        assert self.deliverer.drain(10), "immediate logout attempts did not finish in 10 s"

    def run_due(self) -> dict:
        """What `idp worker --once` runs."""
        with self.live.app.app_context():
            try:
                return self.deliverer.run_due()
            finally:
                db.session.remove()

    def browser(self) -> Browser:
        return Browser(self.base)

    def sign_in(self, email: str = ADA) -> Browser:
        browser = self.browser()
        page = browser.login(browser.go(f"{self.base}/login"), email, PASSWORD)
        assert page.status_code == 200 and page.url.path == "/account/sessions"
        return browser

    def confirm(self, browser: Browser, path: str) -> httpx.Response:
        page = browser.http.get(f"{self.base}{path}")
        assert page.status_code == 200, page.text[:300]
        return browser.go(f"{self.base}{path}", method="POST",
                          data={"csrf_token": csrf_token(page.text)})

    def deliveries(self, sid: str) -> list[LogoutDelivery]:
        with self.live.app.app_context():
            rows = db.session.scalars(sa.select(LogoutDelivery).where(
                LogoutDelivery.session_id == sid).order_by(LogoutDelivery.client_id)).all()
            db.session.expunge_all()
            return list(rows)

    def attempts(self, delivery_id: int) -> list[LogoutAttempt]:
        with self.live.app.app_context():
            rows = db.session.scalars(sa.select(LogoutAttempt).where(
                LogoutAttempt.delivery_id == delivery_id).order_by(LogoutAttempt.id)).all()
            db.session.expunge_all()
            return list(rows)

    def session_row(self, sid: str) -> LoginSession:
        with self.live.app.app_context():
            row = db.session.get(LoginSession, sid)
            db.session.expunge(row)
            return row

    def verify(self, logout_token: str, rp: RelyingParty, *, sid: str, sub: str) -> dict:
        """Back-Channel Logout 1.0 §2.4 and §2.6, checked with the published JWKS only."""
        keys = KeySet.import_key_set(rp.http.get(f"{self.base}/.well-known/jwks.json").json())
        token = jwt.decode(logout_token, keys, algorithms=["RS256", "ES256"])
        assert token.header["typ"] == "logout+jwt"
        jwt.JWTClaimsRegistry(
            now=int(self.clock.now().timestamp()),
            iss={"essential": True, "value": self.base},
            aud={"essential": True, "value": rp.client_id},
            iat={"essential": True},
            exp={"essential": True},
            jti={"essential": True},
            sub={"essential": True, "value": sub},
            sid={"essential": True, "value": sid},
            events={"essential": True},
        ).validate(token.claims)
        assert token.claims["events"] == {EVENT: {}}
        assert "nonce" not in token.claims
        assert token.claims["exp"] > token.claims["iat"]
        return token.claims


def _rp(live, registered) -> RelyingParty:
    return RelyingParty(live.url, registered.client_id, registered.client_secret,
                        registered.redirect_uri)


@pytest.fixture
def make_world(live_server, settings, make_account, make_user, make_client):
    stack = []

    def build(*, listening: bool = True) -> World:
        receiver = Receiver()
        if listening:
            ctx = serving(receiver)
            port = ctx.__enter__()
            stack.append(ctx)
        else:
            port = free_port()  # nothing listens there (yet)
        receiver.url = f"http://127.0.0.1:{port}"
        account = make_account("acme")
        ada = make_user(ADA, account_id=account)
        adam = make_user(ADAM, account_id=account, role="admin", name="Adam Admin")

        def client(name: str, uri: bool = True):
            bc = f"{receiver.url}/bc/{name.lower()}" if uri else None
            registered = make_client(name, backchannel_logout_uri=bc,
                                     redirect_uri=f"http://127.0.0.1:9/{name}/cb")
            return registered if name == "Calendar" else _rp(live_server, registered)

        return World(live_server, live_server.clock, settings, receiver, port,
                     client("Photos"), client("Mail"), client("Notes", uri=False),
                     client("Calendar").client_id, ada, adam)

    yield build
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


def sid_of(world: World, token: dict, rp: RelyingParty) -> str:
    return rp.verify_id_token(token["id_token"], None)["sid"]


def signed_in_everywhere(world: World) -> tuple[Browser, dict[str, dict], str]:
    """Ada signs in to Photos, Mail and Notes in one browser: one session, three apps."""
    browser = world.browser()
    tokens = {rp.client_id: obtain_tokens(rp, browser, ADA)
              for rp in (world.photos, world.mail, world.notes)}
    sids = {sid_of(world, t, rp) for rp, t in zip((world.photos, world.mail, world.notes),
                                                   tokens.values(), strict=True)}
    assert len(sids) == 1
    return browser, tokens, sids.pop()


# -- every way a session ends: one valid logout token per client ---------------------------------------


def end_by_user(world, browser, tokens, sid, keep_alive):
    laptop = world.sign_in()
    world.confirm(laptop, f"/account/sessions/{sid}/end")
    return "ended_by_user"


def end_by_admin(world, browser, tokens, sid, keep_alive):
    admin = world.sign_in(ADAM)
    world.confirm(admin, f"/admin/users/{world.ada}/sessions/{sid}/end")
    return "ended_by_admin"


def end_by_expiry_check(world, browser, tokens, sid, keep_alive):
    world.clock.advance(hours=1)
    keep_alive()  # the other session is in use; this one is idle
    world.clock.advance(hours=1, seconds=1)
    refused = world.photos.refresh(tokens[world.photos.client_id]["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    return "expired_idle"


def end_by_sweep(world, browser, tokens, sid, keep_alive):
    world.clock.advance(hours=1)
    keep_alive()
    world.clock.advance(hours=1, seconds=1)
    with world.live.app.app_context():
        result = sessions.sweep(world.clock.now(), timedelta(days=30))
        db.session.remove()
    assert result.expired == 1
    return "expired_idle"


def end_by_logout_endpoint(world, browser, tokens, sid, keep_alive):
    hint = tokens[world.photos.client_id]["id_token"]
    page = browser.go(f"{world.base}/oauth/end-session?id_token_hint={hint}")
    assert page.status_code == 200 and "You are signed out" in page.text
    return "logout"


@pytest.mark.parametrize("end", [end_by_user, end_by_admin, end_by_expiry_check, end_by_sweep,
                                 end_by_logout_endpoint], ids=lambda f: f.__name__)
def test_each_way_a_session_ends_sends_one_logout_token_per_client(make_world, end):
    world = make_world()
    browser, tokens, sid = signed_in_everywhere(world)
    other = obtain_tokens(world.photos, world.browser(), ADA)  # ada's second session
    sub = world.photos.verify_id_token(other["id_token"], None)["sub"]

    def keep_alive():
        refreshed = world.photos.refresh(other["refresh_token"])
        assert refreshed.status_code == 200
        other.update(refreshed.json())

    reason = end(world, browser, tokens, sid, keep_alive)
    world.drain()

    assert world.session_row(sid).end_reason == reason
    jtis = set()
    for rp, name in ((world.photos, "photos"), (world.mail, "mail")):
        [token] = world.receiver.tokens(name)
        jtis.add(world.verify(token, rp, sid=sid, sub=sub)["jti"])
    assert len(jtis) == 2
    assert world.receiver.tokens("calendar") == []  # no tokens under that session
    assert len(world.receiver.posts) == 2  # and nothing at all for Notes or the other session
    assert world.receiver.strays == []
    rows = world.deliveries(sid)
    assert {r.client_id for r in rows} == {world.photos.client_id, world.mail.client_id}
    for row in rows:
        assert row.delivered_at is not None and row.attempts == 1 and row.last_status == 200
        assert row.subject == sub and row.last_error is None
        [attempt] = world.attempts(row.id)
        assert attempt.status == 200 and attempt.error is None
    # The worker has nothing left to do: no second notice for the same ending.
    world.clock.advance(minutes=5)
    assert world.run_due()["attempted"] == 0
    assert len(world.receiver.posts) == 2
    # The other session is untouched.
    assert world.photos.introspect(other["refresh_token"]).json()["active"] is True


# -- failures, retries, crashes ------------------------------------------------------------------------


def test_a_refused_delivery_is_recorded_and_the_worker_delivers_it_later(make_world):
    world = make_world()
    world.receiver.status = 503
    token = obtain_tokens(world.photos, world.browser(), ADA)
    sid = sid_of(world, token, world.photos)
    admin = world.sign_in(ADAM)
    world.confirm(admin, f"/admin/users/{world.ada}/sessions/{sid}/end")
    world.drain()

    [row] = world.deliveries(sid)
    assert row.attempts == 1 and row.delivered_at is None and row.given_up_at is None
    assert row.last_status == 503 and row.last_error == "HTTP 503"
    assert row.next_attempt_at > world.clock.now()
    [attempt] = world.attempts(row.id)
    assert attempt.status == 503 and attempt.error == "HTTP 503"
    assert len(world.receiver.tokens(accepted_only=False)) == 1
    page = admin.http.get(f"{world.base}/admin/logout-deliveries").text
    assert "Photos" in page and "HTTP 503" in page and "Pending" in page

    assert world.run_due()["attempted"] == 0  # not due yet
    world.receiver.status = 200
    world.clock.advance(world.deliveries(sid)[0].next_attempt_at - world.clock.now())
    assert world.run_due() == {"attempted": 1, "delivered": 1, "retry": 0, "given_up": 0}
    [delivered] = world.receiver.tokens("photos")
    sub = world.photos.verify_id_token(token["id_token"], None)["sub"]
    world.verify(delivered, world.photos, sid=sid, sub=sub)
    [row] = world.deliveries(sid)
    assert row.attempts == 2 and row.delivered_at == world.clock.now() and row.last_error is None
    assert [a.status for a in world.attempts(row.id)] == [503, 200]
    world.clock.advance(hours=1)
    assert world.run_due()["attempted"] == 0


def test_a_receiver_that_is_down_gets_the_notice_once_it_is_back(make_world):
    world = make_world(listening=False)
    browser = world.browser()
    token = obtain_tokens(world.photos, browser, ADA)
    sid = sid_of(world, token, world.photos)
    browser.go(f"{world.base}/oauth/end-session?id_token_hint={token['id_token']}")
    world.drain()

    [row] = world.deliveries(sid)
    assert row.attempts == 1 and row.delivered_at is None
    assert row.last_status is None and "ConnectError" in row.last_error
    [attempt] = world.attempts(row.id)
    assert attempt.status is None and "ConnectError" in attempt.error

    with serving(world.receiver, world.port):
        world.clock.advance(row.next_attempt_at - world.clock.now() + timedelta(seconds=1))
        assert world.run_due()["delivered"] == 1
    [delivered] = world.receiver.tokens("photos")
    world.verify(delivered, world.photos, sid=sid,
                 sub=world.photos.verify_id_token(token["id_token"], None)["sub"])


def test_a_crash_between_commit_and_delivery_loses_nothing(make_world):
    """The process that ended the session never tried (as if killed right after the
    commit); the notice waits in the outbox and the worker delivers it."""
    world = make_world()
    browser = world.browser()
    token = obtain_tokens(world.photos, browser, ADA)
    sid = sid_of(world, token, world.photos)
    crashing = create_app({**world.settings, "ISSUER": world.base, "BACKCHANNEL_IMMEDIATE": False},
                          clock=world.clock)
    try:
        client = crashing.test_client()
        client.set_cookie("idp_session", browser.http.cookies["idp_session"])
        response = client.get("/oauth/end-session", query_string={"id_token_hint": token["id_token"]})
        assert response.status_code == 200 and "You are signed out" in response.get_data(as_text=True)
        assert crashing.extensions["idp.logout"].drain(10)
        world.drain()
    finally:
        with crashing.app_context():
            db.session.remove()
            db.engine.dispose()

    assert world.session_row(sid).end_reason == "logout"
    assert world.receiver.posts == []
    [row] = world.deliveries(sid)
    assert row.attempts == 0 and row.delivered_at is None
    assert world.run_due() == {"attempted": 1, "delivered": 1, "retry": 0, "given_up": 0}
    [delivered] = world.receiver.tokens("photos")
    world.verify(delivered, world.photos, sid=sid,
                 sub=world.photos.verify_id_token(token["id_token"], None)["sub"])
    assert world.run_due()["attempted"] == 0


def test_retries_back_off_and_give_up_after_a_day(make_world):
    world = make_world()
    world.receiver.status = 503
    token = obtain_tokens(world.photos, world.browser(), ADA)
    sid = sid_of(world, token, world.photos)
    world.confirm(world.sign_in(), f"/account/sessions/{sid}/end")
    world.drain()

    for attempts in (1, 2, 3):
        [row] = world.deliveries(sid)
        assert row.attempts == attempts and row.given_up_at is None
        # 10 s doubling each attempt, with +-20 % jitter.
        delay = (row.next_attempt_at - world.attempts(row.id)[-1].at).total_seconds()
        nominal = 10 * 2 ** (attempts - 1)
        assert 0.8 * nominal <= delay <= 1.2 * nominal, (attempts, delay)
        world.clock.advance(row.next_attempt_at - world.clock.now())
        assert world.run_due() == {"attempted": 1, "delivered": 0, "retry": 1, "given_up": 0}

    world.clock.advance(hours=24)
    assert world.run_due() == {"attempted": 1, "delivered": 0, "retry": 0, "given_up": 1}
    [row] = world.deliveries(sid)
    assert row.given_up_at == world.clock.now() and row.delivered_at is None
    assert row.attempts == 5 and len(world.attempts(row.id)) == 5
    world.receiver.status = 200
    world.clock.advance(hours=48)
    assert world.run_due()["attempted"] == 0
    assert world.receiver.tokens() == []  # never delivered, never retried after giving up
    assert len(world.receiver.posts) == 5


def test_redirects_are_never_followed(make_world):
    world = make_world()
    world.receiver.status = 302
    token = obtain_tokens(world.photos, world.browser(), ADA)
    sid = sid_of(world, token, world.photos)
    world.confirm(world.sign_in(), f"/account/sessions/{sid}/end")
    world.drain()

    [row] = world.deliveries(sid)
    assert row.attempts == 1 and row.delivered_at is None
    assert row.last_status == 302 and row.last_error == "HTTP 302"
    assert len(world.receiver.posts) == 1
    assert world.receiver.strays == []  # the redirect target was never called
    world.clock.advance(minutes=1)
    assert world.run_due()["retry"] == 1
    assert world.receiver.strays == []
