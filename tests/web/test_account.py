"""The sessions pages through Flask's test client: access rules, confirmations,
messages, and the bounded number of queries per page."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from idp import passwords
from idp.models import AuditEvent, LoginSession, TokenFamily, User, db
from tests.conftest import PASSWORD

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def login(client, email="ada@example.com", ua="Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) "
          "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"):
    page = client.get("/login", headers={"User-Agent": ua})
    token = CSRF.search(page.get_data(as_text=True)).group(1)
    response = client.post("/login", data={"csrf_token": token, "email": email,
                                           "password": PASSWORD}, headers={"User-Agent": ua})
    assert response.status_code == 303, response.get_data(as_text=True)[:300]
    return response


def confirm(client, url):
    page = client.get(url)
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert ">Confirm</button>" in text
    return client.post(url, data={"csrf_token": CSRF.search(text).group(1)}), text


@pytest.fixture
def ada(make_user):
    return make_user("ada@example.com")


def session_ids(app, sub):
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.sub == sub))
        return [s.id for s in db.session.scalars(
            sa.select(LoginSession).where(LoginSession.user_id == user.id)
            .order_by(LoginSession.created_at))]


def test_signed_out_visitors_are_sent_to_login_and_come_back(app, ada):
    client = app.test_client()
    response = client.get("/account/sessions")
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert login(client).headers["location"] == "/account/sessions"


def test_page_lists_sessions_with_badge_and_view_switch(app, ada, clock):
    laptop, phone = app.test_client(), app.test_client()
    login(laptop)
    login(phone, ua="Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1")
    clock.advance(minutes=5)
    html = laptop.get("/account/sessions").get_data(as_text=True)
    assert html.count('class="session status-active"') == 2
    assert html.count("This device") == 1
    assert "Safari on iPhone" in html and "Chrome on macOS" in html
    assert "5 minutes ago" in html
    assert 'href="/account/sessions?view=active"' in html
    assert "End all other sessions" in html and "End all sessions" in html


def test_ending_another_session_needs_confirmation_and_csrf(app, ada):
    laptop, phone = app.test_client(), app.test_client()
    login(laptop)
    login(phone)
    other = session_ids(app, ada)[1]
    no_csrf = laptop.post(f"/account/sessions/{other}/end")
    assert no_csrf.status_code == 400
    response, text = confirm(laptop, f"/account/sessions/{other}/end")
    assert "Signs out Chrome on macOS (this computer)." in text
    assert response.status_code == 303
    follow = laptop.get("/account/sessions").get_data(as_text=True)
    assert "Ended the session on Chrome on macOS" in follow
    assert "Ended by you" in follow
    assert phone.get("/account/sessions").headers["location"] == "/login"
    again = laptop.get(f"/account/sessions/{other}/end", follow_redirects=True)
    assert "had already ended. Nothing to do." in again.get_data(as_text=True)


def test_someone_elses_session_is_404(app, ada, make_user):
    make_user("bob@example.com")
    ada_client, bob_client = app.test_client(), app.test_client()
    login(ada_client)
    login(bob_client, email="bob@example.com")
    bob_sub = db.session.scalar(sa.select(User.sub).where(User.email == "bob@example.com")) \
        if False else None
    with app.app_context():
        bob_session = db.session.scalar(sa.select(LoginSession.id).join(User).where(
            User.email == "bob@example.com"))
    assert bob_sub is None
    assert ada_client.get(f"/account/sessions/{bob_session}/end").status_code == 404
    token = CSRF.search(ada_client.get("/account/sessions/end-others").get_data(as_text=True))
    assert ada_client.post(f"/account/sessions/{bob_session}/end",
                           data={"csrf_token": token.group(1)}).status_code == 404
    assert bob_client.get("/account/sessions").status_code == 200


def test_log_out_of_the_current_session(app, ada):
    client = app.test_client()
    login(client)
    current = session_ids(app, ada)[0]
    response, text = confirm(client, f"/account/sessions/{current}/end")
    assert "Log out of this device?" in text
    assert response.headers["location"] == "/login"
    with app.app_context():
        assert db.session.get(LoginSession, current).end_reason == "logout"


def test_end_all_other_and_end_all(app, ada):
    clients = [app.test_client() for _ in range(3)]
    for c in clients:
        login(c)
    response, text = confirm(clients[0], "/account/sessions/end-others")
    assert "Signs out 2 other sessions" in text
    assert clients[0].get("/account/sessions").status_code == 200
    assert clients[1].get("/account/sessions").status_code == 303
    response, text = confirm(clients[0], "/account/sessions/end-all")
    assert "this device included" in text
    assert response.headers["location"] == "/login"
    assert clients[0].get("/account/sessions").status_code == 303


def test_expired_session_sends_user_to_login_with_the_reason(app, ada, clock):
    client = app.test_client()
    login(client)
    clock.advance(hours=2)
    response = client.get("/account/sessions")
    assert response.headers["location"] == "/login"
    page = client.get("/login").get_data(as_text=True)
    assert "signed out after a period of inactivity" in page


def seed_history(app, sub, clock, count):
    """``count`` old sessions with a family and an event each, inserted in bulk."""
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.sub == sub))
        from idp.models import Client

        client = db.session.scalar(sa.select(Client))
        now = clock.now()
        rows, families, events = [], [], []
        for i in range(count):
            sid = passwords.new_id()
            at = now - timedelta(minutes=i + 10)
            ended = i % 3 == 0
            rows.append(dict(
                id=sid, secret_hash="0" * 64, user_id=user.id, account_id=user.account_id,
                kind="browser", created_at=at, last_active_at=at, updated_at=at,
                ended_at=at if ended else None, end_reason="logout" if ended else None, amr=["pwd"],
                ip_first="203.0.113.1", ip_last="203.0.113.1", user_agent="curl/8",
                device_label="curl", device_type="other", location="Unknown location"))
            families.append(dict(id=passwords.new_id(), session_id=sid, client_id=client.client_id,
                                 user_id=user.id, scope="openid", created_at=at,
                                 last_issued_at=at))
            events.append(dict(at=at, event="session.started", account_id=user.account_id,
                               user_id=user.id, session_id=sid, detail={}))
        db.session.execute(sa.insert(LoginSession), rows)
        db.session.execute(sa.insert(TokenFamily), families)
        db.session.execute(sa.insert(AuditEvent), events)
        db.session.commit()


def test_a_thousand_sessions_are_paginated_with_a_bounded_number_of_queries(
        app, ada, clock, make_client):
    make_client()
    seed_history(app, ada, clock, 1000)
    client = app.test_client()
    login(client)
    statements = []

    def count(*_args):
        statements.append(1)

    with app.app_context():
        sa.event.listen(db.engine, "before_cursor_execute", count)
        try:
            first = client.get("/account/sessions")
            first_count = len(statements)
            statements.clear()
            cursor = re.search(r'cursor=([^"&]+)', first.get_data(as_text=True)).group(1)
            second = client.get(f"/account/sessions?cursor={cursor}")
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", count)
    assert first.status_code == second.status_code == 200
    assert first.get_data(as_text=True).count('class="session ') == 25
    assert first_count <= 12, first_count
    assert len(statements) <= 12, len(statements)
