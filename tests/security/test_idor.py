"""Insecure direct object references (OWASP ASVS V4.2.1, V4.1.3): a session id of another
user, of the same account or another one, answers exactly like an id that does not
exist (404) on the pages and the API, and changes nothing; an administrator of one
account cannot see or end the sessions of another account's users, nor lock, unlock,
disable or enable them; members see no admin surface at all."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from idp import passwords
from idp.models import LoginSession, User, db
from tests.security.conftest import ADA, BOB, Browser, csrf_of, read, session_state

GUS = "gus@globex.test"
HAL = "hal@globex.test"


class Org:
    def __init__(self, app, party, browsers: dict[str, Browser]):
        self.app = app
        self.b = browsers
        self.sid = {email: b.sid for email, b in browsers.items()}
        self.sub = read(app, lambda: dict(db.session.execute(sa.select(User.email, User.sub)).all()))
        self.scripts = party("Scripts", scope="openid sessions admin")
        self._tokens: dict[tuple[str, str], str] = {}

    def token(self, email: str, scope: str = "openid sessions") -> str:
        key = (email, scope)
        if key not in self._tokens:
            self._tokens[key] = self.scripts.tokens(self.b[email], scope=scope)["access_token"]
        return self._tokens[key]

    def api(self, email: str, method: str, path: str, scope: str = "openid sessions"):
        return self.scripts.http.open(f"/api/v1{path}", method=method, headers={
            "Authorization": f"Bearer {self.token(email, scope)}"})

    def untouched(self) -> bool:
        return all(session_state(self.app, sid) == (None, None) for sid in self.sid.values())


@pytest.fixture
def org(app, make_account, make_user, party):
    acme, globex = make_account("acme"), make_account("globex")
    make_user(ADA, account_id=acme, role="owner")
    make_user(BOB, account_id=acme)
    make_user(GUS, account_id=globex, role="owner")
    make_user(HAL, account_id=globex)
    browsers = {}
    for email in (ADA, BOB, GUS, HAL):
        browsers[email] = Browser(app)
        browsers[email].login(email)
    return Org(app, party, browsers)


def test_another_users_session_is_404_on_the_pages(org):
    ada = org.b[ADA]
    unknown = passwords.new_id()
    baseline = ada.get(f"/account/sessions/{unknown}/end")
    assert baseline.status_code == 404
    for victim in (BOB, GUS, HAL):
        sid = org.sid[victim]
        page = ada.get(f"/account/sessions/{sid}/end")
        assert page.status_code == 404, victim
        assert page.get_data() == baseline.get_data()
        assert ada.post(f"/account/sessions/{sid}/end",
                        data={"csrf_token": ada.csrf()}).status_code == 404
    assert org.untouched()


def test_another_users_session_is_404_in_the_api(org):
    unknown = org.api(ADA, "GET", f"/sessions/{passwords.new_id()}")
    assert unknown.status_code == 404
    for victim in (BOB, GUS, HAL):
        sid = org.sid[victim]
        for method in ("GET", "DELETE"):
            response = org.api(ADA, method, f"/sessions/{sid}")
            assert response.status_code == 404, (victim, method)
            assert response.get_json() == unknown.get_json()
    assert org.untouched()


def test_ending_all_through_the_api_touches_only_the_callers_sessions(org):
    response = org.api(ADA, "DELETE", "/sessions?scope=others")
    assert response.status_code == 200
    listed = {s["id"] for s in org.api(ADA, "GET", "/sessions").get_json()["sessions"]}
    adas = set(read(org.app, lambda: db.session.scalars(
        sa.select(LoginSession.id).join(User, User.id == LoginSession.user_id)
        .where(User.email == ADA)).all()))
    assert listed and listed <= adas
    assert all(session_state(org.app, org.sid[e]) == (None, None) for e in (BOB, GUS, HAL))


def test_an_admin_cannot_reach_another_accounts_users_on_the_pages(org):
    gus = org.b[GUS]
    bob_sub, bob_sid = org.sub[BOB], org.sid[BOB]
    token = gus.csrf()
    users = gus.get("/admin/users").get_data(as_text=True)
    assert HAL in users and BOB not in users and ADA not in users
    gets = [f"/admin/users/{bob_sub}/sessions", f"/admin/users/{bob_sub}/sessions?view=active",
            f"/admin/users/{bob_sub}/sessions/{bob_sid}/end",
            f"/admin/users/{bob_sub}/sessions/end-all", f"/admin/users/{bob_sub}/disable",
            # the admin's own user with another account's session id
            f"/admin/users/{org.sub[HAL]}/sessions/{bob_sid}/end"]
    for url in gets:
        assert gus.get(url).status_code == 404, url
    posts = gets[2:] + [f"/admin/users/{bob_sub}/unlock", f"/admin/users/{bob_sub}/enable"]
    for url in posts:
        assert gus.post(url, data={"csrf_token": token}).status_code == 404, url
    assert org.untouched()
    assert read(org.app, lambda: db.session.scalar(
        sa.select(User.disabled_at).where(User.email == BOB))) is None


def test_an_admin_cannot_clear_another_accounts_lockout(org):
    guard = org.app.extensions["idp"].lockout
    for key in guard._keys(BOB)[:2]:  # reserved and failed: locked
        guard.store.incr(key, guard.window, guard.max_failures)
    gus = org.b[GUS]
    assert gus.post(f"/admin/users/{org.sub[BOB]}/unlock",
                    data={"csrf_token": gus.csrf()}).status_code == 404
    assert guard.locked(BOB)


def test_an_admin_cannot_reach_another_accounts_users_in_the_api(org):
    admin = "openid sessions admin"
    bob_sub, bob_sid = org.sub[BOB], org.sid[BOB]
    users = org.api(GUS, "GET", "/admin/users", admin).get_json()["users"]
    assert {u["email"] for u in users} == {GUS, HAL}
    for method, path in (("GET", f"/admin/users/{bob_sub}/sessions"),
                         ("DELETE", f"/admin/users/{bob_sub}/sessions/{bob_sid}"),
                         ("DELETE", f"/admin/users/{bob_sub}/sessions"),
                         ("DELETE", f"/admin/users/{org.sub[HAL]}/sessions/{bob_sid}")):
        response = org.api(GUS, method, path, admin)
        assert response.status_code == 404, (method, path)
        assert response.get_json()["error"] == "not_found"
    assert org.untouched()


def test_members_see_no_admin_surface(org):
    bob = org.b[BOB]
    for url in ("/admin/users", "/admin/settings/sessions", "/admin/logout-deliveries",
                f"/admin/users/{org.sub[ADA]}/sessions"):
        assert bob.get(url).status_code == 404, url
    assert bob.post(f"/admin/users/{org.sub[ADA]}/sessions/end-all",
                    data={"csrf_token": bob.csrf()}).status_code == 404
    admin = "openid sessions admin"  # asked for; a member is not issued "admin"
    for method, path in (("GET", "/admin/users"), ("GET", "/account/session-policy"),
                         ("PUT", "/account/session-policy"),
                         ("DELETE", f"/admin/users/{org.sub[ADA]}/sessions")):
        response = org.api(BOB, method, path, admin)
        assert response.status_code == 403, (method, path)
        assert response.get_json()["error"] == "insufficient_scope"
    assert org.untouched()


def test_a_sessions_token_is_not_an_admin_token(org):
    response = org.api(ADA, "GET", "/admin/users")
    assert response.status_code == 403 and response.get_json()["error"] == "insufficient_scope"


def test_the_limit_page_cannot_end_someone_elses_session(app, org, make_account, make_user):
    strict = make_account("strict", max_concurrent_sessions=1, on_concurrent_limit="deny")
    make_user("carol@example.com", account_id=strict)
    Browser(app).login("carol@example.com")
    second = Browser(app)
    page = second.login("carol@example.com", expect=409)
    token = csrf_of(page)
    for victim in (ADA, BOB, GUS):
        response = second.post(f"/login/limit/{org.sid[victim]}/end", data={"csrf_token": token})
        assert response.status_code == 404, victim
    assert org.untouched()
