"""Passkeys, attacked: each ceremony through the provider's pages as a browser posts it,
with a software authenticator (tests/soft_authenticator.py) playing the honest user or
the attacker: a look-alike origin, a cloned authenticator, a passkey without its PIN,
a replayed answer, someone else's passkey, a disabled user.
"""

from __future__ import annotations

import cbor2
import pytest
import sqlalchemy as sa

from idp import credentials, passkeys
from idp.models import AuthFactor, LoginSession, PasskeyChallenge, User, db
from tests.compact import claims_of
from tests.conftest import PASSWORD
from tests.security.conftest import ADA, BOB, Browser, audit_events, csrf_of, text_of
from tests.security.test_credential_races import (
    WAIT,
    Background,
    Hold,
    hold_after,
    wait_for_lock_wait,
)
from tests.soft_authenticator import SoftAuthenticator

ISSUER = "http://localhost:5000"


@pytest.fixture
def settings(settings):
    return {**settings, "ISSUER": ISSUER}


def options(browser: Browser, purpose: str, page: str):
    """What passkey.js does first: ask for the ceremony's options with the page's token."""
    token = csrf_of(browser.get(page))
    response = browser.post(f"/passkey/options/{purpose}", data={"csrf_token": token})
    return token, response


def add_passkey(browser: Browser, authenticator: SoftAuthenticator, label: str = "Laptop"):
    token, response = options(browser, "register", "/account/security/passkey")
    assert response.status_code == 200, text_of(response)
    assert response.headers["Cache-Control"] == "no-store"
    created = response.get_json()
    assert created["rp"]["id"] == "localhost"
    assert created["authenticatorSelection"]["residentKey"] == "required"
    return browser.post("/account/security/passkey", data={
        "csrf_token": token, "label": label, "credential": authenticator.create(created)})


def passkey_sign_in(browser: Browser, authenticator: SoftAuthenticator, **answer):
    token, response = options(browser, "sign_in", "/login")
    assert response.status_code == 200, text_of(response)
    request = response.get_json()
    assert request["userVerification"] == "required"
    assert not request.get("allowCredentials")  # discoverable: no email typed
    return browser.post("/login/passkey", data={
        "csrf_token": token, "credential": authenticator.get(request, **answer)})


def session_row(app, sid: str) -> LoginSession:
    with app.app_context():
        row = db.session.get(LoginSession, sid)
        db.session.expunge(row)
        return row


@pytest.fixture
def enrolled(app, ada):
    """Ada, with a passkey on a software authenticator."""
    owner = Browser(app)
    owner.login(ADA)
    authenticator = SoftAuthenticator()
    added = add_passkey(owner, authenticator)
    assert added.status_code == 200 and "shown only now" in text_of(added)  # recovery codes
    return owner, authenticator


def test_a_passkey_added_on_the_account_page_signs_in_alone(app, enrolled, party):
    owner, authenticator = enrolled
    page = text_of(owner.get("/account/security"))
    assert "Laptop" in page and "not used yet" in page
    browser = Browser(app)
    assert 'data-passkey="get"' in text_of(browser.get("/login"))
    done = passkey_sign_in(browser, authenticator)
    assert done.status_code == 303, text_of(done)
    assert session_row(app, browser.sid).amr == ["hwk", "mfa"]
    assert "Passkey" in text_of(browser.get("/account/sessions"))
    assert "last used" in text_of(owner.get("/account/security"))
    # Stored: a public key (COSE EC2, no private part) and a counter, no secret.
    with app.app_context():
        stored = db.session.scalar(sa.select(AuthFactor))
        key = cbor2.loads(stored.public_key)
        assert stored.secret_sealed is None and key[1] == 2 and -4 not in key
        assert stored.sign_count == 1
    # A relying party sees multi-factor, the passkey method and when.
    tokens = party("Photos").tokens(browser)
    claims = claims_of(tokens["id_token"])
    assert claims["amr"] == ["hwk", "mfa"] and claims["acr"] == "mfa"


def test_a_synced_passkey_is_a_software_key(app, ada):
    owner = Browser(app)
    owner.login(ADA)
    synced = SoftAuthenticator(synced=True)
    assert add_passkey(owner, synced).status_code == 200
    browser = Browser(app)
    assert passkey_sign_in(browser, synced).status_code == 303
    assert session_row(app, browser.sid).amr == ["swk", "mfa"]


def test_a_look_alike_site_cannot_use_the_passkey(app, enrolled):
    """Phishing: the browser names the page's real origin in what the passkey signs, and
    the authenticator scopes the key to the real RP ID; either mismatch is refused."""
    _, authenticator = enrolled
    for answer in ({"origin": "https://localhost-login.example"},
                   {"rp_id": "localhost-login.example"}):
        browser = Browser(app)
        refused = passkey_sign_in(browser, authenticator, **answer)
        assert refused.status_code == 401 and browser.cookie() is None
        assert "That passkey was not accepted" in text_of(refused)


