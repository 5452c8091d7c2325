"""Clickjacking and response headers (OWASP ASVS V14.4, RFC 9700 §4.16, OIDC Core §16.x):
every HTML page, error pages included, refuses to be framed (X-Frame-Options DENY and
CSP frame-ancestors 'none'), allows no inline script, leaks no referrer, is not
sniffed and not cached; the token, userinfo, introspection and API answers are
never cached either."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from idp.models import User, db
from tests.conftest import PASSWORD
from tests.security.conftest import ADA, BOB, Browser, csrf_of, read, text_of

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
EVENT_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)


def csp_directives(header: str) -> dict[str, list[str]]:
    out = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = words[1:]
    return out


def assert_html_hardened(response, name: str) -> None:
    headers = response.headers
    assert response.mimetype == "text/html", name
    assert headers.get("X-Frame-Options") == "DENY", name
    csp = csp_directives(headers.get("Content-Security-Policy", ""))
    assert csp.get("frame-ancestors") == ["'none'"], (name, csp)
    script = csp.get("script-src", csp.get("default-src"))
    assert script is not None, name
    for bad in ("'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:"):
        assert bad not in script, (name, script)
    assert csp.get("default-src") == ["'none'"], name
    assert csp.get("base-uri") == ["'none'"], name
    assert "object-src" in csp or csp.get("default-src") == ["'none'"], name
    assert headers.get("Referrer-Policy") == "no-referrer", name
    assert headers.get("X-Content-Type-Options") == "nosniff", name
    assert "no-store" in headers.get("Cache-Control", ""), name
    body = text_of(response)
    assert not INLINE_SCRIPT.search(body), (name, INLINE_SCRIPT.search(body).group(0))
    assert not EVENT_HANDLER.search(body), (name, EVENT_HANDLER.search(body).group(0))


@pytest.fixture
def pages(app, make_account, make_user, party):
    """Every kind of HTML page a person can reach, as (name, response)."""
    acme = make_account("acme")
    make_user(ADA, account_id=acme, role="owner")
    make_user(BOB, account_id=acme)
    third = party("Stranger", first_party=False)
    cli = party("acme-cli", public=True, device=True, redirect_uri="http://127.0.0.1:8765/cb")
    user_code = cli.http.post("/oauth/device", data={"client_id": cli.client_id}).get_json()[
        "user_code"]
    anonymous = Browser(app)
    ada = Browser(app)
    ada.login(ADA)
    bob_sub = read(app, lambda: db.session.scalar(sa.select(User.sub).where(User.email == BOB)))
    out = [
        ("login", anonymous.get("/login")),
        ("login wrong password", anonymous.post("/login", data={
            "csrf_token": csrf_of(anonymous.get("/login")), "email": ADA, "password": "nope"})),
        ("csrf error page", anonymous.post("/login", data={"email": ADA, "password": "x"})),
        ("404 page", anonymous.get("/no/such/page")),
        ("405 page", anonymous.get("/logout")),
        ("authorize error page", anonymous.get("/authorize?client_id=unknown&response_type=code")),
        ("end-session error page", anonymous.get("/oauth/end-session?id_token_hint=x.y.z")),
        ("logged out page", Browser(app).get("/oauth/end-session")),
        ("consent", ada.get(third.authorize_url(
            challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"))),
        ("sessions", ada.get("/account/sessions")),
        ("sessions active", ada.get("/account/sessions?view=active")),
        ("password", ada.get("/account/password")),
        ("confirm end", ada.get(f"/account/sessions/{ada.sid}/end")),
        ("confirm end others", ada.get("/account/sessions/end-others")),
        ("confirm end all", ada.get("/account/sessions/end-all")),
        ("admin users", ada.get("/admin/users")),
        ("admin settings", ada.get("/admin/settings/sessions")),
        ("admin settings preview", ada.post("/admin/settings/sessions", data={
            "csrf_token": ada.csrf(), "max_duration": "8h"})),
        ("admin user sessions", ada.get(f"/admin/users/{bob_sub}/sessions")),
        ("admin disable confirm", ada.get(f"/admin/users/{bob_sub}/disable")),
        ("admin logout deliveries", ada.get("/admin/logout-deliveries")),
        ("device enter", ada.get("/device")),
        ("device confirm", ada.get(f"/device?user_code={user_code}")),
        ("device bad code", ada.get("/device?user_code=ZZZZ-ZZZZ")),
        ("logout confirm", ada.get("/oauth/end-session")),
        ("bad cursor 400", ada.get("/account/sessions?cursor=%%%")),
        ("admin 404 for a member", _member(app).get("/admin/users")),
        ("too large 413", anonymous.post("/login", data={"email": "a" * (1024 * 1024 + 10)})),
    ]
    return out


def _member(app) -> Browser:
    b = Browser(app)
    b.login(BOB)
    return b


def test_every_html_page_refuses_framing_inline_script_referrers_and_caching(pages):
    statuses = {}
    for name, response in pages:
        statuses[name] = response.status_code
        assert_html_hardened(response, name)
    # The list really covers success pages and error pages alike.
    assert {200, 400, 401, 404, 405, 413} <= set(statuses.values()), statuses


def test_the_limit_page_refuses_framing(app, make_account, make_user):
    strict = make_account("strict", max_concurrent_sessions=1, on_concurrent_limit="deny")
    make_user("carol@example.com", account_id=strict)
    Browser(app).login("carol@example.com")
    page = Browser(app).login("carol@example.com", expect=409)
    assert_html_hardened(page, "limit page")


def test_a_500_page_is_hardened_and_shows_no_trace(app, ada, monkeypatch):
    from idp.web import account

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals /srv/idp/idp/sessions.py line 42")

    monkeypatch.setattr(account.sessions, "history", boom)
    b = Browser(app)
    b.login(ADA)
    response = b.get("/account/sessions")
    assert response.status_code == 500
    assert_html_hardened(response, "500 page")
    assert "secret internals" not in text_of(response) and "Traceback" not in text_of(response)


# -- never cached: tokens, userinfo, introspection, API -------------------------------------


def test_token_userinfo_introspection_and_api_answers_are_never_cached(app, ada, party, signed_in):
    rp = party("Scripts", scope="openid email sessions")
    browser = signed_in(ADA)
    grant = rp.code(browser, scope="openid email sessions")
    token_response = rp.exchange(grant)
    tokens = token_response.get_json()
    answers = {
        "token 200": token_response,
        "token error": rp.exchange(grant),
        "token bad client": rp.token({"grant_type": "refresh_token", "refresh_token": "x"},
                                     auth=("nobody", "nothing")),
        "refresh": rp.refresh(tokens["refresh_token"]),
        "userinfo": rp.userinfo(tokens["access_token"]),
        "userinfo 401": rp.userinfo("not-a-token"),
        "introspect active": rp.introspect(tokens["access_token"]),
        "introspect inactive": rp.introspect("garbage"),
        "api list": rp.http.get("/api/v1/sessions",
                                headers={"Authorization": f"Bearer {tokens['access_token']}"}),
        "api 401": rp.http.get("/api/v1/sessions"),
    }
    for name, response in answers.items():
        assert "no-store" in response.headers.get("Cache-Control", ""), name
        assert response.mimetype == "application/json", name
        assert response.headers.get("X-Content-Type-Options") == "nosniff", name
        assert response.headers.get("Referrer-Policy") == "no-referrer", name
    assert answers["token 200"].headers.get("Pragma") == "no-cache"


def test_password_fields_are_never_prefilled(app, ada, browser):
    b = browser()
    page = b.post("/login", data={"csrf_token": csrf_of(b.get("/login")), "email": ADA,
                                  "password": PASSWORD + "x"})
    assert page.status_code == 401
    assert PASSWORD not in text_of(page)
