"""Approving a command-line tool's sign-in in real Chromium: the user follows the
complete verification URI (or types the code), signs in, sees which tool asks for
what, approves or denies; the tool's polling gets tokens or access_denied."""

from __future__ import annotations

import httpx
import pytest

from idp import accounts
from idp.models import db
from tests.conftest import PASSWORD

GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture
def cli(live_server, make_user) -> str:
    make_user("ada@example.com")
    with live_server.app.app_context():
        client, _ = accounts.create_client(name="acme-cli", redirect_uris=[], public=True,
                                           device=True, now=live_server.clock.now())
        db.session.commit()
        return client.client_id


def start(live_server, cli: str) -> dict:
    response = httpx.post(f"{live_server.url}/oauth/device",
                          data={"client_id": cli, "scope": "openid email"}, timeout=10)
    assert response.status_code == 200
    return response.json()


def poll(live_server, cli: str, device_code: str) -> dict:
    live_server.clock.advance(seconds=5)
    return httpx.post(f"{live_server.url}/oauth/token", timeout=10, data={
        "grant_type": GRANT, "device_code": device_code, "client_id": cli}).json()


def sign_in(page) -> None:
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_approve_from_the_complete_uri_then_deny_a_typed_code(chromium, live_server, cli):
    context = chromium.new_context()
    try:
        page = context.new_page()
        first = start(live_server, cli)
        page.goto(first["verification_uri_complete"])
        assert page.url == f"{live_server.url}/login"
        sign_in(page)
        page.wait_for_url(f"{live_server.url}/device?user_code=*")
        assert page.get_by_role("heading").inner_text() == "Sign in acme-cli?"
        card = page.locator("section.card").inner_text()
        assert first["user_code"] in card and "See your email address" in card
        page.get_by_role("button", name="Approve").click()
        page.wait_for_url(f"{live_server.url}/account/sessions")
        assert "Approved. acme-cli is signed in" in page.get_by_role("status").inner_text()
        row = page.locator("li.session", has_text="acme-cli")
        assert row.count() == 1 and "Active" in row.inner_text()
        assert "This device" not in row.inner_text()
        tokens = poll(live_server, cli, first["device_code"])
        assert tokens.get("access_token") and tokens.get("refresh_token"), tokens

        # A second request: the user types the code loosely on the plain /device page.
        second = start(live_server, cli)
        page.goto(f"{live_server.url}/device")
        page.get_by_label("Code").fill(second["user_code"].replace("-", " ").lower())
        page.get_by_role("button", name="Continue").click()
        assert page.get_by_role("heading").inner_text() == "Sign in acme-cli?"
        page.get_by_role("button", name="Deny").click()
        page.wait_for_url(f"{live_server.url}/account/sessions")
        assert "Denied. acme-cli was not signed in." in page.get_by_role("status").inner_text()
        assert poll(live_server, cli, second["device_code"])["error"] == "access_denied"
        assert page.locator("li.session", has_text="acme-cli").count() == 1

        # A wrong code says so, next to the field.
        page.goto(f"{live_server.url}/device")
        page.get_by_label("Code").fill("BBBB-BBBB")
        page.get_by_role("button", name="Continue").click()
        assert "not valid or has expired" in page.get_by_role("alert").inner_text()
    finally:
        context.close()
