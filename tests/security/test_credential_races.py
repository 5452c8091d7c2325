"""Credential changes win every race with a sign-in (DESIGN invariant 9), on SQLite and
PostgreSQL, made deterministic with hooks that hold one request at a chosen step:

- between "password verified" and "session created" (``credentials.verify`` returns, the
  request waits): a password change, disable or end-all commits meanwhile;
- before a password change, disable or end-all takes the user's row lock (it has read its
  clock and done its argon2 work): a whole sign-in commits meanwhile, a second later;
- (PostgreSQL) a sign-in holding the lock with its session written but not committed, while
  the password change waits for the lock.

Whatever the order, no session opened with the old password (or for a disabled user)
survives, and a sign-in after an end-all is a new session that the end-all did not
promise to end. Requests run through Flask's test client in threads, so each has its own
connection and transaction, as two workers would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from idp import credentials, sessions
from idp.models import DeviceCode, LoginSession, User, db
from tests.conftest import PASSWORD
from tests.security.conftest import ADA, Browser, csrf_of, read, text_of

NEW_PASSWORD = "a completely different passphrase"
ADMIN = "root@example.com"
WAIT = 30  # seconds a held request waits to be released before the test fails


class Hold:
    """Holds the first thread named ``thread`` that reaches the hooked step until ``release``."""

    def __init__(self, thread: str):
        self.thread = thread
        self.reached = threading.Event()
        self.go = threading.Event()

    def __call__(self) -> None:
        if threading.current_thread().name == self.thread and not self.reached.is_set():
            self.reached.set()
            assert self.go.wait(WAIT), "the held request was never released"

    def release(self) -> None:
        self.go.set()


def hold_after(monkeypatch, module, name: str, hold: Hold) -> None:
    """Run ``module.name`` as usual, then hold (between its step and the next)."""
    real = getattr(module, name)

    def hooked(*args, **kwargs):
        result = real(*args, **kwargs)
        hold()
        return result

    monkeypatch.setattr(module, name, hooked)


def hold_before(monkeypatch, module, name: str, hold: Hold) -> None:
    """Hold, then run ``module.name`` as usual."""
    real = getattr(module, name)

    def hooked(*args, **kwargs):
        hold()
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, hooked)


class Background:
    """One request in a thread of its own; ``result()`` waits for its response."""

    def __init__(self, name: str, call: Callable):
        self.response = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(call,), name=name, daemon=True)
        self.thread.start()

    def _run(self, call):
        try:
            self.response = call()
        except BaseException as exc:  # reported by result()
            self.error = exc

    def result(self):
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the request did not finish"
        if self.error is not None:
            raise self.error
        return self.response


def start_login(browser: Browser, password: str = PASSWORD) -> Callable:
    """The sign-in form fetched now; the returned call posts it."""
    token = csrf_of(browser.get("/login"))
    return lambda: browser.post("/login", data={"csrf_token": token, "email": ADA,
                                                "password": password})


def start_password_change(owner: Browser) -> Callable:
    token = csrf_of(owner.get("/account/password"))
    return lambda: owner.post("/account/password", data={
        "csrf_token": token, "current": PASSWORD, "new": NEW_PASSWORD, "confirm": NEW_PASSWORD})


def sessions_of(app) -> dict[str, tuple]:
    """Ada's sessions: id -> (ended_at, end_reason)."""
    def get():
        return {s.id: (s.ended_at, s.end_reason) for s in db.session.scalars(
            sa.select(LoginSession).join(User, User.id == LoginSession.user_id)
            .where(User.email == ADA))}

    return read(app, get)


def open_ids(app) -> set[str]:
    return {sid for sid, (ended_at, _) in sessions_of(app).items() if ended_at is None}


def signed_out(browser: Browser) -> bool:
    response = browser.get("/account/sessions")
    return response.status_code == 303 and "/login" in response.headers["Location"]


@pytest.fixture
def world(app, make_user):
    make_user(ADA)
    make_user(ADMIN, role="admin")
    return app


# -- a sign-in verified, then the credentials change, then it would open its session --------


