"""Password guessing (OWASP ASVS V2.2.1, V2.2.2, V7.1.3; RFC 9700 §4.x does not cover it,
OIDC Core §16 leaves it to the provider): failures per account bring growing delays,
then a temporary lockout (429, "Too many failed attempts") that refuses even the right
password; the answers are the same whether the account exists or not, and cost the
same work; an administrator's "Clear lockout" lets the user back in; a per-IP limit
caps everyone, and a spoofed X-Forwarded-For does not reset it; every failed and
throttled attempt is an audit event."""

from __future__ import annotations

import re
import secrets

import pytest
import sqlalchemy as sa

from idp import create_app
from idp.models import LoginSession, User, db
from tests.conftest import PASSWORD, redis_up
from tests.security.conftest import ADA, Browser, audit_events, csrf_of, read, text_of

GHOST = "ghost@example.com"  # no such user


def attempt(browser: Browser, email: str, password: str = "wrong password"):
    page = browser.get("/login")
    if page.status_code != 200:
        page = Browser(browser.app).get("/login")
    return browser.post("/login", data={"csrf_token": csrf_of(page), "email": email,
                                        "password": password})


def normalised(response, email: str) -> str:
    """The page as an attacker compares it: without the per-browser token and the echo."""
    body = re.sub(r'value="[^"]*"', 'value=""', text_of(response))
    return body.replace(email, "EMAIL")


@pytest.fixture
def strict(settings, clock, backend, make_account, make_user):
    """A second node on the same database whose lockout comes after two failures."""
    acme = make_account("acme")
    make_user(ADA, account_id=acme, role="owner")
    make_user("bob@example.com", account_id=acme)
    app = create_app({**settings, "LOGIN_MAX_FAILURES": 2, "LOGIN_IP_LIMIT": "1000 per minute"},
                     clock=clock)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_wrong_passwords_bring_a_delay_that_refuses_even_the_right_password(app, ada):
    b = Browser(app)
    assert [attempt(b, ADA).status_code for _ in range(2)] == [401, 401]
    delayed = attempt(b, ADA, PASSWORD)
    assert delayed.status_code == 429
    assert "Too many failed attempts" in text_of(delayed)
    assert int(delayed.headers["Retry-After"]) >= 1
    assert b.cookie() is None


def test_the_delay_looks_the_same_for_an_existing_and_a_missing_account(app, ada):
    answers = {}
    for email in (ADA, GHOST):
        b = Browser(app)
        answers[email] = [attempt(b, email) for _ in range(3)]
    for real, ghost in zip(answers[ADA], answers[GHOST], strict=True):
        assert real.status_code == ghost.status_code
        assert normalised(real, ADA) == normalised(ghost, GHOST)
        assert real.headers.get("Retry-After") == ghost.headers.get("Retry-After")
    assert [r.status_code for r in answers[ADA]] == [401, 401, 429]


def test_lockout_refuses_the_right_password_with_the_same_answer_for_any_email(strict):
    answers = {}
    for email in (ADA, GHOST):
        b = Browser(strict)
        answers[email] = [attempt(b, email).status_code for _ in range(2)]
        locked = attempt(b, email, PASSWORD)
        assert locked.status_code == 429
        assert "Too many failed attempts. Try again in 15 minutes." in text_of(locked)
        answers[email].append(normalised(locked, email))
        assert int(locked.headers["Retry-After"]) > 60
    assert answers[ADA] == answers[GHOST]


def test_the_lockout_holds_for_case_and_whitespace_variants_of_the_email(strict):
    b = Browser(strict)
    for _ in range(2):
        attempt(b, ADA)
    for variant in ("ADA@example.com", " ada@example.com ", "Ada@Example.COM"):
        assert attempt(Browser(strict), variant, PASSWORD).status_code == 429, variant


