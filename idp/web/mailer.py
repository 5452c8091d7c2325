"""Delivers the email outbox (``mail``): each message is rendered from its templates when
it is sent, handed to the transport (SMTP, or the instance's mail folder), and its
outcome recorded with the retry discipline of back-channel logout. Run by ``idp worker``
(which ``idp serve`` starts beside its workers)."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from urllib.parse import urlsplit

from flask import Flask, render_template

from .. import mail, notices, passwords, resets, sessions, verification
from ..models import EmailLink, MailMessage, User, db

log = logging.getLogger("idp.mail")


def when_in_words(when: datetime) -> str:
    """"Friday 4 December 2026 at 02:45 UTC": a notice is read later, maybe elsewhere."""
    return f"{when:%A} {when.day} {when:%B %Y at %H:%M} UTC"


class Mailer:
    def __init__(self, app: Flask):
        self.app = app
        self.transport = mail.transport(app.config)

    def hold(self) -> dict:
        """New-device notices wait a little, to name the apps the session signed in to."""
        return {notices.NEW_DEVICE: self.app.config["NOTICE_DELAY"]}

    def attempt(self, message_id: int) -> str:
        """One attempt at one message: 'delivered', 'retry', 'given_up', 'dropped' (nobody
        to send it to) or 'skipped' (another worker has it)."""
        cfg = self.app.config
        clock = self.app.extensions["idp"].clock
        message = mail.claim(message_id, now=clock.now(), lease=cfg["SMTP_TIMEOUT"] * 3)
        if message is None:
            return "skipped"
        composed = self.compose(message, clock.now())
        if composed is None:
            mail.drop(message, now=clock.now(), reason="no enabled account uses this address")
            db.session.commit()
            return "dropped"
        error, started = None, time.perf_counter()
        try:
            self.transport.send(composed)
        except mail.MailError as failed:
            error = str(failed)
        mail.record(message, now=clock.now(), error=error,
                    duration_ms=round((time.perf_counter() - started) * 1000),
                    first=cfg["MAIL_RETRY_BASE"], longest=cfg["MAIL_RETRY_MAX"],
                    give_up_after=cfg["MAIL_GIVE_UP"])
        db.session.commit()
        if message.delivered_at:
            return "delivered"
        log.info("email %s to user %s not delivered (%s)", message.id, message.user_id, error)
        return "given_up" if message.given_up_at else "retry"

    def compose(self, message: MailMessage, now: datetime):
        """The message as it is sent now (the subject is kept for the administrators), or
        None when there is nobody to send it to."""
        cfg = self.app.config
        issuer_name = urlsplit(cfg["ISSUER"]).hostname or "Identity"
        if message.kind == resets.PASSWORD_RESET:
            user = resets.prepare(message, now)
            if user is None:
                return None
        else:
            user = db.session.get(User, message.user_id)
        context = {"issuer": cfg["ISSUER"], "issuer_name": issuer_name, "user": user}
        if message.kind == resets.PASSWORD_RESET:
            context.update(reset=f"{cfg['ISSUER']}/reset/{self.link(message)}")
            subject = f"Set a new password for your {issuer_name} account"
        elif message.kind == verification.VERIFY_EMAIL:
            context.update(verify=f"{cfg['ISSUER']}/verify/{self.link(message)}")
            subject = f"Verify your email address for {issuer_name}"
        elif message.kind == notices.NEW_DEVICE:
            view = sessions.get_for_user(user, message.session_id or "", now)
            context.update(view=view, when=when_in_words(view.session.created_at),
                           not_me=f"{cfg['ISSUER']}/not-me/{self.link(message)}",
                           apps=[app.name for app in view.apps])
            subject = f"New sign-in to your {issuer_name} account"
        else:  # pragma: no cover - every kind written has a template
            raise ValueError(f"no template for {message.kind}")
        message.subject = subject
        text = render_template(f"mail/{message.kind}.txt", **context)
        html = render_template(f"mail/{message.kind}.html", **context, subject=subject)
        return mail.compose(sender=cfg["MAIL_FROM"], to=message.to_address, subject=subject,
                            text=text, html=html, message_id=message.id, now=now,
                            domain=issuer_name)

    def link(self, message: MailMessage) -> str:
        """The message's link, ``<id>.<secret>``; its hash is stored the first time."""
        link = db.session.get(EmailLink, message.link_id)
        secret = mail.link_secret(self.app.config["SECRET_KEY"], link.id)
        if link.secret_hash is None:
            link.secret_hash = passwords.hash_secret(secret)
        return f"{link.id}.{secret}"

    def run_due(self, limit: int = 100) -> dict:
        counts = {"attempted": 0, "delivered": 0, "retry": 0, "given_up": 0, "dropped": 0}
        now = self.app.extensions["idp"].clock.now()
        for message_id in mail.due(now, limit, hold=self.hold()):
            outcome = self.attempt(message_id)
            if outcome == "skipped":
                continue
            counts["attempted"] += 1
            counts[outcome] += 1
        return counts


def install(app: Flask) -> Mailer:
    mailer = Mailer(app)
    app.extensions["idp.mail"] = mailer
    return mailer
