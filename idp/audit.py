"""Append-only session events: what users and administrators see in a session's history.

Events are added to the caller's transaction, so an event exists exactly when the
change it describes was committed.
"""

from __future__ import annotations

from datetime import datetime

from .metrics import EVENTS
from .models import AuditEvent, db


def record(
    event: str,
    *,
    now: datetime,
    account_id: int | None = None,
    user_id: int | None = None,
    session_id: str | None = None,
    client_id: str | None = None,
    actor: str | None = None,
    ip: str | None = None,
    **detail: object,
) -> AuditEvent:
    entry = AuditEvent(
        at=now,
        event=event,
        account_id=account_id,
        user_id=user_id,
        session_id=session_id,
        client_id=client_id,
        actor=actor,
        ip=ip,
        detail={k: v for k, v in detail.items() if v is not None},
    )
    db.session.add(entry)
    EVENTS.labels(event, str(detail.get("reason") or "")).inc()
    return entry
