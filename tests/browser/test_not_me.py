"""A sign-in Ada does not recognise, from the email to the end, in real Chromium.

Someone signs in to Photos as Ada from another device (an independent relying party:
httpx and Authlib's client). The provider's worker sends the new-device notice over SMTP
to a real server on a loopback port (aiosmtpd). Ada, in Chromium, opens "This wasn't me"
from the captured email: that session ends, Photos' refresh token fails with
``invalid_grant``, Photos' back-channel receiver gets a logout token for that session, her
sessions page says "Ended: reported by you", and the link is refused the second time."""

from __future__ import annotations

import re

import joserfc.jwt as jwt
import pytest

from idp.models import db
from tests.conftest import PASSWORD
from tests.e2e.processes import serving
from tests.e2e.test_backchannel_logout import Receiver
from tests.flows import obtain_tokens
from tests.relying_party import Browser, RelyingParty

ADA = "ada@example.com"


@pytest.fixture
def settings(settings, smtp_port):
    # (Sent at once: the relying party checks tokens against the wall clock, so the test's
    # clock stays put; the 15-s delay is tested in tests/test_notices.py.)
    return {**settings, "SMTP_URL": f"smtp://127.0.0.1:{smtp_port}?starttls=no",
            "NOTICE_DELAY": "0s"}


@pytest.fixture
def receiver():
    bc = Receiver()
    with serving(bc) as port:
        bc.url = f"http://127.0.0.1:{port}"
        yield bc


def send_due_mail(live) -> None:
    """What `idp worker` does on its next pass."""
    with live.app.app_context():
        try:
            live.app.extensions["idp.mail"].run_due()
        finally:
            db.session.remove()


