"""New-device sign-in notices: which sign-ins get one, delivery over real SMTP (aiosmtpd on
a loopback port), retries while the mail server is down, and "This wasn't me"."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from idp import credentials, mail, not_me, notices, policy, policy_changes, sessions, tokens
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
from idp.sessions import Origin
from tests.conftest import Inbox, race
from tests.flows import start_session

MARKER = "m" * 43
BROWSER = Origin(ip="203.0.113.7", device_label="Firefox on Windows", device_type="desktop",
                 location="Paris, France", device_marker=MARKER)


@pytest.fixture
def settings(settings, smtp_port):
    # (Logout notices wait for the worker: no delivery thread outlives a test.)
    return {**settings, "SMTP_URL": f"smtp://127.0.0.1:{smtp_port}?starttls=no",
            "SMTP_TIMEOUT": "5s", "BACKCHANNEL_IMMEDIATE": False}


@pytest.fixture
def ada(ctx, make_user) -> User:
    sub = make_user("ada@example.com")
    return db.session.scalar(sa.select(User).where(User.sub == sub))


def sign_in(user: User, clock, origin: Origin = BROWSER, **kwargs) -> LoginSession:
    started = start_session(user, origin, now=clock.now(), **kwargs)
    db.session.commit()
    return started.session


def outbox() -> list[MailMessage]:
    return list(db.session.scalars(sa.select(MailMessage).order_by(MailMessage.id)))


def deliver(ctx, clock, *, after: timedelta = timedelta(seconds=16)) -> dict:
    clock.advance(after)
    counts = ctx.extensions["idp.mail"].run_due()
    db.session.remove()
    return counts


def not_me_link(message) -> str:
    text = message.get_body(("plain",)).get_content()
    return re.search(r"/not-me/(\S+)", text).group(1)


# -- which sign-ins get a notice ----------------------------------------------------------


def test_a_new_browser_gets_one_notice_and_the_same_browser_none(ctx, clock, ada):
    sign_in(ada, clock)
    sign_in(ada, clock)
    assert [m.kind for m in outbox()] == ["new_device"]
    other = Origin(ip="198.51.100.9", device_label="Safari on iPhone", device_marker="o" * 43)
    sign_in(ada, clock, other)
    no_cookie = Origin(ip="198.51.100.9", device_label="Safari on iPhone")
    sign_in(ada, clock, no_cookie)
    assert len(outbox()) == 3
    assert {m.to_address for m in outbox()} == {"ada@example.com"}


def test_a_browser_known_to_one_user_is_new_to_another(ctx, clock, ada, make_user):
    sign_in(ada, clock)
    grace = db.session.scalar(sa.select(User).where(User.sub == make_user("grace@example.com")))
    sign_in(grace, clock)
    assert [m.to_address for m in outbox()] == ["ada@example.com", "grace@example.com"]


def test_a_device_flow_sign_in_always_gets_a_notice(ctx, clock, ada):
    """A command-line tool keeps no cookie: each device sign-in is new (the browser that
    approves it is already known)."""
    browser = sign_in(ada, clock)
    devices = [sign_in(ada, clock, kind="device") for _ in range(2)]
    assert [m.session_id for m in outbox()] == [browser.id, devices[0].id, devices[1].id]


def test_notices_follow_the_users_choice_unless_the_account_requires_them(ctx, clock, ada):
    ada.new_device_notices = False
    db.session.commit()
    sign_in(ada, clock)
    assert outbox() == []
    ada.account.require_new_device_notices = True
    db.session.commit()
    sign_in(ada, clock, Origin(ip="203.0.113.8", device_marker="n" * 43))
    assert len(outbox()) == 1


def test_an_account_requires_notices_through_its_policy(ctx, clock, ada):
    bounds = policy.PolicyBounds.from_config(ctx.config)
    current = policy.SessionPolicy.of(ada.account)
    new = policy.validate(bounds, max_duration=int(current.max_duration.total_seconds()),
                          idle_timeout=int(current.idle_timeout.total_seconds()),
                          max_concurrent="unlimited", on_limit="deny", require_notices="true")
    applied = policy_changes.apply(ada.account, new, now=clock.now(), actor="admin:test")
    db.session.commit()
    assert applied.changes == {"require_notices": [False, True]}
    assert ada.account.require_new_device_notices is True
    notices.choose(ada, False, now=clock.now(), ip=None)
    sign_in(ada, clock)
    assert len(outbox()) == 1
    with pytest.raises(policy.PolicyError):
        policy.validate(bounds, max_duration=3600, idle_timeout=600, max_concurrent="unlimited",
                        on_limit="deny", require_notices="perhaps")


# -- delivery --------------------------------------------------------------------------------


def test_the_notice_goes_out_over_smtp_after_the_delay_naming_what_signed_in(
        ctx, clock, ada, inbox, make_client):
    session = sign_in(ada, clock, Origin(ip="203.0.113.7", device_label="<b>Evil</b> on Linux",
                                         location="Paris, France", device_marker=MARKER))
    photos = db.session.get(Client, make_client("Photos").client_id)
    family = tokens.start_family(session=session, client=photos, scope="openid", now=clock.now())
    db.session.commit()
    assert deliver(ctx, clock, after=timedelta(seconds=5))["attempted"] == 0  # not yet
    assert deliver(ctx, clock, after=timedelta(seconds=11)) == {
        "attempted": 1, "delivered": 1, "retry": 0, "given_up": 0, "dropped": 0}
    [message] = inbox.messages
    assert message["To"] == "ada@example.com"
    assert message["From"] == "no-reply@127.0.0.1"
    assert message["Subject"] == "New sign-in to your 127.0.0.1 account"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "<b>Evil</b> on Linux" in text  # plain text shows the text as it is
    assert "&lt;b&gt;Evil&lt;/b&gt; on Linux" in html and "<b>Evil" not in html
    assert "Paris, France (IP address 203.0.113.7)" in text
    assert "Signed in to: Photos" in text
    assert "<img" not in html and "http://127.0.0.1:5000/not-me/" in html
    # The database holds the link's hash, never the link.
    link = db.session.get(EmailLink, not_me_link(message).split(".")[0])
    assert link.secret_hash and link.secret_hash not in text
    assert family.id  # (the family the notice named)
    assert deliver(ctx, clock)["attempted"] == 0  # delivered once, never again


def test_a_dead_mail_server_delays_the_notice_and_never_sends_it_twice(
        ctx, clock, ada, smtp_port):
    sign_in(ada, clock)
    assert deliver(ctx, clock)["retry"] == 1  # nothing listens on the port yet
    [message] = outbox()
    assert message.attempts == 1 and message.delivered_at is None
    assert "ConnectionRefusedError" in message.last_error
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    try:
        assert deliver(ctx, clock, after=timedelta(seconds=5))["attempted"] == 0  # backing off
        assert deliver(ctx, clock, after=timedelta(minutes=2))["delivered"] == 1
        assert deliver(ctx, clock, after=timedelta(hours=2))["attempted"] == 0
    finally:
        controller.stop()
    assert len(handler.messages) == 1
    assert outbox()[0].attempts == 2
    first, second = db.session.scalars(sa.select(MailAttempt).order_by(MailAttempt.id)).all()
    assert "ConnectionRefusedError" in first.error and second.error is None


def test_without_smtp_mail_is_written_to_the_instance_folder(app, ctx, clock, ada, settings):
    ctx.extensions["idp.mail"].transport = mail.transport({**ctx.config, "SMTP_URL": None})
    sign_in(ada, clock)
    assert deliver(ctx, clock)["delivered"] == 1
    [written] = list((settings["INSTANCE_DIR"] / "mail").glob("*.eml"))
    message = email.message_from_bytes(written.read_bytes(), policy=email.policy.default)
    assert message["Subject"] == "New sign-in to your 127.0.0.1 account"


# -- "This wasn't me" ------------------------------------------------------------------------


@pytest.fixture
def reported(ctx, clock, ada, inbox, make_client):
    """Ada's browser session, a session an intruder opened with an app's tokens under it,
    and the link from the notice about the intruder's sign-in."""
    mine = sign_in(ada, clock)
    theirs = sign_in(ada, clock, Origin(ip="192.0.2.66", device_label="Chrome on Windows",
                                        location="Elsewhere", device_marker="x" * 43))
    photos = db.session.get(Client, make_client(
        "Photos", backchannel_logout_uri="http://127.0.0.1:9/bc").client_id)
    family = tokens.start_family(session=theirs, client=photos, scope="openid", now=clock.now())
    refresh = tokens.issue_refresh(tokens.Holder.of(family, issuing=True), now=clock.now(),
                                   lifetime=timedelta(days=1))
    db.session.commit()
    deliver(ctx, clock)
    link = not_me_link(inbox.messages[-1])
    return {"mine": mine.id, "theirs": theirs.id, "refresh": refresh, "link": link,
            "photos": photos.client_id}


