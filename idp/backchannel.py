"""The back-channel logout outbox (OpenID Connect Back-Channel Logout 1.0).

When a session ends, one delivery per client that holds tokens under it and has a
``backchannel_logout_uri`` is written in the same transaction as the ending, so a
crash between commit and delivery loses nothing: the worker finds it later.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from . import outbox
from .models import Client, LoginSession, LogoutAttempt, LogoutDelivery, TokenFamily, db

PENDING_KEY = "idp.logout_deliveries"


def enqueue(session: LoginSession, *, now: datetime) -> list[LogoutDelivery]:
    clients = db.session.scalars(
        sa.select(Client)
        .where(
            Client.client_id.in_(
                sa.select(TokenFamily.client_id).where(TokenFamily.session_id == session.id)
            ),
            Client.backchannel_logout_uri.is_not(None),
        )
    ).all()
    deliveries = []
    for client in clients:
        delivery = LogoutDelivery(
            session_id=session.id,
            client_id=client.client_id,
            subject=session.user.sub,
            uri=client.backchannel_logout_uri,
            created_at=now,
            next_attempt_at=now,
            attempts=0,
        )
        delivery.client = client
        db.session.add(delivery)
        deliveries.append(delivery)
    if deliveries:
        # Picked up after commit for an immediate attempt (see oauth/logout.py).
        db.session.info.setdefault(PENDING_KEY, []).extend(deliveries)
    return deliveries


def due(now: datetime, limit: int = 100) -> list[int]:
    return list(db.session.scalars(
        sa.select(LogoutDelivery.id)
        .where(
            LogoutDelivery.delivered_at.is_(None),
            LogoutDelivery.given_up_at.is_(None),
            LogoutDelivery.next_attempt_at <= now,
        )
        .order_by(LogoutDelivery.next_attempt_at)
        .limit(limit)
    ))


def claim(delivery_id: int, *, now: datetime, lease: timedelta) -> LogoutDelivery | None:
    """Take a delivery for one attempt; two workers (or a worker and the request
    that enqueued it) never send the same attempt twice."""
    taken = db.session.execute(
        sa.update(LogoutDelivery)
        .where(
            LogoutDelivery.id == delivery_id,
            LogoutDelivery.delivered_at.is_(None),
            LogoutDelivery.given_up_at.is_(None),
            LogoutDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=now + lease)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    if not taken:
        return None
    return db.session.get(LogoutDelivery, delivery_id, populate_existing=True)


def record(
    delivery: LogoutDelivery,
    *,
    now: datetime,
    status: int | None,
    error: str | None,
    duration_ms: int,
    retry_base: timedelta,
    retry_max: timedelta,
    give_up_after: timedelta,
) -> None:
    """Store the attempt; schedule the next one with exponential backoff and jitter,
    or give up once the delivery is older than ``give_up_after``."""
    delivery.attempts += 1
    delivery.last_status = status
    delivery.last_error = (error or "")[:300] or None
    db.session.add(LogoutAttempt(delivery_id=delivery.id, at=now, status=status,
                                 error=delivery.last_error, duration_ms=duration_ms))
    if error is None and status is not None and 200 <= status < 300:
        delivery.delivered_at = now
        return
    outbox.after_failure(delivery, now=now, first=retry_base, longest=retry_max,
                         give_up_after=give_up_after)


def logout_claims(delivery: LogoutDelivery, *, issuer: str, now: datetime, jti: str,
                  lifetime: timedelta) -> dict:
    """Back-Channel Logout 1.0 §2.4: no nonce; the events claim names the event."""
    iat = int(now.timestamp())
    return {
        "iss": issuer,
        "aud": delivery.client_id,
        "iat": iat,
        "exp": iat + int(lifetime.total_seconds()),
        "jti": jti,
        "sub": delivery.subject,
        "sid": delivery.session_id,
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    }
