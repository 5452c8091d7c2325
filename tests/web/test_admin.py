"""The administrators' pages through Flask's test client: who may see them, the three
policy tiles (bounds, field errors, preview, save, audit), and the users' sessions
with End / End all."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import timedelta

import pytest
import sqlalchemy as sa

from idp import sessions
from idp.models import Account, AuditEvent, LoginSession, User, db
from tests.conftest import PASSWORD
from tests.flows import start_session

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
CHROME = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
          "(KHTML, like Gecko) Chrome/124.0 Safari/537.36")
SETTINGS = "/admin/settings/sessions"


# -- helpers ------------------------------------------------------------------------------


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def csrf_of(response) -> str:
    match = CSRF.search(response.get_data(as_text=True))
    assert match, response.get_data(as_text=True)[:300]
    return match.group(1)


def login(client, email: str):
    page = client.get("/login", headers={"User-Agent": CHROME})
    response = client.post("/login", data={"csrf_token": csrf_of(page), "email": email,
                                           "password": PASSWORD}, headers={"User-Agent": CHROME})
    assert response.status_code == 303, text(response)[:300]
    return response


def signed_in(app, email: str):
    client = app.test_client()
    login(client, email)
    return client


def sid_of(client) -> str:
    """The public id of the session this browser's cookie names (``<id>.<secret>``)."""
    return client.get_cookie("idp_session").value.split(".")[0]


def any_csrf(client) -> str:
    """A valid CSRF token of this browser, from a page every signed-in user may open."""
    return csrf_of(client.get("/account/sessions/end-others"))


def post_tile(client, **fields):
    """Submit one tile's form the way the page does (CSRF token from the page itself)."""
    page = client.get(SETTINGS)
    assert page.status_code == 200
    data = {"csrf_token": csrf_of(page), "confirm": "save", **fields}
    return client.post(SETTINGS, data=data)


def policy_state(app, account_id: int) -> tuple:
    with app.app_context():
        a = db.session.get(Account, account_id)
        changed = db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent).where(
            AuditEvent.event == "policy.changed", AuditEvent.account_id == account_id))
        return (a.max_session_duration, a.idle_timeout, a.max_concurrent_sessions,
                a.on_concurrent_limit, a.policy_updated_at, changed)


def policy_events(app, account_id: int) -> list[tuple[str, dict]]:
    with app.app_context():
        return [(e.actor, e.detail) for e in db.session.scalars(
            sa.select(AuditEvent).where(AuditEvent.event == "policy.changed",
                                        AuditEvent.account_id == account_id)
            .order_by(AuditEvent.id))]


def session_rows(app, sub: str) -> list[LoginSession]:
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.sub == sub))
        rows = db.session.scalars(sa.select(LoginSession).where(LoginSession.user_id == user.id)
                                  .order_by(LoginSession.created_at, LoginSession.id)).all()
        db.session.expunge_all()
        return list(rows)


def impact_text(response) -> str:
    """The preview box, as words: tags dropped, whitespace collapsed."""
    match = re.search(r'<div class="flash" role="status" id="impact">(.*?)</div>', text(response),
                      re.S)
    assert match, text(response)[:2000]
    return " ".join(re.sub(r"<[^>]+>", "", match.group(1)).split())


def field_error(page: str, field: str) -> str | None:
    match = re.search(rf'id="{field}-error" role="alert">([^<]*)<', page)
    return match.group(1) if match else None


@dataclass
class World:
    acme: int
    globex: int
    owner: str
    admin: str
    member: str
    ada: str
    gina: str
    gus: str


@pytest.fixture
def world(make_account, make_user) -> World:
    acme = make_account("acme")
    globex = make_account("globex")
    return World(
        acme=acme,
        globex=globex,
        owner=make_user("olive@acme.test", account_id=acme, role="owner", name="Olive Owner"),
        admin=make_user("adam@acme.test", account_id=acme, role="admin", name="Adam Admin"),
        member=make_user("mia@acme.test", account_id=acme, role="member", name="Mia Member"),
        ada=make_user("ada@acme.test", account_id=acme, role="member", name="Ada Lovelace"),
        gina=make_user("gina@globex.test", account_id=globex, role="admin", name="Gina Admin"),
        gus=make_user("gus@globex.test", account_id=globex, role="member", name="Gus Globex"),
    )


