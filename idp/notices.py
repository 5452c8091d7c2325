"""New-device sign-in notices, and "This wasn't me".

A browser is known to a user once it has signed in as that user: each browser carries a
private, random, long-lived marker (a cookie), kept here only as its hash per user. A
sign-in from a browser whose marker the user has not signed in with before (or without
a marker: cleared cookies, a private window, another browser) is a new device, and so
is every device-flow sign-in (a command-line tool keeps no cookie). The user then gets
an email, written in the same transaction as the session (``mail.enqueue``), unless they
turned notices off and their account does not require them, or their address is not
verified yet (``verification``).

The notice carries a single-use link, valid 24 hours, bound to that session and user
("This wasn't me": ``not_me``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from . import audit, mail, passwords
from .models import EmailLink, KnownDevice, LoginSession, MailMessage, User, db
from .policy import SessionPolicy

NEW_DEVICE = "new_device"
NOT_ME = "not_me"
LINK_LIFETIME = timedelta(hours=24)


def wants_notices(user: User) -> bool:
    """The user's choice, unless their account requires the notices."""
    return bool(user.new_device_notices or SessionPolicy.of(user.account).require_notices)


def choose(user: User, on: bool, *, now: datetime, ip: str | None) -> None:
    """The user's choice (recorded in the audit trail, as turning notices off is what an
    intruder would do first)."""
    if bool(user.new_device_notices) != on:
        user.new_device_notices = on
        audit.record("notices.changed", now=now, account_id=user.account_id, user_id=user.id,
                     actor=f"user:{user.sub}", ip=ip, on=on)


def _remember(user_id: int, marker: str, label: str, now: datetime) -> bool:
    """Record the browser as known to the user; True if it was not (one INSERT, so of two
    sign-ins from the same new browser at the same instant exactly one is first)."""
    dialect = postgresql if db.engine.dialect.name == "postgresql" else sqlite
    inserted = db.session.execute(
        dialect.insert(KnownDevice)
        .values(user_id=user_id, marker_hash=passwords.hash_secret(marker), device_label=label,
                first_seen_at=now, last_seen_at=now)
        .on_conflict_do_nothing(index_elements=["user_id", "marker_hash"])
        .returning(KnownDevice.id)).first() is not None
    if not inserted:
        db.session.execute(
            sa.update(KnownDevice)
            .where(KnownDevice.user_id == user_id,
                   KnownDevice.marker_hash == passwords.hash_secret(marker))
            .values(last_seen_at=now).execution_options(synchronize_session=False))
    return inserted


def on_sign_in(session: LoginSession, marker: str | None, *, now: datetime
               ) -> MailMessage | None:
    """Called by ``sessions.start``, in its transaction: a notice if this is a new device
    for the user (and they get notices), with its "This wasn't me" link. The worker sends
    it ``IDP_NOTICE_DELAY`` after the sign-in, naming the applications the session signed
    in to by then."""
    user = session.user
    new = session.kind == "device" or marker is None or _remember(
        user.id, marker, session.device_label or "", now)
    if not new or not wants_notices(user) or not user.email_verified:
        return None
    link = EmailLink(id=passwords.new_id(), purpose=NOT_ME, user_id=user.id,
                     session_id=session.id, created_at=now, expires_at=now + LINK_LIFETIME)
    db.session.add(link)
    return mail.enqueue(NEW_DEVICE, user_id=user.id, to=user.email, now=now,
                        session_id=session.id, link_id=link.id)
