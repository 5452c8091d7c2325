"""No hot path scans a big table (PostgreSQL).

A data set of production shape (tens of thousands of users, a hundred thousand sessions
with their families, refresh tokens, codes, audit events, ...) is written with
``generate_series`` and analysed. Then the hot paths run — sign-in, authorize, code
exchange, introspection of an access and of a refresh token, the refresh grant,
userinfo, the sessions API, the account sessions page, the sweep — while a
``before_cursor_execute`` listener captures every statement with its parameters. Each
captured SELECT/UPDATE/DELETE is then EXPLAINed with those parameters, and no plan may
hold a ``Seq Scan`` on a big table. The statements are captured, not listed here, so the
test keeps checking whatever the code runs as the queries change.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from datetime import UTC
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import sqlalchemy as sa

from idp import sessions
from idp.models import db
from tests.conftest import PASSWORD

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
SESSIONS = 100_000
USERS = 20_000
BIG = 10_000  # a table with at least this many rows must never be read whole
# Tables that grow with traffic: each must be big in the data set, so a missing index
# shows up as a sequential scan instead of hiding behind a tiny table.
GROWING = ["users", "login_sessions", "token_families", "refresh_tokens", "authorization_codes",
           "audit_events", "revoked_access_tokens", "logout_deliveries", "logout_attempts",
           "consents", "device_codes", "used_assertions"]
UA = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/124.0 Safari/537.36")


@pytest.fixture
def postgres(backend):
    if backend.kind != "postgresql":
        pytest.skip("query plans are PostgreSQL's: set IDP_TEST_DATABASE_URL to run this test")
    return backend


# -- the data set ------------------------------------------------------------------------------

SEED = [
    # 50 accounts, three policies (as production has several).
    """INSERT INTO accounts (name, created_at, max_session_duration, idle_timeout,
           max_concurrent_sessions, on_concurrent_limit)
       SELECT 'bulk-' || g, :now - interval '90 days',
              CASE g % 3 WHEN 0 THEN 86400 WHEN 1 THEN 28800 ELSE 259200 END,
              CASE g % 3 WHEN 0 THEN 7200 WHEN 1 THEN 1800 ELSE 28800 END, NULL, 'deny'
       FROM generate_series(1, 50) g""",
    f"""INSERT INTO users (sub, account_id, email, email_verified, name, role, password_hash,
           created_at)
       SELECT 'bulk-sub-' || g, (SELECT min(id) FROM accounts WHERE name LIKE 'bulk-%') + g % 50,
              'bulk' || g || '@example.test', true, 'User ' || g, 'member', 'x',
              :now - interval '60 days'
       FROM generate_series(1, {USERS}) g""",
    # Sessions: most ended (a few hundred of those past retention), some open and live, a
    # few hundred open but past a deadline (what the sweep finds).
    f"""INSERT INTO login_sessions (id, secret_hash, user_id, account_id, kind, created_at,
           last_active_at, updated_at, ended_at, end_reason, amr, ip_first, ip_last,
           user_agent, device_label, device_type, location)
       SELECT 'bulk-s-' || g, md5(g::text) || md5(g::text), u.id, u.account_id, 'browser',
              t.created, t.created + interval '1 minute', t.created + interval '1 minute',
              CASE WHEN g % 10 < 6 THEN t.created + interval '5 minutes' END,
              CASE WHEN g % 10 < 6 THEN 'logout' END,
              '["pwd"]', '203.0.113.7', '203.0.113.7', :ua, 'Chrome on macOS', 'desktop',
              'France'
       FROM generate_series(1, {SESSIONS}) g
       JOIN users u ON u.sub = 'bulk-sub-' || (1 + g % {USERS})
       CROSS JOIN LATERAL (SELECT CASE
           WHEN g % 500 = 3 THEN :now - interval '40 days'
           WHEN g % 10 < 6 THEN :now - (g % 29) * interval '1 day' - interval '1 hour'
           WHEN g % 250 = 7 THEN :now - interval '4 days'
           ELSE :now - (g % 20) * interval '1 minute' END AS created) t""",
    f"""INSERT INTO token_families (id, session_id, client_id, user_id, scope, created_at,
           last_issued_at, revoked_at, revoke_reason)
       SELECT 'bulk-f-' || s.g, 'bulk-s-' || s.g, :client_id, l.user_id, 'openid', l.created_at,
              l.last_active_at, l.ended_at, CASE WHEN l.ended_at IS NOT NULL THEN 'session_ended' END
       FROM generate_series(1, {SESSIONS}) s(g)
       JOIN login_sessions l ON l.id = 'bulk-s-' || s.g""",
    f"""INSERT INTO refresh_tokens (id, secret_hash, family_id, issued_at, expires_at, rotated_at)
       SELECT 'bulk-r-' || g || '-' || k, md5(g::text) || md5(k::text), 'bulk-f-' || g,
              :now - interval '1 day', :now + interval '1 day',
              CASE WHEN k = 1 THEN :now - interval '1 hour' END
       FROM generate_series(1, {SESSIONS}) g, generate_series(1, 2) k""",
    f"""INSERT INTO authorization_codes (id, secret_hash, client_id, session_id, user_id,
           redirect_uri, scope, auth_time, amr, created_at, expires_at, used_at, family_id)
       SELECT 'bulk-c-' || g, md5(g::text) || md5(g::text), :client_id, 'bulk-s-' || g, l.user_id,
              'http://127.0.0.1:9999/callback', 'openid', l.created_at, '["pwd"]',
              l.created_at, l.created_at + interval '60 seconds',
              l.created_at + interval '1 second', 'bulk-f-' || g
       FROM generate_series(1, {SESSIONS}) g JOIN login_sessions l ON l.id = 'bulk-s-' || g""",
    """INSERT INTO audit_events (at, event, account_id, user_id, session_id, actor, ip, detail)
       SELECT l.created_at, 'session.started', l.account_id, l.user_id, l.id, 'user:x',
              '203.0.113.7', '{"kind": "browser"}'
       FROM login_sessions l WHERE l.id LIKE 'bulk-s-%'""",
    f"""INSERT INTO logout_deliveries (session_id, client_id, subject, uri, created_at,
           next_attempt_at, attempts, last_status, delivered_at)
       SELECT 'bulk-s-' || g, :client_id, 'bulk-sub-' || g, 'http://127.0.0.1:9/bc',
              :now - interval '2 days', :now - interval '2 days', 1, 200,
              :now - interval '2 days'
       FROM generate_series(1, {SESSIONS}) g""",
    """INSERT INTO logout_attempts (delivery_id, at, status, duration_ms)
       SELECT id, created_at, 200, 12 FROM logout_deliveries""",
    f"""INSERT INTO revoked_access_tokens (jti, family_id, expires_at, revoked_at)
       SELECT 'bulk-jti-' || g, 'bulk-f-' || g, :now + interval '5 minutes', :now
       FROM generate_series(1, {SESSIONS // 4}) g""",
    """INSERT INTO consents (user_id, client_id, scope, granted_at)
       SELECT id, :client_id, 'openid', :now FROM users WHERE sub LIKE 'bulk-sub-%'""",
    f"""INSERT INTO used_assertions (key, expires_at)
       SELECT 'bulk-a-' || g, :now + (g % 600) * interval '1 second'
       FROM generate_series(1, {SESSIONS}) g""",
    f"""INSERT INTO device_codes (id, secret_hash, user_code, client_id, scope, created_at,
           expires_at, interval, ip, user_agent, approved, decided_at, used_at)
       SELECT 'bulk-d-' || g, md5(g::text) || md5(g::text), 'BULK-' || g, :client_id, 'openid',
              :now - interval '1 day', :now - interval '23 hours', 5, '203.0.113.7', '', true,
              :now - interval '1 day', :now - interval '1 day'
       FROM generate_series(1, {SESSIONS}) g""",
]


def seed_big(client_id: str, now) -> None:
    params = {"now": now.astimezone(UTC).replace(tzinfo=None), "client_id": client_id, "ua": UA}
    with db.engine.begin() as conn:
        for statement in SEED:
            conn.execute(sa.text(statement), params)
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))