# -- who may see the pages ----------------------------------------------------------------


def test_visitors_are_sent_to_login(app, world):
    client = app.test_client()
    for url in (SETTINGS, "/admin/users", f"/admin/users/{world.ada}/sessions"):
        response = client.get(url)
        assert response.status_code == 303 and response.headers["location"] == "/login", url


def test_members_get_404_everywhere_and_change_nothing(app, world):
    mia = signed_in(app, "mia@acme.test")
    ada = signed_in(app, "ada@acme.test")
    ada_sid = sid_of(ada)
    for url in (SETTINGS, f"{SETTINGS}?edit=duration", "/admin/users",
                f"/admin/users/{world.ada}/sessions",
                f"/admin/users/{world.ada}/sessions/{ada_sid}/end",
                f"/admin/users/{world.ada}/sessions/end-all"):
        assert mia.get(url).status_code == 404, url
    before = policy_state(app, world.acme)
    token = any_csrf(mia)
    for url, data in (
        (SETTINGS, {"tile": "duration", "max_duration": "1h", "confirm": "save"}),
        (SETTINGS, {"tile": "concurrent", "max_concurrent": "1", "on_limit": "deny",
                    "confirm": "preview"}),
        (f"/admin/users/{world.ada}/sessions/{ada_sid}/end", {}),
        (f"/admin/users/{world.ada}/sessions/end-all", {}),
    ):
        assert mia.post(url, data={"csrf_token": token, **data}).status_code == 404, url
    assert policy_state(app, world.acme) == before
    assert session_rows(app, world.ada)[0].ended_at is None
    assert ada.get("/account/sessions").status_code == 200
    # The menu does not even offer the admin pages to a member.
    assert 'href="/admin/users"' not in text(mia.get("/account/sessions"))


def test_owner_and_admin_get_the_pages(app, world):
    for email in ("olive@acme.test", "adam@acme.test"):
        client = signed_in(app, email)
        assert 'href="/admin/users"' in text(client.get("/account/sessions"))
        page = client.get(SETTINGS)
        assert page.status_code == 200
        body = text(page)
        assert "Session policy of acme" in body
        assert "Maximum session duration" in body and "24 h" in body
        assert "Sign out after inactivity" in body and "2 h" in body
        assert "Maximum concurrent sessions" in body and "Unlimited" in body
        # The bounds from config are shown beside the fields.
        assert "(5 min – 720 h; e.g. 24h, 90m)" in body
        assert "(5 min – 24 h, not above the duration)" in body
        assert '(1 – 1000, or "unlimited")' in body
        assert "Second factor" in body and "Optional" in body
        assert "Email about new sign-ins" in body and "Each user chooses" in body
        assert body.count('value="preview">Preview impact</button>') == 5
        assert client.get("/admin/users").status_code == 200


def test_an_admin_never_sees_another_accounts_users_or_sessions(app, world):
    gus = signed_in(app, "gus@globex.test")
    gus_sid = sid_of(gus)
    adam = signed_in(app, "adam@acme.test")
    listing = text(adam.get("/admin/users"))
    assert "ada@acme.test" in listing and "mia@acme.test" in listing
    assert "globex" not in listing and world.gus not in listing
    token = any_csrf(adam)
    for url in (f"/admin/users/{world.gus}/sessions",
                f"/admin/users/{world.gus}/sessions?view=active",
                f"/admin/users/{world.gus}/sessions/{gus_sid}/end",
                f"/admin/users/{world.gus}/sessions/end-all",
                # acme's user with globex's session id: still nothing
                f"/admin/users/{world.ada}/sessions/{gus_sid}/end",
                "/admin/users/no-such-user/sessions"):
        assert adam.get(url).status_code == 404, url
        assert adam.post(url, data={"csrf_token": token}).status_code in (404, 405), url
    for url in (f"/admin/users/{world.gus}/sessions/{gus_sid}/end",
                f"/admin/users/{world.gus}/sessions/end-all",
                f"/admin/users/{world.ada}/sessions/{gus_sid}/end"):
        assert adam.post(url, data={"csrf_token": token}).status_code == 404, url
    assert session_rows(app, world.gus)[0].ended_at is None
    assert gus.get("/account/sessions").status_code == 200
    # And the other way round: globex's admin cannot see acme.
    gina = signed_in(app, "gina@globex.test")
    assert gina.get(f"/admin/users/{world.ada}/sessions").status_code == 404
    assert "acme" not in text(gina.get("/admin/users"))


