""""This wasn't me": what the link in a new-device notice does.

The link is single-use, valid 24 hours from the sign-in, bound to that session and user,
and works without being signed in. It ends that one session ("Ended: reported by you")
and everything under it, as every ending does (tokens revoked at once, back-channel
logout to its apps). Then, once and within ``FOLLOW_UP`` of the report, the same link may
also end every session of the user and set a new password: whoever reported the sign-in
may not know their password is still good, and may not be signed in anywhere to change it.

An unknown, forged, expired or used link gets the same answer (``LinkRefused``), so the
page tells nobody which links exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from . import audit, credentials, links, notices, sessions
from .links import LinkRefused
from .models import EmailLink, EndReason, LoginSession, User, db
from .passwords import Passwords

#: How long after "This wasn't me" the same link may also end everything and set a password.
FOLLOW_UP = timedelta(minutes=30)


@dataclass(frozen=True)
class Report:
    """What the page shows: the reported sign-in, the apps it held tokens for, and whether
    this click ended it."""

    view: sessions.SessionView
    ended_now: bool


def _view(link: EmailLink, now: datetime) -> sessions.SessionView:
    user = db.session.get(User, link.user_id)
    view = sessions.get_for_user(user, link.session_id or "", now)
    if view is None:  # purged from the history since
        raise LinkRefused()
    return view


def look(value: str | None, *, now: datetime) -> sessions.SessionView:
    """The sign-in an unused link reports (the confirmation page; nothing changes)."""
    return _view(links.usable(value, notices.NOT_ME, now), now)


def report(value: str | None, *, now: datetime, ip: str | None) -> Report:
    """End the reported session and everything under it. The link is spent by one
    conditional UPDATE, so of two clicks at the same instant exactly one acts."""
    link = links.find(value, notices.NOT_ME)
    links.spend(link, now)
    view = _view(link, now)
    user = view.session.user
    ended = sessions.end(view.session, EndReason.REPORTED, now=now, actor=f"user:{user.sub}",
                         ip=ip)
    audit.record("session.reported", now=now, account_id=user.account_id, user_id=user.id,
                 session_id=view.session.id, actor=f"user:{user.sub}", ip=ip, ended=ended)
    return Report(view, ended)


def _follow_up(value: str | None, now: datetime) -> EmailLink:
    """A link reported less than ``FOLLOW_UP`` ago whose follow-up is not yet done."""
    link = links.find(value, notices.NOT_ME)
    if link.used_at is None or now - link.used_at > FOLLOW_UP or link.followed_up_at:
        raise LinkRefused()
    return link


def reported_view(value: str | None, *, now: datetime) -> sessions.SessionView:
    """The reported sign-in while the follow-up is open (its form, again)."""
    return _view(_follow_up(value, now), now)


def secure(value: str | None, *, new: str, confirm: str, hasher: Passwords, now: datetime,
           ip: str | None) -> list[LoginSession]:
    """After a report, with the same link: a new password, and every session of the user
    ended (as a password change ends them). Once, within ``FOLLOW_UP`` of the report.
    ``credentials.PasswordChangeRefused`` says what is wrong with the new password."""
    link = _follow_up(value, now)
    credentials.check_new_password(new, confirm)
    user = db.session.get(User, link.user_id)
    version = user.credentials_version
    new_hash = hasher.hash(new)
    taken = db.session.execute(
        sa.update(EmailLink)
        .where(EmailLink.id == link.id, EmailLink.followed_up_at.is_(None))
        .values(followed_up_at=now).execution_options(synchronize_session=False)).rowcount
    if not taken:
        raise LinkRefused()
    return credentials.set_password(user, new_hash, version=version, now=now, ip=ip,
                                    event="password.reset_after_report")
