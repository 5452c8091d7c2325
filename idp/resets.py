"""Password reset by email ("Forgot your password?").

Asking costs the same whether or not an account uses the address: the request writes one
outbox row with the address as typed, and the worker looks it up when it sends
(``prepare``). An address no account uses (or a disabled user's, or one not verified yet)
gets no email, and the page that answered said the same thing either way. Requests are counted per address and
per IP on the shared counters (``IDP_RESETS_PER_ADDRESS``, ``IDP_RESETS_PER_IP``).

The email's link works once, for an hour. Setting the new password counts as a password
change everywhere: every session of the user ends (back-channel logout to their apps),
sign-ins verified with the old password are refused, and it is in the audit trail.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from . import credentials, links, mail, passwords
from .models import EmailLink, LoginSession, MailMessage, User, db
from .passwords import Passwords

PASSWORD_RESET = "password_reset"  # the message kind and the link's purpose
LINK_LIFETIME = timedelta(hours=1)


def request(address: str, *, now: datetime) -> None:
    """Ask for a reset link to ``address`` (normalised as sign-in does): one INSERT."""
    mail.enqueue(PASSWORD_RESET, user_id=None, to=address.strip().lower()[:254], now=now)


def prepare(message: MailMessage, now: datetime) -> User | None:
    """At its first attempt, match a request to its account and give it a link; None when
    no enabled account uses the address (nothing is sent)."""
    if message.user_id is not None:
        return db.session.get(User, message.user_id)
    user = db.session.scalar(sa.select(User).where(User.email == message.to_address))
    if user is None or user.disabled_at is not None or not user.email_verified:
        return None
    link = EmailLink(id=passwords.new_id(), purpose=PASSWORD_RESET, user_id=user.id,
                     created_at=now, expires_at=now + LINK_LIFETIME)
    db.session.add(link)
    message.user_id, message.link_id = user.id, link.id
    return user


def user_of(value: str | None, *, now: datetime) -> User:
    """Whose password an unused, unexpired link resets (the page's form)."""
    return db.session.get(User, links.usable(value, PASSWORD_RESET, now).user_id)


def complete(value: str | None, *, new: str, confirm: str, hasher: Passwords, now: datetime,
             ip: str | None) -> list[LoginSession]:
    """Set the new password and end every session of the user, spending the link.
    ``credentials.PasswordChangeRefused`` says what is wrong with the new password."""
    link = links.usable(value, PASSWORD_RESET, now)
    credentials.check_new_password(new, confirm)
    user = db.session.get(User, link.user_id)
    version = user.credentials_version
    new_hash = hasher.hash(new)
    links.spend(link, now)
    return credentials.set_password(user, new_hash, version=version, now=now, ip=ip,
                                    event="password.reset")
