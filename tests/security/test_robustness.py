"""Failing safely (OWASP ASVS V7.4, V11, V12.1; RFC 9700 §4.11, §4.13; RFC 7009 §2.2.1):
a storage failure at any statement of introspection, refresh or revocation answers
503 in OAuth JSON, never active:true, and leaves nothing half done; attacker-sized
headers and hints get a clean 400/413; redirects after a POST are never 307/308; a
spoofed X-Forwarded-For is ignored unless a trusted proxy wrote it; back-channel
logout URIs cannot point at internal plain-HTTP services and deliveries follow no
redirects; a clock moved backwards never revives an ended or expired session."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from idp import accounts, create_app
from idp.accounts import AccountError
from idp.models import LoginSession, TokenFamily, db
from tests.conftest import FAST_ARGON2, PASSWORD, SECRET_KEY
from tests.security.conftest import (
    ADA,
    Browser,
    Outage,
    audit_events,
    csrf_of,
    read,
    session_state,
)

# -- storage failures -------------------------------------------------------------------------


@pytest.fixture
def outage(app):
    o = Outage(app)
    yield o
    o.close()


@pytest.fixture
def world(app, ada, party, signed_in):
    photos = party("Photos")
    return photos, signed_in(ADA)


def assert_unavailable(response, what: str) -> None:
    assert response.status_code == 503, (what, response.status_code, response.get_data()[:200])
    assert response.mimetype == "application/json", what
    body = response.get_json()
    assert body["error"] == "temporarily_unavailable", what
    assert "active" not in body, what
    assert "simulated outage" not in response.get_data(as_text=True), what


def test_a_storage_failure_at_any_statement_of_introspection_never_answers_active(world, outage):
    photos, browser = world
    tokens = photos.tokens(browser)
    for token in (tokens["access_token"], tokens["refresh_token"]):
        statements = outage.count(lambda t=token: photos.introspect(t))
        assert statements >= 1  # one: the caller and the token's standing together
        for n in range(1, statements + 1):
            with outage.at(n):
                assert_unavailable(photos.introspect(token), f"introspect, statement {n}")
        with outage.at(1, sticky=True):
            assert_unavailable(photos.introspect(token), "introspect, database down")
        assert photos.active(token)


def test_a_storage_failure_at_any_statement_of_a_refresh_leaves_the_token_usable(app, world, outage):
    photos, browser = world
    current = photos.tokens(browser)["refresh_token"]
    spare = photos.tokens(browser)["refresh_token"]
    statements = outage.count(lambda: photos.refresh(spare))
    for n in range(1, statements + 1):
        with outage.at(n):
            response = photos.refresh(current)
        assert_unavailable(response, f"refresh, statement {n}")
        # Nothing was half done: not rotated, not taken for reuse, still good.
        retry = photos.refresh(current)
        assert retry.status_code == 200, (n, retry.get_json())
        current = retry.get_json()["refresh_token"]
    assert audit_events(app, "refresh.reused") == []
    assert read(app, lambda: db.session.scalar(sa.select(sa.func.count()).select_from(
        TokenFamily).where(TokenFamily.revoked_at.is_not(None)))) == 0


def test_a_storage_failure_during_revocation_answers_503_and_revokes_nothing(world, outage):
    photos, browser = world
    tokens = photos.tokens(browser)
    spare = photos.tokens(browser)["refresh_token"]
    statements = outage.count(lambda: photos.revoke(spare))
    assert statements >= 2
    for n in range(1, statements + 1):
        with outage.at(n):
            response = photos.revoke(tokens["refresh_token"])
        assert_unavailable(response, f"revoke, statement {n}")
        assert photos.active(tokens["access_token"]), n
    assert photos.revoke(tokens["refresh_token"]).status_code == 200
    assert not photos.active(tokens["access_token"])


def test_a_storage_failure_at_the_token_endpoint_and_userinfo_answers_503(world, outage):
    photos, browser = world
    grant = photos.code(browser)
    with outage.at(1, sticky=True):
        assert_unavailable(photos.exchange(grant), "code exchange")
    tokens = photos.exchange(grant)
    assert tokens.status_code == 200  # the failed attempt did not burn the code
    with outage.at(1, sticky=True):
        assert_unavailable(photos.userinfo(tokens.get_json()["access_token"]), "userinfo")


def test_an_unreachable_database_answers_503_everywhere(tmp_path, keys_dir, clock):
    down = create_app({"DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none",
                       "INSTANCE_DIR": tmp_path, "KEYS_DIR": keys_dir, "SECRET_KEY": SECRET_KEY,
                       "ISSUER": "http://127.0.0.1:5000", **FAST_ARGON2}, clock=clock)
    client = down.test_client()
    for path, data in (("/oauth/introspect", {"token": "a.b.c"}),
                       ("/oauth/token", {"grant_type": "refresh_token", "refresh_token": "x"}),
                       ("/oauth/revoke", {"token": "x"})):
        assert_unavailable(client.post(path, data=data, auth=("some-client", "secret")), path)
    browser = Browser(down)
    page = browser.get("/login")
    login = browser.post("/login", data={"csrf_token": csrf_of(page), "email": ADA,
                                         "password": PASSWORD})
    assert login.status_code == 503 and login.mimetype == "text/html"
    assert client.get("/readyz").status_code == 503


# -- attacker-sized input ---------------------------------------------------------------------


def test_a_100_kb_user_agent_gets_a_clean_400(app, ada, party):
    photos = party("Photos")
    huge = "Mozilla/5.0 " + "A" * 100_000
    b = Browser(app, user_agent=huge)
    for response, kind in ((b.get("/login"), "text/html"),
                           (b.post("/login", data={"email": ADA, "password": PASSWORD}), "text/html"),
                           (b.get(photos.authorize_url()), "text/html"),
                           (photos.http.post("/oauth/token", headers={"User-Agent": huge},
                                             data={"grant_type": "refresh_token"},
                                             auth=photos.auth), "application/json")):
        assert response.status_code == 400, response.status_code
        assert response.mimetype == kind
        assert len(response.get_data()) < 20_000
    assert read(app, lambda: db.session.scalar(sa.select(sa.func.count()).select_from(
        LoginSession))) == 0


def test_a_1_mb_id_token_hint_gets_a_clean_4xx(app, ada, party, signed_in):
    photos = party("Photos")
    b = signed_in(ADA)
    hint = "eyJhbGciOiJSUzI1NiJ9." + "A" * (1024 * 1024) + ".sig"
    for response in (b.get("/oauth/end-session?id_token_hint=" + hint),
                     b.get(photos.authorize_url(id_token_hint=hint)),
                     b.post("/oauth/end-session", data={"id_token_hint": hint})):
        assert response.status_code in (400, 413), response.status_code
        assert len(response.get_data()) < 20_000
    assert session_state(app, b.sid) == (None, None)


def test_json_nested_deeper_than_python_parses_is_refused_never_a_500(app, ada, party,
                                                                     signed_in):
    """Every parser of user input refuses what it cannot represent: JSON nested a few
    thousand levels deep raises RecursionError in Python's parser, not ValueError."""
    import base64

    photos = party("Photos")
    deep = "[" * 5000 + "]" * 5000
    payload = base64.urlsafe_b64encode(deep.encode()).rstrip(b"=").decode()
    assertion = photos.token({
        "grant_type": "client_credentials", "client_id": photos.client_id,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": f"eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln"}, auth=None)
    assert assertion.status_code == 401 and assertion.get_json()["error"] == "invalid_client"
    b = signed_in(ADA)
    claims = b.get(photos.authorize_url(claims="{" + '"a":' * 3000 + "1" + "}" * 3000))
    assert claims.status_code in (302, 303, 400), claims.status_code
    nested = b.get(photos.authorize_url(claims='{"id_token": ' + deep + "}"))
    assert nested.status_code in (302, 303, 400), nested.status_code


# -- redirects after a POST ---------------------------------------------------------------------


def test_no_post_is_ever_answered_with_307_or_308(app, make_account, make_user, party):
    acme = make_account("acme")
    make_user(ADA, account_id=acme, role="owner")
    make_user("bob@example.com", account_id=acme)
    stranger = party("Stranger", first_party=False)
    answers = {}
    b = Browser(app)
    url = stranger.authorize_url(challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
    b.get(url)
    answers["login"] = b.post("/login", data={"csrf_token": csrf_of(b.get("/login")),
                                              "email": ADA, "password": PASSWORD})
    consent = b.get(url)
    answers["consent"] = b.post(url, data={"csrf_token": csrf_of(consent), "allow": "Allow"})
    again = stranger.authorize_url(prompt="consent",
                                   challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
    answers["deny"] = b.post(again, data={"csrf_token": csrf_of(b.get(again)), "deny": "Deny"})
    other = Browser(app)
    other.login(ADA)
    token = b.csrf()
    answers["end one"] = b.post(f"/account/sessions/{other.sid}/end", data={"csrf_token": token})
    answers["admin save"] = b.post("/admin/settings/sessions", data={
        "csrf_token": token, "max_duration": "8h", "confirm": "save"})
    answers["password"] = b.post("/account/password", data={
        "csrf_token": token, "current": PASSWORD, "new": PASSWORD, "confirm": PASSWORD})
    answers["logout"] = b.post("/logout", data={"csrf_token": token})
    for name, response in answers.items():
        assert response.status_code in (302, 303), (name, response.status_code)
    assert answers["login"].status_code == 303
    assert answers["logout"].status_code == 303


# -- client IP behind proxies -----------------------------------------------------------------


def _ip_of_new_session(app, headers: dict) -> str:
    b = Browser(app, remote_addr="10.1.2.3")
    page = b.get("/login", headers=headers)
    b.post("/login", headers=headers, data={"csrf_token": csrf_of(page), "email": ADA,
                                            "password": PASSWORD})
    return read(app, lambda: db.session.get(LoginSession, b.sid).ip_first)


def test_a_spoofed_x_forwarded_for_is_ignored_without_trusted_proxies(app, ada):
    for header in ("203.0.113.9", "203.0.113.9, 198.51.100.1", "127.0.0.1", "garbage"):
        assert _ip_of_new_session(app, {"X-Forwarded-For": header}) == "10.1.2.3", header


def test_x_forwarded_for_is_honoured_only_for_the_trusted_hops(settings, clock, ada):
    proxied = create_app({**settings, "TRUSTED_PROXIES": 1}, clock=clock)
    try:
        assert _ip_of_new_session(proxied, {"X-Forwarded-For": "203.0.113.9"}) == "203.0.113.9"
        # Entries left of the one our proxy wrote are the client's own words.
        assert _ip_of_new_session(proxied, {
            "X-Forwarded-For": "1.1.1.1, 203.0.113.10"}) == "203.0.113.10"
        assert _ip_of_new_session(proxied, {"X-Forwarded-For": "not-an-ip"}) == "10.1.2.3"
        assert _ip_of_new_session(proxied, {}) == "10.1.2.3"
    finally:
        with proxied.app_context():
            db.session.remove()
            db.engine.dispose()


# -- back-channel logout: no SSRF into plain-HTTP internals, no redirects ---------------------


@pytest.mark.parametrize("uri", [
    "http://10.0.0.1/bc", "http://example.com/bc", "http://169.254.169.254/latest/meta-data/",
    "http://192.168.1.1/bc", "http://[fd00::1]/bc", "http://127.0.0.1.nip.io/bc",
    "file:///etc/passwd", "gopher://127.0.0.1:6379/_FLUSHALL", "ftp://example.com/bc",
    "javascript:alert(1)", "data:text/plain,x", "com.example.app:/bc", "//example.com/bc",
    "https://rp.example/bc#frag", "http:///bc", "",
])
def test_backchannel_logout_uri_must_be_https_or_loopback_http(app, clock, uri):
    with app.app_context():
        with pytest.raises(AccountError):
            accounts.create_client(name="RP", redirect_uris=["http://127.0.0.1:9999/cb"],
                                   backchannel_logout_uri=uri or " ", now=clock.now())
        db.session.rollback()


def test_backchannel_logout_uri_accepts_https_and_loopback(app, clock):
    with app.app_context():
        for uri in ("https://rp.example/bc", "http://127.0.0.1:8000/bc", "http://localhost/bc",
                    "http://[::1]:8000/bc"):
            client, _ = accounts.create_client(name="RP", redirect_uris=["http://127.0.0.1:9/cb"],
                                               backchannel_logout_uri=uri, now=clock.now())
            assert client.backchannel_logout_uri == uri
        db.session.rollback()


def test_backchannel_deliveries_follow_no_redirects_ignore_proxies_and_time_out(
        app, ada, party, signed_in, monkeypatch):
    import httpx

    from idp.oauth import logout as logout_module

    made = []
    real = httpx.Client

    def recording(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(logout_module.httpx, "Client", recording)
    rp = party("Photos", backchannel_logout_uri="http://127.0.0.1:1/bc")
    b = signed_in(ADA)
    rp.tokens(b)
    b.post("/logout", data={"csrf_token": b.csrf()})
    assert app.extensions["idp.logout"].drain(10)
    assert made, "no delivery was attempted"
    for kwargs in made:
        assert kwargs.get("follow_redirects") is False
        assert kwargs.get("trust_env") is False
        assert 0 < kwargs.get("timeout") <= 5


# -- the clock moved backwards -------------------------------------------------------------------


def test_a_clock_moved_back_never_revives_an_ended_session(app, clock, world):
    photos, browser = world
    start = clock.now()
    tokens = photos.tokens(browser)
    cookie = browser.cookie()
    clock.advance(minutes=5)
    browser.post("/logout", data={"csrf_token": browser.csrf()})
    for moment in (start - timedelta(hours=1), start, start + timedelta(minutes=1)):
        clock.set(moment)
        replay = Browser(app)
        replay.http.set_cookie("idp_session", cookie, domain="localhost")
        assert replay.get("/account/sessions").headers["Location"] == "/login"
        assert not photos.active(tokens["access_token"])
        assert photos.refresh(tokens["refresh_token"]).get_json()["error"] == "invalid_grant"


def test_a_clock_moved_back_never_revives_an_expired_session(app, clock, world):
    photos, browser = world
    start = clock.now()
    tokens = photos.tokens(browser)
    sid = browser.sid
    clock.advance(hours=3)  # past the 2 h inactivity timeout
    assert browser.get("/account/sessions").headers["Location"] == "/login"
    assert session_state(app, sid)[1] == "expired_idle"
    for moment in (start, start + timedelta(minutes=30), start - timedelta(days=1)):
        clock.set(moment)
        assert browser.get("/account/sessions").headers["Location"] == "/login"
        assert not photos.active(tokens["access_token"])
        assert photos.refresh(tokens["refresh_token"]).get_json()["error"] == "invalid_grant"


def test_a_clock_moved_back_after_a_refresh_found_the_session_expired(app, clock, world):
    photos, browser = world
    start = clock.now()
    tokens = photos.tokens(browser)
    clock.advance(hours=25)  # past the 24 h maximum duration
    assert photos.refresh(tokens["refresh_token"]).get_json()["error"] == "invalid_grant"
    assert session_state(app, browser.sid)[1] == "expired_duration"
    clock.set(start + timedelta(minutes=1))
    assert photos.refresh(tokens["refresh_token"]).get_json()["error"] == "invalid_grant"
    assert not photos.active(tokens["access_token"])
    assert browser.get("/account/sessions").headers["Location"] == "/login"


# -- debug is impossible in production ------------------------------------------------------------


def test_debug_cannot_be_switched_on_by_configuration(settings, clock, monkeypatch):
    monkeypatch.setenv("FLASK_DEBUG", "1")
    monkeypatch.setenv("IDP_DEBUG", "1")
    app = create_app({**settings, "DEBUG": True}, clock=clock)
    try:
        assert app.debug is False
        assert not app.config.get("DEBUG")

        @app.get("/__boom")
        def boom():
            raise RuntimeError("internal detail that must stay inside")

        response = app.test_client().get("/__boom", headers={"Accept": "text/html"})
        body = response.get_data(as_text=True)
        assert response.status_code == 500
        assert "Traceback" not in body and "internal detail" not in body
        assert "Werkzeug Debugger" not in body and "__debugger__" not in body
        assert app.test_client().get("/__boom?__debugger__=yes&cmd=resource&f=style.css") \
            .status_code == 500
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
