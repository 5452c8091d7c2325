"""Cross-site scripting (OWASP ASVS V5.3.3, OIDC Core §16): attacker-controlled text
(a user agent, a client's name, a user's name and email, request parameters that pages
echo) is rendered escaped on every page that shows it: the sessions pages, the admin
pages, the consent page, the device pages, the logout pages, the sign-in page."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from markupsafe import escape

from idp.models import User, db
from tests.security.conftest import ADA, Browser, csrf_of, read, text_of

PAYLOADS = (
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "'><svg/onload=alert(3)>",
    "</textarea><iframe srcdoc='<script>alert(4)</script>'>",
)
UA = "Mozilla/5.0 " + " ".join(PAYLOADS)
EVIL_NAME = "Eve " + PAYLOADS[0] + PAYLOADS[1]
EVIL_EMAIL = '"><svg/onload=alert(5)>@evil.io'
EVIL_CLIENT = "Photos" + PAYLOADS[0] + PAYLOADS[2]


class LiveMarkup(HTMLParser):
    """Collects what a browser would execute: inline scripts, event-handler attributes,
    frames and javascript: URLs. Escaped text and attribute values are inert."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = {name for name, _ in attrs}
        if any(name.startswith("on") for name in names):
            self.found.append(f"<{tag} {sorted(names)}>")
        if tag == "script" and "src" not in names:
            self.found.append("<script> without src")
        if tag in ("iframe", "frame", "object", "embed", "base"):
            self.found.append(f"<{tag}>")
        for name, value in attrs:
            if name in ("href", "src", "action", "formaction", "srcdoc") and value and (
                    value.strip().lower().startswith("javascript:") or name == "srcdoc"):
                self.found.append(f"<{tag} {name}={value!r}>")

    handle_startendtag = handle_starttag


def assert_inert(response, *texts: str, name: str = "") -> None:
    """No attacker markup became markup, and each text was rendered (escaped)."""
    body = text_of(response)
    parser = LiveMarkup()
    parser.feed(body)
    parser.close()
    assert parser.found == [], (name, parser.found)
    for text in texts:
        assert str(escape(text)) in body, (name, text)


@pytest.fixture
def world(app, make_account, make_user, party):
    acme = make_account("acme")
    make_user(ADA, account_id=acme, role="owner")
    make_user(EVIL_EMAIL, account_id=acme, name=EVIL_NAME)
    admin = Browser(app)
    admin.login(ADA)
    eve = Browser(app, user_agent=UA)
    eve.login(EVIL_EMAIL)
    third = party(EVIL_CLIENT, first_party=False, post_logout_redirect_uris=[
        "http://127.0.0.1:9999/bye"])
    subs = read(app, lambda: dict(db.session.execute(sa.select(User.email, User.sub)).all()))
    return app, admin, eve, third, subs


def test_user_agent_name_and_email_render_escaped_on_the_users_own_pages(world):
    app, admin, eve, third, subs = world
    phone = Browser(app, user_agent=UA)
    phone.login(EVIL_EMAIL)
    assert_inert(eve.get("/account/sessions"), UA[:512], EVIL_EMAIL, name="sessions")
    assert_inert(eve.get("/account/sessions?view=active"), EVIL_EMAIL, name="active sessions")
    assert_inert(eve.get(f"/account/sessions/{phone.sid}/end"), name="confirm end")
    done = eve.post(f"/account/sessions/{phone.sid}/end", data={"csrf_token": eve.csrf()},
                    follow_redirects=True)
    assert_inert(done, name="flash after ending")
    assert_inert(eve.get("/account/password"), name="password page")


def test_names_emails_and_user_agents_render_escaped_on_admin_pages(world):
    app, admin, eve, third, subs = world
    sub = subs[EVIL_EMAIL]
    assert_inert(admin.get("/admin/users"), EVIL_NAME, EVIL_EMAIL, name="admin users")
    assert_inert(admin.get(f"/admin/users/{sub}/sessions"), EVIL_NAME, UA[:512],
                 name="admin user sessions")
    assert_inert(admin.get(f"/admin/users/{sub}/disable"), EVIL_EMAIL, name="disable confirm")
    assert_inert(admin.get(f"/admin/users/{sub}/sessions/end-all"), EVIL_EMAIL,
                 name="end all confirm")
    ended = admin.post(f"/admin/users/{sub}/sessions/end-all", data={"csrf_token": admin.csrf()},
                       follow_redirects=True)
    assert_inert(ended, EVIL_EMAIL, name="flash after admin end all")
    guard = app.extensions["idp"].lockout
    for key in guard._keys(EVIL_EMAIL)[:2]:  # reserved and failed: locked
        guard.store.incr(key, guard.window, guard.max_failures)
    assert_inert(admin.get("/admin/users"), EVIL_EMAIL, name="admin users with lockout")


