"""The Device Authorization Grant (RFC 8628) as a command-line tool and its user see
it, over real HTTP: the device asks for codes and polls; the user approves or denies
at /device in a browser. An approval opens a session of its own (kind "device"),
under the same policy and endable like any other."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import joserfc.jwt as jwt
import pytest
import sqlalchemy as sa
from joserfc.jwk import KeySet

from idp import accounts
from idp.models import DeviceCode, LoginSession, db
from tests.conftest import PASSWORD
from tests.relying_party import Browser, csrf_token

pytestmark = pytest.mark.e2e

ADA = "ada@example.com"
GRANT = "urn:ietf:params:oauth:grant-type:device_code"
USER_CODE = re.compile(r"^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$")


@dataclass
class World:
    live: object
    clock: object
    cli: str  # a device-only public client
    ada: str
    http: httpx.Client

    @property
    def base(self) -> str:
        return self.live.url

    def start(self, scope: str = "openid profile", client_id: str | None = None) -> dict:
        response = self.http.post(f"{self.base}/oauth/device",
                                  data={"client_id": client_id or self.cli, "scope": scope})
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        return response.json()

    def poll(self, device_code: str, client_id: str | None = None) -> httpx.Response:
        return self.http.post(f"{self.base}/oauth/token", data={
            "grant_type": GRANT, "device_code": device_code, "client_id": client_id or self.cli})

    def error(self, device_code: str, **kwargs) -> str:
        response = self.poll(device_code, **kwargs)
        assert response.status_code in (400, 401), response.text
        return response.json()["error"]

    def sign_in(self) -> Browser:
        browser = Browser(self.base)
        page = browser.login(browser.go(f"{self.base}/login"), ADA, PASSWORD)
        assert page.url.path == "/account/sessions"
        return browser

    def decide(self, browser: Browser, user_code: str, decision: str) -> httpx.Response:
        page = browser.go(f"{self.base}/device?user_code={user_code}")
        assert page.status_code == 200, page.text[:300]
        return browser.go(f"{self.base}/device/decide", method="POST", data={
            "csrf_token": csrf_token(page.text), "user_code": user_code, "decision": decision})

    def row(self, device_code: str) -> DeviceCode:
        with self.live.app.app_context():
            row = db.session.get(DeviceCode, device_code.split(".")[0])
            db.session.expunge(row)
            return row

    def session(self, sid: str) -> LoginSession:
        with self.live.app.app_context():
            row = db.session.get(LoginSession, sid)
            db.session.expunge(row)
            return row

    def wait_interval(self, device_code: str) -> None:
        self.clock.advance(seconds=self.row(device_code).interval)

    def refresh(self, refresh_token: str) -> httpx.Response:
        return self.http.post(f"{self.base}/oauth/token", data={
            "grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": self.cli})

    def userinfo(self, access_token: str) -> int:
        return self.http.get(f"{self.base}/userinfo",
                             headers={"Authorization": f"Bearer {access_token}"}).status_code


@pytest.fixture
def settings(settings, smtp_port):
    """Email goes to ``smtp_port`` (a test that reads it starts the ``inbox`` there), at
    once: tokens here are checked against the wall clock, so the test's clock stays put."""
    return {**settings, "SMTP_URL": f"smtp://127.0.0.1:{smtp_port}?starttls=no",
            "NOTICE_DELAY": "0s"}


@pytest.fixture
def world(live_server, make_account, make_user) -> World:
    account = make_account("acme")
    ada = make_user(ADA, account_id=account)
    with live_server.app.app_context():
        client, secret = accounts.create_client(
            name="acme-cli", redirect_uris=[], public=True, device=True,
            scope="openid profile email", now=live_server.clock.now())
        db.session.commit()
        cli = client.client_id
    assert secret is None
    with httpx.Client(timeout=10, trust_env=False) as http:
        yield World(live_server, live_server.clock, cli, ada, http)


def claims_of(token: str) -> dict:
    import base64
    import json

    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_device_authorization_response(world, make_client):
    started = world.start(scope="openid profile")
    assert set(started) == {"device_code", "user_code", "verification_uri",
                            "verification_uri_complete", "expires_in", "interval"}
    assert USER_CODE.match(started["user_code"])
    assert started["verification_uri"] == f"{world.base}/device"
    complete = urlsplit(started["verification_uri_complete"])
    assert f"{complete.scheme}://{complete.netloc}{complete.path}" == f"{world.base}/device"
    assert parse_qs(complete.query) == {"user_code": [started["user_code"]]}
    assert started["expires_in"] == 600 and started["interval"] == 5
    row = world.row(started["device_code"])
    assert row.scope == "openid profile" and row.approved is None and row.client_id == world.cli
    assert started["device_code"].split(".")[1] not in (row.secret_hash, row.id)  # hashed

    unknown = world.http.post(f"{world.base}/oauth/device", data={"client_id": "nope"})
    # RFC 6749 §5.2: 400, or 401 when the client tried HTTP authentication.
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_client", unknown.text
    web_app = make_client("Photos")  # an ordinary relying party without the device grant
    refused = world.http.post(f"{world.base}/oauth/device", data={"scope": "openid"},
                              auth=(web_app.client_id, web_app.client_secret))
    assert refused.status_code == 400 and refused.json()["error"] == "unauthorized_client"