def test_not_me_ends_that_session_and_nothing_else(ctx, clock, reported):
    assert not_me.look(reported["link"], now=clock.now()).session.id == reported["theirs"]
    report = not_me.report(reported["link"], now=clock.now(), ip="203.0.113.7")
    db.session.commit()
    assert report.ended_now and [a.name for a in report.view.apps] == ["Photos"]
    theirs = db.session.get(LoginSession, reported["theirs"])
    assert (theirs.ended_at, theirs.end_reason) == (clock.now(), EndReason.REPORTED)
    assert db.session.get(LoginSession, reported["mine"]).ended_at is None
    assert tokens.claim_refresh(reported["refresh"], now=clock.now()).row.holder.active(
        clock.now()) is False
    [delivery] = db.session.scalars(sa.select(LogoutDelivery))
    assert (delivery.session_id, delivery.client_id) == (reported["theirs"], reported["photos"])
    assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent).where(
        AuditEvent.event == "session.reported")) == 1


@pytest.mark.parametrize("how", ["used", "expired", "forged", "unknown", "garbage"])
def test_a_used_expired_or_forged_link_gets_the_same_answer(ctx, clock, reported, how):
    link = reported["link"]
    if how == "used":
        not_me.report(link, now=clock.now(), ip=None)
        db.session.commit()
    elif how == "expired":
        clock.advance(hours=24)
    elif how == "forged":
        link = link.split(".")[0] + "." + "A" * 43
    elif how == "unknown":
        link = "B" * 22 + "." + link.split(".")[1]
    else:
        link = "<script>"
    with pytest.raises(not_me.LinkRefused):
        not_me.look(link, now=clock.now())
    with pytest.raises(not_me.LinkRefused):
        not_me.report(link, now=clock.now(), ip=None)
    if how != "used":
        assert db.session.get(LoginSession, reported["theirs"]).ended_at is None