# -- driving the hot paths -------------------------------------------------------------------


def csrf_of(response) -> str:
    return CSRF.search(response.get_data(as_text=True)).group(1)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


class Capture:
    """Every statement the app sends, with its parameters, while active."""

    def __init__(self):
        self.statements: list[tuple[str, object, str]] = []
        self.label = ""

    def __call__(self, conn, cursor, statement, parameters, context, executemany):
        if executemany:
            parameters = parameters[0] if parameters else None
        self.statements.append((statement, parameters, self.label))


def drive_hot_paths(app, clock, capture: Capture, registered) -> None:
    browser, rp = app.test_client(), app.test_client()
    auth = (registered.client_id, registered.client_secret)

    capture.label = "login"
    page = browser.get("/login", headers={"User-Agent": UA})
    signed_in = browser.post("/login", data={"csrf_token": csrf_of(page), "email": "ada@example.com",
                                             "password": PASSWORD}, headers={"User-Agent": UA})
    assert signed_in.status_code == 303, signed_in.get_data(as_text=True)[:300]

    capture.label = "authorize"
    verifier, challenge = pkce()
    query = urlencode({"response_type": "code", "client_id": registered.client_id,
                       "redirect_uri": registered.redirect_uri, "state": "s", "nonce": "n",
                       "scope": "openid profile email sessions", "code_challenge": challenge,
                       "code_challenge_method": "S256"})
    response = browser.get(f"/authorize?{query}", headers={"User-Agent": UA})
    assert response.status_code in (302, 303), response.get_data(as_text=True)[:300]
    location = response.headers["Location"]
    assert "code=" in location, location
    code = parse_qs(urlsplit(location).query)["code"][0]

    capture.label = "code exchange"
    tokens = rp.post("/oauth/token", auth=auth, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": registered.redirect_uri,
        "code_verifier": verifier}).get_json()
    assert "refresh_token" in tokens, tokens

    capture.label = "introspect access token"
    answer = rp.post("/oauth/introspect", auth=auth, data={"token": tokens["access_token"]})
    assert answer.get_json()["active"] is True
    capture.label = "introspect refresh token"
    answer = rp.post("/oauth/introspect", auth=auth, data={
        "token": tokens["refresh_token"], "token_type_hint": "refresh_token"})
    assert answer.get_json()["active"] is True
    capture.label = "introspect inactive token"
    unknown = f"{secrets.token_urlsafe(16)}.{secrets.token_urlsafe(32)}"
    rp.post("/oauth/introspect", auth=auth, data={"token": unknown})

    capture.label = "userinfo"
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert rp.get("/userinfo", headers=bearer).status_code == 200

    capture.label = "GET /api/v1/sessions"
    for params in ("", "?status=active", "?limit=2"):
        assert rp.get(f"/api/v1/sessions{params}", headers=bearer).status_code == 200

    capture.label = "refresh grant"
    clock.advance(minutes=2)  # past the activity-write interval: the refresh touches the session
    refreshed = rp.post("/oauth/token", auth=auth, data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.get_json()
    capture.label = "refresh reuse"
    reused = rp.post("/oauth/token", auth=auth, data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert reused.status_code == 400

    capture.label = "account sessions page"
    for path in ("/account/sessions", "/account/sessions?view=active"):
        assert browser.get(path, headers={"User-Agent": UA}).status_code == 200

    capture.label = "sweep"
    with app.app_context():
        now = clock.now()
        retention = app.config["SESSION_RETENTION"]
        assert sessions.due_for_expiry(now) > 0 and sessions.due_for_purge(now, retention) > 0
        result = sessions.sweep(now, retention, batch=200)
        assert result.expired > 0 and result.purged > 0
        db.session.remove()
    capture.label = "logout worker"
    with app.app_context():
        app.extensions["idp.logout"].run_due(limit=3)
        db.session.remove()


# -- the plans ---------------------------------------------------------------------------------


def seq_scans(plan: dict, big: set[str]) -> list[str]:
    found = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in big:
        found.append(plan["Relation Name"])
    for child in plan.get("Plans", []):
        found += seq_scans(child, big)
    return found


def explain(raw, statement: str, parameters) -> dict:
    cursor = raw.cursor()
    try:
        cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
        document = cursor.fetchone()[0]
    finally:
        cursor.close()
        raw.rollback()
    if isinstance(document, str):
        document = json.loads(document)
    return document[0]["Plan"]


def test_hot_paths_never_scan_a_big_table(postgres, app, clock, make_account, make_user,
                                          make_client, monkeypatch):
    # No app context around the test: each request of the test client gets its own (and
    # its own ``g``), as in production.
    started = time.monotonic()
    # Logout notices wait for the worker pass below, not for threads racing the EXPLAINs.
    monkeypatch.setitem(app.config, "BACKCHANNEL_IMMEDIATE", False)
    account_id = make_account("acme")
    make_user("ada@example.com", account_id=account_id)
    registered = make_client("Photos", scope="openid profile email sessions",
                             backchannel_logout_uri="http://127.0.0.1:9/backchannel")
    with app.app_context():
        seed_big(registered.client_id, clock.now())
        sizes = dict(db.session.execute(sa.text(
            "SELECT relname, reltuples::bigint FROM pg_class "
            "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace")).all())
        db.session.remove()
        engine = db.engine
    big = {name for name, rows in sizes.items() if rows >= BIG}
    assert set(GROWING) <= big, sizes

    capture = Capture()
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        drive_hot_paths(app, clock, capture, registered)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)

    checked, failures, seen = 0, [], set()
    raw = engine.raw_connection()
    try:
        for statement, parameters, label in capture.statements:
            verb = statement.lstrip().split(None, 1)[0].upper()
            if verb not in ("SELECT", "UPDATE", "DELETE", "WITH") or statement in seen:
                continue
            seen.add(statement)
            plan = explain(raw, statement, parameters)
            checked += 1
            scanned = seq_scans(plan, big)
            if scanned:
                failures.append(f"[{label}] Seq Scan on {', '.join(scanned)}:\n  "
                                f"{' '.join(statement.split())}\n  params: {parameters}")
    finally:
        raw.close()
    labels = {label for _s, _p, label in capture.statements}
    assert {"login", "introspect access token", "introspect refresh token", "refresh grant",
            "userinfo", "GET /api/v1/sessions", "account sessions page", "sweep",
            "logout worker"} <= labels
    assert checked >= 30, checked
    assert not failures, "\n\n".join(failures)
    assert time.monotonic() - started < 60
