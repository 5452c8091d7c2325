"""The administrators' JSON API over real HTTP (scope ``admin``), and the operator's
``idp set-policy``: reading and changing the policy, dry runs, bounds, audit, and
the users' sessions, never across accounts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import jsonschema
import pytest
import sqlalchemy as sa

from idp import cli, sessions
from idp.models import Account, AuditEvent, LoginSession, Role, User, db
from tests.compact import claims_of
from tests.flows import obtain_tokens, start_session
from tests.relying_party import Browser, RelyingParty

OPENAPI = json.loads((Path(__file__).resolve().parents[2] / "idp" / "openapi.json").read_text())
POLICY = "/account/session-policy"


def conforms(body: dict, schema_name: str) -> None:
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": OPENAPI["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def sid(token: dict) -> str:
    return claims_of(token["access_token"])["sid"]


def policy_state(app, account_id: int) -> tuple:
    with app.app_context():
        a = db.session.get(Account, account_id)
        changed = db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent).where(
            AuditEvent.event == "policy.changed", AuditEvent.account_id == account_id))
        return (a.max_session_duration, a.idle_timeout, a.max_concurrent_sessions,
                a.on_concurrent_limit, a.policy_updated_at, changed)


def session_row(app, session_id: str) -> LoginSession:
    with app.app_context():
        row = db.session.get(LoginSession, session_id)
        db.session.expunge(row)
        return row


def iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass
class Org:
    app: object
    live: object
    rp: RelyingParty
    acme: int
    globex: int
    subs: dict[str, str]

    def token(self, email: str, scope: str = "openid admin") -> dict:
        return obtain_tokens(self.rp, Browser(self.live.url), email, scope=scope)

    def api(self, token: dict | str) -> httpx.Client:
        value = token if isinstance(token, str) else token["access_token"]
        return httpx.Client(base_url=f"{self.live.url}/api/v1", timeout=10,
                            headers={"Authorization": f"Bearer {value}"})


@pytest.fixture
def org(app, live_server, make_account, make_user, make_client) -> Org:
    acme = make_account("acme")
    globex = make_account("globex")
    people = {
        "olive@acme.test": (acme, "owner"), "adam@acme.test": (acme, "admin"),
        "mia@acme.test": (acme, "member"), "ada@acme.test": (acme, "member"),
        "gina@globex.test": (globex, "admin"), "gus@globex.test": (globex, "member"),
    }
    subs = {email: make_user(email, account_id=account, role=role)
            for email, (account, role) in people.items()}
    client = make_client("Console", scope="openid email sessions admin")
    rp = RelyingParty(live_server.url, client.client_id, client.client_secret, client.redirect_uri)
    return Org(app, live_server, rp, acme, globex, subs)


# -- reading and changing the policy -----------------------------------------------------------


def test_owner_and_admin_read_the_policy_with_its_bounds(org):
    for email in ("olive@acme.test", "adam@acme.test"):
        with org.api(org.token(email)) as http:
            response = http.get(POLICY)
            assert response.status_code == 200
            assert response.headers["cache-control"] == "no-store"
            assert response.json() == {
                "account": "acme", "max_duration": 86400, "idle_timeout": 7200,
                "max_concurrent": None, "on_limit": "deny", "require_mfa": False, "require_notices": False,
                "updated_at": None, "bounds": {"max_duration": [300, 2592000], "idle_timeout": [300, 86400],
                           "max_concurrent": [1, 1000]},
            }


def set_role(app, email: str, role: Role) -> None:
    with app.app_context():
        db.session.scalar(sa.select(User).where(User.email == email)).role = role
        db.session.commit()


def test_members_get_not_found_even_with_the_admin_scope(org):
    """Members are never issued the admin scope; one demoted while holding an admin-scoped
    token finds the administration gone with the role."""
    ada = org.token("ada@acme.test", "openid sessions")
    before = policy_state(org.app, org.acme)
    assert "admin" not in org.token("mia@acme.test")["scope"].split()
    set_role(org.app, "mia@acme.test", Role.ADMIN)
    held = org.token("mia@acme.test")
    assert "admin" in held["scope"].split()
    set_role(org.app, "mia@acme.test", Role.MEMBER)
    with org.api(held) as http:
        responses = [
            http.get(POLICY),
            http.put(POLICY, json={"max_duration": "1h", "idle_timeout": "1h"}),
            http.put(POLICY, params={"dry_run": "true"}, json={"max_concurrent": 1}),
            http.get("/admin/users"),
            http.get(f"/admin/users/{org.subs['ada@acme.test']}/sessions"),
            http.delete(f"/admin/users/{org.subs['ada@acme.test']}/sessions/{sid(ada)}"),
            http.delete(f"/admin/users/{org.subs['ada@acme.test']}/sessions"),
        ]
    for response in responses:
        assert response.status_code == 404, (response.request.url, response.text)
        assert response.json()["error"] == "not_found"
        conforms(response.json(), "Error")
    assert policy_state(org.app, org.acme) == before
    assert session_row(org.app, sid(ada)).ended_at is None
    assert org.rp.introspect(ada["access_token"]).json()["active"] is True


def test_the_admin_scope_is_required(org):
    before = policy_state(org.app, org.acme)
    plain = org.token("adam@acme.test", "openid sessions")
    with org.api(plain) as http:
        for response in (http.get(POLICY), http.put(POLICY, json={"max_duration": "1h"}),
                         http.get("/admin/users")):
            assert response.status_code == 403
            assert response.json()["error"] == "insufficient_scope"
            assert 'scope="admin"' in response.headers["www-authenticate"]
    anonymous = httpx.put(f"{org.live.url}/api/v1{POLICY}", json={"max_duration": "1h"})
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_token"
    assert policy_state(org.app, org.acme) == before


def test_put_changes_only_the_fields_sent_and_every_change_is_audited(org, clock):
    adam = org.token("adam@acme.test")
    with org.api(adam) as http:
        response = http.put(POLICY, json={"max_duration": "8h", "max_concurrent": 3,
                                          "on_limit": "end_oldest"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["dry_run"] is False
        assert body["changes"] == {"max_duration": [86400, 28800], "max_concurrent": [None, 3],
                                   "on_limit": ["deny", "end_oldest"]}
        assert body["policy"]["max_duration"] == 28800 and body["policy"]["idle_timeout"] == 7200
        assert body["policy"]["updated_at"] == iso(clock.now())
        first = clock.now()
        clock.advance(minutes=5)
        response = http.put(POLICY, json={"idle_timeout": 1800, "max_concurrent": None})
        assert response.json()["changes"] == {"idle_timeout": [7200, 1800],
                                              "max_concurrent": [3, None]}
        nothing = http.put(POLICY, json={"idle_timeout": "30m"})
        assert nothing.status_code == 200 and nothing.json()["changes"] == {}
        assert http.get(POLICY).json()["updated_at"] == iso(clock.now())
    assert policy_state(org.app, org.acme) == (28800, 1800, None, "end_oldest", clock.now(), 2)
    with org.app.app_context():
        events = db.session.scalars(sa.select(AuditEvent).where(
            AuditEvent.event == "policy.changed").order_by(AuditEvent.id)).all()
        assert [(e.at, e.account_id, e.actor, e.ip, e.detail) for e in events] == [
            (first, org.acme, f"admin:{org.subs['adam@acme.test']}", "127.0.0.1",
             {"changes": {"max_duration": [86400, 28800], "max_concurrent": [None, 3],
                          "on_limit": ["deny", "end_oldest"]}}),
            (clock.now(), org.acme, f"admin:{org.subs['adam@acme.test']}", "127.0.0.1",
             {"changes": {"idle_timeout": [7200, 1800], "max_concurrent": [3, None]}}),
        ]
    # globex's policy never moved.
    assert policy_state(org.app, org.globex)[:5] == (86400, 7200, None, "deny", None)


INVALID = [
    ({"max_duration": 299}, {"max_duration": "must be between 5 min and 720 h"}),
    ({"max_duration": "721h"}, {"max_duration": "must be between 5 min and 720 h"}),
    ({"max_duration": "forever"}, {"max_duration": "not a duration"}),
    ({"max_duration": True}, {"max_duration": "not a duration"}),
    ({"idle_timeout": "4m"}, {"idle_timeout": "must be between 5 min and 24 h"}),
    ({"idle_timeout": "25h"}, {"idle_timeout": "must be between 5 min and 24 h"}),
    ({"max_duration": "1h"}, {"idle_timeout": "must not be longer than the maximum session duration"}),
    ({"max_duration": "3h", "idle_timeout": "4h"},
     {"idle_timeout": "must not be longer than the maximum session duration"}),
    ({"max_concurrent": 0}, {"max_concurrent": "must be between 1 and 1000"}),
    ({"max_concurrent": 1001}, {"max_concurrent": "must be between 1 and 1000"}),
    ({"max_concurrent": "two"}, {"max_concurrent": "must be a whole number or 'unlimited'"}),
    ({"max_concurrent": 2.5}, {"max_concurrent": "must be a whole number or 'unlimited'"}),
    ({"on_limit": "block"}, {"on_limit": "must be 'deny' or 'end_oldest'"}),
    ({"max_duration": "1m", "idle_timeout": "1m", "max_concurrent": -1, "on_limit": None},
     {"max_duration": "must be between 5 min and 720 h",
      "idle_timeout": "must be between 5 min and 24 h",
      "max_concurrent": "must be between 1 and 1000", "on_limit": "must be 'deny' or 'end_oldest'"}),
]


def test_out_of_bounds_values_get_field_errors_and_change_nothing(org):
    before = policy_state(org.app, org.acme)
    with org.api(org.token("olive@acme.test")) as http:
        for body, fields in INVALID:
            for params in ({}, {"dry_run": "true"}):
                response = http.put(POLICY, params=params, json=body)
                assert response.status_code == 400, (body, response.text)
                answer = response.json()
                assert answer["error"] == "invalid_policy", body
                assert set(answer["fields"]) == set(fields), (body, answer)
                for name, message in fields.items():
                    assert message in answer["fields"][name], (body, answer)
        for raw in ("[1, 2]", "not json", '"8h"'):
            response = http.put(POLICY, content=raw, headers={"Content-Type": "application/json"})
            assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert policy_state(org.app, org.acme) == before


def test_a_number_too_large_to_represent_is_a_field_error_not_a_server_error(org):
    before = policy_state(org.app, org.acme)
    with org.api(org.token("olive@acme.test")) as http:
        for body in ({"max_duration": 10**20}, {"max_duration": "99999999999h"},
                     {"idle_timeout": 10**20}):
            response = http.put(POLICY, json=body)
            assert response.status_code == 400, (body, response.status_code, response.text)
            assert response.json()["error"] == "invalid_policy"
    assert policy_state(org.app, org.acme) == before


class TestTheOlderStricterProductByConfigAlone:
    """SESSION_DURATION_MAX=24h and IDLE_TIMEOUT_MAX=2h, as the product used to ship."""

    @pytest.fixture
    def settings(self, settings):
        return {**settings, "SESSION_DURATION_MAX": "24h", "IDLE_TIMEOUT_MAX": "2h"}

    def test_48h_is_refused_by_the_api(self, org):
        before = policy_state(org.app, org.acme)
        with org.api(org.token("adam@acme.test")) as http:
            assert http.get(POLICY).json()["bounds"] == {
                "max_duration": [300, 86400], "idle_timeout": [300, 7200],
                "max_concurrent": [1, 1000]}
            response = http.put(POLICY, json={"max_duration": "48h"})
            assert response.status_code == 400
            assert response.json()["fields"] == {"max_duration": "must be between 5 min and 24 h"}
            response = http.put(POLICY, json={"idle_timeout": "3h"})
            assert response.json()["fields"] == {"idle_timeout": "must be between 5 min and 2 h"}
            assert policy_state(org.app, org.acme) == before
            assert http.put(POLICY, json={"max_duration": "24h"}).status_code == 200
            assert http.put(POLICY, json={"max_duration": 43200}).status_code == 200
        assert policy_state(org.app, org.acme)[:2] == (43200, 7200)

    def test_48h_is_refused_by_the_cli(self, app, make_account, monkeypatch, capsys):
        account = make_account("acme")
        before = policy_state(app, account)
        code, out, err = run_cli(monkeypatch, capsys, app, "set-policy", "--account", "acme",
                                 "--max-duration", "48h", "--json")
        assert code == 1 and out == ""
        assert err.strip() == "idp: invalid policy: max_duration: must be between 5 min and 24 h"
        assert policy_state(app, account) == before


# -- dry run -----------------------------------------------------------------------------------


def seed(app, clock) -> dict[str, list[str]]:
    """ada: a 5 h old busy session and a 1 h old one; mia: three fresh ones."""
    origin = sessions.Origin(ip="203.0.113.9", device_label="Firefox on Linux")
    now = clock.now()
    with app.app_context():
        users = {u.email: u for u in db.session.scalars(sa.select(User))}
        old = start_session(users["ada@acme.test"], origin, now=now - timedelta(hours=5)).session
        old.last_active_at = old.updated_at = now - timedelta(minutes=10)
        recent = start_session(users["ada@acme.test"], origin, now=now - timedelta(hours=1)).session
        mia = [start_session(users["mia@acme.test"], origin, now=now - timedelta(minutes=m)).session
               for m in (30, 20, 10)]
        db.session.commit()
        return {"ada": [old.id, recent.id], "mia": [s.id for s in mia]}


def stamps(app) -> dict[str, tuple]:
    with app.app_context():
        return {s.id: (s.updated_at, s.ended_at) for s in db.session.scalars(sa.select(LoginSession))}


def test_dry_run_reports_the_impact_and_changes_nothing(org, clock):
    ids = seed(org.app, clock)
    adam = org.token("adam@acme.test")  # one more active session in acme
    before, rows = policy_state(org.app, org.acme), stamps(org.app)
    clock.advance(seconds=30)
    proposal = {"max_duration": "4h", "max_concurrent": 2}
    expected = {"sessions_ended_now": 1, "users_with_sessions_ended_now": 1,
                "users_over_concurrent_limit": 1, "sessions_whose_deadlines_move": 6,
                "expired_sessions_closed": 0, "users_without_second_factor": 0}
    with org.api(adam) as http:
        for flag in ("true", "1", "yes"):
            response = http.put(POLICY, params={"dry_run": flag}, json=proposal)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["dry_run"] is True and body["changes"] == {}
            assert body["impact"] == expected
            assert body["policy"]["max_duration"] == 86400
            assert body["policy"]["max_concurrent"] is None
        assert policy_state(org.app, org.acme) == before
        assert stamps(org.app) == rows

        # The real change reports the same impact, and moves the deadlines it said it would.
        response = http.put(POLICY, params={"dry_run": "false"}, json=proposal)
        assert response.json()["dry_run"] is False
        assert response.json()["impact"] == expected
    changed = stamps(org.app)
    # The save ended the one session past the new maximum (ada's 5 h old one), at once...
    assert changed[ids["ada"][0]] == (clock.now(), clock.now())
    # ...moved the deadlines of the others, and lowering the limit ended nothing.
    for session_id in ids["ada"][1:] + ids["mia"]:
        assert changed[session_id] == (clock.now(), None), session_id
    assert [ended for _, ended in changed.values()].count(None) == len(changed) - 1


# -- users and their sessions ----------------------------------------------------------------


def test_admin_lists_the_accounts_users_and_their_sessions(org):
    ada_laptop = org.token("ada@acme.test", "openid sessions")
    org.token("ada@acme.test", "openid sessions")
    adam = org.token("adam@acme.test")
    with org.api(adam) as http:
        users = http.get("/admin/users").json()["users"]
        assert [(u["email"], u["role"], u["active_sessions"]) for u in users] == [
            ("ada@acme.test", "member", 2), ("adam@acme.test", "admin", 1),
            ("mia@acme.test", "member", 0), ("olive@acme.test", "owner", 0)]
        assert {u["sub"] for u in users} == {org.subs[e] for e in (
            "ada@acme.test", "adam@acme.test", "mia@acme.test", "olive@acme.test")}
        listing = http.get(f"/admin/users/{org.subs['ada@acme.test']}/sessions")
        assert listing.status_code == 200
        conforms(listing.json(), "SessionList")
        found = listing.json()["sessions"]
        assert len(found) == 2 and {s["status"] for s in found} == {"active"}
        assert sid(ada_laptop) in {s["id"] for s in found}
        assert all(s["current"] is False for s in found)  # the admin's session is not ada's
        assert found[0]["apps"][0]["name"] == "Console"
        active = http.get(f"/admin/users/{org.subs['ada@acme.test']}/sessions",
                          params={"status": "active"}).json()["sessions"]
        assert len(active) == 2
        bad = http.get(f"/admin/users/{org.subs['ada@acme.test']}/sessions",
                       params={"status": "weird"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
        bad = http.get(f"/admin/users/{org.subs['ada@acme.test']}/sessions",
                       params={"cursor": "garbage"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_cursor"


def test_admin_ends_one_session_and_everything_under_it(org):
    laptop = org.token("ada@acme.test", "openid sessions")
    phone = org.token("ada@acme.test", "openid sessions")
    adam = org.token("adam@acme.test")
    ada = org.subs["ada@acme.test"]
    with org.api(adam) as http:
        response = http.delete(f"/admin/users/{ada}/sessions/{sid(phone)}")
        assert response.status_code == 200, response.text
        body = response.json()
        conforms(body, "EndedOne")
        assert body["ended"] is True and body["message"] == "Session ended."
        assert body["session"]["status"] == "ended"
        assert body["session"]["end_reason"] == "ended_by_admin"
        assert body["session"]["end_reason_text"] == "Ended by an administrator"
        again = http.delete(f"/admin/users/{ada}/sessions/{sid(phone)}")
        assert again.status_code == 200 and again.json()["ended"] is False
        assert again.json()["session"]["end_reason"] == "ended_by_admin"
    # Everything under the phone's session is dead at once; the laptop is untouched.
    assert org.rp.introspect(phone["access_token"]).json() == {"active": False}
    assert org.rp.introspect(phone["refresh_token"]).json() == {"active": False}
    assert org.rp.userinfo(phone["access_token"]).status_code == 401
    assert org.rp.refresh(phone["refresh_token"]).json()["error"] == "invalid_grant"
    assert org.rp.introspect(laptop["access_token"]).json()["active"] is True
    # ada sees who ended it, in her own API.
    with org.api(laptop) as http:
        own = http.get(f"/sessions/{sid(phone)}").json()
        assert own["end_reason_text"] == "Ended by an administrator"
        assert own["events"][0]["actor"] == f"admin:{org.subs['adam@acme.test']}"
    row = session_row(org.app, sid(phone))
    assert row.end_reason == "ended_by_admin" and row.ended_at is not None


def test_admin_ends_all_sessions_of_a_user(org):
    tokens = [org.token("ada@acme.test", "openid sessions") for _ in range(3)]
    mia = org.token("mia@acme.test", "openid sessions")
    adam = org.token("adam@acme.test")
    with org.api(adam) as http:
        response = http.delete(f"/admin/users/{org.subs['ada@acme.test']}/sessions")
        assert response.status_code == 200
        conforms(response.json(), "EndedMany")
        assert response.json()["ended"] == 3
        assert set(response.json()["session_ids"]) == {sid(t) for t in tokens}
        assert http.get("/admin/users").json()["users"][0]["active_sessions"] == 0
        assert http.get(POLICY).status_code == 200  # the admin's own session lives on
    for token in tokens:
        assert session_row(org.app, sid(token)).end_reason == "ended_by_admin"
        assert org.rp.introspect(token["access_token"]).json() == {"active": False}
        assert org.rp.refresh(token["refresh_token"]).json()["error"] == "invalid_grant"
    assert org.rp.introspect(mia["access_token"]).json()["active"] is True


def test_an_admin_never_reaches_another_accounts_users_or_sessions(org):
    gus = org.token("gus@globex.test", "openid sessions")
    ada = org.token("ada@acme.test", "openid sessions")
    gus_sub, ada_sub = org.subs["gus@globex.test"], org.subs["ada@acme.test"]
    with org.api(org.token("adam@acme.test")) as http:
        emails = {u["email"] for u in http.get("/admin/users").json()["users"]}
        assert emails == {"ada@acme.test", "adam@acme.test", "mia@acme.test", "olive@acme.test"}
        for response in (http.get(f"/admin/users/{gus_sub}/sessions"),
                         http.delete(f"/admin/users/{gus_sub}/sessions/{sid(gus)}"),
                         http.delete(f"/admin/users/{gus_sub}/sessions"),
                         http.delete(f"/admin/users/{ada_sub}/sessions/{sid(gus)}"),
                         http.get(f"/admin/users/{'x' * 100}/sessions")):
            assert response.status_code == 404, response.request.url
            assert response.json()["error"] == "not_found"
            conforms(response.json(), "Error")
    with org.api(org.token("gina@globex.test")) as http:
        emails = {u["email"] for u in http.get("/admin/users").json()["users"]}
        assert emails == {"gina@globex.test", "gus@globex.test"}
        assert http.delete(f"/admin/users/{ada_sub}/sessions/{sid(ada)}").status_code == 404
        assert http.delete(f"/admin/users/{ada_sub}/sessions").status_code == 404
    assert session_row(org.app, sid(gus)).ended_at is None
    assert session_row(org.app, sid(ada)).ended_at is None
    assert org.rp.introspect(gus["access_token"]).json()["active"] is True
    assert org.rp.introspect(ada["access_token"]).json()["active"] is True


# -- the operator's command: idp set-policy ---------------------------------------------------


def run_cli(monkeypatch, capsys, app, *args: str) -> tuple[int, str, str]:
    """`idp ...` through its console entry point, on the test's database and clock."""
    monkeypatch.setattr(cli, "_app", lambda: app)
    capsys.readouterr()
    try:
        cli.main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def acme(app, make_account, make_user) -> int:
    account = make_account("acme")
    make_user("ada@acme.test", account_id=account)
    make_user("mia@acme.test", account_id=account)
    return account


