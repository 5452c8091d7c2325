"""RP-Initiated Logout 1.0 at the end_session_endpoint, over real HTTP with a
browser-like cookie jar: a hint tying the request to this browser's session ends it
at once; anything else asks the user first; post-logout redirects go only to URIs
the client registered, matched exactly, with ``state`` echoed."""

from __future__ import annotations

import html
import re
from urllib.parse import urlencode

import httpx
import joserfc.jwt as jwt
import pytest
from joserfc.jwk import RSAKey

from idp.models import LoginSession, db
from tests.conftest import PASSWORD
from tests.flows import obtain_tokens
from tests.relying_party import Browser, RelyingParty, csrf_token

pytestmark = pytest.mark.e2e

ADA = "ada@example.com"
BOB = "bob@example.com"
PHOTOS_BYE = "http://127.0.0.1:9/photos/logged-out"
MAIL_BYE = "https://mail.example/bye"
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


class World:
    def __init__(self, live, photos: RelyingParty, mail: RelyingParty):
        self.live, self.photos, self.mail = live, photos, mail
        self.base = live.url
        self.endpoint = f"{live.url}/oauth/end-session"
        self.keys = photos.keys()

    def signed_in(self, email: str = ADA) -> tuple[Browser, dict]:
        browser = Browser(self.base)
        return browser, obtain_tokens(self.photos, browser, email)

    def logout(self, browser: Browser, method: str = "GET", **params) -> httpx.Response:
        """One request to the endpoint; its redirect, if any, is not followed."""
        if method == "GET":
            return browser.http.get(f"{self.endpoint}?{urlencode(params)}")
        return browser.http.post(self.endpoint, data=params)

    def active(self, token: dict) -> bool:
        return self.photos.introspect(token["refresh_token"]).json()["active"]

    def end_reason(self, token: dict) -> str | None:
        with self.live.app.app_context():
            row = db.session.get(LoginSession, self.sid_of(token))
            return row.end_reason

    def signed_in_at_provider(self, browser: Browser) -> bool:
        page = browser.http.get(f"{self.base}/account/sessions")
        return page.status_code == 200

    def sid_of(self, token: dict) -> str:
        return jwt.decode(token["id_token"], self.keys).claims["sid"]


@pytest.fixture
def world(live_server, make_user, make_client) -> World:
    make_user(ADA)
    make_user(BOB, name="Bob")
    photos = make_client("Photos", redirect_uri="http://127.0.0.1:9/photos/cb",
                         post_logout_redirect_uris=[PHOTOS_BYE, "com.example.photos:/bye"])
    mail = make_client("Mail", redirect_uri="http://127.0.0.1:9/mail/cb",
                       post_logout_redirect_uris=[MAIL_BYE])
    rp = RelyingParty(live_server.url, photos.client_id, photos.client_secret, photos.redirect_uri)
    return World(live_server, rp, RelyingParty(live_server.url, mail.client_id,
                                               mail.client_secret, mail.redirect_uri))


def assert_error_page(response: httpx.Response) -> None:
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "This sign-out link is not valid" in response.text


def test_discovery_advertises_logout(world):
    doc = world.photos.metadata
    assert doc["end_session_endpoint"] == world.endpoint
    assert doc["backchannel_logout_supported"] is True
    assert doc["backchannel_logout_session_supported"] is True


def test_a_matching_hint_ends_the_session_at_once_and_redirects_with_state(world):
    for method in ("GET", "POST"):
        browser, token = world.signed_in()
        other_browser, other = world.signed_in()
        response = world.logout(browser, method, id_token_hint=token["id_token"],
                                client_id=world.photos.client_id,
                                post_logout_redirect_uri=PHOTOS_BYE, state="st-123")
        assert response.status_code in (302, 303), method
        assert response.headers["location"] == f"{PHOTOS_BYE}?state=st-123"
        assert world.end_reason(token) == "logout"
        assert not world.active(token)
        assert world.photos.introspect(token["access_token"]).json() == {"active": False}
        assert world.photos.refresh(token["refresh_token"]).json()["error"] == "invalid_grant"
        assert "idp_session" not in browser.http.cookies
        assert not world.signed_in_at_provider(browser)
        # Only that session: ada's other browser is still signed in.
        assert world.active(other) and world.signed_in_at_provider(other_browser)