def test_an_answer_is_accepted_once(app, enrolled):
    _, authenticator = enrolled
    browser = Browser(app)
    token, response = options(browser, "sign_in", "/login")
    answer = authenticator.get(response.get_json())
    first = browser.post("/login/passkey", data={"csrf_token": token, "credential": answer})
    assert first.status_code == 303
    # The same answer again, from another browser that started its own ceremony.
    thief = Browser(app)
    token, _ = options(thief, "sign_in", "/login")
    replayed = thief.post("/login/passkey", data={"csrf_token": token, "credential": answer})
    assert replayed.status_code == 401 and thief.cookie() is None


def test_a_cloned_authenticator_is_refused(app, enrolled):
    """The signature counter must move forward; a copy of the key that replays an older
    count is a clone."""
    _, authenticator = enrolled
    assert passkey_sign_in(Browser(app), authenticator).status_code == 303
    assert passkey_sign_in(Browser(app), authenticator).status_code == 303
    clone = passkey_sign_in(Browser(app), authenticator, sign_count=1)
    assert clone.status_code == 401


def test_a_passkey_without_its_pin_is_a_second_factor_only(app, ada, clock):
    owner = Browser(app)
    owner.login(ADA)
    key = SoftAuthenticator(verifies_user=False)  # a security key with no PIN set
    assert add_passkey(owner, key).status_code == 200
    alone = passkey_sign_in(Browser(app), key)
    assert alone.status_code == 401
    browser = Browser(app)
    page = browser.get("/login")
    step = browser.post("/login", data={"csrf_token": csrf_of(page), "email": ADA,
                                        "password": PASSWORD})
    assert step.status_code == 303 and step.headers["Location"] == "/login/code"
    token, response = options(browser, "second_factor", "/login/code")
    request = response.get_json()
    assert request["userVerification"] == "preferred"
    assert [c["id"] for c in request["allowCredentials"]] == [
        passkeys_ids(app)[0]]
    done = browser.post("/login/code/passkey", data={"csrf_token": token,
                                                     "credential": key.get(request)})
    assert done.status_code == 303, text_of(done)
    assert session_row(app, browser.sid).amr == ["pwd", "hwk", "mfa"]
    assert "Password and passkey" in text_of(browser.get("/account/sessions"))


def passkeys_ids(app) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(sa.select(AuthFactor.credential_id)
                                       .where(AuthFactor.kind == "passkey")))


def test_someone_elses_passkey_is_not_a_second_factor(app, enrolled, make_user):
    """Bob knows his own password and holds Ada's passkey: not enough to be Bob twice,
    and Ada's passkey never stands in for Bob's second factor."""
    _, adas = enrolled
    make_user(BOB)
    bobs_owner = Browser(app)
    bobs_owner.login(BOB)
    bobs = SoftAuthenticator()
    assert add_passkey(bobs_owner, bobs).status_code == 200
    browser = Browser(app)
    page = browser.get("/login")
    browser.post("/login", data={"csrf_token": csrf_of(page), "email": BOB, "password": PASSWORD})
    token, response = options(browser, "second_factor", "/login/code")
    request = {**response.get_json(), "allowCredentials": []}
    refused = browser.post("/login/code/passkey", data={"csrf_token": token,
                                                        "credential": adas.get(request)})
    assert refused.status_code == 401 and browser.cookie() is None
    events = audit_events(app, "login.failed")
    assert events[-1].detail.get("step") == "second_factor"


def test_a_disabled_users_passkey_opens_nothing(app, enrolled, clock):
    _, authenticator = enrolled
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == ADA))
        credentials.disable(user, now=clock.now(), actor="admin:test")
        db.session.commit()
    browser = Browser(app)
    assert passkey_sign_in(browser, authenticator).status_code == 401
    assert browser.cookie() is None


def test_removing_a_passkey_ends_the_other_sessions_and_it_signs_in_no_more(app, enrolled):
    owner, authenticator = enrolled
    elsewhere = Browser(app)
    assert passkey_sign_in(elsewhere, authenticator).status_code == 303
    with app.app_context():
        factor_id = db.session.scalar(sa.select(AuthFactor.id))
    page = owner.get("/account/security")
    removed = owner.post(f"/account/security/{factor_id}/remove",
                         data={"csrf_token": csrf_of(page)})
    assert removed.status_code == 303
    assert session_row(app, elsewhere.sid).end_reason == "factors_changed"
    assert passkey_sign_in(Browser(app), authenticator).status_code == 401


def test_confirming_it_is_you_with_a_passkey(app, enrolled, clock):
    owner, authenticator = enrolled
    clock.advance(minutes=10)  # older than IDP_REAUTHENTICATE_AFTER
    asked = owner.get("/account/sessions/end-others")
    assert asked.status_code == 303 and asked.headers["Location"] == "/login/again"
    page = text_of(owner.get("/login/again"))
    assert "Use your passkey" in page
    token, response = options(owner, "confirm", "/login/again")
    assert response.get_json()["userVerification"] == "required"
    done = owner.post("/login/again/passkey", data={
        "csrf_token": token, "credential": authenticator.get(response.get_json())})
    assert done.status_code == 303
    assert owner.get("/account/sessions/end-others").status_code == 200
    row = session_row(app, owner.sid)
    assert row.amr == ["hwk", "mfa"] and row.authenticated_at == clock.now()