def test_cli_dry_run_reports_and_changes_nothing(app, acme, clock, monkeypatch, capsys):
    seed(app, clock)
    before, rows = policy_state(app, acme), stamps(app)
    clock.advance(seconds=30)
    code, out, err = run_cli(monkeypatch, capsys, app, "set-policy", "--account", "acme",
                             "--max-duration", "4h", "--max-concurrent", "2", "--dry-run", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body == {
        "account": "acme", "dry_run": True, "changes": {},
        "impact": {"sessions_ended_now": 1, "users_with_sessions_ended_now": 1,
                   "users_over_concurrent_limit": 1, "sessions_whose_deadlines_move": 5,
                   "expired_sessions_closed": 0, "users_without_second_factor": 0},
        "policy": {"max_duration": 86400, "idle_timeout": 7200, "max_concurrent": None,
                   "on_limit": "deny", "require_mfa": False,
                   "require_notices": False},
    }
    code, out, _ = run_cli(monkeypatch, capsys, app, "set-policy", "--account", "acme",
                           "--idle-timeout", "15m", "--dry-run")
    assert code == 0
    assert out.strip() == ("Dry run for acme: 3 active sessions of 2 users end at once; "
                           "0 users above the concurrent limit.")
    assert policy_state(app, acme) == before
    assert stamps(app) == rows


def test_cli_changes_the_policy_as_the_operator(app, acme, clock, monkeypatch, capsys):
    ids = seed(app, clock)
    clock.advance(minutes=1)
    code, out, err = run_cli(monkeypatch, capsys, app, "set-policy", "--account", "acme",
                             "--max-duration", "4h", "--on-limit", "end_oldest", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["dry_run"] is False
    assert body["changes"] == {"max_duration": [86400, 14400], "on_limit": ["deny", "end_oldest"]}
    assert body["policy"] == {"max_duration": 14400, "idle_timeout": 7200, "max_concurrent": None,
                              "on_limit": "end_oldest", "require_mfa": False,
                              "require_notices": False}
    assert policy_state(app, acme) == (14400, 7200, None, "end_oldest", clock.now(), 1)
    with app.app_context():
        event = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.event == "policy.changed"))
        assert event.actor == "operator:cli" and event.at == clock.now()
        assert event.detail == {"changes": body["changes"], "sessions_ended": 1}
        assert body["impact"]["sessions_ended_now"] == 1
        for session_id in ids["ada"] + ids["mia"]:
            assert db.session.get(LoginSession, session_id).updated_at == clock.now()
    code, out, _ = run_cli(monkeypatch, capsys, app, "set-policy", "--account", "acme",
                           "--max-concurrent", "unlimited")
    assert code == 0 and out.startswith("Changed nothing for acme.")