# -- the three tiles ----------------------------------------------------------------------


def test_owner_saves_each_tile_and_every_change_is_audited(app, world, clock):
    olive = signed_in(app, "olive@acme.test")
    saved = post_tile(olive, tile="duration", max_duration="8h")
    assert saved.status_code == 303 and saved.headers["location"] == SETTINGS
    page = text(olive.get(SETTINGS))
    assert "Session policy saved." in page and "8 h" in page
    changed_at = clock.now()
    assert policy_state(app, world.acme) == (8 * 3600, 7200, None, "deny", changed_at, 1)

    clock.advance(minutes=1)
    assert post_tile(olive, tile="idle", idle_timeout="90m").status_code == 303
    clock.advance(minutes=1)
    assert post_tile(olive, tile="concurrent", max_concurrent="3",
                     on_limit="end_oldest").status_code == 303
    page = text(olive.get(SETTINGS))
    assert "90 min" in page and "3 · end the oldest session" in page
    assert policy_state(app, world.acme) == (8 * 3600, 5400, 3, "end_oldest", clock.now(), 3)

    actor = f"admin:{world.owner}"
    assert policy_events(app, world.acme) == [
        (actor, {"changes": {"max_duration": [86400, 28800]}}),
        (actor, {"changes": {"idle_timeout": [7200, 5400]}}),
        (actor, {"changes": {"max_concurrent": [None, 3], "on_limit": ["deny", "end_oldest"]}}),
    ]
    # Saving the same values again changes nothing and records nothing.
    assert post_tile(olive, tile="idle", idle_timeout="90m").status_code == 303
    assert "Nothing changed." in text(olive.get(SETTINGS))
    assert len(policy_events(app, world.acme)) == 3
    # Back to unlimited.
    assert post_tile(olive, tile="concurrent", max_concurrent="unlimited",
                     on_limit="end_oldest").status_code == 303
    assert policy_events(app, world.acme)[-1][1] == {"changes": {"max_concurrent": [3, None]}}


def test_an_admin_may_change_it_too_and_is_named_as_the_actor(app, world):
    adam = signed_in(app, "adam@acme.test")
    assert post_tile(adam, tile="duration", max_duration="12h").status_code == 303
    with app.app_context():
        event = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.event == "policy.changed"))
        assert event.actor == f"admin:{world.admin}"
        assert event.account_id == world.acme
        assert event.ip == "127.0.0.1"
        assert event.detail == {"changes": {"max_duration": [86400, 43200]}}
    # globex is untouched.
    assert policy_state(app, world.globex)[:4] == (86400, 7200, None, "deny")


OUT_OF_BOUNDS = [
    ({"tile": "duration", "max_duration": "4m"}, "max_duration", "must be between 5 min and 720 h"),
    ({"tile": "duration", "max_duration": "721h"}, "max_duration",
     "must be between 5 min and 720 h"),
    ({"tile": "duration", "max_duration": "31d"}, "max_duration", "must be between 5 min and 720 h"),
    ({"tile": "duration", "max_duration": "soon"}, "max_duration", "not a duration"),
    ({"tile": "duration", "max_duration": ""}, "max_duration", "not a duration"),
    ({"tile": "duration", "max_duration": "-5m"}, "max_duration", "not a duration"),
    ({"tile": "idle", "idle_timeout": "299s"}, "idle_timeout", "must be between 5 min and 24 h"),
    ({"tile": "idle", "idle_timeout": "25h"}, "idle_timeout", "must be between 5 min and 24 h"),
    ({"tile": "concurrent", "max_concurrent": "0", "on_limit": "deny"}, "max_concurrent",
     "must be between 1 and 1000"),
    ({"tile": "concurrent", "max_concurrent": "1001", "on_limit": "deny"}, "max_concurrent",
     "must be between 1 and 1000"),
    ({"tile": "concurrent", "max_concurrent": "two", "on_limit": "deny"}, "max_concurrent",
     "must be a whole number or 'unlimited'"),
    ({"tile": "concurrent", "max_concurrent": "2", "on_limit": "block"}, "on_limit",
     "must be 'deny' or 'end_oldest'"),
]