def test_this_wasnt_me_from_the_email_ends_that_session_everywhere(
        chromium, live_server, make_user, make_client, inbox, receiver, screenshots):
    live = live_server
    base = live.url
    make_user(ADA)
    photos = make_client("Photos", backchannel_logout_uri=f"{receiver.url}/bc/photos",
                         redirect_uri="http://127.0.0.1:9/photos/cb")
    rp = RelyingParty(base, photos.client_id, photos.client_secret, photos.redirect_uri)

    # Ada signs in in Chromium (her own browser: that notice is the first one).
    context = chromium.new_context(viewport={"width": 900, "height": 900})
    page = context.new_page()
    page.goto(f"{base}/login")
    page.get_by_label("Email").fill(ADA)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(f"{base}/account/sessions")
    send_due_mail(live)
    assert len(inbox.messages) == 1

    # Someone else, with her password, signs in to Photos from another device.
    intruder = obtain_tokens(rp, Browser(base), ADA)
    intruder_sid = rp.verify_id_token(intruder["id_token"], None)["sid"]
    send_due_mail(live)
    assert len(inbox.messages) == 2
    notice = inbox.messages[1]
    assert notice["To"] == ADA and notice["Subject"] == "New sign-in to your 127.0.0.1 account"
    text = notice.get_body(("plain",)).get_content()
    assert "Signed in to: Photos" in text
    link = re.search(r"(http://\S+/not-me/\S+)", text).group(1)

    # The notice as a mail program shows it.
    mail_view = context.new_page()
    mail_view.set_content(notice.get_body(("html",)).get_content())
    mail_view.screenshot(path=str(screenshots / "new-device-email.png"), full_page=True)
    mail_view.close()

    # "This wasn't me": the page shows the sign-in and asks for one click.
    page.goto(link)
    page.get_by_role("heading", name="End this sign-in?").wait_for()
    assert "Photos" in page.locator("#summary").inner_text()
    page.screenshot(path=str(screenshots / "not-me.png"), full_page=True)
    page.get_by_role("button", name="End that sign-in").click()
    page.get_by_role("heading", name="That sign-in is ended").wait_for()
    assert "Photos" in page.locator("#status").inner_text()
    page.screenshot(path=str(screenshots / "not-me-ended.png"), full_page=True)

    # Photos: the refresh token is dead, and the back-channel receiver was told.
    refused = rp.refresh(intruder["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert live.app.extensions["idp.logout"].drain(10)
    [logout_token] = receiver.tokens("photos")
    claims = jwt.decode(logout_token, rp.keys(), algorithms=["RS256", "ES256"]).claims
    assert claims["sid"] == intruder_sid and claims["aud"] == photos.client_id

    # Ada's own session lives on, and her sessions page says what happened.
    page.goto(f"{base}/account/sessions")
    row = page.locator(f"#session-{intruder_sid}")
    assert "Ended: reported by you" in row.inner_text()

    # The link works once.
    page.goto(link)
    page.get_by_role("heading", name="This link cannot be used").wait_for()
    context.close()


def test_a_forgotten_password_is_reset_from_the_email_in_the_browser(
        chromium, live_server, make_user, inbox, screenshots):
    base = live_server.url
    make_user(ADA)
    context = chromium.new_context(viewport={"width": 900, "height": 800})
    page = context.new_page()
    # Signed in somewhere else before: that session must end with the reset.
    earlier = Browser(base)
    assert earlier.login(earlier.go(f"{base}/login"), ADA, PASSWORD).url.path == \
        "/account/sessions"

    page.goto(f"{base}/login")
    page.get_by_role("link", name="Forgot your password?").click()
    page.get_by_label("Email").fill(ADA)
    page.get_by_role("button", name="Send me a link").click()
    page.get_by_role("heading", name="Check your email").wait_for()
    send_due_mail(live_server)
    reset = next(m for m in inbox.messages if m["Subject"].startswith("Set a new password"))
    link = re.search(r"(http://\S+/reset/\S+)", reset.get_body(("plain",)).get_content()).group(1)

    page.goto(link)
    page.get_by_label("New password", exact=True).fill("a brand new long password")
    page.get_by_label("New password again").fill("a brand new long password")
    page.screenshot(path=str(screenshots / "reset.png"), full_page=True)
    page.get_by_role("button", name="Set password and sign out everywhere").click()
    page.get_by_role("heading", name="Password changed").wait_for()
    assert "1 session ended" in page.locator("#done").inner_text()
    assert earlier.go(f"{base}/account/sessions").url.path == "/login"

    page.get_by_role("link", name="Sign in").click()
    page.get_by_label("Email").fill(ADA)
    page.get_by_label("Password").fill("a brand new long password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(f"{base}/account/sessions")
    page.goto(link)
    page.get_by_role("heading", name="This link cannot be used").wait_for()
    context.close()


def test_a_new_address_is_verified_from_the_email_and_apps_are_told(
        chromium, live_server, make_user, make_client, inbox, screenshots):
    base = live_server.url
    make_user(ADA, verified=False)  # as `idp create-user` without --verified: a link is sent
    photos = make_client("Photos", redirect_uri="http://127.0.0.1:9/photos/cb")
    rp = RelyingParty(base, photos.client_id, photos.client_secret, photos.redirect_uri)
    before = obtain_tokens(rp, Browser(base), ADA)
    assert rp.verify_id_token(before["id_token"], None)["email_verified"] is False

    send_due_mail(live_server)
    verify = next(m for m in inbox.messages if m["Subject"].startswith("Verify"))
    assert verify["To"] == ADA
    assert not any(m["Subject"].startswith("New sign-in") for m in inbox.messages)  # unverified
    link = re.search(r"(http://\S+/verify/\S+)", verify.get_body(("plain",)).get_content()
                     ).group(1)

    context = chromium.new_context(viewport={"width": 900, "height": 600})
    page = context.new_page()
    page.goto(link)  # opening it (as a mail scanner would) verifies nothing yet
    page.get_by_role("heading", name="Verify your email address").wait_for()
    assert ADA in page.locator("#summary").inner_text()
    assert rp.userinfo(before["access_token"]).json()["email_verified"] is False
    page.screenshot(path=str(screenshots / "verify-email.png"), full_page=True)
    page.get_by_role("button", name="Confirm").click()
    page.get_by_role("heading", name="Email address verified").wait_for()

    # Apps see it: in userinfo at once, and in the next ID token.
    assert rp.userinfo(before["access_token"]).json()["email_verified"] is True
    after = obtain_tokens(rp, Browser(base), ADA)
    assert rp.verify_id_token(after["id_token"], None)["email_verified"] is True

    page.goto(link)  # once only
    page.get_by_role("heading", name="This link cannot be used").wait_for()
    context.close()
