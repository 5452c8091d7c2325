"""Inactive is monotonic (DESIGN invariant 3): once any path has answered "inactive" for a
token or a session, no later policy change makes it active again — including a relaxing
change that commits while that answer is being given. A read-only check (introspection,
userinfo) that finds a session over with nothing recorded ends it as it found it
(``Holder.settle``); a policy change ends what it finds over under the old or the new
values. Deterministic: a hook holds a request between two steps; no sleeps."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from idp import policy_changes, sessions
from idp.models import Account, LoginSession, TokenFamily, db
from idp.policy import SessionPolicy
from tests.security.conftest import read
from tests.security.test_credential_races import WAIT, Background, Hold, hold_before

IDLE = timedelta(hours=2)  # the account's inactivity timeout (conftest's default)


@pytest.fixture
def signed_in_app(app, ada, signed_in, party):
    photos = party("Photos", scope="openid profile email")
    browser = signed_in()
    return photos, photos.tokens(browser), browser


def session_row(app, sid: str) -> tuple:
    return read(app, lambda: (lambda s: (s.ended_at, s.end_reason))(db.session.get(LoginSession, sid)))


def relax(app, *, idle: timedelta, now) -> None:
    def change():
        account = db.session.scalar(sa.select(Account))
        current = SessionPolicy.of(account)
        policy_changes.apply(account, SessionPolicy(current.max_duration, idle,
                                                    current.max_concurrent, current.on_limit),
                             now=now, actor="admin:test")
        db.session.commit()

    read(app, change)


def test_introspection_that_finds_a_session_idle_out_records_it_and_relaxing_revives_nothing(
        app, clock, signed_in_app):
    photos, tokens, browser = signed_in_app
    sid = browser.sid
    started = clock.now()
    clock.advance(IDLE)
    assert photos.active(tokens["access_token"]) is False
    ended_at, reason = session_row(app, sid)
    assert reason == "expired_idle" and ended_at == started + IDLE
    families = read(app, lambda: db.session.scalars(
        sa.select(TokenFamily.revoke_reason).where(TokenFamily.session_id == sid)).all())
    assert families == ["session_ended"]

    relax(app, idle=timedelta(hours=12), now=clock.now())
    assert photos.active(tokens["access_token"]) is False
    assert photos.active(tokens["refresh_token"]) is False
    assert photos.userinfo(tokens["access_token"]).status_code == 401
    assert photos.refresh(tokens["refresh_token"]).status_code == 400
    assert browser.get("/account/sessions").status_code == 303


def test_an_inactive_answer_given_while_a_relaxing_change_commits_still_holds(
        app, clock, signed_in_app, monkeypatch):
    """The change read its clock a second before the idle deadline (so by its own reading
    nothing is over) and commits a longer timeout while an introspection at the deadline
    has already answered "inactive" under the old values: the session stays ended."""
    photos, tokens, browser = signed_in_app
    sid = browser.sid
    clock.advance(IDLE - timedelta(seconds=1))
    change_at = clock.now()
    hold_change, hold_settle = Hold("change"), Hold("introspect")
    hold_before(monkeypatch, policy_changes, "_plan", hold_change)
    hold_before(monkeypatch, sessions, "settle", hold_settle)
    change = threading.Thread(
        target=relax, args=(app,), kwargs={"idle": timedelta(hours=12), "now": change_at},
        name="change", daemon=True)
    change.start()
    assert hold_change.reached.wait(WAIT)  # it holds the account's row, has judged nothing

    clock.advance(seconds=1)
    answer = Background("introspect", lambda: photos.introspect(tokens["access_token"]))
    assert hold_settle.reached.wait(WAIT)  # answered under the old policy, not yet recorded
    hold_change.release()
    change.join(WAIT)
    assert not change.is_alive()
    assert session_row(app, sid) == (None, None)  # the change ended nothing by its reading
    hold_settle.release()

    assert answer.result().get_json() == {"active": False}
    assert session_row(app, sid)[1] == "expired_idle"
    assert photos.active(tokens["access_token"]) is False
    assert photos.refresh(tokens["refresh_token"]).status_code == 400
    assert browser.get("/account/sessions").status_code == 303
