"""Sign-in with an authenticator app, through the pages: enrolment (QR code, first code,
recovery codes shown once), the password then the code, wrong codes counting on the same
lockout as wrong passwords (a right password never clears it), a recovery code once, and
the session and the ID token saying how the user signed in."""

from __future__ import annotations

import re

import pyotp
import pytest
import sqlalchemy as sa

from idp import create_app
from idp.models import db
from tests.compact import claims_of
from tests.conftest import PASSWORD
from tests.security.conftest import ADA, Browser, audit_events, csrf_of, text_of

SECRET = re.compile(r'id="totp-secret">([A-Z2-7]+)<')
RECOVERY = re.compile(r"<li><code>([a-z0-9-]+)</code></li>")


def enrol(browser: Browser, clock) -> tuple[str, list[str]]:
    page = browser.get("/account/security")
    assert "No second factor yet" in text_of(page)
    started = browser.post("/account/security/totp", data={"csrf_token": csrf_of(page)})
    assert started.status_code == 303
    form = browser.get(started.headers["Location"])
    secret = SECRET.search(text_of(form)).group(1)
    assert 'src="data:image/svg+xml;base64,' in text_of(form)
    wrong = browser.post(started.headers["Location"], data={"csrf_token": csrf_of(form),
                                                            "code": "000000"})
    assert wrong.status_code == 400
    done = browser.post(started.headers["Location"], data={
        "csrf_token": csrf_of(form), "code": pyotp.TOTP(secret).at(int(clock.now().timestamp()))})
    assert done.status_code == 200 and "shown only now" in text_of(done)
    codes = RECOVERY.findall(text_of(done))
    assert len(codes) == 10
    return secret, codes


def password_step(browser: Browser, password: str = PASSWORD):
    page = browser.get("/login")
    return browser.post("/login", data={"csrf_token": csrf_of(page), "email": ADA,
                                        "password": password})


def code_step(browser: Browser, code: str):
    page = browser.get("/login/code")
    return browser.post("/login/code", data={"csrf_token": csrf_of(page), "code": code})


@pytest.fixture
def enrolled(app, ada, clock):
    owner = Browser(app)
    owner.login(ADA)
    secret, codes = enrol(owner, clock)
    clock.advance(minutes=1)
    return secret, codes


def now_code(secret: str, clock) -> str:
    return pyotp.TOTP(secret).at(int(clock.now().timestamp()))


def test_a_right_password_then_the_apps_code_signs_in(app, clock, enrolled, party):
    secret, _ = enrolled
    browser = Browser(app)
    first = password_step(browser)
    assert first.status_code == 303 and first.headers["Location"] == "/login/code"
    assert browser.cookie() is None  # no session yet
    assert browser.get("/account/sessions").status_code == 303  # still signed out
    done = code_step(browser, now_code(secret, clock))
    assert done.status_code == 303 and browser.cookie() is not None
    page = text_of(browser.get("/account/sessions"))
    assert "Password and authenticator app" in page
    # The ID token says how: amr carries the one-time code and multi-factor.
    photos = party("Photos")
    tokens = photos.tokens(browser)
    claims = claims_of(tokens["id_token"])
    assert claims["amr"] == ["pwd", "otp", "mfa"]


def test_the_same_code_twice_is_refused(app, clock, enrolled):
    secret, _ = enrolled
    code = now_code(secret, clock)
    first = Browser(app)
    password_step(first)
    assert code_step(first, code).status_code == 303
    second = Browser(app)
    password_step(second)
    refused = code_step(second, code)
    assert refused.status_code == 401 and "That code is not right" in text_of(refused)