def test_a_sign_in_verified_before_a_password_change_commits_is_refused(world, monkeypatch):
    owner = Browser(world)
    owner.login()
    hold = Hold("sign-in")
    hold_after(monkeypatch, credentials, "verify", hold)
    intruder = Browser(world, remote_addr="203.0.113.9")
    sign_in = Background("sign-in", start_login(intruder))
    assert hold.reached.wait(WAIT)

    changed = start_password_change(owner)()
    assert changed.status_code == 303, text_of(changed)[:300]
    hold.release()

    refused = sign_in.result()
    assert refused.status_code == 401
    assert "Incorrect email or password." in text_of(refused)
    assert intruder.cookie() is None
    assert open_ids(world) == {owner.sid}


def test_a_sign_in_verified_before_the_user_is_disabled_is_refused(world, monkeypatch):
    admin = Browser(world)
    admin.login(ADMIN)
    hold = Hold("sign-in")
    hold_after(monkeypatch, credentials, "verify", hold)
    intruder = Browser(world)
    sign_in = Background("sign-in", start_login(intruder))
    assert hold.reached.wait(WAIT)

    sub = read(world, lambda: db.session.scalar(sa.select(User.sub).where(User.email == ADA)))
    page = admin.get(f"/admin/users/{sub}/disable")
    disabled = admin.post(f"/admin/users/{sub}/disable", data={"csrf_token": csrf_of(page)})
    assert disabled.status_code == 303
    hold.release()

    assert sign_in.result().status_code == 401
    assert open_ids(world) == set()
    assert sessions_of(world) == {}


def test_a_sign_in_verified_before_an_end_all_commits_is_a_new_session_after_it(world, monkeypatch):
    """End-all ends what exists when it commits; a sign-in with the (unchanged) password
    that opens its session afterwards is a new one. Changing the password is what shuts
    out someone who knows it (the test above)."""
    owner = Browser(world)
    owner.login()
    owner_sid = owner.sid
    hold = Hold("sign-in")
    hold_after(monkeypatch, credentials, "verify", hold)
    other = Browser(world)
    sign_in = Background("sign-in", start_login(other))
    assert hold.reached.wait(WAIT)

    page = owner.get("/account/sessions/end-all")
    assert owner.post("/account/sessions/end-all",
                      data={"csrf_token": csrf_of(page)}).status_code == 303
    assert open_ids(world) == set()
    hold.release()

    assert sign_in.result().status_code == 303
    assert open_ids(world) == {other.sid}
    assert sessions_of(world)[owner_sid][1] == "ended_all"


# -- the change read its clock and did its work; a whole sign-in commits before its lock ----


def held_change(world, monkeypatch, clock, start_change: Callable) -> tuple[Background, Browser]:
    """Start a change, hold it just before it locks the user's row, let a sign-in with
    the current password complete a second later, then release the change."""
    hold = Hold("change")
    hold_before(monkeypatch, sessions, "lock_user", hold)
    change = Background("change", start_change)
    assert hold.reached.wait(WAIT)
    clock.advance(seconds=1)
    latecomer = Browser(world, remote_addr="203.0.113.9")
    latecomer.login()
    assert latecomer.sid in open_ids(world)
    hold.release()
    return change, latecomer


def test_a_password_change_ends_a_sign_in_that_committed_while_it_ran(world, monkeypatch, clock):
    owner = Browser(world)
    owner.login()
    change, latecomer = held_change(world, monkeypatch, clock, start_password_change(owner))
    assert change.result().status_code == 303
    assert sessions_of(world)[latecomer.sid][1] == "password_changed"
    ended_at = sessions_of(world)[latecomer.sid][0]
    started_at = read(world, lambda: db.session.get(LoginSession, latecomer.sid).created_at)
    assert ended_at >= started_at
    assert open_ids(world) == {owner.sid}
    assert signed_out(latecomer)


def end_all_by_page(world, owner: Browser, **_) -> Callable:
    page = owner.get("/account/sessions/end-others")
    return lambda: owner.post("/account/sessions/end-others", data={"csrf_token": csrf_of(page)})


def end_all_by_api(world, owner: Browser, party, **_) -> Callable:
    api = party("Scripts", scope="openid sessions")
    token = api.tokens(owner, scope="openid sessions")["access_token"]
    return lambda: api.http.delete("/api/v1/sessions?scope=others",
                                   headers={"Authorization": f"Bearer {token}"})