@pytest.mark.parametrize("confirm", ["save", "preview"])
@pytest.mark.parametrize(("fields", "field", "message"), OUT_OF_BOUNDS,
                         ids=[f"{f['tile']}:{f.get('max_duration', f.get('idle_timeout', ''))}"
                              f"{f.get('max_concurrent', '')}/{f.get('on_limit', '')}"
                              for f, _, _ in OUT_OF_BOUNDS])
def test_out_of_bounds_input_gets_a_field_error_and_changes_nothing(
        app, world, fields, field, message, confirm):
    olive = signed_in(app, "olive@acme.test")
    before = policy_state(app, world.acme)
    response = post_tile(olive, confirm=confirm, **fields)
    assert response.status_code == 400
    page = text(response)
    error = field_error(page, field)
    assert error is not None and message in error, page[:2000]
    if field != "on_limit":  # a <select>: only a forged request can send a bad value
        assert f'aria-invalid="true" aria-describedby="{field}-error"' in page
    assert "If you save these values" not in page and "Session policy saved." not in page
    assert policy_state(app, world.acme) == before


def test_a_duration_too_large_to_represent_is_a_field_error_not_a_server_error(app, world):
    olive = signed_in(app, "olive@acme.test")
    before = policy_state(app, world.acme)
    for value in ("99999999999h", "9" * 400):
        response = post_tile(olive, tile="duration", max_duration=value)
        assert response.status_code == 400, (value, response.status_code)
        assert field_error(text(response), "max_duration"), value
    assert policy_state(app, world.acme) == before


def test_idle_timeout_may_never_exceed_the_duration(app, world):
    olive = signed_in(app, "olive@acme.test")
    before = policy_state(app, world.acme)
    # Lowering the duration below the current 2 h inactivity timeout is refused...
    response = post_tile(olive, tile="duration", max_duration="1h")
    assert response.status_code == 400
    assert field_error(text(response), "idle_timeout") == (
        "must not be longer than the maximum session duration")
    assert policy_state(app, world.acme) == before
    # ...and so is raising the inactivity timeout above the duration.
    assert post_tile(olive, tile="duration", max_duration="3h").status_code == 303
    before = policy_state(app, world.acme)
    response = post_tile(olive, tile="idle", idle_timeout="4h")
    assert response.status_code == 400
    assert field_error(text(response), "idle_timeout") == (
        "must not be longer than the maximum session duration")
    assert policy_state(app, world.acme) == before
    # Equal is fine.
    assert post_tile(olive, tile="idle", idle_timeout="3h").status_code == 303
    assert policy_state(app, world.acme)[:2] == (3 * 3600, 3 * 3600)


def test_the_boundaries_themselves_are_accepted(app, world):
    olive = signed_in(app, "olive@acme.test")
    assert post_tile(olive, tile="duration", max_duration="720h").status_code == 303
    assert post_tile(olive, tile="idle", idle_timeout="24h").status_code == 303
    assert post_tile(olive, tile="concurrent", max_concurrent="1000",
                     on_limit="deny").status_code == 303
    assert policy_state(app, world.acme)[:4] == (720 * 3600, 24 * 3600, 1000, "deny")
    assert post_tile(olive, tile="idle", idle_timeout="5m").status_code == 303
    assert post_tile(olive, tile="duration", max_duration="300").status_code == 303
    assert post_tile(olive, tile="concurrent", max_concurrent="1",
                     on_limit="end_oldest").status_code == 303
    assert policy_state(app, world.acme)[:4] == (300, 300, 1, "end_oldest")


def test_the_policy_form_needs_a_csrf_token(app, world):
    olive = signed_in(app, "olive@acme.test")
    before = policy_state(app, world.acme)
    response = olive.post(SETTINGS, data={"tile": "duration", "max_duration": "1h",
                                          "confirm": "save"})
    assert response.status_code == 400
    assert policy_state(app, world.acme) == before


