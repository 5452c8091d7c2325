"""Signing in to a relying party in a real browser."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD
from tests.relying_party import RelyingParty


@pytest.fixture
def rp(live_server, make_user, make_client):
    make_user("ada@example.com")
    client = make_client("Photos", first_party=False,
                         redirect_uri="http://127.0.0.1:9/callback")
    return RelyingParty(live_server.url, client.client_id, client.client_secret,
                        client.redirect_uri)


def _catch_callback(page, rp):
    """The RP is not running: intercept its callback and answer it ourselves."""
    seen = {}

    def handle(route):
        seen["url"] = route.request.url
        route.fulfill(status=200, body="callback received", content_type="text/plain")

    page.route(f"{rp.redirect_uri}**", handle)
    return seen


def test_sign_in_and_consent_in_a_browser(chromium, live_server, rp, screenshots):
    context = chromium.new_context(viewport={"width": 360, "height": 740})
    page = context.new_page()
    seen = _catch_callback(page, rp)
    url, secrets_ = rp.authorization_url()
    page.goto(url)
    assert page.title().startswith("Sign in")
    page.screenshot(path=str(screenshots / "login.png"), full_page=True)
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "Incorrect email or password."
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Photos wants to access your account").wait_for()
    page.screenshot(path=str(screenshots / "consent.png"), full_page=True)
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(f"{rp.redirect_uri}**")
    assert "code=" in seen["url"] and f"state={secrets_['state']}" in seen["url"]
    context.close()


def test_signing_in_directly_lands_on_the_account_page(chromium, live_server, rp):
    context = chromium.new_context()
    page = context.new_page()
    page.goto(f"{live_server.url}/login")
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server.url}/account/sessions")
    assert page.get_by_role("link", name="Account").is_visible()
    page.get_by_role("button", name="Log out").click()
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url(f"{live_server.url}/login")
    assert "You have been signed out." in page.content()
    context.close()