def test_polling_is_pending_until_decided_and_too_fast_slows_down(world, make_client):
    code = world.start()["device_code"]
    assert world.error(code) == "authorization_pending"
    assert world.error(code) == "slow_down"  # at once: faster than 5 s
    assert world.row(code).interval == 10  # "add 5 seconds for this and all later requests"
    world.clock.advance(seconds=6)
    assert world.error(code) == "slow_down"  # 6 s is now too fast too
    assert world.row(code).interval == 15
    world.clock.advance(seconds=15)
    assert world.error(code) == "authorization_pending"
    assert world.row(code).interval == 15
    # Another client cannot poll this device's code; made-up codes are refused.
    other = make_client("Other CLI", public=True, device=True)
    world.clock.advance(seconds=15)
    assert world.error(code, client_id=other.client_id) == "unauthorized_client"
    assert world.error("AAAAAAAA.BBBBBBBB") == "invalid_request"


def test_approval_signs_the_device_in_with_a_session_of_its_own(world):
    started = world.start(scope="openid profile email")
    code, user_code = started["device_code"], started["user_code"]
    assert world.error(code) == "authorization_pending"

    # The user opens the complete URI, signs in, and lands on the approval page.
    browser = Browser(world.base)
    page = browser.go(started["verification_uri_complete"])
    assert "Sign in" in page.text
    page = browser.login(page, ADA, PASSWORD)
    assert page.url.path == "/device" and "Sign in acme-cli?" in page.text
    assert user_code in page.text and "See your email address" in page.text
    # The code as people type it: lower case, no dash.
    typed = user_code.replace("-", "").lower()
    done = world.decide(browser, typed, "approve")
    assert done.url.path == "/account/sessions"
    assert "Approved. acme-cli is signed in" in done.text
    browser_sid = browser.http.cookies["idp_session"].split(".")[0]

    world.wait_interval(code)
    granted = world.poll(code)
    assert granted.status_code == 200, granted.text
    tokens = granted.json()
    assert tokens["token_type"].lower() == "bearer" and tokens["refresh_token"]
    assert tokens["scope"] == "openid profile email" and tokens["expires_in"] > 0
    access = claims_of(tokens["access_token"])
    sid = access["sid"]
    assert sid != browser_sid
    device_session = world.session(sid)
    assert device_session.kind == "device" and device_session.device_label == "acme-cli"
    assert device_session.ended_at is None and access["sub"] == world.ada
    assert world.userinfo(tokens["access_token"]) == 200
    # The sessions page lists it under the tool's name.
    listing = browser.http.get(f"{world.base}/account/sessions").text
    assert listing.count('class="session status-active"') == 2 and "acme-cli" in listing
    # A device code is used once.
    world.wait_interval(code)
    assert world.error(code) == "invalid_grant"
    # The device refreshes like any client.
    refreshed = world.refresh(tokens["refresh_token"])
    assert refreshed.status_code == 200 and refreshed.json()["refresh_token"]


def test_the_device_gets_an_id_token_when_it_asked_for_openid(world):
    """The README promises "the tokens (access, ID, refresh)" at the end of the device flow."""
    started = world.start(scope="openid profile")
    world.decide(world.sign_in(), started["user_code"], "approve")
    world.wait_interval(started["device_code"])
    tokens = world.poll(started["device_code"]).json()
    assert "id_token" in tokens, sorted(tokens)
    keys = KeySet.import_key_set(world.http.get(f"{world.base}/.well-known/jwks.json").json())
    id_token = jwt.decode(tokens["id_token"], keys, algorithms=["RS256", "ES256"])
    jwt.JWTClaimsRegistry(  # times from the provider's (test) clock, which moved
        now=int(world.clock.now().timestamp()),
        iss={"essential": True, "value": world.base},
        aud={"essential": True, "value": world.cli},
        sub={"essential": True, "value": world.ada},
        sid={"essential": True, "value": claims_of(tokens["access_token"])["sid"]},
        exp={"essential": True}, iat={"essential": True},
    ).validate(id_token.claims)
    assert "nonce" not in id_token.claims


