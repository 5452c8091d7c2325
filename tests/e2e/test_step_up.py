"""Step-up within the same login session, seen by an independent relying party (httpx,
Authlib's client, joserfc against the published JWKS): ``acr_values=mfa`` makes a
password-only session prove a second factor, ``max_age`` makes it prove itself again; in
both the session keeps its id (the ID token's ``sid``), while ``amr``, ``acr`` and
``auth_time`` say what was just proved. An essential ``acr`` the user cannot reach is
refused. The clock is the test's; nobody sleeps."""

from __future__ import annotations

import json
from datetime import timedelta
from urllib.parse import urljoin

import httpx
import joserfc.jwt as jwt
import pyotp
import pytest
import sqlalchemy as sa

from idp import factors
from idp.models import User, db
from tests.conftest import PASSWORD
from tests.relying_party import Browser, RelyingParty, csrf_token

pytestmark = pytest.mark.e2e

ADA = "ada@example.com"


@pytest.fixture
def world(live_server, make_user, make_client):
    make_user(ADA)
    photos = make_client("Photos")
    rp = RelyingParty(live_server.url, photos.client_id, photos.client_secret,
                      photos.redirect_uri)
    return live_server, rp


def enrol(live, clock) -> str:
    """An authenticator app for ada (as /account/security would do it)."""
    with live.app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == ADA))
        sealer = live.app.extensions["idp"].sealer
        started = factors.start_totp(user, issuer_name="test", sealer=sealer, now=clock.now())
        assert factors.confirm_totp(user, started.factor_id, code_now(started.secret, clock),
                                    sealer=sealer, now=clock.now()) is not None
        db.session.commit()
        db.session.remove()
    return started.secret


def code_now(secret: str, clock) -> str:
    return pyotp.TOTP(secret).at(int(clock.now().timestamp()))


def authorize(rp: RelyingParty, browser: Browser, **extra) -> tuple[httpx.Response, dict]:
    url, secrets_ = rp.authorization_url(**extra)
    return browser.go(url, stop_at=rp.redirect_uri), secrets_


def finish(rp: RelyingParty, response: httpx.Response, secrets_: dict, clock) -> dict:
    """Exchange the code; the ID token verified against the JWKS at the test clock's time."""
    params = rp.callback_params(response)
    tokens = rp.exchange(params["code"], secrets_["code_verifier"])
    token = jwt.decode(tokens["id_token"], rp.keys(), algorithms=["RS256", "ES256"])
    jwt.JWTClaimsRegistry(
        now=int(clock.now().timestamp()), iss={"essential": True, "value": rp.issuer},
        aud={"essential": True, "value": rp.client_id}, nonce={"essential": True,
                                                               "value": secrets_["nonce"]},
        exp={"essential": True}, iat={"essential": True}, sid={"essential": True},
    ).validate(token.claims)
    return token.claims


def confirm(browser: Browser, page: httpx.Response, rp: RelyingParty, **fields):
    assert page.status_code == 200 and "Confirm it" in page.text, page.text[:300]
    return browser.go(urljoin(str(page.url), "/login/again"), method="POST",
                      stop_at=rp.redirect_uri,
                      data={"csrf_token": csrf_token(page.text), **fields})


def test_acr_values_mfa_steps_a_password_session_up_in_place(world, clock):
    live, rp = world
    browser = Browser(live.url)
    first_page, first = authorize(rp, browser)
    signed_in = browser.login(first_page, ADA, PASSWORD, stop_at=rp.redirect_uri)
    before = finish(rp, signed_in, first, clock)
    assert (before["amr"], before["acr"]) == (["pwd"], "pwd")
    secret = enrol(live, clock)
    clock.advance(minutes=3)

    page, second = authorize(rp, browser, acr_values="mfa")
    # Wrong code: refused, still on the page.
    wrong = browser.go(urljoin(str(page.url), "/login/again"), method="POST",
                       data={"csrf_token": csrf_token(page.text), "password": PASSWORD,
                             "code": "000000" if code_now(secret, clock) != "000000" else "1"})
    assert wrong.status_code == 401
    done = confirm(browser, page, rp, password=PASSWORD, code=code_now(secret, clock))
    after = finish(rp, done, second, clock)
    assert after["sid"] == before["sid"]
    assert (after["amr"], after["acr"]) == (["pwd", "otp", "mfa"], "mfa")
    assert after["auth_time"] == int(clock.now().timestamp()) > before["auth_time"]
    # Satisfied now: the next request asking for it goes straight through.
    again, third = authorize(rp, browser, acr_values="mfa")
    assert finish(rp, again, third, clock)["sid"] == before["sid"]


