"""Single-use links sent by email (``EmailLink``): "This wasn't me" and password resets.

A link is ``<id>.<secret>``; its secret is derived when the message is sent
(``mail.link_secret``) and only its hash is stored. Whatever is wrong with a link
(unknown, forged, expired, used, another purpose), the answer is the same ``LinkRefused``.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from . import passwords
from .models import EmailLink, db


class LinkRefused(Exception):
    """Unknown, forged, expired, used or not for this: one answer for all."""


def find(value: str | None, purpose: str) -> EmailLink:
    """The link ``value`` names, its secret checked (not yet its state)."""
    parts = passwords.split_token(value)
    if parts is None:
        raise LinkRefused()
    link = db.session.get(EmailLink, parts[0])
    if (link is None or link.purpose != purpose or link.secret_hash is None
            or not passwords.verify_secret(parts[1], link.secret_hash)):
        raise LinkRefused()
    return link


def usable(value: str | None, purpose: str, now: datetime) -> EmailLink:
    """A link not yet used and not expired."""
    link = find(value, purpose)
    if link.used_at is not None or link.expires_at <= now:
        raise LinkRefused()
    return link


def spend(link: EmailLink, now: datetime) -> None:
    """Use the link up with one conditional UPDATE: of two clicks at the same instant,
    exactly one passes."""
    spent = db.session.execute(
        sa.update(EmailLink)
        .where(EmailLink.id == link.id, EmailLink.used_at.is_(None), EmailLink.expires_at > now)
        .values(used_at=now).execution_options(synchronize_session=False)).rowcount
    if not spent:
        raise LinkRefused()
