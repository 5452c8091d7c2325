"""The whole login as a relying party sees it, over real HTTP, with an independent client."""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta
from urllib.parse import urljoin

import pytest

from tests.conftest import PASSWORD
from tests.relying_party import Browser, RelyingParty, csrf_token

pytestmark = pytest.mark.e2e


@pytest.fixture
def rp(live_server, make_user, make_client):
    make_user("ada@example.com")
    registered = make_client("Photos", first_party=False)
    return RelyingParty(live_server.url, registered.client_id, registered.client_secret,
                        registered.redirect_uri)


def sign_in(rp: RelyingParty, browser: Browser, **extra):
    """Authorize → login form → consent → back to the RP with a code."""
    url, secrets_ = rp.authorization_url(**extra)
    page = browser.go(url, stop_at=rp.redirect_uri)
    response = browser.login(page, "ada@example.com", PASSWORD, stop_at=rp.redirect_uri)
    if response.status_code == 200 and "wants to access your account" in response.text:
        assert "Photos" in response.text
        response = browser.go(
            str(response.url), method="POST", stop_at=rp.redirect_uri,
            data={"csrf_token": csrf_token(response.text), "allow": "Allow"},
        )
    params = rp.callback_params(response)
    assert params["state"] == secrets_["state"]
    assert params["iss"] == rp.issuer  # RFC 9207
    return params, secrets_


