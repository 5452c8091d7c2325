"""Passkeys in real Chromium, with the browser's own WebAuthn stack and a virtual
authenticator (Chrome DevTools Protocol, WebAuthn domain): enrol from the account page,
step up for a relying party that asks ``acr_values=mfa``, sign in with the passkey alone,
and use it as the second factor after the password. The relying party is independent
(httpx, Authlib's client, joserfc against the published JWKS)."""

from __future__ import annotations

import re

import joserfc.jwt as jwt
import pytest

from tests.conftest import PASSWORD
from tests.relying_party import RelyingParty

ADA = "ada@example.com"


@pytest.fixture
def world(localhost_server, make_user, make_client):
    make_user(ADA)
    # The RP's callback: a path of the provider's own origin (it answers 404), so the
    # browser lands there and the test reads the code from the address bar.
    client = make_client("Photos", first_party=True,
                         redirect_uri=f"{localhost_server.url}/rp-callback")
    return localhost_server, RelyingParty(localhost_server.url, client.client_id,
                                          client.client_secret, client.redirect_uri)


def with_authenticator(context, page):
    """A platform authenticator that holds discoverable credentials and verifies its
    user (as a laptop's fingerprint reader does), answering without a prompt."""
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    return cdp, cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True,
        "automaticPresenceSimulation": True}})["authenticatorId"]


def sign_in_with_password(page, base: str) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("Email").fill(ADA)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()


def sign_out(page, base: str) -> None:
    page.goto(f"{base}/account/sessions")
    page.get_by_role("button", name="Log out").click()
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url(f"{base}/login")


def test_passkey_enrol_step_up_sign_in_alone_and_as_second_factor(chromium, world, screenshots):
    live, rp = world
    base = live.url
    context = chromium.new_context(viewport={"width": 900, "height": 900})
    page = context.new_page()
    cdp, authenticator = with_authenticator(context, page)

    # A password-only session, then a passkey added from the account page.
    sign_in_with_password(page, base)
    page.wait_for_url(f"{base}/account/sessions")
    sid = next(c["value"] for c in context.cookies() if c["name"] == "idp_session").split(".")[0]
    page.goto(f"{base}/account/security")
    page.get_by_role("link", name="Add a passkey").click()
    page.get_by_label("Name for this passkey").fill("This laptop")
    page.screenshot(path=str(screenshots / "passkey-add.png"), full_page=True)
    page.get_by_role("button", name="Create passkey").click()
    page.get_by_text("shown only now").wait_for()
    assert len(cdp.send("WebAuthn.getCredentials",
                        {"authenticatorId": authenticator})["credentials"]) == 1
    page.goto(f"{base}/account/security")
    assert "This laptop" in page.locator("#passkeys").inner_text()
    page.screenshot(path=str(screenshots / "security.png"), full_page=True)

    # A relying party asks for multi-factor: the same session proves the passkey.
    url, secrets_ = rp.authorization_url(acr_values="mfa")
    page.goto(url)
    page.wait_for_url(f"{base}/login/again")
    page.get_by_role("button", name="Use your passkey").click()
    page.wait_for_url(f"{rp.redirect_uri}**")
    code = re.search(r"[?&]code=([^&]+)", page.url).group(1)
    tokens = rp.exchange(code, secrets_["code_verifier"])
    claims = jwt.decode(tokens["id_token"], rp.keys(), algorithms=["RS256", "ES256"]).claims
    assert claims["acr"] == "mfa" and "hwk" in claims["amr"] and "mfa" in claims["amr"]
    assert claims["sid"] == sid  # stepped up within the same login session
    page.goto(f"{base}/account/sessions")
    assert "Passkey" in page.locator(f"#session-{sid}").inner_text()

    # Signed out, the passkey alone signs in: no email typed.
    sign_out(page, base)
    page.screenshot(path=str(screenshots / "login-passkey.png"), full_page=True)
    page.get_by_role("button", name="Sign in with a passkey").click()
    page.wait_for_url(f"{base}/account/sessions")
    alone = next(c["value"] for c in context.cookies()
                 if c["name"] == "idp_session").split(".")[0]
    assert alone != sid
    assert "Passkey" in page.locator(f"#session-{alone}").inner_text()

    # The password, then the passkey as the second factor.
    sign_out(page, base)
    sign_in_with_password(page, base)
    page.wait_for_url(f"{base}/login/code")
    page.get_by_role("button", name="Use your passkey").click()
    page.wait_for_url(f"{base}/account/sessions")
    both = next(c["value"] for c in context.cookies()
                if c["name"] == "idp_session").split(".")[0]
    assert "Password and passkey" in page.locator(f"#session-{both}").inner_text()
    page.screenshot(path=str(screenshots / "sessions-methods.png"), full_page=True)
    context.close()


def test_an_ip_issuer_says_why_passkeys_cannot_work(chromium, live_server, make_user):
    make_user(ADA)
    context = chromium.new_context()
    page = context.new_page()
    page.goto(f"{live_server.url}/login")
    assert page.get_by_role("button", name="Sign in with a passkey").count() == 0
    sign_in_with_password(page, live_server.url)
    page.goto(f"{live_server.url}/account/security")
    notice = page.locator("#passkeys-unavailable").inner_text()
    assert "browsers refuse an IP address" in notice and "IDP_ISSUER=http://localhost" in notice
    assert page.get_by_role("link", name="Add a passkey").count() == 0
    context.close()
