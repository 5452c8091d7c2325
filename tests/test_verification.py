"""Verified addresses: a user an operator creates gets a link, nothing else goes to the
address until it is opened (no notice, no reset), and then ``email_verified`` says so in
userinfo."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from idp import links, verification
from idp.models import AuditEvent, User, db
from idp.oauth.grants import user_info
from tests.test_notices import BROWSER, deliver, outbox, sign_in

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


@pytest.fixture
def settings(settings, smtp_port):
    return {**settings, "SMTP_URL": f"smtp://127.0.0.1:{smtp_port}?starttls=no"}


@pytest.fixture
def grace(ctx, make_user) -> User:
    sub = make_user("grace@example.com", verified=False)
    return db.session.scalar(sa.select(User).where(User.sub == sub))


def link_in(message, path: str) -> str:
    return re.search(rf"/{path}/(\S+)", message.get_body(("plain",)).get_content()).group(1)


def test_an_unverified_address_gets_its_link_and_nothing_else(ctx, clock, grace, inbox):
    sign_in(grace, clock)
    assert [m.kind for m in outbox()] == ["verify_email"]  # no notice of the sign-in
    assert deliver(ctx, clock)["delivered"] == 1
    [message] = inbox.messages
    assert message["Subject"] == "Verify your email address for 127.0.0.1"
    from idp import resets

    resets.request("grace@example.com", now=clock.now())
    db.session.commit()
    assert deliver(ctx, clock)["dropped"] == 1  # no reset to an unverified address
    assert len(inbox.messages) == 1


def test_the_link_verifies_once_and_then_notices_go_there(app, ctx, clock, grace, inbox):
    deliver(ctx, clock)
    token = link_in(inbox.messages[0], "verify")
    browser = app.test_client()
    page = browser.get(f"/verify/{token}")
    assert page.status_code == 200 and "grace@example.com" in page.text
    db.session.remove()
    assert db.session.get(User, grace.id).email_verified is False  # opening it did nothing
    done = browser.post(f"/verify/{token}", data={"csrf_token": CSRF.search(page.text).group(1)})
    assert done.status_code == 200 and "is verified" in done.text
    db.session.remove()
    user = db.session.get(User, grace.id)
    assert user.email_verified is True
    assert user_info(user, "openid email")["email_verified"] is True  # ID token, userinfo
    assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent).where(
        AuditEvent.event == "email.verified")) == 1
    assert browser.get(f"/verify/{token}").status_code == 404
    sign_in(user, clock, BROWSER)
    assert [m.kind for m in outbox()] == ["verify_email", "new_device"]


def test_an_expired_or_other_link_verifies_nothing(ctx, clock, grace, inbox):
    deliver(ctx, clock)
    token = link_in(inbox.messages[0], "verify")
    clock.advance(days=7)
    with pytest.raises(links.LinkRefused):
        verification.confirm(token, now=clock.now(), ip=None)
    assert db.session.get(User, grace.id).email_verified is False


def test_the_account_page_sends_the_link_again(app, make_user, clock, inbox):
    make_user("grace@example.com", verified=False)
    browser = app.test_client()
    page = browser.get("/login")
    browser.post("/login", data={"csrf_token": CSRF.search(page.text).group(1),
                                 "email": "grace@example.com",
                                 "password": "correct horse battery staple"})
    security = browser.get("/account/security")
    assert "is not verified yet" in security.text
    again = browser.post("/account/security/verify-email",
                         data={"csrf_token": CSRF.search(security.text).group(1)})
    assert again.status_code == 303
    with app.app_context():
        assert [m.kind for m in outbox()] == ["verify_email", "verify_email"]
