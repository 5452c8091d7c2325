"""Password reset by email: the same answer and the same work whether or not the address
is an account's, one email through real SMTP (aiosmtpd), a link that works once for an
hour, every session ended, and the throttles per address and per IP."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from idp import credentials, links, resets, sessions, tokens
from idp.models import (
    AuditEvent,
    Client,
    EmailLink,
    EndReason,
    LoginSession,
    LogoutDelivery,
    MailAttempt,
    MailMessage,
    User,
    db,
)
from tests.conftest import PASSWORD
from tests.flows import start_session
from tests.test_notices import BROWSER, deliver

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
NEW = "a brand new long password"


@pytest.fixture
def settings(settings, smtp_port):
    return {**settings, "SMTP_URL": f"smtp://127.0.0.1:{smtp_port}?starttls=no",
            "BACKCHANNEL_IMMEDIATE": False}


@pytest.fixture
def ada(app, make_user, clock) -> str:
    """Ada with two sessions, one holding a Photos family that gets back-channel logout."""
    sub = make_user("ada@example.com")
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.sub == sub))
        photos = db.session.get(Client, _photos(app, clock))
        for _ in range(2):
            session = start_session(user, BROWSER, now=clock.now()).session
        tokens.start_family(session=session, client=photos, scope="openid", now=clock.now())
        db.session.commit()
    return sub


def _photos(app, clock) -> str:
    from idp import accounts

    client, _secret = accounts.create_client(
        name="Photos", redirect_uris=["http://127.0.0.1:9/cb"],
        backchannel_logout_uri="http://127.0.0.1:9/bc", now=clock.now())
    return client.client_id


def ask(browser, address: str):
    page = browser.get("/login/forgot")
    return browser.post("/login/forgot", data={"csrf_token": CSRF.search(page.text).group(1),
                                               "email": address})


def reset_link(inbox) -> str:
    text = inbox.messages[-1].get_body(("plain",)).get_content()
    return re.search(r"/reset/(\S+)", text).group(1)


def statements(app, action) -> list[str]:
    """The SQL a request runs (parameters apart): what it costs, whatever the address."""
    seen: list[str] = []
    with app.app_context():
        engine = db.engine

    def record(_conn, _cursor, statement, *_args):
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return seen


def test_an_unknown_address_gets_the_same_page_the_same_work_and_no_email(
        app, ada, clock, inbox):
    known, unknown = app.test_client(), app.test_client()
    answers = {}
    work = {
        "known": statements(app, lambda: answers.update(known=ask(known, "Ada@Example.com "))),
        "unknown": statements(app, lambda: answers.update(
            unknown=ask(unknown, "nobody@example.com"))),
    }
    assert work["known"] == work["unknown"]  # the same statements, in the same order
    assert answers["known"].status_code == answers["unknown"].status_code == 200
    strip = re.compile(r"<strong>[^<]*</strong>|" + CSRF.pattern)
    assert strip.sub("", answers["known"].text) == strip.sub("", answers["unknown"].text)
    assert "If an account uses <strong>nobody@example.com</strong>" in answers["unknown"].text
    with app.app_context():
        counts = deliver(app, clock)
    assert counts["dropped"] == 1  # nobody@example.com: nothing sent
    [message] = [m for m in inbox.messages if m["Subject"].startswith("Set a new password")]
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Set a new password for your 127.0.0.1 account"


def test_the_link_sets_a_new_password_ends_every_session_and_works_once(
        app, ada, clock, inbox):
    browser = app.test_client()
    ask(browser, "ada@example.com")
    with app.app_context():
        deliver(app, clock)
    link = reset_link(inbox)
    page = browser.get(f"/reset/{link}")
    assert page.status_code == 200 and "ada@example.com" in page.text
    short = browser.post(f"/reset/{link}", data={"csrf_token": CSRF.search(page.text).group(1),
                                                 "new": "short", "confirm": "short"})
    assert short.status_code == 400 and "Use at least" in short.text
    done = browser.post(f"/reset/{link}", data={"csrf_token": CSRF.search(page.text).group(1),
                                                "new": NEW, "confirm": NEW})
    assert done.status_code == 200 and "2 sessions ended" in done.text
    with app.app_context():
        ended = db.session.scalars(sa.select(LoginSession)).all()
        assert {s.end_reason for s in ended} == {EndReason.PASSWORD_CHANGED}
        assert db.session.scalar(sa.select(sa.func.count()).select_from(LogoutDelivery)) == 1
        assert db.session.scalar(sa.select(AuditEvent.detail).where(
            AuditEvent.event == "password.reset")) == {"sessions_ended": 2}
        hasher = app.extensions["idp"].passwords
        assert credentials.verify("ada@example.com", NEW, hasher) is not None
        assert credentials.verify("ada@example.com", PASSWORD, hasher) is None
    again = browser.get(f"/reset/{link}")
    assert again.status_code == 404 and "This link cannot be used" in again.text


def test_the_link_expires_after_an_hour(app, ada, clock, inbox):
    ask(app.test_client(), "ada@example.com")
    with app.app_context():
        deliver(app, clock)
        link = reset_link(inbox)
        clock.advance(hours=1)
        with pytest.raises(links.LinkRefused):
            resets.user_of(link, now=clock.now())
        with pytest.raises(links.LinkRefused):
            resets.complete(link, new=NEW, confirm=NEW, hasher=app.extensions["idp"].passwords,
                            now=clock.now(), ip=None)


def test_a_week_after_it_expires_the_sweep_forgets_the_request_its_link_and_attempts(
        app, ada, clock, inbox):
    ask(app.test_client(), "ada@example.com")
    ask(app.test_client(), "nobody@example.com")
    with app.app_context():
        deliver(app, clock)
        requests = sa.select(MailMessage).where(MailMessage.kind == "password_reset")
        assert len(db.session.scalars(requests).all()) == 2
        reset_links = sa.select(EmailLink).where(EmailLink.purpose == resets.PASSWORD_RESET)
        assert len(db.session.scalars(reset_links).all()) == 1
        assert db.session.scalar(sa.select(sa.func.count()).select_from(MailAttempt)) >= 1
        clock.advance(days=7, hours=2)
        sessions.purge_spent(clock.now())
        db.session.commit()
        assert db.session.scalars(requests).all() == []
        assert db.session.scalars(reset_links).all() == []
        assert db.session.scalars(sa.select(MailAttempt).join(
            MailMessage, MailMessage.id == MailAttempt.message_id).where(
            MailMessage.kind == "password_reset")).all() == []


def test_a_not_me_link_is_no_reset_link(app, ada, clock, inbox):
    with app.app_context():
        deliver(app, clock)  # Ada's two sign-ins' notices
        not_me = re.search(r"/not-me/(\S+)", inbox.messages[0].get_body(
            ("plain",)).get_content()).group(1)
        with pytest.raises(links.LinkRefused):
            resets.user_of(not_me, now=clock.now())


def test_requests_are_throttled_per_address_and_per_ip(app, ada, clock):
    """Past 3 an hour for one address nothing more is written (no mail-bombing), but the
    answer stays the same: the address is anyone's to type, so nobody may be refused for
    it. The IP's 20 an hour is the caller's own, and answers 429."""
    attacker = app.test_client()
    assert [ask(attacker, "ada@example.com").status_code for _ in range(4)] == [200] * 4
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(MailMessage).where(
            MailMessage.kind == "password_reset")) == 3
    owner = app.test_client()
    owner.environ_base["REMOTE_ADDR"] = "198.51.100.7"  # Ada, from her own network
    answer = ask(owner, "ada@example.com")
    assert answer.status_code == 200 and "Check your email" in answer.text
    other = [ask(attacker, f"x{i}@example.com").status_code for i in range(20)]
    assert other == [200] * 16 + [429] * 4  # the IP counted its first 4 too