def test_an_admin_clearing_the_lockout_lets_the_user_in(strict):
    bob = "bob@example.com"
    for _ in range(2):
        attempt(Browser(strict), bob)
    assert attempt(Browser(strict), bob, PASSWORD).status_code == 429
    admin = Browser(strict)
    admin.login(ADA)
    users = text_of(admin.get("/admin/users"))
    assert "locked: too many failed sign-ins" in users and "Clear lockout" in users
    sub = read(strict, lambda: db.session.scalar(sa.select(User.sub).where(User.email == bob)))
    cleared = admin.post(f"/admin/users/{sub}/unlock", data={"csrf_token": admin.csrf()})
    assert cleared.status_code == 303
    assert attempt(Browser(strict), bob, PASSWORD).status_code == 303
    assert [e.actor.split(":")[0] for e in audit_events(strict, "login.unlocked")] == ["admin"]


def test_failed_and_throttled_attempts_are_audit_events(strict):
    for email in (ADA, GHOST):
        b = Browser(strict, remote_addr="198.51.100.7")
        for _ in range(3):
            attempt(b, email)
    failed = audit_events(strict, "login.failed")
    throttled = audit_events(strict, "login.throttled")
    assert len(failed) == 4 and len(throttled) == 2
    assert {e.ip for e in failed + throttled} == {"198.51.100.7"}
    ada_id = read(strict, lambda: db.session.scalar(sa.select(User.id).where(User.email == ADA)))
    assert sorted((e.user_id or 0) for e in failed) == [0, 0, ada_id, ada_id]
    assert all(e.detail.get("locked") for e in throttled)
    # The audit trail never holds what was typed.
    dump = repr([(e.detail, e.actor) for e in failed + throttled])
    assert "wrong password" not in dump and PASSWORD not in dump


def test_checking_a_password_costs_the_same_work_for_any_email(app, ada, monkeypatch):
    service = app.extensions["idp"].passwords
    calls = []

    class Counting:
        def __init__(self, real):
            self.real = real

        def verify(self, hash_, password):
            calls.append(hash_)
            return self.real.verify(hash_, password)

        def __getattr__(self, name):
            return getattr(self.real, name)

    monkeypatch.setattr(service, "hasher", Counting(service.hasher))
    for email in (ADA, GHOST, "x" * 254, "ADA@EXAMPLE.COM"):
        calls.clear()
        response = attempt(Browser(app, remote_addr="192.0.2.9"), email)
        assert response.status_code == 401, email
        assert len(calls) == 1, email  # one argon2 check, against the real hash or a dummy


def test_a_disabled_account_answers_like_a_wrong_password(strict):
    admin = Browser(strict)
    admin.login(ADA)
    bob = "bob@example.com"
    sub = read(strict, lambda: db.session.scalar(sa.select(User.sub).where(User.email == bob)))
    admin.post(f"/admin/users/{sub}/disable", data={"csrf_token": admin.csrf()})
    disabled = attempt(Browser(strict), bob, PASSWORD)
    wrong = attempt(Browser(strict), GHOST, PASSWORD)
    assert disabled.status_code == wrong.status_code == 401
    assert normalised(disabled, bob) == normalised(wrong, GHOST)


def test_the_per_ip_limit_caps_guessing_across_accounts(settings, clock, backend, ada):
    limited = create_app({**settings, "LOGIN_IP_LIMIT": "5 per minute"}, clock=clock)
    try:
        statuses = []
        for i in range(8):
            b = Browser(limited, remote_addr="203.0.113.50")
            statuses.append(b.post("/login", headers={"X-Forwarded-For": f"10.9.8.{i}"}, data={
                "csrf_token": csrf_of(b.get("/login")), "email": f"user{i}@example.com",
                "password": "guess"}).status_code)
        assert statuses[:5] == [401] * 5
        assert set(statuses[5:]) == {429}
        # Another client is not affected.
        other = Browser(limited, remote_addr="203.0.113.51")
        assert other.login(ADA).status_code == 303
    finally:
        with limited.app_context():
            db.session.remove()
            db.engine.dispose()


