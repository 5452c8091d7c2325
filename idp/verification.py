"""Verified email addresses: an address is used for new-device notices and password resets
only once its owner has opened the link sent to it (``users.email_verified``, which ID
tokens and userinfo report as ``email_verified``).

A user created by an operator gets the link at once; the account page offers to send it
again. The link works once, for 7 days, and asks for one click (mail scanners open links
by themselves and must not verify anything).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from . import audit, links, mail, passwords
from .models import EmailLink, MailMessage, User, db

VERIFY_EMAIL = "verify_email"  # the message kind and the link's purpose
LINK_LIFETIME = timedelta(days=7)


def request(user: User, *, now: datetime) -> MailMessage:
    """Send ``user`` a link that verifies their address (the caller's transaction)."""
    link = EmailLink(id=passwords.new_id(), purpose=VERIFY_EMAIL, user_id=user.id,
                     created_at=now, expires_at=now + LINK_LIFETIME)
    db.session.add(link)
    return mail.enqueue(VERIFY_EMAIL, user_id=user.id, to=user.email, now=now, link_id=link.id)


def look(value: str | None, *, now: datetime) -> User:
    """Whose address an unused link verifies (the confirmation page)."""
    return db.session.get(User, links.usable(value, VERIFY_EMAIL, now).user_id)


def confirm(value: str | None, *, now: datetime, ip: str | None) -> User:
    """Mark the address verified, spending the link."""
    link = links.usable(value, VERIFY_EMAIL, now)
    links.spend(link, now)
    user = db.session.get(User, link.user_id)
    if not user.email_verified:
        user.email_verified = True
        audit.record("email.verified", now=now, account_id=user.account_id, user_id=user.id,
                     actor=f"user:{user.sub}", ip=ip)
    return user