def end_all_by_admin(world, owner: Browser, **_) -> Callable:
    admin = Browser(world)
    admin.login(ADMIN)
    sub = read(world, lambda: db.session.scalar(sa.select(User.sub).where(User.email == ADA)))
    path = f"/admin/users/{sub}/sessions/end-all"
    page = admin.get(path)
    return lambda: admin.post(path, data={"csrf_token": csrf_of(page)})


def disable_by_admin(world, owner: Browser, **_) -> Callable:
    admin = Browser(world)
    admin.login(ADMIN)
    sub = read(world, lambda: db.session.scalar(sa.select(User.sub).where(User.email == ADA)))
    page = admin.get(f"/admin/users/{sub}/disable")
    return lambda: admin.post(f"/admin/users/{sub}/disable", data={"csrf_token": csrf_of(page)})


@pytest.mark.parametrize(("start_ending", "reason"), [
    (end_all_by_page, "ended_all"), (end_all_by_api, "ended_all"),
    (end_all_by_admin, "ended_by_admin"), (disable_by_admin, "disabled"),
], ids=["page", "api", "admin", "disable"])
def test_an_end_all_ends_a_sign_in_that_committed_while_it_ran(world, monkeypatch, clock, party,
                                                                start_ending, reason):
    owner = Browser(world)
    owner.login()
    change, latecomer = held_change(world, monkeypatch, clock,
                                    start_ending(world, owner, party=party))
    assert change.result().status_code in (200, 303)
    assert sessions_of(world)[latecomer.sid][1] == reason
    assert signed_out(latecomer)


# -- a device approval whose browser session a password change ends meanwhile ---------------


def test_a_device_approval_racing_a_password_change_opens_no_session(world, monkeypatch, clock,
                                                                     make_client):
    cli = make_client("acme-cli", redirect_uri="http://127.0.0.1:1/cb", public=True, device=True)
    started = world.test_client().post("/oauth/device", data={"client_id": cli.client_id,
                                                              "scope": "openid"}).get_json()
    owner, intruder = Browser(world), Browser(world, remote_addr="203.0.113.9")
    owner.login()
    intruder.login()
    page = intruder.get(f"/device?user_code={started['user_code']}")
    hold = Hold("approve")
    hold_before(monkeypatch, sessions, "lock_user", hold)
    approve = Background("approve", lambda: intruder.post("/device/decide", data={
        "csrf_token": csrf_of(page), "user_code": started["user_code"], "decision": "approve"}))
    assert hold.reached.wait(WAIT)
    assert start_password_change(owner)().status_code == 303
    hold.release()

    assert approve.result().status_code == 303
    assert open_ids(world) == {owner.sid}
    row = read(world, lambda: db.session.get(DeviceCode, started["device_code"].split(".")[0]))
    assert row.approved is None and row.session_id is None


# -- PostgreSQL: the change waits for a sign-in that holds the user's row -------------------


def wait_for_lock_wait(app) -> None:
    """Until another backend of this database waits for a lock (bounded)."""
    engine = sa.create_engine(app.config["SQLALCHEMY_DATABASE_URI"])
    try:
        deadline = time.monotonic() + WAIT
        with engine.connect() as conn:
            while time.monotonic() < deadline:
                waiting = conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'")).scalar()
                conn.rollback()
                if waiting:
                    return
                time.sleep(0.01)
        raise AssertionError("nothing waited for the user's row lock")
    finally:
        engine.dispose()


def test_a_password_change_waits_for_a_sign_in_holding_the_user_and_then_ends_it(
        world, backend, monkeypatch):
    if backend.kind != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite's single writer gives the orders above")
    owner = Browser(world)
    owner.login()
    hold = Hold("sign-in")
    hold_after(monkeypatch, credentials, "sign_in", hold)  # session written, not committed
    intruder = Browser(world, remote_addr="203.0.113.9")
    sign_in = Background("sign-in", start_login(intruder))
    assert hold.reached.wait(WAIT)
    change = Background("change", start_password_change(owner))
    wait_for_lock_wait(world)
    hold.release()

    assert sign_in.result().status_code == 303
    assert change.result().status_code == 303
    assert sessions_of(world)[intruder.sid][1] == "password_changed"
    assert open_ids(world) == {owner.sid}
    assert signed_out(intruder)