def test_guessing_a_client_secret_is_limited_but_never_locks_the_client_out(settings, clock,
                                                                           backend, party):
    """Failed client authentications count against the claimed client id and against the
    caller's IP: past either limit a failure answers 429 (JSON, Retry-After) instead of
    401. The client itself, authenticating with its secret, is never refused: nobody can
    spend another client's budget by claiming its public id."""
    limited = create_app({**settings, "CLIENT_AUTH_FAILURES_PER_CLIENT": "5 per minute",
                          "CLIENT_AUTH_FAILURES_PER_IP": "1000 per minute"}, clock=clock)
    try:
        other = party("Mail")
        guesser, owner = limited.test_client(), limited.test_client()
        for path, data, victim in (
                ("/oauth/token", {"grant_type": "client_credentials"}, party("Photos")),
                ("/oauth/introspect", {"token": "x"}, party("Calendar"))):
            statuses = [guesser.post(path, data=data, auth=(victim.client_id, f"guess-{i}"),
                                     environ_base={"REMOTE_ADDR": f"198.51.100.{i}"}).status_code
                        for i in range(7)]
            assert statuses == [401] * 5 + [429] * 2, (path, statuses)
            blocked = guesser.post(path, data=data, auth=(victim.client_id, "guess"))
            assert blocked.mimetype == "application/json" and int(blocked.headers["Retry-After"]) > 0
            assert blocked.get_json()["error"] == "slow_down"
            # The victim, with its secret, is served; other clients are not touched.
            served = owner.post("/oauth/introspect", data={"token": "x"}, auth=victim.auth)
            assert served.status_code == 200 and served.get_json() == {"active": False}
            assert guesser.post(path, data=data, auth=(other.client_id, "x")).status_code == 401
    finally:
        with limited.app_context():
            db.session.remove()
            db.engine.dispose()


def test_one_ip_failing_client_authentication_is_limited_across_client_ids(settings, clock,
                                                                           backend, party):
    victim = party("Photos")
    limited = create_app({**settings, "CLIENT_AUTH_FAILURES_PER_IP": "3 per minute"},
                         clock=clock)
    try:
        http = limited.test_client()
        statuses = [http.post("/oauth/introspect", data={"token": "x"},
                              auth=(f"random-{i}", "x")).status_code for i in range(5)]
        assert statuses == [401, 401, 401, 429, 429]
        # A client that authenticates from that IP is still served.
        served = http.post("/oauth/introspect", data={"token": "x"}, auth=victim.auth)
        assert served.status_code == 200
    finally:
        with limited.app_context():
            db.session.remove()
            db.engine.dispose()


def test_an_unreachable_rate_limit_store_falls_back_to_local_limits(settings, clock, backend, ada):
    """IDP_RATELIMIT_STORAGE_URI=redis://… shares counters between nodes; when Redis is down
    sign-in keeps working and each node still throttles on its own node store."""
    app = create_app({**settings, "RATELIMIT_STORAGE_URI": "redis://127.0.0.1:1/0"}, clock=clock)
    try:
        assert Browser(app, remote_addr="192.0.2.77").login(ADA).status_code == 303
        b = Browser(app, remote_addr="192.0.2.78")
        statuses = [attempt(b, ADA).status_code for _ in range(3)]
        assert statuses == [401, 401, 429], statuses
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")
def test_two_nodes_with_redis_count_failures_together(settings, clock, backend, make_user):
    """IDP_REDIS_URL: a guesser spreading attempts over two nodes meets one set of counters."""
    email = f"shared-{secrets.token_hex(6)}@example.com"  # unique: Redis outlives the test
    make_user(email)
    nodes = [create_app({**settings, "REDIS_URL": "redis://127.0.0.1:6379/14",
                         "LOGIN_IP_LIMIT": "1000 per minute"}, clock=clock) for _ in range(2)]
    try:
        a, b = (Browser(node, remote_addr="192.0.2.90") for node in nodes)
        assert attempt(a, email).status_code == 401
        assert attempt(b, email).status_code == 401
        # Node A saw one failure itself; the delay after two comes from the shared count.
        assert attempt(a, email, PASSWORD).status_code == 429
    finally:
        for node in nodes:
            with node.app_context():
                db.session.remove()
                db.engine.dispose()