class TestTheOlderStricterProductByConfigAlone:
    """SESSION_DURATION_MAX=24h and IDLE_TIMEOUT_MAX=2h, as the product used to ship."""

    @pytest.fixture
    def settings(self, settings):
        return {**settings, "SESSION_DURATION_MAX": "24h", "IDLE_TIMEOUT_MAX": "2h"}

    def test_48h_is_refused_and_the_page_shows_the_older_bounds(self, app, world):
        olive = signed_in(app, "olive@acme.test")
        body = text(olive.get(SETTINGS))
        assert "(5 min – 24 h; e.g. 24h, 90m)" in body
        assert "(5 min – 2 h, not above the duration)" in body
        before = policy_state(app, world.acme)
        response = post_tile(olive, tile="duration", max_duration="48h")
        assert response.status_code == 400
        assert field_error(text(response), "max_duration") == "must be between 5 min and 24 h"
        response = post_tile(olive, tile="idle", idle_timeout="3h")
        assert response.status_code == 400
        assert field_error(text(response), "idle_timeout") == "must be between 5 min and 2 h"
        assert policy_state(app, world.acme) == before
        # The old maxima themselves are still fine.
        assert post_tile(olive, tile="duration", max_duration="24h").status_code == 303
        assert post_tile(olive, tile="duration", max_duration="12h").status_code == 303
        assert post_tile(olive, tile="idle", idle_timeout="2h").status_code == 303
        assert policy_state(app, world.acme)[:2] == (12 * 3600, 7200)


# -- preview (dry run) and what saving does to existing sessions -----------------------------


def _seed(app, clock, world) -> dict[str, list[str]]:
    """acme: ada has a 5 h old (busy) session and a 1 h old one; mia has three fresh
    sessions; adam has one. One of ada's older sessions already ended."""
    origin = sessions.Origin(ip="203.0.113.9", device_label="Firefox on Linux")
    now = clock.now()
    ids: dict[str, list[str]] = {}
    with app.app_context():
        users = {u.email: u for u in db.session.scalars(sa.select(User))}
        ada, mia, adam = users["ada@acme.test"], users["mia@acme.test"], users["adam@acme.test"]
        old = start_session(ada, origin, now=now - timedelta(hours=5)).session
        old.last_active_at = old.updated_at = now - timedelta(minutes=10)
        recent = start_session(ada, origin, now=now - timedelta(hours=1)).session
        gone = start_session(ada, origin, now=now - timedelta(hours=2)).session
        sessions.end(gone, sessions.EndReason.LOGOUT, now=now - timedelta(hours=1), actor="test")
        ids["ada"] = [old.id, recent.id, gone.id]
        ids["mia"] = [start_session(mia, origin, now=now - timedelta(minutes=m)).session.id
                      for m in (30, 20, 10)]
        ids["adam"] = [start_session(adam, origin, now=now - timedelta(minutes=5)).session.id]
        db.session.commit()
    return ids


def updated_at(app, ids) -> dict[str, object]:
    with app.app_context():
        return {s.id: s.updated_at for s in db.session.scalars(
            sa.select(LoginSession).where(LoginSession.id.in_(ids)))}


def test_preview_reports_the_impact_and_changes_nothing(app, world, clock):
    ids = _seed(app, clock, world)
    all_ids = [i for group in ids.values() for i in group]
    olive = signed_in(app, "olive@acme.test")  # olive's own session: one more active
    before = policy_state(app, world.acme)
    stamps = updated_at(app, all_ids)
    clock.advance(seconds=30)

    page = olive.get(SETTINGS)
    response = olive.post(SETTINGS, data={"csrf_token": csrf_of(page), "tile": "duration",
                                          "max_duration": "4h", "confirm": "preview"})
    assert response.status_code == 200
    assert impact_text(response) == (
        "If you save these values: 1 active session of 1 user would end at once; "
        "0 users would be above the concurrent-session limit (it applies at their next "
        "sign-in); 7 sessions would get new deadlines. Nothing has been saved yet.")
    # The tile keeps the proposed value for saving.
    assert 'name="max_duration" value="4h"' in text(response)

    response = olive.post(SETTINGS, data={"csrf_token": csrf_of(page), "tile": "concurrent",
                                          "max_concurrent": "2", "on_limit": "deny",
                                          "confirm": "preview"})
    assert ("0 active sessions of 0 users would end at once; 1 user would be above the "
            "concurrent-session limit (it applies at their next sign-in); "
            "0 sessions would get new deadlines.") in impact_text(response)

    response = olive.post(SETTINGS, data={"csrf_token": csrf_of(page), "tile": "idle",
                                          "idle_timeout": "15m", "confirm": "preview"})
    # ada's 1 h old session was last active at sign-in; mia's 30 and 20 minute old ones too.
    assert "3 active sessions of 2 users would end at once" in impact_text(response)

    assert policy_state(app, world.acme) == before
    assert updated_at(app, all_ids) == stamps
    assert all(s.ended_at is None for s in session_rows(app, world.member))


