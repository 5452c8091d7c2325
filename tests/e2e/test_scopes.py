"""Scopes as relying parties and users meet them, over real HTTP (httpx and Authlib's
client): unknown values are ignored (OIDC Core 3.1.2.1), a known scope the client may not
have is refused naming what it may ask for, and ``admin`` is issued only to an account's
administrators, whichever way the grant is approved (consent page, no consent, device)."""

from __future__ import annotations

import httpx
import pytest

from idp import accounts
from idp.models import db
from tests.conftest import PASSWORD
from tests.flows import obtain_tokens
from tests.relying_party import Browser, RelyingParty, csrf_token

pytestmark = pytest.mark.e2e

ADA, ADAM = "ada@example.com", "adam@example.com"  # a member, an administrator
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture
def people(make_account, make_user):
    account = make_account("acme")
    make_user(ADA, account_id=account)
    make_user(ADAM, account_id=account, role="admin", name="Adam Admin")


def party(live_server, make_client, *, first_party: bool, scope: str) -> RelyingParty:
    client = make_client("Console", scope=scope, first_party=first_party)
    return RelyingParty(live_server.url, client.client_id, client.client_secret,
                        client.redirect_uri)


def granted(rp: RelyingParty, tokens: dict) -> set[str]:
    """The scope a resource server learns the token carries."""
    return set(rp.introspect(tokens["access_token"]).json()["scope"].split())


@pytest.mark.parametrize("first_party", [True, False], ids=["no consent", "consent page"])
def test_only_administrators_are_issued_the_admin_scope(live_server, make_client, people,
                                                        first_party):
    rp = party(live_server, make_client, first_party=first_party,
               scope="openid email sessions admin")
    asked = "openid sessions admin"
    member = obtain_tokens(rp, Browser(live_server.url), ADA, scope=asked)
    assert granted(rp, member) == {"openid", "sessions"}
    assert rp.refresh(member["refresh_token"]).json()["scope"] == "openid sessions"
    admin = obtain_tokens(rp, Browser(live_server.url), ADAM, scope=asked)
    assert granted(rp, admin) == {"openid", "sessions", "admin"}


def test_the_consent_page_shows_exactly_what_will_be_issued(live_server, make_client, people):
    rp = party(live_server, make_client, first_party=False, scope="openid email sessions admin")
    browser = Browser(live_server.url)
    url, secrets = rp.authorization_url(scope="openid email admin")
    page = browser.login(browser.go(url), ADA, PASSWORD, stop_at=rp.redirect_uri)
    assert "wants to access your account" in page.text
    assert "See your email address" in page.text
    assert "Manage your organisation" not in page.text  # not offered: it will not be issued
    answer = browser.go(str(page.url), method="POST", stop_at=rp.redirect_uri,
                        data={"csrf_token": csrf_token(page.text), "allow": "Allow"})
    tokens = rp.exchange(rp.callback_params(answer)["code"], secrets["code_verifier"])
    assert granted(rp, tokens) == {"openid", "email"}


def test_a_member_approving_a_device_does_not_give_it_the_admin_scope(live_server, people):
    with live_server.app.app_context():
        cli, _ = accounts.create_client(name="acme-cli", redirect_uris=[], public=True,
                                        device=True, scope="openid sessions admin",
                                        now=live_server.clock.now())
        db.session.commit()
        cli_id = cli.client_id
    base = live_server.url
    with httpx.Client(timeout=10, trust_env=False) as http:
        for email, expected in ((ADA, "openid sessions"), (ADAM, "openid sessions admin")):
            start = http.post(f"{base}/oauth/device",
                              data={"client_id": cli_id, "scope": "openid sessions admin"}).json()
            browser = Browser(base)
            browser.login(browser.go(f"{base}/login"), email, PASSWORD)
            page = browser.go(f"{base}/device?user_code={start['user_code']}")
            assert ("Manage your organisation" in page.text) == (email == ADAM)
            browser.go(f"{base}/device/decide", method="POST", data={
                "csrf_token": csrf_token(page.text), "user_code": start["user_code"],
                "decision": "approve"})
            token = http.post(f"{base}/oauth/token", data={
                "grant_type": DEVICE_GRANT, "device_code": start["device_code"],
                "client_id": cli_id})
            assert token.status_code == 200, token.text
            assert token.json()["scope"] == expected, email


def test_scope_values_the_provider_does_not_know_are_ignored(live_server, make_client, people):
    rp = party(live_server, make_client, first_party=True, scope="openid profile email")
    tokens = obtain_tokens(rp, Browser(live_server.url), ADA,
                           scope="openid offline_access address phone email")
    assert granted(rp, tokens) == {"openid", "email"}
    assert rp.verify_id_token(tokens["id_token"], None)["email"] == ADA


def test_a_scope_the_client_may_not_have_is_refused_naming_what_it_may_ask_for(
        live_server, make_client, people):
    rp = party(live_server, make_client, first_party=True, scope="profile email")
    url, _ = rp.authorization_url(scope="openid email")
    error = rp.callback_params(Browser(live_server.url).go(url, stop_at=rp.redirect_uri))
    assert error["error"] == "invalid_scope" and "code" not in error
    assert "openid" in error["error_description"]
    assert "profile email" in error["error_description"]