def test_full_login_refresh_reuse_introspect_revoke(rp, live_server):
    browser = Browser(live_server.url)
    params, secrets_ = sign_in(rp, browser)

    token = rp.exchange(params["code"], secrets_["code_verifier"])
    assert token["token_type"].lower() == "bearer"
    claims = rp.verify_id_token(token["id_token"], secrets_["nonce"])
    assert claims["email"] == "ada@example.com"
    assert claims["sid"] and claims["auth_time"] <= claims["iat"]
    assert claims["amr"] == ["pwd"]
    digest = hashlib.sha256(token["access_token"].encode()).digest()
    assert claims["at_hash"] == base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()

    header, at = rp.verify_access_token(token["access_token"])
    assert header["typ"] == "at+jwt"
    assert at["sid"] == claims["sid"] and at["client_id"] == rp.client_id
    assert at["sub"] == claims["sub"] and at["jti"]

    info = rp.userinfo(token["access_token"])
    assert info.status_code == 200
    assert info.json() == {**info.json(), "sub": claims["sub"], "email": "ada@example.com"}
    assert info.headers["cache-control"] == "no-store"

    refreshed = rp.refresh(token["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    second = refreshed.json()
    assert second["refresh_token"] != token["refresh_token"]

    reuse = rp.refresh(token["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    # Reuse revoked the whole family: the successor is dead too.
    assert rp.refresh(second["refresh_token"]).json()["error"] == "invalid_grant"
    assert rp.introspect(second["access_token"]).json() == {"active": False}
    assert rp.userinfo(second["access_token"]).status_code == 401


def test_introspection_and_revocation(rp, live_server):
    browser = Browser(live_server.url)
    params, secrets_ = sign_in(rp, browser)
    token = rp.exchange(params["code"], secrets_["code_verifier"])

    active = rp.introspect(token["access_token"]).json()
    assert active["active"] is True
    assert active["client_id"] == rp.client_id and active["sid"]
    assert active["username"] == "ada@example.com"
    rt = rp.introspect(token["refresh_token"], token_type_hint="refresh_token").json()
    assert rt["active"] is True and rt["token_type"] == "refresh_token"

    assert rp.http.post(rp.metadata["introspection_endpoint"],
                        data={"token": token["access_token"]}).status_code == 401
    assert rp.introspect("garbage").json() == {"active": False}

    assert rp.revoke(token["refresh_token"]).status_code == 200
    assert rp.introspect(token["access_token"]).json() == {"active": False}
    assert rp.introspect(token["refresh_token"]).json() == {"active": False}
    assert rp.refresh(token["refresh_token"]).json()["error"] == "invalid_grant"
    assert rp.revoke("unknown-token").status_code == 200


def test_code_is_one_time_and_replay_revokes_its_tokens(rp, live_server):
    browser = Browser(live_server.url)
    params, secrets_ = sign_in(rp, browser)
    token = rp.exchange(params["code"], secrets_["code_verifier"])
    replay = rp._post_token({"grant_type": "authorization_code", "code": params["code"],
                             "redirect_uri": rp.redirect_uri,
                             "code_verifier": secrets_["code_verifier"]})
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert rp.introspect(token["access_token"]).json() == {"active": False}
    assert rp.refresh(token["refresh_token"]).json()["error"] == "invalid_grant"


def test_code_expires_after_its_lifetime(rp, live_server):
    browser = Browser(live_server.url)
    params, secrets_ = sign_in(rp, browser)
    live_server.clock.advance(seconds=61)
    late = rp._post_token({"grant_type": "authorization_code", "code": params["code"],
                           "redirect_uri": rp.redirect_uri,
                           "code_verifier": secrets_["code_verifier"]})
    assert late.json()["error"] == "invalid_grant"


def test_wrong_pkce_verifier_is_refused(rp, live_server):
    browser = Browser(live_server.url)
    params, _ = sign_in(rp, browser)
    bad = rp._post_token({"grant_type": "authorization_code", "code": params["code"],
                          "redirect_uri": rp.redirect_uri, "code_verifier": "x" * 50})
    assert bad.json()["error"] == "invalid_grant"


def test_second_authorization_reuses_session_and_consent(rp, live_server):
    browser = Browser(live_server.url)
    first, _ = sign_in(rp, browser)
    url, secrets_ = rp.authorization_url()
    response = browser.go(url, stop_at=rp.redirect_uri)
    params = rp.callback_params(response)  # no login form, no consent page this time
    token = rp.exchange(params["code"], secrets_["code_verifier"])
    first_token_sid = rp.verify_id_token(token["id_token"], secrets_["nonce"])["sid"]
    assert first_token_sid


def test_prompt_none_without_session_returns_login_required(rp, live_server):
    url, secrets_ = rp.authorization_url(prompt="none")
    response = Browser(live_server.url).go(url, stop_at=rp.redirect_uri)
    params = rp.callback_params(response)
    assert params["error"] == "login_required"
    assert params["state"] == secrets_["state"] and params["iss"] == rp.issuer


def test_prompt_login_forces_a_new_sign_in_and_max_age_a_fresh_proof(rp, live_server):
    """prompt=login: the sign-in form (a new session); max_age past: the user proves it
    again in the same session (tests/e2e/test_step_up.py follows the sid)."""
    browser = Browser(live_server.url)
    sign_in(rp, browser)
    live_server.clock.advance(seconds=5)
    url, _ = rp.authorization_url(prompt="login")
    page = browser.go(url, stop_at=rp.redirect_uri)
    assert page.status_code == 200 and "Sign in" in page.text
    response = browser.login(page, "ada@example.com", PASSWORD, stop_at=rp.redirect_uri)
    assert "code" in rp.callback_params(response)
    live_server.clock.advance(seconds=5)
    url, _ = rp.authorization_url(max_age="0")
    page = browser.go(url, stop_at=rp.redirect_uri)
    assert page.status_code == 200 and "Confirm it" in page.text
    response = browser.go(urljoin(str(page.url), "/login/again"), method="POST",
                          stop_at=rp.redirect_uri,
                          data={"csrf_token": csrf_token(page.text), "password": PASSWORD})
    assert "code" in rp.callback_params(response)


def test_refresh_fails_once_session_is_idle_past_its_deadline(rp, live_server):
    browser = Browser(live_server.url)
    params, secrets_ = sign_in(rp, browser)
    token = rp.exchange(params["code"], secrets_["code_verifier"])
    live_server.clock.advance(hours=1, minutes=59)
    token = rp.refresh(token["refresh_token"]).json()  # activity: the idle clock restarts
    live_server.clock.advance(hours=1, minutes=59)
    still = rp.refresh(token["refresh_token"])
    assert still.status_code == 200
    live_server.clock.advance(timedelta(hours=2))
    assert rp.refresh(still.json()["refresh_token"]).json()["error"] == "invalid_grant"
    assert rp.introspect(still.json()["access_token"]).json() == {"active": False}