def test_saving_a_shorter_duration_ends_the_sessions_past_it_at_once(app, world, clock):
    ids = _seed(app, clock, world)
    ada_old, ada_recent, ada_gone = ids["ada"]
    stamps = updated_at(app, [ada_gone])
    olive = signed_in(app, "olive@acme.test")
    clock.advance(minutes=1)
    saved = post_tile(olive, tile="duration", max_duration="4h")
    assert saved.status_code == 303
    changed_at = clock.now()
    with app.app_context():
        rows = {s.id: s for s in db.session.scalars(sa.select(LoginSession))}
        # The save ends the session past the new maximum, now...
        assert (rows[ada_old].ended_at, rows[ada_old].end_reason) == (changed_at, "policy_changed")
        # ...and every session whose deadlines moved shows the change time.
        for sid in (ada_old, ada_recent, *ids["mia"], *ids["adam"]):
            assert rows[sid].updated_at == changed_at, sid
        assert rows[ada_gone].updated_at == stamps[ada_gone]
    assert "Ended 1 active session past the new limits." in text(olive.get("/admin/settings/sessions"))
    # The admin sees it ended, with the reason, and ada's newer session as active.
    page = text(olive.get(f"/admin/users/{world.ada}/sessions"))
    assert page.count('class="session status-active"') == 1
    assert "Ended: policy changed" in page


def test_changing_only_the_concurrent_limit_moves_no_deadline(app, world, clock):
    ids = _seed(app, clock, world)
    stamps = updated_at(app, ids["mia"])
    olive = signed_in(app, "olive@acme.test")
    clock.advance(minutes=1)
    assert post_tile(olive, tile="concurrent", max_concurrent="1",
                     on_limit="deny").status_code == 303
    assert updated_at(app, ids["mia"]) == stamps
    # Lowering the limit ends nothing by itself.
    assert all(s.ended_at is None for s in session_rows(app, world.member))


# -- users and their sessions --------------------------------------------------------------


def test_users_page_lists_the_accounts_users_with_active_session_counts(app, world, clock):
    signed_in(app, "ada@acme.test")
    signed_in(app, "ada@acme.test")
    adam = signed_in(app, "adam@acme.test")
    page = text(adam.get("/admin/users"))
    rows = re.findall(r"<tr><td>(.*?)</td>\s*<td>(\w+)</td><td>(\d+)</td>", page, re.S)
    found = {re.search(r"[\w.]+@acme\.test", r[0]).group(0): (r[1], int(r[2])) for r in rows}
    assert found == {"ada@acme.test": ("member", 2), "adam@acme.test": ("admin", 1),
                     "mia@acme.test": ("member", 0), "olive@acme.test": ("owner", 0)}
    assert f'href="/admin/users/{world.ada}/sessions"' in page
    # Counts follow the policy: after 2 h of silence ada's sessions are no longer active.
    clock.advance(hours=2)
    adam2 = signed_in(app, "adam@acme.test")
    page = text(adam2.get("/admin/users"))
    found = dict(re.findall(r"([\w.]+@acme\.test)</span>.*?<td>\w+</td><td>(\d+)</td>", page, re.S))
    assert found["ada@acme.test"] == "0"


