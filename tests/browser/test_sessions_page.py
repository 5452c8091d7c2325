"""The sessions page as users see it, in real Chromium: two devices, one ends the other."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import PASSWORD
from tests.relying_party import RelyingParty

DOCS = Path(__file__).resolve().parents[2] / "docs"
MAC_CHROME = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
              "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36")
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1")


@pytest.fixture
def rp(live_server, make_user, make_client):
    make_user("ada@example.com")
    client = make_client("Photos", redirect_uri="http://127.0.0.1:9/callback")
    return RelyingParty(live_server.url, client.client_id, client.client_secret,
                        client.redirect_uri)


def sign_in(page, base: str) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/account/sessions")


def sign_in_to_rp(page, rp: RelyingParty) -> dict:
    """Authorize through the browser; the RP's callback is intercepted; tokens exchanged."""
    seen = {}

    def handle(route):
        seen["url"] = route.request.url
        route.fulfill(status=200, body="ok", content_type="text/plain")

    page.route(f"{rp.redirect_uri}**", handle)
    url, secrets_ = rp.authorization_url()
    page.goto(url)
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{rp.redirect_uri}**")
    code = seen["url"].split("code=")[1].split("&")[0]
    return rp.exchange(code, secrets_["code_verifier"])


def test_one_device_ends_the_other_then_ends_all(chromium, live_server, rp, screenshots):
    laptop = chromium.new_context(user_agent=MAC_CHROME, viewport={"width": 1100, "height": 900})
    phone = chromium.new_context(user_agent=IPHONE, viewport={"width": 360, "height": 780})
    phone_page = phone.new_page()
    tokens = sign_in_to_rp(phone_page, rp)
    refreshed = rp.refresh(tokens["refresh_token"])
    assert refreshed.status_code == 200
    tokens = refreshed.json()

    page = laptop.new_page()
    sign_in(page, live_server.url)
    rows = page.locator("li.session")
    assert rows.count() == 2
    mine = page.locator("li.session", has=page.locator(".badge.current"))
    assert mine.count() == 1 and "Chrome on macOS" in mine.inner_text()
    other = page.locator("li.session", has_text="Safari on iPhone")
    assert "This device" not in other.inner_text()
    other.locator("summary").click()
    assert "Photos" in other.locator("table.apps").inner_text()
    page.screenshot(path=str(screenshots / "sessions.png"), full_page=True)
    if os.environ.get("IDP_UPDATE_DOCS"):  # refresh the README's screenshot on purpose only
        page.screenshot(path=str(DOCS / "sessions.png"), full_page=True)

    other.get_by_role("button", name="End session").click()
    summary = page.locator("#summary").inner_text()
    assert summary == ("Signs out Safari on iPhone (this computer) and revokes access for "
                       "1 app: Photos.")
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url(f"{live_server.url}/account/sessions")
    assert "Ended the session on Safari on iPhone" in page.get_by_role("status").inner_text()
    assert "Ended by you" in page.locator("li.session", has_text="Safari on iPhone").inner_text()

    phone_page.goto(f"{live_server.url}/account/sessions")
    assert phone_page.url == f"{live_server.url}/login"
    refused = rp.refresh(tokens["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert rp.introspect(tokens["access_token"]).json() == {"active": False}

    page.get_by_role("button", name="End all sessions").click()
    assert "this device included" in page.locator("#summary").inner_text()
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url(f"{live_server.url}/login")
    page.goto(f"{live_server.url}/account/sessions")
    assert page.url == f"{live_server.url}/login"
    laptop.close()
    phone.close()


def test_a_hostile_user_agent_is_shown_as_text(chromium, live_server, rp):
    hostile = chromium.new_context(
        user_agent='<script>window.pwned=1</script><img src=x onerror="window.pwned=2">')
    page = hostile.new_page()
    sign_in(page, live_server.url)
    page.locator("li.session summary").first.click()
    assert "<script>window.pwned=1</script>" in page.locator("li.session code").first.inner_text()
    assert page.evaluate("window.pwned") is None
    hostile.close()