def _shared_count(client_id: str) -> int:
    """The introspection counter Redis holds for ``client_id`` (0 when none)."""
    import redis

    store = redis.Redis.from_url("redis://127.0.0.1:6379/14")
    keys = [key for key in store.scan_iter(match="*INTROSPECTION_RATE_LIMIT*")
            if client_id.encode() in key]
    return sum(int(store.get(key) or 0) for key in keys)


@pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")
def test_two_nodes_share_request_limits_counted_locally_between_syncs(settings, clock, backend,
                                                                      party):
    """With Redis, a node adds its requests to the shared counter once per sync interval
    (not one round trip per request), and at once when its estimate reaches the limit: the
    other node then refuses on the shared count."""
    victim = party("Photos")
    nodes = [create_app({**settings, "REDIS_URL": "redis://127.0.0.1:6379/14",
                         "INTROSPECTION_RATE_LIMIT": "6 per minute", "RATE_LIMIT_SYNC": "60s"},
                        clock=clock) for _ in range(2)]
    try:
        a, b = (node.test_client() for node in nodes)

        def introspect(http):
            return http.post("/oauth/introspect", data={"token": "x"},
                             auth=victim.auth).status_code

        assert [introspect(a) for _ in range(6)] == [200] * 6
        assert _shared_count(victim.client_id) == 1  # the first request synced; five counted here
        assert introspect(a) == 429  # the estimate passed the limit: synced, refused
        assert _shared_count(victim.client_id) == 7
        assert introspect(b) == 429  # node B's first request meets the shared count
    finally:
        for node in nodes:
            with node.app_context():
                db.session.remove()
                db.engine.dispose()


@pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")
def test_a_sync_interval_of_zero_counts_every_request_in_redis(settings, clock, backend, party):
    victim = party("Photos")
    node = create_app({**settings, "REDIS_URL": "redis://127.0.0.1:6379/14",
                       "INTROSPECTION_RATE_LIMIT": "100 per minute", "RATE_LIMIT_SYNC": "0"},
                      clock=clock)
    try:
        http = node.test_client()
        for _ in range(3):
            http.post("/oauth/introspect", data={"token": "x"}, auth=victim.auth)
        assert _shared_count(victim.client_id) == 3
    finally:
        with node.app_context():
            db.session.remove()
            db.engine.dispose()


def change_password(browser: Browser, current: str):
    page = browser.get("/account/password")
    return browser.post("/account/password", data={
        "csrf_token": csrf_of(page), "current": current, "new": "a brand new passphrase",
        "confirm": "a brand new passphrase"})


def test_guessing_the_current_password_locks_like_sign_in_and_ends_that_session(strict):
    """A stolen cookie is no password oracle: the current-password check on
    /account/password counts on the account's lockout (shared with sign-in); the guess
    that reaches the limit ends the session that sent it, and the account is locked for
    the right password too, at the sign-in form as well."""
    thief = Browser(strict)
    thief.login("bob@example.com")
    sid = thief.sid
    first = change_password(thief, "guess one")
    assert first.status_code == 400 and "The current password is not right." in text_of(first)
    second = change_password(thief, "guess two")
    assert second.status_code == 303 and second.headers["Location"] == "/login"
    assert read(strict, lambda: db.session.get(LoginSession, sid).end_reason) == "locked_out"
    assert thief.get("/account/sessions").status_code == 303
    assert "Too many wrong passwords" in text_of(thief.get("/login"))
    locked = attempt(Browser(strict), "bob@example.com", PASSWORD)
    assert locked.status_code == 429 and "Try again in 15 minutes" in text_of(locked)
    events = audit_events(strict, "password.change_failed")
    assert [e.detail.get("locked") for e in events] == [None, True]


def test_a_locked_account_refuses_the_current_password_check_too(strict):
    owner = Browser(strict)
    owner.login("bob@example.com")
    for _ in range(2):
        attempt(Browser(strict), "bob@example.com")
    refused = change_password(owner, PASSWORD)
    assert refused.status_code == 400 and "Too many wrong passwords" in text_of(refused)
    assert owner.get("/account/sessions").status_code == 200  # not ended: it guessed nothing
