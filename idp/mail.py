"""Email: an outbox in the database and the transports that deliver it.

A message is written in the same transaction as the event that causes it (a sign-in
from a new device), so a crash loses no notice; ``idp worker`` delivers it, with the
retry discipline of back-channel logout (``outbox.next_attempt``), so a dead mail server
delays a notice but never drops one. A message is rendered when it is delivered: the
notice of a sign-in names the applications that got tokens under the session by then.
A link it carries is an ``EmailLink`` whose secret is derived from the provider's secret
key and the link's id when the message is rendered (``link_secret``): the database holds
only its hash, and no plaintext link waits in the outbox.

Without ``IDP_SMTP_URL`` mail is written to a folder, one ``.eml`` per message, so a
fresh install works and a developer can open what would have been sent.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa

from . import outbox
from .models import MailAttempt, MailMessage, db


class MailError(Exception):
    """The transport could not hand the message over (retried later)."""


@dataclass(frozen=True)
class Smtp:
    """``smtp://user:password@host:587`` (STARTTLS when the server offers it; required with
    ``?starttls=required`` or when there is a password to send), ``smtps://…:465`` (implicit
    TLS), ``smtp://host:25?starttls=no``. The server's certificate is verified against the
    system's authorities (``SSL_CERT_FILE`` names another bundle, read at the first TLS
    connection of the process)."""

    host: str
    port: int
    implicit_tls: bool
    starttls: str  # "auto", "required" or "no"
    username: str | None
    password: str | None
    timeout: float

    @classmethod
    def from_url(cls, url: str, timeout: float) -> Smtp:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("IDP_SMTP_URL must look like smtp://user:password@host:587 "
                             "or smtps://user:password@host:465")
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        starttls = query.get("starttls", "auto")
        if starttls not in ("auto", "required", "no"):
            raise ValueError("IDP_SMTP_URL: starttls must be auto, required or no")
        implicit = parts.scheme == "smtps"
        return cls(parts.hostname, parts.port or (465 if implicit else 587), implicit, starttls,
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None, timeout)

    @functools.cached_property
    def _context(self) -> ssl.SSLContext:
        """Built once, when TLS is first used: loading the system's authorities costs
        30-65 ms, twenty times the SMTP exchange (bench/mail_delivery.py)."""
        return ssl.create_default_context()

    def send(self, message: EmailMessage) -> None:
        try:
            if self.implicit_tls:
                server = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                          context=self._context)
            else:
                server = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with server:
                server.ehlo()
                if not self.implicit_tls and self.starttls != "no":
                    if server.has_extn("starttls"):
                        server.starttls(context=self._context)
                        server.ehlo()
                    elif self.starttls == "required" or self.username:
                        raise MailError("the mail server does not offer STARTTLS (a password "
                                        "is sent only over TLS; ?starttls=no to send anyway)")
                if self.username:
                    server.login(self.username, self.password or "")
                server.send_message(message)
        except (OSError, smtplib.SMTPException) as error:
            raise MailError(f"{type(error).__name__}: {error}") from error

    def describe(self) -> str:
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Folder:
    """Development: each message as ``<folder>/<time>-<id>.eml``, written atomically."""

    path: Path

    def send(self, message: EmailMessage) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            name = message["X-Idp-Message"] or make_msgid().strip("<>")
            target = self.path / f"{name}.eml"
            scratch = target.with_suffix(".tmp")
            scratch.write_bytes(bytes(message))
            os.replace(scratch, target)
        except OSError as error:
            raise MailError(f"{type(error).__name__}: {error}") from error

    def describe(self) -> str:
        return f"the folder {self.path}"


def transport(cfg: dict) -> Smtp | Folder:
    """The transport the configuration names: SMTP, or the instance's mail folder."""
    if cfg.get("SMTP_URL"):
        return Smtp.from_url(cfg["SMTP_URL"], cfg["SMTP_TIMEOUT"].total_seconds())
    return Folder(Path(cfg["INSTANCE_DIR"]) / "mail")


# -- the outbox --------------------------------------------------------------------------


def link_secret(secret_key: str, link_id: str) -> str:
    """The secret of an email link: HMAC-SHA256 of its id under a key derived from the
    provider's secret key (256 bits, URL-safe). The same at every attempt, so a retried
    message carries the same link; never stored (``EmailLink.secret_hash`` is its hash)."""
    key = hashlib.sha256(b"idp email links\0" + secret_key.encode()).digest()
    digest = hmac.new(key, link_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def enqueue(kind: str, *, user_id: int, to: str, now: datetime, session_id: str | None = None,
            link_id: str | None = None) -> MailMessage:
    """Write a message to the outbox (the caller's transaction commits it)."""
    message = MailMessage(kind=kind, user_id=user_id, to_address=to, session_id=session_id,
                          link_id=link_id, created_at=now, next_attempt_at=now, attempts=0)
    db.session.add(message)
    return message


def due(now: datetime, limit: int = 100, *, hold: dict[str, timedelta] | None = None
        ) -> list[int]:
    """Messages to attempt now; ``hold``: kinds first sent only that long after written."""
    query = (sa.select(MailMessage.id)
             .where(MailMessage.delivered_at.is_(None), MailMessage.given_up_at.is_(None),
                    MailMessage.next_attempt_at <= now)
             .order_by(MailMessage.next_attempt_at).limit(limit))
    for kind, wait in (hold or {}).items():
        query = query.where(sa.or_(MailMessage.kind != kind, MailMessage.created_at <= now - wait))
    return list(db.session.scalars(query))


def claim(message_id: int, *, now: datetime, lease: timedelta) -> MailMessage | None:
    """Take a message for one attempt: two workers never send the same attempt twice
    (the lease moves its next attempt past the attempt's own time limit)."""
    taken = db.session.execute(
        sa.update(MailMessage)
        .where(MailMessage.id == message_id, MailMessage.delivered_at.is_(None),
               MailMessage.given_up_at.is_(None), MailMessage.next_attempt_at <= now)
        .values(next_attempt_at=now + lease)
        .execution_options(synchronize_session=False)).rowcount
    db.session.commit()
    if not taken:
        return None
    return db.session.get(MailMessage, message_id, populate_existing=True)


def record(message: MailMessage, *, now: datetime, error: str | None, duration_ms: int,
           first: timedelta, longest: timedelta, give_up_after: timedelta) -> None:
    """Store the attempt and its outcome: delivered, or the next attempt, or given up."""
    message.attempts += 1
    message.last_attempt_at = now
    message.last_error = (error or "")[:300] or None
    db.session.add(MailAttempt(message_id=message.id, at=now, error=message.last_error,
                               duration_ms=duration_ms))
    if error is None:
        message.delivered_at = now
        return
    outbox.after_failure(message, now=now, first=first, longest=longest,
                         give_up_after=give_up_after)


def drop(message: MailMessage, *, now: datetime, reason: str) -> None:
    """Nothing to send (a reset asked for an address no account uses): done, unsent."""
    message.last_attempt_at = now
    message.given_up_at = now
    message.last_error = reason


def compose(*, sender: str, to: str, subject: str, text: str, html: str, message_id: int,
            now: datetime, domain: str) -> EmailMessage:
    """A multipart/alternative message: plain text first, then the same in simple HTML."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = make_msgid(idstring=f"idp{message_id}", domain=domain)
    message["X-Idp-Message"] = f"{now:%Y%m%dT%H%M%S}-{message_id}"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message