def test_admin_ends_one_session_and_the_user_sees_who_ended_it(app, world):
    laptop = signed_in(app, "ada@acme.test")
    phone = signed_in(app, "ada@acme.test")
    laptop_sid, phone_sid = sid_of(laptop), sid_of(phone)
    adam = signed_in(app, "adam@acme.test")

    listing = text(adam.get(f"/admin/users/{world.ada}/sessions"))
    assert "Login sessions of Ada Lovelace" in listing
    assert listing.count('class="session status-active"') == 2
    assert f'action="/admin/users/{world.ada}/sessions/{phone_sid}/end"' in listing
    assert f'action="/admin/users/{world.ada}/sessions/end-all"' in listing

    url = f"/admin/users/{world.ada}/sessions/{phone_sid}/end"
    confirm = adam.get(url)
    assert confirm.status_code == 200
    body = text(confirm)
    assert "End this session of ada@acme.test?" in body and ">Confirm</button>" in body
    assert all(s.ended_at is None for s in session_rows(app, world.ada))  # GET changes nothing
    assert adam.post(url).status_code == 400  # no CSRF token
    assert all(s.ended_at is None for s in session_rows(app, world.ada))

    done = adam.post(url, data={"csrf_token": csrf_of(confirm)})
    assert done.status_code == 303
    assert done.headers["location"] == f"/admin/users/{world.ada}/sessions"
    after = text(adam.get(done.headers["location"]))
    assert "Ended ada@acme.test's session on Chrome on macOS" in after
    assert '<span class="reason">Ended by an administrator</span>' in after

    row = {s.id: s for s in session_rows(app, world.ada)}[phone_sid]
    assert row.end_reason == "ended_by_admin" and row.ended_at is not None
    with app.app_context():
        event = db.session.scalar(sa.select(AuditEvent).where(
            AuditEvent.session_id == phone_sid, AuditEvent.event == "session.ended"))
        assert event.actor == f"admin:{world.admin}"
        assert event.detail["reason"] == "ended_by_admin"

    # The phone is signed out; the laptop sees why.
    response = phone.get("/account/sessions")
    assert response.status_code == 303 and response.headers["location"] == "/login"
    own = text(laptop.get("/account/sessions"))
    assert own.count('class="session status-ended"') == 1
    assert own.count('<span class="reason">Ended by an administrator</span>') == 1
    assert f'id="session-{laptop_sid}"' in own

    # Ending it again is harmless.
    again = adam.get(url, follow_redirects=True)
    assert "had already ended. Nothing to do." in text(again)


def test_admin_ends_all_sessions_of_a_user(app, world):
    browsers = [signed_in(app, "ada@acme.test") for _ in range(3)]
    mia = signed_in(app, "mia@acme.test")
    adam = signed_in(app, "adam@acme.test")
    url = f"/admin/users/{world.ada}/sessions/end-all"
    confirm = adam.get(url)
    body = text(confirm)
    assert "End all sessions of ada@acme.test?" in body and "Signs out 3 sessions" in body
    assert all(s.ended_at is None for s in session_rows(app, world.ada))
    done = adam.post(url, data={"csrf_token": csrf_of(confirm)})
    assert done.status_code == 303
    assert "Ended 3 sessions of ada@acme.test." in text(adam.get(done.headers["location"]))
    rows = session_rows(app, world.ada)
    assert [s.end_reason for s in rows] == ["ended_by_admin"] * 3
    for browser in browsers:
        assert browser.get("/account/sessions").headers["location"] == "/login"
    # Other users, and the administrator, are untouched.
    assert mia.get("/account/sessions").status_code == 200
    assert adam.get("/admin/users").status_code == 200
    # When ada signs in again she sees what happened.
    again = signed_in(app, "ada@acme.test")
    own = text(again.get("/account/sessions"))
    assert own.count('<span class="reason">Ended by an administrator</span>') == 3


def test_admin_ending_their_own_current_session_is_signed_out(app, world):
    adam = signed_in(app, "adam@acme.test")
    url = f"/admin/users/{world.admin}/sessions/{sid_of(adam)}/end"
    done = adam.post(url, data={"csrf_token": csrf_of(adam.get(url))})
    assert done.status_code == 303 and done.headers["location"] == "/login"
    assert adam.get("/admin/users").headers["location"] == "/login"