def test_cli_refuses_bad_values_with_one_line_and_changes_nothing(app, acme, monkeypatch, capsys):
    before = policy_state(app, acme)
    cases = [
        (["--max-duration", "721h"], "idp: invalid policy: max_duration: must be between 5 min and 720 h"),
        (["--idle-timeout", "25h"], "idp: invalid policy: idle_timeout: must be between 5 min and 24 h"),
        (["--max-duration", "1h"],
         "idp: invalid policy: idle_timeout: must not be longer than the maximum session duration"),
        (["--max-concurrent", "0"], "idp: invalid policy: max_concurrent: must be between 1 and 1000"),
        (["--max-duration", "99999999999h"], "idp: invalid policy: max_duration:"),
    ]
    for extra, message in cases:
        code, out, err = run_cli(monkeypatch, capsys, app, "set-policy", "--account", "acme",
                                 *extra, "--json")
        assert code == 1 and out == "", (extra, out)
        assert len(err.splitlines()) == 1 and err.startswith(message), (extra, err)
    code, _, err = run_cli(monkeypatch, capsys, app, "set-policy", "--account", "nope",
                           "--max-duration", "1h")
    assert code == 1 and "nope" in err
    code, _, err = run_cli(monkeypatch, capsys, app, "set-policy", "--account", "acme",
                           "--on-limit", "block")
    assert code == 2
    assert policy_state(app, acme) == before