def test_adding_a_passkey_needs_a_recent_authentication(app, ada, clock):
    owner = Browser(app)
    owner.login(ADA)
    clock.advance(minutes=10)
    assert owner.get("/account/security/passkey").headers["Location"] == "/login/again"
    token = csrf_of(owner.get("/account/security"))
    refused = owner.post("/passkey/options/register", data={"csrf_token": token})
    assert refused.status_code == 401 and refused.get_json()["error"] == "invalid_request"


def test_ceremony_options_need_the_pages_token_and_are_counted(app):
    browser = Browser(app)
    assert browser.post("/passkey/options/sign_in").status_code == 400
    assert browser.post("/passkey/options/nonsense", data={
        "csrf_token": csrf_of(browser.get("/login"))}).status_code == 400
    for _ in range(60):
        assert options(browser, "sign_in", "/login")[1].status_code == 200
    assert options(browser, "sign_in", "/login")[1].status_code == 429


def test_garbage_answers_get_the_login_page_never_a_500(app, enrolled):
    browser = Browser(app)
    for garbage in ("x", "{}", "[]", '{"id": 5}', '{"id": "' + "A" * 5000 + '"}', "null",
                    '{"id": "abc", "response": []}', "[" * 20000 + "]" * 20000):
        token, _ = options(browser, "sign_in", "/login")
        response = browser.post("/login/passkey", data={"csrf_token": token,
                                                        "credential": garbage})
        assert response.status_code == 401, (garbage, response.status_code)


def test_two_answers_racing_with_one_ceremony_open_one_session(app, enrolled, backend,
                                                              monkeypatch):
    """The same answer posted at once by two browsers that share the ceremony (a stolen
    cookie), on two workers: the first spends the challenge and is held before it
    commits; the second waits for that row and then finds it gone. One session opens."""
    if backend.kind != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite's single writer serialises the two")
    _, authenticator = enrolled
    first = Browser(app)
    token, response = options(first, "sign_in", "/login")
    answer = authenticator.get(response.get_json())
    second = Browser(app)
    second.http.set_cookie("idp", first.cookie("idp"))
    hold = Hold("first")
    hold_after(monkeypatch, passkeys, "_spend", hold)
    post = {"csrf_token": token, "credential": answer}
    one = Background("first", lambda: first.post("/login/passkey", data=post))
    assert hold.reached.wait(WAIT)
    two = Background("second", lambda: second.post("/login/passkey", data=post))
    wait_for_lock_wait(app)
    hold.release()
    assert sorted([one.result().status_code, two.result().status_code]) == [303, 401]
    with app.app_context():
        opened = db.session.scalar(sa.select(sa.func.count()).select_from(LoginSession)
                                   .where(LoginSession.ended_at.is_(None)))
        assert opened == 2  # the owner's, and one of the two
        assert db.session.scalar(sa.select(sa.func.count()).select_from(PasskeyChallenge)) == 0


def test_garbage_new_passkeys_get_the_page_again_never_a_500(app, ada):
    owner = Browser(app)
    owner.login(ADA)
    for garbage in ("x", "{}", '{"id": "a", "response": {}}', "[" * 20000 + "]" * 20000):
        token, response = options(owner, "register", "/account/security/passkey")
        assert response.status_code == 200
        refused = owner.post("/account/security/passkey", data={
            "csrf_token": token, "label": "x", "credential": garbage})
        assert refused.status_code == 400, (garbage[:20], refused.status_code)
        assert "could not be verified" in text_of(refused)


def test_a_required_second_factor_can_be_a_passkey_made_at_sign_in(app, ada, clock):
    from tests.security.test_second_factor import require_mfa

    require_mfa(app, clock)
    browser = Browser(app)
    page = browser.get("/login")
    step = browser.post("/login", data={"csrf_token": csrf_of(page), "email": ADA,
                                        "password": PASSWORD})
    assert step.headers["Location"] == "/login/enrol"
    token, response = options(browser, "register", "/login/enrol")
    assert response.status_code == 200, text_of(response)
    assert browser.cookie() is None  # no session before the factor exists
    done = browser.post("/login/enrol/passkey", data={
        "csrf_token": token, "label": "Phone",
        "credential": SoftAuthenticator(synced=True).create(response.get_json())})
    assert done.status_code == 200 and "shown only now" in text_of(done)
    assert session_row(app, browser.sid).amr == ["pwd", "swk", "mfa"]
    assert "Password and passkey" in text_of(browser.get("/account/sessions"))
    # Without a right password first, nobody gets a registration ceremony for Ada.
    stranger = Browser(app)
    assert options(stranger, "register", "/login")[1].status_code == 401