def test_redirect_variants_and_the_signed_out_page(world):
    # No post_logout_redirect_uri: a page says so.
    browser, token = world.signed_in()
    page = world.logout(browser, id_token_hint=token["id_token"])
    assert page.status_code == 200 and "You are signed out" in page.text
    assert "You signed out of Photos" in page.text
    assert world.end_reason(token) == "logout"
    # No state sent: none added; a native app's private-use scheme is a registered URI too.
    browser, token = world.signed_in()
    response = world.logout(browser, id_token_hint=token["id_token"],
                            post_logout_redirect_uri="com.example.photos:/bye")
    assert response.status_code in (302, 303)
    assert response.headers["location"] == "com.example.photos:/bye"
    assert world.end_reason(token) == "logout"


def test_logout_hint_is_accepted(world):
    browser, token = world.signed_in()
    response = world.logout(browser, id_token_hint=token["id_token"], logout_hint=ADA,
                            post_logout_redirect_uri=PHOTOS_BYE, state="s")
    assert response.headers["location"] == f"{PHOTOS_BYE}?state=s"
    assert world.end_reason(token) == "logout"
    # A logout_hint alone does not tie the request to the session: the user confirms.
    browser, token = world.signed_in()
    page = world.logout(browser, logout_hint=ADA, client_id=world.photos.client_id)
    assert page.status_code == 200 and ">Sign out</button>" in page.text
    assert {n: html.unescape(v) for n, v in HIDDEN.findall(page.text)}["logout_hint"] == ADA
    assert world.active(token)


def test_an_expired_hint_still_identifies_the_session(world):
    browser, token = world.signed_in()
    world.live.clock.advance(minutes=61)  # the ID token lived 1 h; the session idles 2 h
    response = world.logout(browser, id_token_hint=token["id_token"],
                            post_logout_redirect_uri=PHOTOS_BYE)
    assert response.headers["location"] == PHOTOS_BYE
    assert world.end_reason(token) == "logout"


def test_an_unregistered_redirect_shows_an_error_and_never_redirects(world):
    browser, token = world.signed_in()
    for target in [
        "https://evil.example/",
        PHOTOS_BYE + "/",
        PHOTOS_BYE + "?next=/",
        PHOTOS_BYE.upper(),
        PHOTOS_BYE.replace(":9/", ":90/"),
        "http://127.0.0.1:9/photos/cb",  # the login redirect URI is not a post-logout URI
        MAIL_BYE,  # registered, but by another client
    ]:
        for extra in ({}, {"client_id": world.photos.client_id}):
            response = world.logout(browser, id_token_hint=token["id_token"],
                                    post_logout_redirect_uri=target, state="s", **extra)
            assert_error_page(response)
            assert f'href="{html.escape(target)}' not in response.text
    assert world.active(token) and world.signed_in_at_provider(browser)


def test_invalid_logout_requests_show_an_error_page(world):
    browser, token = world.signed_in()
    # A redirect needs a client to check it against; an unknown client is refused.
    assert_error_page(world.logout(browser, post_logout_redirect_uri=PHOTOS_BYE, state="s"))
    assert_error_page(world.logout(browser, client_id="no-such-client"))
    # Hints that are not ID tokens of this provider.
    decoded = jwt.decode(token["id_token"], world.keys)
    stranger = RSAKey.generate_key(2048, parameters={"kid": decoded.header["kid"]})
    forged = jwt.encode({"alg": "RS256", "kid": stranger.kid}, decoded.claims, stranger)
    for hint in ("garbage", token["id_token"][:-4] + "AAAA", forged):
        assert_error_page(world.logout(browser, id_token_hint=hint,
                                       post_logout_redirect_uri=PHOTOS_BYE))
    # A real hint, but not issued to the client named in the request.
    assert_error_page(world.logout(browser, id_token_hint=token["id_token"],
                                   client_id=world.mail.client_id))
    assert world.active(token)


def test_without_a_hint_the_user_confirms_first(world):
    browser, token = world.signed_in()
    page = world.logout(browser, client_id=world.photos.client_id,
                        post_logout_redirect_uri=PHOTOS_BYE, state="st & co")
    assert page.status_code == 200
    assert "Photos asks to sign you out" in page.text
    assert ">Sign out</button>" in page.text and 'name="csrf_token"' in page.text
    assert world.active(token)  # nothing happened yet

    carried = {name: html.unescape(value) for name, value in HIDDEN.findall(page.text)}
    assert carried == {"client_id": world.photos.client_id,
                       "post_logout_redirect_uri": PHOTOS_BYE, "state": "st & co"}
    # A forged confirmation (no CSRF token) changes nothing.
    forged = world.logout(browser, "POST", confirm="1", **carried)
    assert forged.status_code == 200 and ">Sign out</button>" in forged.text
    assert world.active(token)

    done = world.logout(browser, "POST", confirm="1", csrf_token=csrf_token(page.text), **carried)
    assert done.status_code in (302, 303)
    assert done.headers["location"] == f"{PHOTOS_BYE}?state=st+%26+co"
    assert world.end_reason(token) == "logout"
    assert not world.signed_in_at_provider(browser)


