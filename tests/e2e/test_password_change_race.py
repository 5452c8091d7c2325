"""A password change racing sign-ins with the old password, against the production server.

``idp serve --workers 2`` (gunicorn, gthread) runs on a database of the test's own, on
SQLite and, when IDP_TEST_DATABASE_URL is set, on PostgreSQL. The owner signs in once;
then, in each of five trials, eight other browsers, each with its own cookie jar and CSRF
token, post the login form with the current ("old") password at the same instant as the
owner posts the change to a fresh one (a barrier releases all nine requests together),
which is the old password of the next trial.

Every racing sign-in then either was refused (401) or signed in (303) before the change
committed, and the change ended it: afterwards the owner's is the user's only active
session, every session a racer opened is ended with ``password_changed``, and a racer's
cookie no longer opens the account pages (DESIGN invariant 9). How many racers got in
before the change and how many were refused is printed per trial (``-s`` shows it), so a
run shows that the race went both ways; only the invariant is asserted, never the split.

The per-account sign-in throttle cannot be configured away: after two failed sign-ins the
next one waits 1, 2, 4 … seconds (429), and IDP_LOGIN_MAX_FAILURES stops at 100. So the
counters live in Redis, shared by both workers (the test is skipped without it), and the
owner, an account owner, clears them before each trial as an administrator would
(/admin/users/<sub>/unlock). Within a trial a racer may still meet the throttle: it then
started after two racers of the same trial had been refused, that is after the change
had committed, so it had lost the race anyway; it counts as refused (never as signed in).
"""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import PASSWORD, redis_up
from tests.e2e import processes
from tests.relying_party import csrf_token

pytestmark = pytest.mark.e2e