def test_denial_answers_access_denied_and_opens_no_session(world):
    started = world.start()
    browser = world.sign_in()
    done = world.decide(browser, started["user_code"], "deny")
    assert "Denied. acme-cli was not signed in." in done.text
    world.wait_interval(started["device_code"])
    assert world.error(started["device_code"]) == "access_denied"
    world.wait_interval(started["device_code"])
    assert world.error(started["device_code"]) == "access_denied"
    with world.live.app.app_context():
        kinds = db.session.scalars(sa.select(LoginSession.kind)).all()
    assert kinds == ["browser"]
    # Once decided, the code cannot be decided again.
    again = browser.go(f"{world.base}/device?user_code={started['user_code']}")
    assert again.status_code == 400 and "not valid or has expired" in again.text


def test_an_unapproved_code_expires(world):
    started = world.start()
    world.clock.advance(seconds=started["expires_in"] + 1)
    assert world.error(started["device_code"]) == "expired_token"
    browser = world.sign_in()
    page = browser.go(f"{world.base}/device?user_code={started['user_code']}")
    assert page.status_code == 400 and "not valid or has expired" in page.text
    late = browser.go(f"{world.base}/device/decide", method="POST", data={
        "csrf_token": csrf_token(page.text), "user_code": started["user_code"],
        "decision": "approve"})
    assert "no longer waiting for approval" in late.text
    assert world.error(started["device_code"]) == "expired_token"


def test_ending_the_device_session_stops_its_refresh_token(world):
    started = world.start()
    browser = world.sign_in()
    world.decide(browser, started["user_code"], "approve")
    world.wait_interval(started["device_code"])
    tokens = world.poll(started["device_code"]).json()
    sid = claims_of(tokens["access_token"])["sid"]

    confirm = browser.http.get(f"{world.base}/account/sessions/{sid}/end")
    assert "Signs out acme-cli" in confirm.text
    done = browser.go(f"{world.base}/account/sessions/{sid}/end", method="POST",
                      data={"csrf_token": csrf_token(confirm.text)})
    assert "Ended the session on acme-cli" in done.text
    refused = world.refresh(tokens["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert world.userinfo(tokens["access_token"]) == 401
    assert world.session(sid).end_reason == "ended_by_user"
    # The browser that approved it is still signed in.
    assert browser.http.get(f"{world.base}/account/sessions").status_code == 200


def test_the_device_session_is_under_the_account_policy(world, make_account):
    started = world.start()
    world.decide(world.sign_in(), started["user_code"], "approve")
    world.wait_interval(started["device_code"])
    tokens = world.poll(started["device_code"]).json()
    sid = claims_of(tokens["access_token"])["sid"]
    world.clock.advance(hours=1, minutes=59)
    tokens = world.refresh(tokens["refresh_token"]).json()  # in use: the idle clock restarts
    world.clock.advance(hours=2, seconds=1)
    refused = world.refresh(tokens["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert world.session(sid).end_reason == "expired_idle"


def test_approving_a_device_respects_the_concurrent_session_limit(world):
    with world.live.app.app_context():
        from idp.models import Account

        account = db.session.scalar(sa.select(Account))
        account.max_concurrent_sessions = 1
        account.on_concurrent_limit = "deny"
        db.session.commit()
    started = world.start()
    browser = world.sign_in()  # the one session allowed
    done = world.decide(browser, started["user_code"], "approve")
    assert "as many active sessions as your organisation allows" in done.text
    world.wait_interval(started["device_code"])
    assert world.error(started["device_code"]) == "authorization_pending"
    assert world.row(started["device_code"]).approved is None
    with world.live.app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(LoginSession)) == 1


def test_a_device_sign_in_emails_one_notice_naming_the_tool(world, inbox):
    """Over real HTTP and real SMTP: the browser that approves is new (one notice), the
    device's own session is new (one more, naming the tool); the same browser signing in
    again sends nothing."""
    started = world.start(scope="openid profile")
    browser = world.sign_in()
    assert world.decide(browser, started["user_code"], "approve").url.path == "/account/sessions"
    world.wait_interval(started["device_code"])
    assert world.poll(started["device_code"]).status_code == 200
    page = browser.go(f"{world.base}/account/sessions/end-others")
    browser.go(f"{world.base}/logout", method="POST", data={"csrf_token": csrf_token(page.text)})
    again = browser.login(browser.go(f"{world.base}/login"), ADA, PASSWORD)
    assert again.url.path == "/account/sessions"
    with world.live.app.app_context():
        try:
            counts = world.live.app.extensions["idp.mail"].run_due()
        finally:
            db.session.remove()
    assert counts["delivered"] == 2 and len(inbox.messages) == 2
    device = [m.get_body(("plain",)).get_content() for m in inbox.messages
              if "acme-cli" in m.get_body(("plain",)).get_content()]
    assert len(device) == 1
    assert "Device:    acme-cli (device sign-in, for a command-line tool or TV)" in device[0]
    assert "Signed in to: acme-cli" in device[0]
