"""Cross-site request forgery (OWASP ASVS V3.5, V4.2.2; RFC 9700 §4.7): every form that
changes state refuses a POST that lacks this browser's CSRF token (missing, forged,
or a valid token of the attacker's own browser) with 400 and changes nothing in the
database; state never changes on GET (SameSite=Lax still sends cookies on top-level
GET navigations); the cookies are SameSite=Lax and HttpOnly; the JSON API, which is
exempt from CSRF tokens, never accepts the cookie as a credential."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa

from idp import create_app
from idp.models import Account, Consent, DeviceCode, User, db
from tests.conftest import PASSWORD
from tests.security.conftest import (
    ADA,
    BOB,
    COOKIE,
    Browser,
    csrf_of,
    read,
    session_state,
    text_of,
)

CAROL = "carol@example.com"
TOKEN_KINDS = ("missing", "forged", "attackers_own")


@dataclass
class World:
    app: object
    ada: Browser  # owner of acme, signed in twice (laptop + phone)
    phone: Browser
    bob: Browser  # member of acme
    attacker: Browser  # the attacker's own browser, signed in as mallory
    subs: dict[str, str] = field(default_factory=dict)

    def token(self, kind: str, *, anonymous: bool = False) -> dict:
        if kind == "missing":
            return {}
        if kind == "forged":
            return {"csrf_token": "IjAx" + secrets.token_urlsafe(30) + ".Zx9kQg.abc"}
        if anonymous:
            return {"csrf_token": csrf_of(Browser(self.app).get("/login"))}
        return {"csrf_token": self.attacker.csrf()}

    def user(self, email: str) -> tuple:
        def get():
            u = db.session.scalar(sa.select(User).where(User.email == email))
            return u.password_hash, u.disabled_at

        return read(self.app, get)


@pytest.fixture
def world(app, make_account, make_user) -> World:
    acme = make_account("acme")
    make_user(ADA, account_id=acme, role="owner")
    make_user(BOB, account_id=acme)
    evil = make_account("evil")
    make_user("mallory@evil.test", account_id=evil, role="owner")
    ada, phone, bob, attacker = (Browser(app) for _ in range(4))
    ada.login(ADA)
    phone.login(ADA)
    bob.login(BOB)
    attacker.login("mallory@evil.test")
    subs = read(app, lambda: dict(db.session.execute(sa.select(User.email, User.sub)).all()))
    return World(app, ada, phone, bob, attacker, subs)


def refused(response) -> None:
    assert response.status_code == 400, (response.status_code, text_of(response)[:300])
    assert "Location" not in response.headers


def active(world: World, browser: Browser) -> bool:
    return session_state(world.app, browser.sid) == (None, None)


# -- the forms, one test each, every token variant ----------------------------------------------


@pytest.mark.parametrize("kind", TOKEN_KINDS)
def test_login_form_without_its_token_signs_nobody_in(world, kind):
    fresh = Browser(world.app)
    fresh.get("/login")
    response = fresh.post("/login", data={"email": BOB, "password": PASSWORD,
                                          **world.token(kind, anonymous=True)})
    refused(response)
    assert fresh.cookie() is None


def test_logout_without_a_token_keeps_the_session(world):
    for kind in TOKEN_KINDS:
        response = world.ada.post("/logout", data=world.token(kind))
        refused(response)
        assert COOKIE not in response.headers.get("Set-Cookie", "")
        assert active(world, world.ada), kind


def test_consent_post_without_a_token_grants_nothing(world, party):
    third = party("Stranger", first_party=False)
    url = third.authorize_url(challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
    assert "wants to access your account" in text_of(world.ada.get(url))
    for kind in TOKEN_KINDS:
        response = world.ada.post(url, data={"allow": "Allow", **world.token(kind)})
        refused(response)
    assert read(world.app, lambda: db.session.scalar(
        sa.select(sa.func.count()).select_from(Consent))) == 0


def test_ending_another_session_without_a_token_keeps_it(world):
    for kind in TOKEN_KINDS:
        refused(world.ada.post(f"/account/sessions/{world.phone.sid}/end", data=world.token(kind)))
    assert active(world, world.phone)


@pytest.mark.parametrize("path", ["/account/sessions/end-others", "/account/sessions/end-all"])
def test_ending_many_sessions_without_a_token_keeps_them(world, path):
    for kind in TOKEN_KINDS:
        refused(world.ada.post(path, data=world.token(kind)))
    assert active(world, world.ada) and active(world, world.phone)


def test_admin_policy_save_without_a_token_changes_nothing(world):
    def policy():
        a = db.session.scalar(sa.select(Account).where(Account.name == "acme"))
        return a.max_session_duration, a.idle_timeout, a.policy_updated_at

    before = read(world.app, policy)
    for kind in TOKEN_KINDS:
        refused(world.ada.post("/admin/settings/sessions", data={
            "tile": "duration", "max_duration": "1h", "idle_timeout": "30m", "confirm": "save",
            **world.token(kind)}))
    assert read(world.app, policy) == before


def test_admin_ending_a_users_session_without_a_token_keeps_it(world):
    bob = world.subs[BOB]
    for kind in TOKEN_KINDS:
        refused(world.ada.post(f"/admin/users/{bob}/sessions/{world.bob.sid}/end",
                               data=world.token(kind)))
        refused(world.ada.post(f"/admin/users/{bob}/sessions/end-all", data=world.token(kind)))
    assert active(world, world.bob)


def test_admin_unlock_without_a_token_keeps_the_lockout(world):
    guard = world.app.extensions["idp"].lockout
    for key in guard._keys(BOB)[:2]:  # reserved and failed: locked
        guard.store.incr(key, guard.window, guard.max_failures)
    assert guard.locked(BOB)
    for kind in TOKEN_KINDS:
        refused(world.ada.post(f"/admin/users/{world.subs[BOB]}/unlock", data=world.token(kind)))
    assert guard.locked(BOB)


def test_admin_disable_without_a_token_keeps_the_user_enabled(world):
    for kind in TOKEN_KINDS:
        refused(world.ada.post(f"/admin/users/{world.subs[BOB]}/disable", data=world.token(kind)))
    assert world.user(BOB)[1] is None
    assert active(world, world.bob)


def test_admin_enable_without_a_token_keeps_the_user_disabled(world):
    world.ada.post(f"/admin/users/{world.subs[BOB]}/disable", data={"csrf_token": world.ada.csrf()})
    assert world.user(BOB)[1] is not None
    for kind in TOKEN_KINDS:
        refused(world.ada.post(f"/admin/users/{world.subs[BOB]}/enable", data=world.token(kind)))
    assert world.user(BOB)[1] is not None


def test_password_change_without_a_token_keeps_the_password(world):
    before = world.user(ADA)[0]
    for kind in TOKEN_KINDS:
        refused(world.ada.post("/account/password", data={
            "current": PASSWORD, "new": "attacker chose this", "confirm": "attacker chose this",
            **world.token(kind)}))
    assert world.user(ADA)[0] == before
    assert active(world, world.phone)


def test_device_approval_without_a_token_approves_nothing(world, party):
    cli = party("acme-cli", public=True, device=True, redirect_uri="http://127.0.0.1:8765/cb")
    issued = cli.http.post("/oauth/device", data={"client_id": cli.client_id, "scope": "openid"})
    assert issued.status_code == 200, issued.get_json()
    user_code = issued.get_json()["user_code"]
    for kind in TOKEN_KINDS:
        refused(world.ada.post("/device/decide", data={"user_code": user_code,
                                                       "decision": "approve", **world.token(kind)}))
    row = read(world.app, lambda: db.session.scalar(
        sa.select(DeviceCode.approved).where(DeviceCode.user_code == user_code)))
    assert row is None


def test_end_session_confirmation_without_a_token_signs_nobody_out(world):
    """RP-initiated logout accepts POSTs from relying parties (so the endpoint is exempt
    from the global check), but the confirmation itself needs this browser's token:
    without it the user is asked again and nothing ends."""
    for kind in TOKEN_KINDS:
        response = world.ada.post("/oauth/end-session", data={"confirm": "1", **world.token(kind)})
        assert response.status_code == 200 and "Sign out?" in text_of(response)
        assert "Location" not in response.headers
        assert COOKIE not in response.headers.get("Set-Cookie", "")
    assert active(world, world.ada)


def test_ending_a_session_from_the_limit_page_without_a_token_keeps_it(app, world, make_account,
                                                                       make_user):
    strict = make_account("strict", max_concurrent_sessions=1, on_concurrent_limit="deny")
    make_user(CAROL, account_id=strict)
    first = Browser(app)
    first.login(CAROL)
    second = Browser(app)
    page = second.login(CAROL, expect=409)
    assert "End this session" in text_of(page)
    for kind in TOKEN_KINDS:
        refused(second.post(f"/login/limit/{first.sid}/end", data=world.token(kind)))
    assert active(world, first)


# -- no state change on GET (SameSite=Lax sends cookies on top-level navigations) -------------


def test_state_changing_urls_do_nothing_on_get(world, party):
    bob = world.subs[BOB]
    third = party("Stranger", first_party=False)
    consent = third.authorize_url(challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                                  allow="Allow", decision="allow")
    gets = {
        "/logout": (405,),
        f"/account/sessions/{world.phone.sid}/end": (200,),
        "/account/sessions/end-others": (200,),
        "/account/sessions/end-all": (200,),
        f"/admin/users/{bob}/sessions/{world.bob.sid}/end": (200,),
        f"/admin/users/{bob}/sessions/end-all": (200,),
        f"/admin/users/{bob}/disable": (200,),
        f"/admin/users/{bob}/enable": (405,),
        f"/admin/users/{bob}/unlock": (405,),
        "/admin/settings/sessions?" + urlencode({"max_duration": "5m", "confirm": "save"}): (200,),
        "/device/decide?decision=approve&user_code=BCDF-GHJK": (405,),
        "/oauth/end-session?confirm=1": (200,),
        consent: (200,),
    }
    for url, statuses in gets.items():
        response = world.ada.get(url)
        assert response.status_code in statuses, (url, response.status_code)
        assert COOKIE not in response.headers.get("Set-Cookie", ""), url
    assert all(active(world, b) for b in (world.ada, world.phone, world.bob))
    assert world.user(BOB)[1] is None
    assert read(world.app, lambda: db.session.scalar(
        sa.select(sa.func.count()).select_from(Consent))) == 0


def test_the_json_api_never_takes_the_cookie_as_a_credential(world):
    """The API is exempt from CSRF tokens because only a bearer token authenticates it."""
    for method, url in (("DELETE", "/api/v1/sessions?scope=all"),
                        ("DELETE", f"/api/v1/sessions/{world.phone.sid}"),
                        ("GET", "/api/v1/sessions")):
        response = world.ada.http.open(url, method=method)
        assert response.status_code == 401
        assert response.get_json()["error"] == "invalid_token"
    assert active(world, world.ada) and active(world, world.phone)


# -- the cookies themselves ---------------------------------------------------------------


def _set_cookies(response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.headers.getlist("Set-Cookie")}


def test_cookies_are_samesite_lax_and_httponly(app, ada, browser):
    b = browser()
    page = b.get("/login")
    flask_cookie = _set_cookies(page)["idp"]
    response = b.post("/login", data={"csrf_token": csrf_of(page), "email": ADA,
                                      "password": PASSWORD})
    session_cookie = _set_cookies(response)[COOKIE]
    for header in (flask_cookie, session_cookie):
        assert "SameSite=Lax" in header and "HttpOnly" in header and "Path=/" in header
        assert "Domain=" not in header


def test_over_https_cookies_are_host_prefixed_and_secure(settings, clock, ada, backend):
    secure = create_app({**settings, "ISSUER": "https://id.example.com"}, clock=clock)
    try:
        client = secure.test_client()
        page = client.get("/login", base_url="https://id.example.com")
        response = client.post("/login", base_url="https://id.example.com", data={
            "csrf_token": csrf_of(page), "email": ADA, "password": PASSWORD})
        assert response.status_code == 303
        cookies = _set_cookies(response)
        header = cookies["__Host-idp_session"]
        assert "Secure" in header and "SameSite=Lax" in header and "HttpOnly" in header
        assert "Path=/" in header and "Domain=" not in header
        flask_header = _set_cookies(page)["__Host-idp"]
        assert "Secure" in flask_header and "SameSite=Lax" in flask_header
    finally:
        with secure.app_context():
            db.session.remove()
            db.engine.dispose()

