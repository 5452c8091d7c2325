"""Who may act on whom, through the real admin pages and the admin JSON API: every actor
role × every target role × every action, the account's last enabled owner, acting on
oneself, and two owners demoting each other at the same instant.

The ordering (``roles.may_manage``): an owner acts on anyone of the account, owners
included; an admin only on members; a member on nobody (the pages answer 404). A refused
action answers 403 (409 for the last owner) and has written nothing; the pages offer
only the buttons the viewer may use.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import pyotp
import pytest
import sqlalchemy as sa

from idp import factors, roles, sessions
from idp.models import AuditEvent, AuthFactor, LoginSession, Role, User, db
from tests.conftest import race
from tests.flows import obtain_tokens, start_session
from tests.relying_party import Browser, RelyingParty
from tests.security.test_credential_races import wait_for_lock_wait
from tests.web.test_admin import any_csrf, csrf_of, signed_in, text

ACTORS = {"owner": "olive@acme.test", "admin": "adam@acme.test", "member": "mia@acme.test"}
TARGETS = {"owner": "otto@acme.test", "admin": "alma@acme.test", "member": "max@acme.test"}
ROLES = ("owner", "admin", "member")
PAGE_ACTIONS = ("end_session", "end_all", "disable", "enable", "reset_factors", "unlock",
                "role:owner", "role:admin", "role:member")
WAIT = 30


def expected(actor: str, target: str, action: str) -> int:
    """The rule, written out as a table: what the page answers."""
    if actor == "member":
        return 404  # members see no admin page at all
    if action.startswith("role:"):
        return 200 if actor == "owner" else 403  # only owners change others' roles
    if actor == "owner":
        return 200
    return 200 if target == "member" else 403


@dataclass
class Acme:
    account: int
    subs: dict[str, str]  # email -> sub


@pytest.fixture
def acme(make_account, make_user) -> Acme:
    account = make_account("acme")
    other = make_account("globex")
    people = {"olive@acme.test": "owner", "otto@acme.test": "owner", "adam@acme.test": "admin",
              "alma@acme.test": "admin", "mia@acme.test": "member", "max@acme.test": "member"}
    subs = {email: make_user(email, account_id=account, role=role, name=email.split("@")[0])
            for email, role in people.items()}
    subs["gina@globex.test"] = make_user("gina@globex.test", account_id=other, role="owner")
    return Acme(account, subs)


def prepare(app, clock, email: str, action: str) -> str:
    """The target as the action needs it: an active session, an authenticator app, a
    lockout, disabled for ``enable``. Returns the session's id."""
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == email))
        sid = start_session(user, sessions.Origin(ip="198.51.100.7"), now=clock.now()).session.id
        sealer = app.extensions["idp"].sealer
        started = factors.start_totp(user, issuer_name="idp", sealer=sealer, now=clock.now())
        code = pyotp.TOTP(started.secret).at(int(clock.now().timestamp()))
        assert factors.confirm_totp(user, started.factor_id, code, sealer=sealer,
                                    now=clock.now()) is not None
        if action == "enable":
            user.disabled_at = clock.now()
        db.session.commit()
    lockout = app.extensions["idp"].lockout
    for _ in range(lockout.max_failures):
        lockout.store.incr(lockout._keys(email)[1], lockout.window)
    assert lockout.locked(email)
    return sid


def state(app, email: str) -> tuple:
    """Everything an action could change about the target, and the audit trail."""
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == email))
        ended = db.session.scalars(sa.select(LoginSession.end_reason).where(
            LoginSession.user_id == user.id)).all()
        factor_count = db.session.scalar(sa.select(sa.func.count()).select_from(AuthFactor)
                                         .where(AuthFactor.user_id == user.id))
        events = db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent).where(
            AuditEvent.event != "user.action_refused"))  # (an attempt is audited; below)
        return (user.role, user.disabled_at, user.credentials_version, tuple(ended),
                factor_count, events, app.extensions["idp"].lockout.locked(email))


def urls(action: str, sub: str, sid: str) -> tuple[str | None, str, dict]:
    """(confirmation page or None, where the form posts, the form's fields)."""
    base = f"/admin/users/{sub}"
    if action.startswith("role:"):
        return None, f"{base}/role", {"role": action.split(":")[1]}
    return {
        "end_session": (f"{base}/sessions/{sid}/end", f"{base}/sessions/{sid}/end", {}),
        "end_all": (f"{base}/sessions/end-all", f"{base}/sessions/end-all", {}),
        "disable": (f"{base}/disable", f"{base}/disable", {}),
        "enable": (None, f"{base}/enable", {}),
        "reset_factors": (f"{base}/factors/reset", f"{base}/factors/reset", {}),
        "unlock": (None, f"{base}/unlock", {}),
    }[action]


