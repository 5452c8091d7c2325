"""Session fixation (OWASP ASVS V3.2.1, OIDC Core §16.x): whatever an attacker plants
in a browser before the victim signs in (a session cookie of their choosing, their own
valid session cookie, a Flask cookie whose CSRF token they know) is worthless after
the sign-in, because signing in rotates every piece of pre-login state."""

from __future__ import annotations

import hashlib

import sqlalchemy as sa

from idp import passwords
from idp.models import LoginSession, db
from tests.security.conftest import ADA, BOB, COOKIE, FLASK_COOKIE, csrf_of, read, session_state


def plant(browser, name: str, value: str) -> None:
    browser.http.set_cookie(name, value, domain="localhost", path="/")


def test_a_planted_session_cookie_is_replaced_at_login(app, ada, browser):
    victim = browser()
    planted = passwords.new_token()[2]  # well-formed, names no session
    plant(victim, COOKIE, planted)
    response = victim.login(ADA)
    assert COOKIE in response.headers.get("Set-Cookie", "")
    assert victim.cookie() != planted
    assert read(app, lambda: db.session.get(LoginSession, planted.split(".")[0])) is None


def test_an_attackers_own_session_cookie_planted_in_the_victims_browser_dies_at_login(
        app, ada, make_user, browser, signed_in):
    make_user(BOB)
    attacker = signed_in(BOB)
    planted = attacker.cookie()
    victim = browser()
    token = csrf_of(victim.get("/login"))  # the sign-in form is already open
    plant(victim, COOKIE, planted)
    response = victim.post("/login", data={"csrf_token": token, "email": ADA,
                                           "password": "correct horse battery staple"})
    assert response.status_code == 303
    assert victim.cookie() != planted
    # The attacker's cookie does not follow the victim into her account: it is dead.
    assert session_state(app, planted.split(".")[0])[1] == "logout"
    replay = attacker.get("/account/sessions")
    assert replay.status_code == 303 and replay.headers["Location"] == "/login"
    assert "ada@example.com" not in replay.get_data(as_text=True)


def test_a_planted_flask_cookie_and_its_known_csrf_token_are_useless_after_login(
        app, ada, browser):
    attacker = browser()
    known_token = csrf_of(attacker.get("/login"))
    flask_cookie = attacker.cookie(FLASK_COOKIE)
    assert flask_cookie
    victim = browser()
    plant(victim, FLASK_COOKIE, flask_cookie)
    page = victim.get("/login")
    # The planted session is in use before login: the same CSRF secret (the signed token
    # carries a timestamp, so compare what it signs, not the whole string).
    assert csrf_of(page).split(".")[0] == known_token.split(".")[0]
    victim.post("/login", data={"csrf_token": known_token, "email": ADA,
                                "password": "correct horse battery staple"})
    assert victim.cookie(FLASK_COOKIE) != flask_cookie
    # The attacker's token, forged into a cross-site POST, no longer works.
    forged = victim.post("/account/sessions/end-all", data={"csrf_token": known_token})
    assert forged.status_code == 400
    assert session_state(app, victim.sid) == (None, None)
    assert victim.get("/account/sessions").status_code == 200


def test_login_rotates_the_csrf_token(app, ada, browser):
    b = browser()
    before = csrf_of(b.get("/login"))
    b.post("/login", data={"csrf_token": before, "email": ADA,
                           "password": "correct horse battery staple"})
    after = b.csrf()
    assert after != before
    stale = b.post("/account/sessions/end-all", data={"csrf_token": before})
    assert stale.status_code == 400
    assert session_state(app, b.sid) == (None, None)


def test_signing_in_again_rotates_the_cookie_and_kills_the_old_one(app, ada, browser, signed_in):
    b = signed_in(ADA)
    old = b.cookie()
    # Signed in, /login shows no form; any page's token of this browser is valid for it.
    response = b.post("/login", data={"csrf_token": b.csrf(), "email": ADA,
                                      "password": "correct horse battery staple"})
    assert response.status_code == 303
    assert b.cookie() != old
    thief = browser()
    plant(thief, COOKIE, old)
    assert thief.get("/account/sessions").headers["Location"] == "/login"


def test_a_cookie_replayed_after_logout_is_dead_on_the_server(app, ada, browser, signed_in):
    b = signed_in(ADA)
    stolen = b.cookie()
    response = b.post("/logout", data={"csrf_token": b.csrf()})
    assert response.status_code == 303
    thief = browser()
    plant(thief, COOKIE, stolen)
    replay = thief.get("/account/sessions")
    assert replay.status_code == 303 and replay.headers["Location"] == "/login"


def test_the_cookie_is_not_the_sid_and_only_its_hash_is_stored(app, ada, signed_in):
    b = signed_in(ADA)
    row_id, secret = b.cookie().split(".")

    def stored():
        row = db.session.get(LoginSession, row_id)
        dump = db.session.execute(sa.select(LoginSession.__table__)).all()
        return row.secret_hash, repr(dump)

    secret_hash, dump = read(app, stored)
    assert secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in dump
    assert len(secret) >= 43  # 256 bits, URL-safe base64


def test_a_forged_cookie_with_a_real_session_id_and_a_guessed_secret_is_refused(
        app, ada, browser, signed_in):
    b = signed_in(ADA)
    row_id = b.sid
    thief = browser()
    plant(thief, COOKIE, f"{row_id}.{'A' * 43}")
    assert thief.get("/account/sessions").headers["Location"] == "/login"
    plant(thief, COOKIE, row_id)
    assert thief.get("/account/sessions").headers["Location"] == "/login"