RACERS = 8
TRIALS = 5
CLIENT_TIMEOUT = 10.0  # a response slower than this is a hang
# Refused racers count as failed sign-ins: the limits must not answer in their place (the
# lockout needs more failures than a trial can make: the counters are cleared before each).
# They are shared by the workers (one unlock clears them), in a Redis database that no
# other test uses; the email is the run's own, so no other run's counters are met.
LIMITS = {"IDP_LOGIN_IP_LIMIT": "10000 per minute", "IDP_LOGIN_MAX_FAILURES": str(3 * RACERS),
          "IDP_RATELIMIT_STORAGE_URI": "redis://127.0.0.1:6379/13"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database for one served instance (``idp init`` migrates it)."""
    if not redis_up():
        pytest.skip("needs Redis on 127.0.0.1:6379 for sign-in counters both workers share")
    yield from processes.served_database(request.param, tmp_path, "pwrace")


@dataclass
class Answer:
    status: int | None
    location: str = ""
    body: str = ""
    error: str | None = None


@dataclass
class Trial:
    number: int
    signed_in: int = 0  # racers answered 303: their session committed before the change
    refused: int = 0  # racers answered 401, or 429 by the throttle after two of those
    throttled: int = 0  # of the refused, those the throttle answered
    survived: list[str] = field(default_factory=list)  # racers' sessions still active
    problems: list[str] = field(default_factory=list)

    def line(self, backend: str) -> str:
        return (f"[{backend}] trial {self.number}: {self.signed_in} racing sign-ins got in "
                f"before the change, {self.refused} refused ({self.throttled} by the throttle); "
                f"{len(self.survived)} old-password sessions survived the change")


def tally(trial: Trial, answers: list[Answer]) -> tuple[int, int]:
    """Counts the racers' answers into ``trial``: (signed in, refused). Any other answer
    is a problem of the trial; the two counts add up to RACERS when there is none."""
    for i, answer in enumerate(answers):
        if answer.status == 303:
            trial.signed_in += 1
        elif answer.status == 401:
            trial.refused += 1
        elif answer.status == 429 and "Too many failed attempts" in answer.body:
            trial.refused += 1
            trial.throttled += 1
        else:
            trial.problems.append(f"racer {i}: neither 303 nor 401: {answer.status} "
                                  f"{answer.error or answer.body[:300]}")
    if trial.throttled and trial.refused - trial.throttled < 2:
        trial.problems.append("a racer was throttled although fewer than two racers of this "
                              "trial had been refused: the counters were not cleared")
    return trial.signed_in, trial.refused


@dataclass
class Owner:
    """The user whose password changes, signed in once, and what the test knows of it."""

    url: str
    email: str
    sub: str
    user_id: int
    http: httpx.Client
    session_id: str = ""


def _client(url: str, user_agent: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT, headers={"User-Agent": user_agent})


def _post(barrier: threading.Barrier, http: httpx.Client, path: str, data: dict) -> Answer:
    """Posts the form once the barrier releases every poster (the request already built)."""
    request = http.build_request("POST", path, data=data)
    barrier.wait()
    try:
        response = http.send(request)
    except httpx.HTTPError as exc:
        return Answer(None, error=repr(exc))
    return Answer(response.status_code, response.headers.get("location", ""), response.text)


def _form_token(http: httpx.Client, path: str) -> str:
    page = http.get(path)
    assert page.status_code == 200, f"GET {path}: {page.status_code} {page.text[:500]}"
    return csrf_token(page.text)


def _sessions(engine: sa.Engine, user_id: int) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT id, user_agent, created_at, ended_at, end_reason FROM login_sessions "
            "WHERE user_id = :u ORDER BY created_at"), {"u": user_id}).all()


def _changed_at(engine: sa.Engine, user_id: int) -> datetime | None:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT max(at) FROM audit_events WHERE event = 'password.changed' AND user_id = :u"),
            {"u": user_id}).scalar()


def race(owner: Owner, engine: sa.Engine, number: int, *, old: str,
         new: str) -> tuple[Trial, list[Answer]]:
    """One trial: the owner changes ``old`` to ``new`` while RACERS browsers sign in with
    ``old``; the racers' answers, and what they and the database say afterwards."""
    trial = Trial(number)
    token = _form_token(owner.http, "/account/password")  # the owner's session's CSRF token
    unlock = owner.http.post(f"/admin/users/{owner.sub}/unlock", data={"csrf_token": token})
    assert unlock.status_code == 303, f"unlock: {unlock.status_code} {unlock.text[:500]}"
    change = {"csrf_token": token, "current": old, "new": new, "confirm": new}
    racers = [_client(owner.url, f"racer {number}.{i}") for i in range(RACERS)]
    try:
        forms = [{"csrf_token": _form_token(http, "/login"), "email": owner.email,
                  "password": old} for http in racers]  # each its own jar, token, connection
        posts = [(owner.http, "/account/password", change),
                 *((http, "/login", form) for http, form in zip(racers, forms, strict=True))]
        # The barrier wakes its waiters one after the other, first come first, and each
        # then sends: the owner waits last in the first trial, first in the last one.
        place = RACERS * (TRIALS - number) // max(TRIALS - 1, 1)
        order = [*range(1, place + 1), 0, *range(place + 1, RACERS + 1)]
        barrier = threading.Barrier(RACERS + 1, timeout=CLIENT_TIMEOUT)
        with ThreadPoolExecutor(RACERS + 1) as pool:
            futures = {i: pool.submit(_post, barrier, *posts[i]) for i in order}
            changed, *answers = [futures[i].result(timeout=3 * CLIENT_TIMEOUT)
                                 for i in range(RACERS + 1)]
        if changed.status != 303 or not changed.location.endswith("/account/sessions"):
            trial.problems.append(f"the password change did not go through: {changed.status} "
                                  f"{changed.error or changed.body[:500]}")

        rows = _sessions(engine, owner.user_id)
        changed_at = _changed_at(engine, owner.user_id)
        active = [r for r in rows if r.ended_at is None]
        if [r.id for r in active] != [owner.session_id]:
            trial.problems.append(
                "the owner's session is not the only active one: "
                + "; ".join(f"{r.id} ({r.user_agent}, created {r.created_at})" for r in active)
                + f"; the password change's clock read {changed_at}")
        for i, (http, answer) in enumerate(zip(racers, answers, strict=True)):
            mine = [r for r in rows if r.user_agent == f"racer {number}.{i}"]
            if answer.status != 303:
                if mine:
                    trial.problems.append(f"racer {i} answered {answer.status} yet has "
                                          f"{len(mine)} session(s)")
                continue
            if len(mine) != 1:
                trial.problems.append(f"racer {i} signed in but has {len(mine)} sessions")
                continue
            row = mine[0]
            if row.ended_at is None:
                trial.survived.append(row.id)
                trial.problems.append(
                    f"racer {i}'s session {row.id} (created {row.created_at}) is still "
                    f"active after the password change (its clock read {changed_at})")
            elif row.end_reason != "password_changed":
                trial.problems.append(f"racer {i}'s session {row.id} ended as "
                                      f"{row.end_reason!r}, not 'password_changed'")
            after = http.get("/account/sessions")
            if after.status_code != 303 or not after.headers.get("location", "").endswith("/login"):
                trial.problems.append(f"racer {i}'s cookie still opens /account/sessions: "
                                      f"{after.status_code}")
        still = owner.http.get("/account/sessions")
        if still.status_code != 200:
            trial.problems.append(f"the owner was signed out by the change: {still.status_code}")
    finally:
        for http in racers:
            http.close()
    return trial, answers


def test_a_password_change_leaves_no_session_signed_in_with_the_old_password(database_url):
    backend = sa.engine.make_url(database_url).get_backend_name()
    started = time.monotonic()
    email = f"race-{secrets.token_hex(4)}@example.com"
    engine = sa.create_engine(database_url)
    trials: list[Trial] = []
    try:
        with processes.serve(database_url, workers=2, env=LIMITS) as provider:
            provider.create_account("race")
            sub = provider.create_user(email, PASSWORD, account="race", role="owner")
            with engine.connect() as conn:
                user_id = conn.execute(sa.text("SELECT id FROM users WHERE sub = :s"),
                                       {"s": sub}).scalar_one()
            with _client(provider.url, "owner") as http:
                owner = Owner(provider.url, email, sub, user_id, http)
                first = http.post("/login", data={"csrf_token": _form_token(http, "/login"),
                                                  "email": email, "password": PASSWORD})
                assert first.status_code == 303, first.text[:500]
                owner.session_id, = [r.id for r in _sessions(engine, user_id)]
                password = PASSWORD
                for number in range(1, TRIALS + 1):
                    new = f"trial {number} {secrets.token_urlsafe(12)}"
                    trial, answers = race(owner, engine, number, old=password, new=new)
                    trials.append(trial)
                    signed_in, refused = tally(trial, answers)
                    print(trial.line(backend))
                    assert signed_in + refused == RACERS, trial.problems
                    password = new  # the owner's new password is the next trial's old one
            invariants = processes.check_invariants(database_url)
    finally:
        engine.dispose()
    survived = sum(len(t.survived) for t in trials)
    print(f"[{backend}] {TRIALS} trials of {RACERS} racers in {time.monotonic() - started:.1f}s: "
          f"{sum(t.signed_in for t in trials)} got in before the change, "
          f"{sum(t.refused for t in trials)} refused ({sum(t.throttled for t in trials)} by the "
          f"throttle), {survived} old-password sessions survived")
    problems = [f"trial {t.number}: {p}" for t in trials for p in t.problems]
    assert invariants == []
    assert survived == 0 and not problems, "\n".join(problems)