def offered(client, action: str, sub: str, sid: str) -> bool:
    """Whether the admin pages show this viewer the button for the action."""
    if action in ("end_session", "end_all"):
        page = text(client.get(f"/admin/users/{sub}/sessions"))
        _, post, _ = urls(action, sub, sid)
        return f'action="{post}"' in page
    page = text(client.get("/admin/users"))
    if action.startswith("role:"):
        form = re.search(rf'action="/admin/users/{sub}/role".*?</form>', page, re.S)
        return bool(form) and f'value="{action.split(":")[1]}"' in form.group(0)
    confirm, post, _ = urls(action, sub, sid)
    return f'action="{confirm or post}"' in page


def refusals(app) -> list[tuple]:
    """The refused attempts in the audit trail: (actor, target's id, action, reason)."""
    with app.app_context():
        return [(e.actor, e.user_id, e.detail["action"], e.detail["reason"])
                for e in db.session.scalars(sa.select(AuditEvent).where(
                    AuditEvent.event == "user.action_refused").order_by(AuditEvent.id))]


def user_id(app, email: str) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(User.id).where(User.email == email))


def changed(before: tuple, after: tuple, action: str) -> bool:
    role, disabled, version, ended, factor_count, events, locked = after
    if action == "end_session" or action == "end_all":
        return ended == ("ended_by_admin",)
    if action == "disable":
        return disabled is not None and ended == ("disabled",) and version > before[2]
    if action == "enable":
        return disabled is None
    if action == "reset_factors":
        return factor_count == 0 and ended == ("factors_changed",)
    if action == "unlock":
        return not locked and events == before[5] + 1
    return role == action.split(":")[1]


MATRIX = [(actor, target, action) for actor in ROLES for target in ROLES
          for action in PAGE_ACTIONS if action != f"role:{target}"]


@pytest.mark.parametrize(("actor", "target", "action"), MATRIX)
def test_every_role_pair_and_action_through_the_admin_pages(app, clock, acme, actor, target,
                                                            action):
    email, target_email = ACTORS[actor], TARGETS[target]
    sub = acme.subs[target_email]
    sid = prepare(app, clock, target_email, action)
    client = signed_in(app, email)
    want = expected(actor, target, action)
    before = state(app, target_email)
    confirm, post, fields = urls(action, sub, sid)

    if actor != "member":
        assert offered(client, action, sub, sid) is (want == 200), "button offered"
    if confirm:
        page = client.get(confirm)
        assert page.status_code == want, text(page)[:300]
        token = csrf_of(page) if want == 200 else any_csrf(client)
    else:
        token = any_csrf(client)
    assert state(app, target_email) == before  # a page that asks changes nothing
    done = client.post(post, data={"csrf_token": token, **fields})

    if want == 200:
        assert done.status_code == 303, text(done)[:300]
        assert changed(before, state(app, target_email), action)
        with app.app_context():
            event = db.session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id.desc())
                                       .limit(1)).one()
            assert event.actor == f"admin:{acme.subs[email]}"
    else:
        assert done.status_code == want, text(done)[:300]
        assert state(app, target_email) == before  # nothing half-written
        if want == 403:
            assert "you cannot act on" in text(done) or "Only an owner" in text(done)
            # Every refused attempt is in the audit trail, once per request that tried.
            tried = refusals(app)
            assert tried and {t[:2] for t in tried} == {
                (f"admin:{acme.subs[email]}", user_id(app, target_email))}
            assert tried[-1][3] == "forbidden"
            assert tried[-1][2] == (f"set_role:{action[5:]}" if action.startswith("role:")
                                    else {"end_all": "end_sessions"}.get(action, action))


def org_client(live_server, make_client) -> RelyingParty:
    client = make_client("Console", scope="openid email sessions admin")
    return RelyingParty(live_server.url, client.client_id, client.client_secret,
                        client.redirect_uri)


API_ACTIONS = ("end_session", "end_all", "disable", "enable", "role:owner", "role:admin",
               "role:member")
API_MATRIX = [(actor, target, action) for actor in ROLES for target in ROLES
              for action in API_ACTIONS if action != f"role:{target}"]


