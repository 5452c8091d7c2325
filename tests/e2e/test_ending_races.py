"""A session ended while a code for it is being exchanged: the ending wins, or it revokes
the family the exchange made. Never a live family under an ended session (DESIGN
invariant 2). Found by the mixed-load test; here made deterministic."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from idp import sessions
from idp.models import EndReason, LoginSession, TokenFamily, db
from tests.flows import obtain_tokens
from tests.relying_party import Browser, RelyingParty

pytestmark = pytest.mark.e2e

ADA = "ada@example.com"


def test_a_code_exchanged_while_its_session_is_being_ended_yields_no_live_family(
        backend, live_server, clock, make_user, make_client):
    if backend.kind != "postgresql":
        pytest.skip("needs row locks: on SQLite the exchange's claim already holds the one "
                    "write lock, so an ending cannot commit in the middle of it")
    app = live_server.app
    make_user(ADA)
    client = make_client("Photos")
    rp = RelyingParty(live_server.url, client.client_id, client.client_secret,
                      client.redirect_uri)
    browser = Browser(live_server.url)
    first = obtain_tokens(rp, browser, ADA)
    session_id = rp.verify_access_token(first["access_token"])[1]["sid"]

    # An ending (here "end all", as from the sessions page) is under way: its statements
    # ran, its commit has not.
    ending_ran, commit_now, ending_done = threading.Event(), threading.Event(), threading.Event()

    def end_the_session():
        with app.app_context():
            try:
                sessions.end(db.session.get(LoginSession, session_id), EndReason.ENDED_ALL,
                             now=clock.now(), actor="user:test")
                ending_ran.set()
                commit_now.wait(timeout=30)
                db.session.commit()
            finally:
                db.session.remove()
                ending_done.set()

    ender = threading.Thread(target=end_the_session, daemon=True)
    ender.start()
    assert ending_ran.wait(timeout=10)

    # Meanwhile the app signs in again through the still-uncommitted session: a new code
    # (issued after the ending spent the session's pending codes), then the exchange.
    url, secrets_ = rp.authorization_url()
    params = rp.callback_params(browser.go(url, stop_at=rp.redirect_uri))
    answer: dict = {}

    def exchange():
        answer["response"] = rp._post_token({
            "grant_type": "authorization_code", "code": params["code"],
            "redirect_uri": rp.redirect_uri, "code_verifier": secrets_["code_verifier"]})

    exchanger = threading.Thread(target=exchange, daemon=True)
    exchanger.start()
    exchanger.join(timeout=1.5)
    assert exchanger.is_alive(), "the exchange did not wait for the ending in progress"

    commit_now.set()
    assert ending_done.wait(timeout=10)
    exchanger.join(timeout=10)
    response = answer["response"]
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant"
    with app.app_context():
        live = db.session.scalar(sa.select(sa.func.count()).select_from(TokenFamily).where(
            TokenFamily.session_id == session_id, TokenFamily.revoked_at.is_(None)))
        assert live == 0