def test_wrong_codes_lock_the_account_and_a_right_password_never_resets_the_count(
        settings, clock, backend, ada):
    """Five wrong codes, each after a right password, lock the account as five wrong
    passwords would: knowing the password buys no free code guesses. (Growing delays off,
    so the count alone decides.)"""
    app = create_app({**settings, "LOGIN_DELAY_AFTER": 5}, clock=clock)
    try:
        owner = Browser(app)
        owner.login(ADA)
        secret, _ = enrol(owner, clock)
        wrong = "111111" if now_code(secret, clock) != "111111" else "222222"
        statuses = []
        for _ in range(5):
            browser = Browser(app)
            assert password_step(browser).status_code == 303
            statuses.append(code_step(browser, wrong).status_code)
        assert statuses == [401] * 5
        assert app.extensions["idp"].lockout.locked(ADA)
        locked = password_step(Browser(app))
        assert locked.status_code == 429 and "Try again in 15 minutes" in text_of(locked)
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def test_a_recovery_code_signs_in_once(app, clock, enrolled):
    _, codes = enrolled
    browser = Browser(app)
    password_step(browser)
    assert code_step(browser, codes[3]).status_code == 303
    assert "Signed in with a recovery code" in text_of(browser.get("/account/sessions"))
    again = Browser(app)
    password_step(again)
    assert code_step(again, codes[3]).status_code == 401
    page = text_of(browser.get("/account/security"))
    assert "9 recovery codes left" in page


def test_the_code_step_expires_and_cannot_be_reached_without_a_password(app, clock, enrolled):
    secret, _ = enrolled
    stranger = Browser(app)
    assert stranger.get("/login/code").status_code == 303
    browser = Browser(app)
    password_step(browser)
    clock.advance(minutes=6)
    late = browser.get("/login/code")
    assert late.status_code == 303 and late.headers["Location"] == "/login"
    assert "took too long" in text_of(browser.get("/login"))


def test_the_api_says_how_each_session_signed_in(app, clock, enrolled, party):
    secret, _ = enrolled
    browser = Browser(app)
    password_step(browser)
    code_step(browser, now_code(secret, clock))
    scripts = party("Scripts", scope="openid sessions")
    token = scripts.tokens(browser, scope="openid sessions")["access_token"]
    listed = scripts.http.get("/api/v1/sessions?status=active",
                              headers={"Authorization": f"Bearer {token}"}).get_json()
    current = next(s for s in listed["sessions"] if s["current"])
    assert current["amr"] == ["pwd", "otp", "mfa"]
    assert current["methods"] == "Password and authenticator app"
    assert current["authenticated_at"] == current["created_at"]
    others = [s for s in listed["sessions"] if not s["current"]]
    assert others and all(s["methods"] == "Password" for s in others)


def test_sensitive_actions_need_a_recent_authentication(app, clock, ada):
    """End all sessions five minutes after signing in: confirm it's you first, then the
    confirmation page comes back and works; the session keeps its id."""
    browser = Browser(app)
    browser.login(ADA)
    sid = browser.sid
    clock.advance(minutes=6)
    asked = browser.get("/account/sessions/end-others")
    assert asked.status_code == 303 and asked.headers["Location"] == "/login/again"
    page = browser.get("/login/again")
    wrong = browser.post("/login/again", data={"csrf_token": csrf_of(page), "password": "nope"})
    assert wrong.status_code == 401
    back = browser.post("/login/again", data={"csrf_token": csrf_of(page), "password": PASSWORD})
    assert back.status_code == 303 and back.headers["Location"] == "/account/sessions/end-others"
    confirm = browser.get("/account/sessions/end-others")
    assert confirm.status_code == 200 and "End all your other sessions?" in text_of(confirm)
    assert browser.sid == sid
    assert "Confirmed it was you" in text_of(browser.get("/account/sessions"))


def test_removing_a_factor_needs_a_recent_authentication_and_ends_other_sessions(
        app, clock, enrolled):
    secret, _ = enrolled
    other = Browser(app)
    password_step(other)
    code_step(other, now_code(secret, clock))
    clock.advance(seconds=30)
    owner = Browser(app)
    password_step(owner)
    code_step(owner, now_code(secret, clock))
    page = owner.get("/account/security")
    factor_id = re.search(r'id="factor-([^"]+)"', text_of(page)).group(1)
    removed = owner.post(f"/account/security/{factor_id}/remove",
                         data={"csrf_token": csrf_of(page)})
    assert removed.status_code == 303
    assert "No second factor yet" in text_of(owner.get("/account/security"))
    assert other.get("/account/sessions").status_code == 303  # ended
    assert owner.get("/account/sessions").status_code == 200  # kept
    # Sign-in needs the password alone again; recovery codes went with the last factor.
    fresh = Browser(app)
    assert password_step(fresh).headers["Location"] == "/account/sessions"


