"""Injection and hostile input (OWASP ASVS V5.1, V5.3.4, V13.1): SQL-looking strings,
unicode, NUL bytes, invalid UTF-8 and 10 kB values, in every place a caller can put
them (emails, client ids and secrets, codes, tokens, session ids, subjects, cursors,
user codes, protocol parameters, JSON bodies, headers) get a clean 4xx in the
protocol's own format (OAuth JSON, API JSON, or an HTML page) and never a 500. The
database holds what it held before."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest
import sqlalchemy as sa

from idp.models import LoginSession, User, db
from tests.security.conftest import ADA, Browser, csrf_of, read

PAYLOADS = [
    "' OR 1=1 --",
    "' OR '1'='1' /*",
    '" OR ""="',
    "1; DROP TABLE users; --",
    "admin'--",
    "' UNION SELECT secret_hash, client_id FROM clients --",
    "%' OR email LIKE '%",
    "\\",
    "\u00fc\u6f22\u5b57\U0001f600",
    "\x00",
    "ada@example.com\x00' OR 1=1",
    "A" * 10240,
    "\U0001f600" * 2600,
    "{{7*7}}${7*7}<%= 7*7 %>",
    "../../../../etc/passwd",
    "$(id)`id`",
    "\u202e\u200b\ufeff",
    "abc.def.ghi",
    "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",
    "AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
]
HEADER_SAFE = [p for p in PAYLOADS if p.isprintable() and p.isascii()]


@pytest.fixture
def world(app, make_account, make_user, party):
    acme = make_account("acme")
    make_user(ADA, account_id=acme, role="owner")
    rp = party("Scripts", scope="openid profile email sessions admin", first_party=True)
    browser = Browser(app)
    browser.login(ADA)
    tokens = rp.tokens(browser, scope="openid sessions admin")
    return app, rp, browser, tokens


def snapshot(app) -> tuple:
    return read(app, lambda: (
        db.session.scalar(sa.select(sa.func.count()).select_from(User)),
        db.session.scalar(sa.select(sa.func.count()).select_from(LoginSession).where(
            LoginSession.ended_at.is_(None))),
    ))


class Findings:
    def __init__(self):
        self.wrong: dict[str, str] = {}
        self.count = 0

    def check(self, what: str, response, kind: str) -> None:
        self.count += 1
        status = response.status_code
        problem = None
        if status >= 500:
            problem = f"{status}"
        elif kind == "no token":  # RFC 6750 §3.1: a challenge, and no error information
            refused = status == 400 and "error" in (response.get_json(silent=True) or {})
            if not refused and (status != 401 or response.get_data() or "error" in
                                response.headers.get("WWW-Authenticate", "error")):
                problem = f"{status} {response.get_data()[:60]!r}"
        elif kind == "json":
            if response.mimetype != "application/json":
                problem = f"{status} {response.mimetype}"
            elif status >= 400 and "error" not in (response.get_json(silent=True) or {}):
                problem = f"{status} without an error code"
        elif kind == "html" and status >= 400 and response.mimetype != "text/html":
            problem = f"{status} {response.mimetype}"
        if problem:
            self.wrong[what] = problem

    def assert_clean(self) -> None:
        assert not self.wrong, "\n" + "\n".join(f"{k[:160]!r} -> {v}" for k, v in self.wrong.items())


def short(payload: str) -> str:
    return payload[:40] + (f"...({len(payload)})" if len(payload) > 40 else "")


def test_the_sign_in_form_takes_hostile_emails_and_passwords(world):
    app, rp, _, _ = world
    before = snapshot(app)
    found = Findings()
    for i, payload in enumerate(PAYLOADS):
        b = Browser(app, remote_addr=f"192.0.2.{i + 1}")
        token = csrf_of(b.get("/login"))
        for fields in ({"email": payload, "password": "x"}, {"email": ADA, "password": payload},
                       {"email": payload, "password": payload}):
            response = b.post("/login", data={"csrf_token": token, **fields})
            found.check(f"login {fields!r:.120}", response, "html")
            if response.status_code == 303:
                found.wrong[f"login {fields!r:.120} signed in"] = "303"
        found.check(f"login csrf {short(payload)}",
                    b.post("/login", data={"csrf_token": payload, "email": ADA,
                                           "password": "x"}), "html")
    found.assert_clean()
    assert snapshot(app) == before


def test_pages_take_hostile_ids_cursors_and_codes(world):
    app, rp, browser, _ = world
    before = snapshot(app)
    found = Findings()
    token = browser.csrf()
    for payload in PAYLOADS:
        path = quote(payload, safe="")
        query = urlencode({"cursor": payload})
        for url in (f"/account/sessions/{path}/end", f"/account/sessions?{query}",
                    f"/account/sessions?view=active&{query}", "/device?" + urlencode(
                        {"user_code": payload}), f"/admin/users/{path}/sessions",
                    f"/admin/users/{path}/sessions?{query}", f"/admin/users/{path}/disable",
                    f"/admin/users/{path}/sessions/{path}/end"):
            found.check(f"GET {url[:120]}", browser.get(url), "html")
        for url, data in ((f"/account/sessions/{path}/end", {}),
                          (f"/admin/users/{path}/unlock", {}),
                          (f"/admin/users/{path}/sessions/end-all", {}),
                          ("/device/decide", {"user_code": payload, "decision": payload}),
                          ("/device", {"user_code": payload}),
                          (f"/login/limit/{path}/end", {}),
                          ("/admin/settings/sessions", {"max_duration": payload,
                                                        "idle_timeout": payload,
                                                        "max_concurrent": payload,
                                                        "on_limit": payload, "tile": payload,
                                                        "confirm": "save"}),
                          ("/account/password", {"current": payload, "new": payload,
                                                 "confirm": payload})):
            response = browser.post(url, data={"csrf_token": token, **data})
            found.check(f"POST {url[:100]} {short(payload)}", response, "html")
    found.assert_clean()
    assert snapshot(app) == before


def test_the_authorization_and_logout_endpoints_take_hostile_parameters(world):
    app, rp, browser, tokens = world
    found = Findings()
    anonymous = Browser(app)
    for payload in PAYLOADS:
        base = {"response_type": "code", "client_id": rp.client_id,
                "redirect_uri": rp.redirect_uri, "scope": "openid",
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "code_challenge_method": "S256"}
        for name in ("client_id", "response_type", "scope", "state", "nonce", "prompt",
                     "max_age", "login_hint", "id_token_hint", "code_challenge",
                     "code_challenge_method", "response_mode", "acr_values", "claims",
                     "ui_locales"):
            url = "/authorize?" + urlencode({**base, name: payload})
            for who, b in (("signed in", browser), ("anonymous", anonymous)):
                found.check(f"authorize {who} {name}={short(payload)}", b.get(url), "html")
        for params in ({"id_token_hint": payload}, {"client_id": payload},
                       {"client_id": rp.client_id, "post_logout_redirect_uri": payload},
                       {"id_token_hint": tokens["id_token"], "state": payload,
                        "logout_hint": payload, "ui_locales": payload}):
            url = "/oauth/end-session?" + urlencode(params)
            found.check(f"end-session {params!r:.100}", anonymous.get(url), "html")
            found.check(f"end-session POST {params!r:.100}",
                        anonymous.post("/oauth/end-session", data=params), "html")
    found.assert_clean()


def test_the_token_endpoint_takes_hostile_credentials_grants_and_tokens(world):
    app, rp, _, tokens = world
    before = snapshot(app)
    found = Findings()
    for payload in PAYLOADS:
        forms = [
            {"grant_type": payload},
            {"grant_type": "authorization_code", "code": payload, "redirect_uri": rp.redirect_uri,
             "code_verifier": "a" * 43},
            {"grant_type": "authorization_code", "code": "x", "redirect_uri": payload,
             "code_verifier": payload},
            {"grant_type": "refresh_token", "refresh_token": payload},
            {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"] + payload},
            {"grant_type": "refresh_token", "refresh_token": "x", "scope": payload},
            {"grant_type": "client_credentials", "scope": payload},
            {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": payload},
            {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": payload},
            {"grant_type": "authorization_code", "code": "x",
             "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
             "client_assertion": payload, "client_id": rp.client_id},
        ]
        for form in forms:
            found.check(f"token {form!r:.120}", rp.token(form), "json")
        for auth in ((payload, "secret"), (rp.client_id, payload), (payload, payload)):
            response = rp.token({"grant_type": "refresh_token", "refresh_token": "x"}, auth=auth)
            found.check(f"token auth {auth!r:.120}", response, "json")
            if response.status_code != 401:
                found.wrong[f"token auth {auth!r:.120} (expected 401)"] = str(response.status_code)
        found.check(f"token post-auth {short(payload)}", rp.token({
            "grant_type": "refresh_token", "refresh_token": "x", "client_id": payload,
            "client_secret": payload}, auth=False), "json")
    found.assert_clean()
    assert snapshot(app) == before
    assert rp.active(tokens["access_token"])


def test_introspection_revocation_device_and_userinfo_take_hostile_tokens(world):
    app, rp, _, tokens = world
    found = Findings()
    for payload in PAYLOADS:
        for hint in (None, "access_token", "refresh_token", payload):
            data = {"token": payload, **({"token_type_hint": hint} if hint else {})}
            answer = rp.http.post("/oauth/introspect", data=data, auth=rp.auth)
            found.check(f"introspect {data!r:.120}", answer, "json")
            if answer.status_code == 200:
                assert answer.get_json() == {"active": False}
            found.check(f"revoke {data!r:.120}",
                        rp.http.post("/oauth/revoke", data=data, auth=rp.auth), "json")
        found.check(f"introspect auth {short(payload)}", rp.http.post(
            "/oauth/introspect", data={"token": tokens["access_token"]}, auth=(payload, payload)),
            "json")
        found.check(f"device {short(payload)}", rp.http.post(
            "/oauth/device", data={"client_id": payload, "scope": payload}), "json")
        found.check(f"device scope {short(payload)}", rp.http.post(
            "/oauth/device", data={"client_id": rp.client_id, "scope": payload}), "json")
        if payload in HEADER_SAFE:
            for header in (f"Bearer {payload}", payload, f"Basic {payload}"):
                found.check(f"userinfo {header[:80]}", rp.http.get(
                    "/userinfo", headers={"Authorization": header}), "json")
        # (A token in the body is not read: the request carries none.)
        found.check(f"userinfo form {short(payload)}", rp.http.post(
            "/userinfo", data={"access_token": payload}), "no token")
    found.assert_clean()
    assert rp.active(tokens["access_token"])


def test_the_api_takes_hostile_ids_cursors_and_bodies(world):
    app, rp, _, tokens = world
    before = snapshot(app)
    found = Findings()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    for payload in PAYLOADS:
        path = quote(payload, safe="")
        for method, url in (("GET", f"/api/v1/sessions/{path}"),
                            ("DELETE", f"/api/v1/sessions/{path}"),
                            ("GET", "/api/v1/sessions?" + urlencode({"cursor": payload})),
                            ("GET", "/api/v1/sessions?" + urlencode({"limit": payload})),
                            ("GET", "/api/v1/sessions?" + urlencode({"status": payload})),
                            ("DELETE", "/api/v1/sessions?" + urlencode({"scope": payload})),
                            ("GET", f"/api/v1/admin/users/{path}/sessions"),
                            ("GET", f"/api/v1/admin/users/{path}/sessions?"
                             + urlencode({"cursor": payload, "status": payload})),
                            ("DELETE", f"/api/v1/admin/users/{path}/sessions/{path}"),
                            ("DELETE", f"/api/v1/admin/users/{path}/sessions")):
            found.check(f"{method} {url[:120]}", rp.http.open(url, method=method, headers=bearer),
                        "json")
        for body in ({"max_duration": payload}, {"idle_timeout": payload},
                     {"max_concurrent": payload}, {"on_limit": payload}, [payload], payload):
            found.check(f"PUT policy {body!r:.80}", rp.http.put(
                "/api/v1/account/session-policy?dry_run=true", json=body, headers=bearer), "json")
        found.check(f"PUT raw {short(payload)}", rp.http.put(
            "/api/v1/account/session-policy?dry_run=true", data=payload.encode("utf-8", "replace"),
            headers={**bearer, "Content-Type": "application/json"}), "json")
    found.assert_clean()
    assert snapshot(app) == before


def test_invalid_utf8_and_oversized_bodies_get_a_clean_4xx(world):
    app, rp, browser, tokens = world
    found = Findings()
    raw = b"token=%ff%fe%00&token_type_hint=\xff\xfe"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    found.check("introspect bytes", rp.http.post("/oauth/introspect", data=raw, headers=form,
                                                 auth=rp.auth), "json")
    found.check("token bytes", rp.http.post("/oauth/token", data=b"grant_type=\xff&code=\x00",
                                            headers=form, auth=rp.auth), "json")
    found.check("login bytes", browser.post("/login", data=b"email=\xff\xfe&password=%00",
                                            headers=form), "html")
    found.check("authorize bytes", browser.get("/authorize?client_id=%ff%fe&scope=%c0%af"), "html")
    found.check("api bytes", rp.http.get("/api/v1/sessions/%ff%fe%00", headers={
        "Authorization": f"Bearer {tokens['access_token']}"}), "json")
    big = {"token": "A" * (2 * 1024 * 1024)}
    response = rp.http.post("/oauth/introspect", data=big, auth=rp.auth)
    found.check("introspect 2 MB", response, "json")
    assert response.status_code == 413
    found.check("json bomb", rp.http.put("/api/v1/account/session-policy", data="[" * 100000,
                                         headers={"Authorization": f"Bearer {tokens['access_token']}",
                                                  "Content-Type": "application/json"}), "json")
    found.assert_clean()


def test_a_hostile_request_id_is_not_echoed(world):
    app, rp, browser, _ = world
    for value in ("\x1b[31mFAKE LOG LINE", "a" * 500, "ok-id-123"):
        response = browser.get("/login", headers={"X-Request-ID": value})
        echoed = response.headers.get("X-Request-ID", "")
        assert len(echoed) <= 64 and echoed.isprintable()
        if value == "ok-id-123":
            assert echoed == value