def test_after_the_report_the_link_sets_a_new_password_and_ends_everything_once(
        ctx, clock, ada, reported):
    not_me.report(reported["link"], now=clock.now(), ip=None)
    db.session.commit()
    with pytest.raises(credentials.PasswordChangeRefused):
        not_me.secure(reported["link"], new="short", confirm="short",
                      hasher=ctx.extensions["idp"].passwords, now=clock.now(), ip=None)
    clock.advance(minutes=29)
    ended = not_me.secure(reported["link"], new="a new long password", confirm="a new long password",
                          hasher=ctx.extensions["idp"].passwords, now=clock.now(), ip=None)
    db.session.commit()
    assert [s.id for s in ended] == [reported["mine"]]
    mine = db.session.get(LoginSession, reported["mine"])
    assert mine.end_reason == EndReason.PASSWORD_CHANGED
    assert credentials.verify("ada@example.com", "a new long password",
                              ctx.extensions["idp"].passwords) is not None
    with pytest.raises(not_me.LinkRefused):
        not_me.secure(reported["link"], new="another long password",
                      confirm="another long password", hasher=ctx.extensions["idp"].passwords,
                      now=clock.now(), ip=None)


def test_the_follow_up_closes_after_thirty_minutes(ctx, clock, reported):
    not_me.report(reported["link"], now=clock.now(), ip=None)
    db.session.commit()
    clock.advance(minutes=31)
    with pytest.raises(not_me.LinkRefused):
        not_me.secure(reported["link"], new="a new long password", confirm="a new long password",
                      hasher=ctx.extensions["idp"].passwords, now=clock.now(), ip=None)


def test_the_pages_of_the_link(app, ctx, clock, reported):
    browser = app.test_client()
    page = browser.get(f"/not-me/{reported['link']}")
    assert page.status_code == 200 and "End this sign-in?" in page.text
    assert "Chrome on Windows" in page.text and "Photos" in page.text
    assert db.session.get(LoginSession, reported["theirs"]).ended_at is None  # a GET did nothing
    csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text).group(1)
    done = browser.post(f"/not-me/{reported['link']}", data={"csrf_token": csrf})
    assert done.status_code == 200 and "That sign-in is ended" in done.text
    db.session.remove()
    assert db.session.get(LoginSession, reported["theirs"]).end_reason == EndReason.REPORTED
    again = browser.post(f"/not-me/{reported['link']}", data={"csrf_token": csrf})
    forged = browser.get(f"/not-me/{reported['link'][:-3]}AAA")
    assert again.status_code == forged.status_code == 404
    assert again.text.count("This link cannot be used") == 1
    assert forged.text.split("<main")[1] == again.text.split("<main")[1]
    csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', done.text).group(1)
    secured = browser.post(f"/not-me/{reported['link']}/secure", data={
        "csrf_token": csrf, "new": "a new long password", "confirm": "a new long password"})
    assert secured.status_code == 200 and "Your account is secured" in secured.text
    assert db.session.get(EmailLink, reported["link"].split(".")[0]).followed_up_at is not None