def test_client_names_render_escaped_on_consent_sessions_and_confirm_pages(world):
    app, admin, eve, third, subs = world
    url = third.authorize_url(challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
    assert_inert(eve.get(url), EVIL_CLIENT, EVIL_EMAIL, name="consent")
    third.tokens(eve)  # consents and exchanges the code: the app now holds tokens
    assert_inert(eve.get("/account/sessions"), EVIL_CLIENT, name="sessions apps table")
    assert_inert(eve.get(f"/account/sessions/{eve.sid}/end"), EVIL_CLIENT, name="confirm revokes")
    assert_inert(eve.get("/account/sessions/end-all"), EVIL_CLIENT, name="confirm end all")


def test_device_pages_render_the_client_name_and_code_escaped(world, party):
    app, admin, eve, third, subs = world
    cli = party(EVIL_CLIENT, public=True, device=True, redirect_uri="http://127.0.0.1:8765/cb")
    issued = cli.http.post("/oauth/device", data={"client_id": cli.client_id},
                           headers={"User-Agent": UA}).get_json()
    confirm = eve.get(f"/device?user_code={issued['user_code']}")
    assert_inert(confirm, EVIL_CLIENT, EVIL_EMAIL, name="device confirm")
    for payload in PAYLOADS:
        assert_inert(eve.get("/device?" + urlencode({"user_code": payload})), payload,
                     name="device code echo")
    approved = eve.post("/device/decide", data={"csrf_token": csrf_of(confirm),
                                                "user_code": issued["user_code"],
                                                "decision": "approve"}, follow_redirects=True)
    assert_inert(approved, EVIL_CLIENT, name="flash after approval")
    assert_inert(eve.get("/account/sessions"), EVIL_CLIENT, name="device session row")


def test_logout_pages_render_client_names_and_echoed_parameters_escaped(world):
    app, admin, eve, third, subs = world
    for payload in PAYLOADS:
        url = "/oauth/end-session?" + urlencode({"client_id": third.client_id, "state": payload,
                                                  "logout_hint": payload, "ui_locales": payload})
        assert_inert(eve.get(url), EVIL_CLIENT, EVIL_EMAIL, payload, name="logout confirm")
    done = Browser(app).get("/oauth/end-session?" + urlencode({"client_id": third.client_id}))
    assert_inert(done, EVIL_CLIENT, name="logged out page")


def test_login_hint_and_protocol_parameters_are_never_reflected_as_markup(world, party):
    app, admin, eve, third, subs = world
    first = party("Plain")
    for payload in PAYLOADS:
        anonymous = Browser(app)
        sent = anonymous.get(first.authorize_url(
            challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", login_hint=payload))
        assert sent.status_code == 303
        page = anonymous.get("/login")
        assert_inert(page, name="login hint")
        assert str(escape(payload[:254])) in text_of(page)
        for params in ({"client_id": payload, "response_type": "code"},
                       {"client_id": first.client_id, "redirect_uri": payload,
                        "response_type": "code"},
                       {"client_id": first.client_id, "response_type": payload,
                        "redirect_uri": "http://evil.example/" + payload}):
            assert_inert(anonymous.get("/authorize?" + urlencode(params)), name="authorize error")
        assert_inert(anonymous.get("/oauth/end-session?" + urlencode(
            {"post_logout_redirect_uri": payload, "client_id": payload})), name="logout error")
        assert_inert(anonymous.get("/" + payload), name="404 page")


def test_the_json_api_returns_the_user_agent_as_json_not_html(world, party):
    app, admin, eve, third, subs = world
    scripts = party("Scripts", scope="openid sessions")
    tokens = scripts.tokens(eve, scope="openid sessions")
    response = scripts.http.get("/api/v1/sessions",
                                headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert response.mimetype == "application/json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    agents = {s["user_agent"] for s in response.get_json()["sessions"]}
    assert UA[:512] in agents


@pytest.mark.parametrize("payload", PAYLOADS + (EVIL_EMAIL, '<a href="javascript:alert(6)">x</a>'))
def test_the_detector_itself_sees_each_payload_when_it_is_not_escaped(payload):
    """Guards the guard: unescaped, every payload above is live markup."""
    parser = LiveMarkup()
    parser.feed(f"<p>{payload}</p><input value='{payload}'>")
    assert parser.found
    parser = LiveMarkup()
    parser.feed(f"<p>{escape(payload)}</p><input value=\"{escape(payload)}\">")
    assert parser.found == []