def api_request(http, action: str, sub: str, sid: str):
    base = f"/admin/users/{sub}"
    if action == "end_session":
        return http.delete(f"{base}/sessions/{sid}")
    if action == "end_all":
        return http.delete(f"{base}/sessions")
    if action.startswith("role:"):
        return http.patch(base, json={"role": action.split(":")[1]})
    return http.patch(base, json={"disabled": action == "disable"})


@pytest.mark.parametrize(("actor", "target", "action"), API_MATRIX)
def test_every_role_pair_and_action_through_the_admin_api(app, clock, live_server, make_client,
                                                          acme, actor, target, action):
    import httpx

    from tests.web.test_admin_api import conforms

    rp = org_client(live_server, make_client)
    token = obtain_tokens(rp, Browser(live_server.url), ACTORS[actor], scope="openid admin")
    target_email = TARGETS[target]
    sub = acme.subs[target_email]
    sid = prepare(app, clock, target_email, action)
    before = state(app, target_email)
    with httpx.Client(base_url=f"{live_server.url}/api/v1", timeout=10,
                      headers={"Authorization": f"Bearer {token['access_token']}"}) as http:
        response = api_request(http, action, sub, sid)
    if actor == "member":  # a member is never issued the admin scope (idp/oauth/scopes.py)
        assert "admin" not in token["scope"].split()
        assert response.status_code == 403 and response.json()["error"] == "insufficient_scope"
        assert state(app, target_email) == before
        return
    want = expected(actor, target, action)
    assert response.status_code == want, response.text
    if want == 200:
        assert changed(before, state(app, target_email), action), response.text
        if action.startswith(("role:", "disable", "enable")):
            user = response.json()["user"]
            assert user["sub"] == sub and user["disabled"] is (action == "disable")
            assert response.json()["sessions_ended"] == (1 if action == "disable" else 0)
        return
    body = response.json()
    conforms(body, "Error")
    assert body["error"] == {404: "not_found", 403: "forbidden"}[want]
    assert state(app, target_email) == before
    assert [t[:2] for t in refusals(app)] == [(f"admin:{acme.subs[ACTORS[actor]]}",
                                               user_id(app, target_email))]


# -- oneself, and the account's last enabled owner ---------------------------------------------


def post_role(client, sub: str, role: str):
    return client.post(f"/admin/users/{sub}/role", data={"csrf_token": any_csrf(client),
                                                           "role": role})


def roles_of(app, *emails: str) -> tuple:
    with app.app_context():
        found = dict(db.session.execute(sa.select(User.email, User.role)
                                        .where(User.email.in_(emails))).all())
        return tuple(found[e] for e in emails)


def test_the_last_enabled_owner_is_never_disabled_or_demoted(app, acme):
    olive = signed_in(app, "olive@acme.test")
    otto = signed_in(app, "otto@acme.test")
    # Two owners: one may disable the other...
    page = olive.get(f"/admin/users/{acme.subs['otto@acme.test']}/disable")
    done = olive.post(f"/admin/users/{acme.subs['otto@acme.test']}/disable",
                      data={"csrf_token": csrf_of(page)})
    assert done.status_code == 303
    assert otto.get("/account/sessions").headers["location"] == "/login"
    # ...and now olive is the last enabled owner: nobody demotes her, herself included.
    listing = text(olive.get("/admin/users"))
    assert f'action="/admin/users/{acme.subs["olive@acme.test"]}/role"' not in listing
    before = state(app, "olive@acme.test")
    refused = post_role(olive, acme.subs["olive@acme.test"], "admin")
    assert refused.status_code == 409
    assert "last enabled owner of acme" in text(refused)
    assert state(app, "olive@acme.test") == before
    # Re-enabling otto makes two again; then olive may step down.
    assert olive.post(f"/admin/users/{acme.subs['otto@acme.test']}/enable",
                      data={"csrf_token": any_csrf(olive)}).status_code == 303
    stepped = post_role(olive, acme.subs["olive@acme.test"], "member")
    assert stepped.status_code == 303 and stepped.headers["location"] == "/account/sessions"
    assert roles_of(app, "olive@acme.test", "otto@acme.test") == ("member", "owner")
    assert olive.get("/admin/users").status_code == 404  # a member now
    with app.app_context():
        event = db.session.scalar(sa.select(AuditEvent).where(
            AuditEvent.event == "user.role_changed"))
        assert event.detail == {"previous": "owner", "role": "member"}
        assert event.actor == f"admin:{acme.subs['olive@acme.test']}"


