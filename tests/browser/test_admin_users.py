"""The administrators' users page in real Chromium: an owner changes a member's role and
disables an admin; an admin sees no button for the owner (the role ordering, ``roles``)."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser

PEOPLE = {"olive@acme.test": "owner", "adam@acme.test": "admin", "mia@acme.test": "member"}


def sign_in(page, base: str, email: str) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(f"{base}/account/sessions")


def row(page, email: str):
    return page.locator("tr", has_text=email)


def test_an_owner_manages_roles_and_an_admin_cannot_touch_the_owner(
        chromium, live_server, make_account, make_user, screenshots):
    base = live_server.url
    account = make_account("acme")
    for email, role in PEOPLE.items():
        make_user(email, account_id=account, role=role, name=email.split("@")[0].title())

    # An admin: the owner's row offers nothing but their sessions; a member's offers Disable.
    admin = chromium.new_context(viewport={"width": 1000, "height": 700}).new_page()
    sign_in(admin, base, "adam@acme.test")
    admin.goto(f"{base}/admin/users")
    assert row(admin, "olive@acme.test").get_by_role("button").count() == 0
    assert row(admin, "mia@acme.test").get_by_role("button", name="Disable").is_visible()
    assert row(admin, "mia@acme.test").get_by_role("button", name="Change role").count() == 0
    # Typed by hand, the owner's disable page is refused, and nothing changes.
    owner_sub = row(admin, "olive@acme.test").get_by_role("link", name="Sessions") \
        .get_attribute("href").split("/")[3]
    refused = admin.goto(f"{base}/admin/users/{owner_sub}/disable")
    assert refused.status == 403 and "ask an owner" in admin.content()
    admin.context.close()

    # The owner makes Mia an admin, then disables Adam (after confirming).
    owner = chromium.new_context(viewport={"width": 1000, "height": 700}).new_page()
    sign_in(owner, base, "olive@acme.test")
    owner.goto(f"{base}/admin/users")
    assert row(owner, "olive@acme.test").get_by_role("button", name="Change role").count() == 0
    mia = row(owner, "mia@acme.test")
    mia.get_by_label("New role for mia@acme.test").select_option("admin")
    mia.get_by_role("button", name="Change role").click()
    owner.get_by_text("mia@acme.test is now admin (was member).").wait_for()
    assert row(owner, "mia@acme.test").locator("td").nth(1).inner_text() == "admin"
    owner.screenshot(path=str(screenshots / "admin-users.png"), full_page=True)
    row(owner, "adam@acme.test").get_by_role("button", name="Disable").click()
    owner.get_by_role("heading", name="Disable adam@acme.test?").wait_for()
    owner.get_by_role("button", name="Confirm").click()
    owner.wait_for_url(f"{base}/admin/users")
    assert "disabled" in row(owner, "adam@acme.test").inner_text()
    owner.context.close()