# -- the browser's marker and the user's choice, through the pages ----------------------------


def csrf_of(page) -> str:
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text).group(1)


def page_sign_in(browser, email: str = "ada@example.com"):
    page = browser.get("/login")
    return browser.post("/login", data={"csrf_token": csrf_of(page), "email": email,
                                        "password": "correct horse battery staple"})


def kinds(app) -> list[str]:
    with app.app_context():
        return [m.kind for m in outbox()]


# (No app context is held around these requests: the test client would share its ``g``.)


def test_a_browser_keeps_its_marker_and_signs_in_again_without_a_notice(app, make_user):
    make_user("ada@example.com")
    browser = app.test_client()
    first = page_sign_in(browser)
    assert first.status_code == 303
    cookie = browser.get_cookie("idp_device")
    assert cookie is not None and len(cookie.value) == 43 and cookie.http_only
    logout = browser.post("/logout", data={
        "csrf_token": csrf_of(browser.get("/account/sessions/end-others"))})
    assert logout.status_code == 303
    assert page_sign_in(browser).status_code == 303
    assert browser.get_cookie("idp_device").value == cookie.value
    assert kinds(app) == ["new_device"]
    assert page_sign_in(app.test_client()).status_code == 303
    assert kinds(app) == ["new_device", "new_device"]


def test_the_user_turns_notices_off_on_the_security_page_unless_required(app, make_user):
    sub = make_user("ada@example.com")
    browser = app.test_client()
    page_sign_in(browser)
    page = browser.get("/account/security")
    assert "You get an email when a device you haven't used before signs in" in page.text
    off = browser.post("/account/security/notices", data={"csrf_token": csrf_of(page),
                                                           "on": "false"})
    assert off.status_code == 303
    assert "No email when a new device signs in." in browser.get("/account/security").text
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.sub == sub))
        assert user.new_device_notices is False
        assert db.session.scalar(sa.select(AuditEvent.detail).where(
            AuditEvent.event == "notices.changed")) == {"on": False}
        user.account.require_new_device_notices = True
        db.session.commit()
    assert "Your administrator requires it." in browser.get("/account/security").text


def test_administrators_see_the_email_beside_the_logout_notices(app, make_user, clock, inbox):
    make_user("owner@example.com", role="owner")
    browser = app.test_client()
    assert page_sign_in(browser, "owner@example.com").status_code == 303
    with app.app_context():
        assert deliver(app, clock)["delivered"] == 1
    page = browser.get("/admin/logout-deliveries")
    assert page.status_code == 200
    row = page.text.split('id="mail"')[1]
    assert "owner@example.com" in row and "New sign-in to your 127.0.0.1 account" in row
    assert "Delivered" in row and ": handed over, " in row  # the attempt, with its time


def test_the_email_about_a_session_goes_when_its_history_is_purged(ctx, clock, ada, inbox):
    session = sign_in(ada, clock)
    deliver(ctx, clock)
    sessions.end(db.session.get(LoginSession, session.id), EndReason.LOGOUT, now=clock.now(),
                 actor="user:test")
    db.session.commit()
    clock.advance(ctx.config["SESSION_RETENTION"] + timedelta(days=1))
    result = sessions.sweep(clock.now(), ctx.config["SESSION_RETENTION"])
    db.session.commit()
    assert result.purged == 1
    assert outbox() == [] and db.session.scalars(sa.select(EmailLink)).all() == []
    assert db.session.scalars(sa.select(MailAttempt)).all() == []


def test_two_sign_ins_from_the_same_new_browser_at_once_send_one_notice(app, ctx, clock, ada):
    user_id = ada.id
    db.session.remove()
    race(app, lambda: sign_in(db.session.get(User, user_id), clock).id)
    assert len(outbox()) == 1


def test_two_clicks_on_one_link_at_once_end_the_session_once(app, ctx, clock, reported):
    answers = race(app, lambda: not_me.report(reported["link"], now=clock.now(),
                                              ip=None).ended_now, refused=not_me.LinkRefused)
    assert sorted(answers, key=str) == [True, "refused"]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditEvent).where(
        AuditEvent.event == "session.reported")) == 1