def test_the_api_keeps_the_last_owner_and_refuses_bodies_it_cannot_read(
        app, clock, live_server, make_client, acme):
    import httpx

    from tests.web.test_admin_api import conforms

    rp = org_client(live_server, make_client)
    token = obtain_tokens(rp, Browser(live_server.url), "olive@acme.test", scope="openid admin")
    olive, otto = acme.subs["olive@acme.test"], acme.subs["otto@acme.test"]
    with httpx.Client(base_url=f"{live_server.url}/api/v1", timeout=10,
                      headers={"Authorization": f"Bearer {token['access_token']}"}) as http:
        for body in ({}, [], {"disabled": "yes"}, {"role": "root"}, {"email": "x@y.z"},
                     {"role": "admin", "sub": olive}):
            bad = http.patch(f"/admin/users/{otto}", json=body)
            assert bad.status_code == 400 and bad.json()["error"] == "invalid_request", body
        assert http.patch(f"/admin/users/{otto}", content=b"{not json",
                          headers={"Content-Type": "application/json"}).status_code == 400
        disabled = http.patch(f"/admin/users/{otto}", json={"disabled": True})
        assert disabled.status_code == 200 and disabled.json()["user"]["disabled"] is True
        before = state(app, "olive@acme.test")
        for body in ({"role": "admin"}, {"disabled": True}):
            last = http.patch(f"/admin/users/{olive}", json=body)
            assert last.status_code == 409 and last.json()["error"] == "last_owner", body
            conforms(last.json(), "Error")
        assert state(app, "olive@acme.test") == before
        # Both changes in one request: one transaction, so either both or neither.
        both = http.patch(f"/admin/users/{otto}", json={"disabled": False, "role": "admin"})
        assert both.status_code == 200
        assert both.json()["user"] == {**both.json()["user"], "role": "admin",
                                        "disabled": False}
    assert roles_of(app, "olive@acme.test", "otto@acme.test") == ("owner", "admin")


def test_owners_demote_each_other_one_after_the_other_and_one_owner_remains(app, acme):
    olive = signed_in(app, "olive@acme.test")
    otto = signed_in(app, "otto@acme.test")
    assert post_role(olive, acme.subs["otto@acme.test"], "admin").status_code == 303
    # otto is an admin now: the page he had open no longer lets him touch an owner.
    refused = post_role(otto, acme.subs["olive@acme.test"], "admin")
    assert refused.status_code == 403
    assert roles_of(app, "olive@acme.test", "otto@acme.test") == ("owner", "admin")


def test_an_admin_may_step_down_but_never_promote_anyone_or_themselves(app, acme):
    adam = signed_in(app, "adam@acme.test")
    listing = text(adam.get("/admin/users"))
    # No role form for anyone but himself, and for himself only "member".
    forms = re.findall(r'action="/admin/users/([^/]+)/role".*?</form>', listing, re.S)
    assert forms == [acme.subs["adam@acme.test"]]
    own = re.search(r'action="/admin/users/[^/]+/role".*?</form>', listing, re.S).group(0)
    assert 'value="member"' in own and 'value="owner"' not in own and 'value="admin"' not in own
    for sub, role in ((acme.subs["adam@acme.test"], "owner"),
                      (acme.subs["max@acme.test"], "admin"),
                      (acme.subs["max@acme.test"], "owner")):
        assert post_role(adam, sub, role).status_code == 403
    assert roles_of(app, "adam@acme.test", "max@acme.test") == ("admin", "member")
    assert post_role(adam, acme.subs["adam@acme.test"], "member").status_code == 303
    assert roles_of(app, "adam@acme.test") == ("member",)


def test_an_admin_still_ends_their_own_sessions_and_sees_but_cannot_end_an_owners(app, acme,
                                                                                 clock):
    sid = prepare(app, clock, "olive@acme.test", "end_session")
    adam = signed_in(app, "adam@acme.test")
    listing = text(adam.get(f"/admin/users/{acme.subs['olive@acme.test']}/sessions"))
    olive = acme.subs["olive@acme.test"]
    assert f'id="session-{sid}"' in listing  # reading is not acting
    assert f'action="/admin/users/{olive}/sessions/{sid}/end"' not in listing
    assert f'action="/admin/users/{olive}/sessions/end-all"' not in listing
    adam_sub = acme.subs["adam@acme.test"]
    own = text(adam.get(f"/admin/users/{adam_sub}/sessions"))
    assert f'action="/admin/users/{adam_sub}/sessions/end-all"' in own