def test_max_age_asks_the_same_session_to_prove_itself_again(world, clock):
    live, rp = world
    browser = Browser(live.url)
    page, first = authorize(rp, browser)
    signed_in = browser.login(page, ADA, PASSWORD, stop_at=rp.redirect_uri)
    before = finish(rp, signed_in, first, clock)
    clock.advance(minutes=10)
    fresh, second = authorize(rp, browser, max_age="300")
    done = confirm(browser, fresh, rp, password=PASSWORD)
    after = finish(rp, done, second, clock)
    assert after["sid"] == before["sid"]
    assert after["auth_time"] == int(clock.now().timestamp())
    assert after["auth_time"] - before["auth_time"] == 600
    # Within max_age: no prompt.
    clock.advance(minutes=1)
    quiet, third = authorize(rp, browser, max_age="300")
    assert finish(rp, quiet, third, clock)["auth_time"] == after["auth_time"]


def test_max_age_zero_asks_once_and_then_answers(world, clock):
    """OIDC: max_age=0 means "sign in again" — once. Right after signing in (the same
    instant, as the test clock stands still) the user is asked once, then the relying
    party gets its code; the same session, auth_time the moment of the proof."""
    live, rp = world
    browser = Browser(live.url)
    page, first = authorize(rp, browser, max_age="0")
    signed_in = browser.login(page, ADA, PASSWORD, stop_at=rp.redirect_uri)
    before = finish(rp, signed_in, first, clock)  # just signed in: no second prompt
    again, second = authorize(rp, browser, max_age="0")  # the same instant: asked anyway
    assert "Confirm it" in again.text  # the prompt, once
    done = confirm(browser, again, rp, password=PASSWORD)
    after = finish(rp, done, second, clock)
    assert after["sid"] == before["sid"]
    assert after["auth_time"] == int(clock.now().timestamp())


@pytest.mark.parametrize("max_age", ["²", "٣", "-1", "1.5", "1" * 11, " 5"])
def test_a_max_age_that_is_not_plain_digits_is_invalid_request(world, clock, max_age):
    live, rp = world
    browser = Browser(live.url)
    page, first = authorize(rp, browser)
    finish(rp, browser.login(page, ADA, PASSWORD, stop_at=rp.redirect_uri), first, clock)
    refused, _ = authorize(rp, browser, max_age=max_age)
    params = rp.callback_params(refused)
    assert params["error"] == "invalid_request" and "max_age" in params["error_description"]


def test_an_essential_acr_the_user_cannot_reach_is_refused(world, clock):
    live, rp = world
    browser = Browser(live.url)
    page, first = authorize(rp, browser)
    finish(rp, browser.login(page, ADA, PASSWORD, stop_at=rp.redirect_uri), first, clock)
    claims = json.dumps({"id_token": {"acr": {"essential": True, "values": ["mfa"]}}})
    refused, _ = authorize(rp, browser, claims=claims)
    params = rp.callback_params(refused)
    assert params["error"] == "unmet_authentication_requirements"
    # Voluntary, it is answered with what was achieved.
    voluntary, second = authorize(rp, browser, acr_values="mfa")
    assert finish(rp, voluntary, second, clock)["acr"] == "pwd"


def test_discovery_lists_the_acr_values(world):
    _, rp = world
    assert rp.metadata["acr_values_supported"] == ["pwd", "mfa"]
    assert rp.metadata["claims_parameter_supported"] is True
    assert "acr" in rp.metadata["claims_supported"]


def test_a_session_that_signed_in_with_a_second_factor_reproves_both(world, clock):
    live, rp = world
    secret = enrol(live, clock)
    clock.advance(minutes=1)
    browser = Browser(live.url)
    page, first = authorize(rp, browser)
    code_page = browser.login(page, ADA, PASSWORD, stop_at=rp.redirect_uri)
    assert "Enter your code" in code_page.text
    done = browser.go(urljoin(str(code_page.url), "/login/code"), method="POST",
                      stop_at=rp.redirect_uri,
                      data={"csrf_token": csrf_token(code_page.text),
                            "code": code_now(secret, clock)})
    before = finish(rp, done, first, clock)
    assert before["acr"] == "mfa"
    clock.advance(minutes=10)
    fresh, second = authorize(rp, browser, max_age="60")
    assert "authenticator app" in fresh.text
    done = confirm(browser, fresh, rp, password=PASSWORD, code=code_now(secret, clock))
    after = finish(rp, done, second, clock)
    assert (after["sid"], after["acr"]) == (before["sid"], "mfa")
    assert timedelta(seconds=after["auth_time"] - before["auth_time"]) == timedelta(minutes=10)