def test_an_administrator_resets_a_users_factors_and_every_session_ends(app, clock, enrolled,
                                                                      make_user):
    secret, _ = enrolled
    make_user("root@example.com", role="admin")
    user_browser = Browser(app)
    password_step(user_browser)
    code_step(user_browser, now_code(secret, clock))
    admin = Browser(app)
    admin.login("root@example.com")
    users = text_of(admin.get("/admin/users"))
    assert "authenticator app" in users and "Reset second factors" in users
    sub = re.search(r'/admin/users/([^/"]+)/factors/reset', users).group(1)
    page = admin.get(f"/admin/users/{sub}/factors/reset")
    assert "Reset the second factors of ada@example.com?" in text_of(page)
    assert admin.post(f"/admin/users/{sub}/factors/reset",
                      data={"csrf_token": csrf_of(page)}).status_code == 303
    assert user_browser.get("/account/sessions").status_code == 303
    assert password_step(Browser(app)).headers["Location"] == "/account/sessions"
    events = [e.detail for e in audit_events(app, "factor.removed")]
    assert events == [{"all": True, "kinds": ["totp"], "sessions_ended": 2}]


def require_mfa(app, clock, *, end_password_only: bool = False) -> dict:
    from idp import policy_changes
    from idp.models import Account
    from idp.policy import SessionPolicy

    def change():
        account = db.session.scalar(sa.select(Account))
        current = SessionPolicy.of(account)
        new = SessionPolicy(current.max_duration, current.idle_timeout, current.max_concurrent,
                            current.on_limit, require_mfa=True)
        preview = policy_changes.preview(account, new, clock.now(),
                                         end_password_only=end_password_only).as_dict()
        applied = policy_changes.apply(account, new, now=clock.now(), actor="admin:test",
                                       end_password_only=end_password_only)
        db.session.commit()
        assert applied.impact.as_dict() == preview
        return preview

    with app.app_context():
        try:
            return change()
        finally:
            db.session.remove()


def test_a_required_second_factor_is_set_up_at_the_next_sign_in_before_any_session(
        app, clock, ada, party):
    impact = require_mfa(app, clock)
    assert impact["users_without_second_factor"] == 1
    photos = party("Photos")
    browser = Browser(app)
    first = password_step(browser)
    assert first.status_code == 303 and first.headers["Location"] == "/login/enrol"
    assert browser.cookie() is None
    page = browser.get("/login/enrol")
    secret = SECRET.search(text_of(page)).group(1)
    assert "Your organisation requires a second factor" in text_of(page)
    assert browser.get("/login/enrol").status_code == 200  # a reload shows the same key
    assert SECRET.search(text_of(browser.get("/login/enrol"))).group(1) == secret
    done = browser.post("/login/enrol", data={"csrf_token": csrf_of(page),
                                              "code": now_code(secret, clock)})
    assert done.status_code == 200 and len(RECOVERY.findall(text_of(done))) == 10
    assert browser.cookie() is not None
    assert "Password and authenticator app" in text_of(browser.get("/account/sessions"))
    tokens = photos.tokens(browser)
    claims = claims_of(tokens["id_token"])
    assert (claims["amr"], claims["acr"]) == (["pwd", "otp", "mfa"], "mfa")


def test_requiring_it_now_ends_the_sessions_that_signed_in_without_one(app, clock, ada):
    password_only = Browser(app)
    password_only.login(ADA)
    impact = require_mfa(app, clock, end_password_only=True)
    assert impact["sessions_ended_now"] == 1
    assert password_only.get("/account/sessions").status_code == 303
    assert "changed its session policy" in text_of(password_only.get("/login"))