def test_unknown_roles_and_other_accounts_users_are_refused(app, acme):
    olive = signed_in(app, "olive@acme.test")
    assert post_role(olive, acme.subs["max@acme.test"], "superuser").status_code == 400
    assert post_role(olive, acme.subs["gina@globex.test"], "member").status_code == 404
    assert roles_of(app, "max@acme.test", "gina@globex.test") == ("member", "owner")


# -- two owners at the same instant ------------------------------------------------------------


def test_two_owners_demoting_each_other_at_once_leave_exactly_one_owner(app, acme):
    """Released together by a barrier, each in its own transaction: whichever goes first
    wins; the other, under the account's lock, sees that it is no longer an owner."""
    pairs = [("olive@acme.test", "otto@acme.test"), ("otto@acme.test", "olive@acme.test")]

    def demote():
        actor_email, target_email = pairs.pop()
        actor = db.session.scalar(sa.select(User).where(User.email == actor_email))
        target = db.session.scalar(sa.select(User).where(User.email == target_email))
        return roles.set_role(actor, target, "admin", now=actor.created_at)

    answers = race(app, demote, refused=roles.Refused)
    assert sorted(answers) == ["owner", "refused"]
    assert sorted(roles_of(app, "olive@acme.test", "otto@acme.test")) == ["admin", "owner"]


def test_two_owners_disabling_each_other_at_once_leave_exactly_one_enabled(app, acme):
    pairs = [("olive@acme.test", "otto@acme.test"), ("otto@acme.test", "olive@acme.test")]

    def disable():
        actor_email, target_email = pairs.pop()
        actor = db.session.scalar(sa.select(User).where(User.email == actor_email))
        target = db.session.scalar(sa.select(User).where(User.email == target_email))
        return len(roles.disable(actor, target, now=actor.created_at))

    answers = race(app, disable, refused=roles.Refused)
    assert sorted(answers, key=str) == [0, "refused"]
    with app.app_context():
        enabled = db.session.scalars(sa.select(User.email).where(
            User.role == Role.OWNER, User.disabled_at.is_(None))).all()
        assert len(enabled) == 2  # one of acme's two, and globex's


class Hold:
    """Holds the thread named ``thread`` at the hooked step until ``release``."""

    def __init__(self, thread: str):
        self.thread, self.reached, self.go = thread, threading.Event(), threading.Event()

    def __call__(self) -> None:
        if threading.current_thread().name == self.thread and not self.reached.is_set():
            self.reached.set()
            assert self.go.wait(WAIT), "never released"


def test_the_second_owner_waits_for_the_first_and_is_then_refused(app, acme, backend,
                                                                  monkeypatch):
    """PostgreSQL, deterministically: olive's demotion of otto has counted the owners
    (two) and is held there, uncommitted; otto's demotion of olive must then wait for
    the account's lock — without it, it would count two owners as well and both would
    commit, leaving none. Released, olive's commits and otto's is refused (403)."""
    if backend.kind != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite's single writer orders the writes "
                    "(the barrier tests above)")
    olive = signed_in(app, "olive@acme.test")
    otto = signed_in(app, "otto@acme.test")
    olive_token, otto_token = any_csrf(olive), any_csrf(otto)
    hold = Hold("olive")
    real = roles.enabled_owners

    def counted(account_id):
        result = real(account_id)
        hold()
        return result

    monkeypatch.setattr(roles, "enabled_owners", counted)
    answers: dict[str, int] = {}

    def post(name, client, token, sub):
        answers[name] = client.post(f"/admin/users/{sub}/role",
                                    data={"csrf_token": token, "role": "admin"}).status_code

    first = threading.Thread(target=post, name="olive",
                             args=("olive", olive, olive_token, acme.subs["otto@acme.test"]))
    second = threading.Thread(target=post, name="otto",
                              args=("otto", otto, otto_token, acme.subs["olive@acme.test"]))
    first.start()
    assert hold.reached.wait(WAIT)
    second.start()
    wait_for_lock_wait(app)
    hold.go.set()
    first.join(WAIT)
    second.join(WAIT)
    assert answers == {"olive": 303, "otto": 403}
    assert roles_of(app, "olive@acme.test", "otto@acme.test") == ("owner", "admin")