def test_a_hint_from_another_session_needs_confirmation(world):
    laptop, on_laptop = world.signed_in()
    phone, on_phone = world.signed_in()
    _, bobs = world.signed_in(BOB)
    for hint in (on_laptop["id_token"], bobs["id_token"]):
        page = world.logout(phone, id_token_hint=hint, post_logout_redirect_uri=PHOTOS_BYE)
        assert page.status_code == 200 and ">Sign out</button>" in page.text
    assert world.active(on_laptop) and world.active(on_phone) and world.active(bobs)
    # Confirming signs out this browser's session, never the one the hint named.
    page = world.logout(phone, id_token_hint=on_laptop["id_token"],
                        post_logout_redirect_uri=PHOTOS_BYE)
    carried = {name: html.unescape(value) for name, value in HIDDEN.findall(page.text)}
    done = world.logout(phone, "POST", confirm="1", csrf_token=csrf_token(page.text), **carried)
    assert done.headers["location"] == PHOTOS_BYE
    assert world.end_reason(on_phone) == "logout"
    assert world.active(on_laptop) and world.signed_in_at_provider(laptop)


def test_a_hint_alone_without_the_browser_session_ends_nothing(world):
    """A leaked ID token is not a way to sign its owner out from somewhere else."""
    _, token = world.signed_in()
    stranger = Browser(world.base)
    response = world.logout(stranger, id_token_hint=token["id_token"],
                            post_logout_redirect_uri=PHOTOS_BYE, state="s")
    assert response.status_code in (200, 302, 303)
    assert world.active(token) and world.end_reason(token) is None


def test_a_bare_link_asks_first_and_then_signs_out_the_provider_session(world):
    browser = Browser(world.base)
    page = browser.login(browser.go(f"{world.base}/login"), ADA, PASSWORD)
    assert page.url.path == "/account/sessions"
    confirm = world.logout(browser)
    assert confirm.status_code == 200
    assert "An application asks to sign you out" in confirm.text
    assert 'href="/account/sessions"' in confirm.text  # "Stay signed in"
    assert world.signed_in_at_provider(browser)
    done = world.logout(browser, "POST", confirm="1", csrf_token=csrf_token(confirm.text))
    assert done.status_code == 200 and "You are signed out" in done.text
    assert not world.signed_in_at_provider(browser)


def test_an_access_token_is_no_id_token_hint(world):
    """Resource servers see and log access tokens: one as a hint must not sign the user out
    of the provider and every app from a plain link. Only ID tokens are hints (``typ``
    JWT, ``aud`` naming registered clients) — at end-session and at /authorize alike."""
    browser, token = world.signed_in()
    for method in ("GET", "POST"):
        refused = world.logout(browser, method, id_token_hint=token["access_token"],
                               post_logout_redirect_uri=PHOTOS_BYE)
        assert_error_page(refused)
        assert "not an ID token" in html.unescape(refused.text)
    assert world.active(token) and world.signed_in_at_provider(browser)
    url, _ = world.photos.authorization_url(id_token_hint=token["access_token"], prompt="none")
    answer = browser.go(url, stop_at=world.photos.redirect_uri)
    params = world.photos.callback_params(answer)
    assert params["error"] == "invalid_request" and "code" not in params
    # The ID token itself still works as the hint, and ends the session at once.
    ended = world.logout(browser, id_token_hint=token["id_token"],
                         post_logout_redirect_uri=PHOTOS_BYE)
    assert ended.status_code in (302, 303) and not world.active(token)


def test_an_id_token_of_a_disabled_client_is_no_hint(world):
    from idp.models import Client

    browser, token = world.signed_in()
    with world.live.app.app_context():
        db.session.get(Client, world.photos.client_id).disabled_at = \
            world.live.clock.now()
        db.session.commit()
    assert_error_page(world.logout(browser, id_token_hint=token["id_token"]))
    assert world.signed_in_at_provider(browser)
