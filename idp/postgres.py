"""PostgreSQL connections: checked before use only when they may have gone stale.

SQLAlchemy's ``pool_pre_ping`` sends a ``SELECT 1`` (and a ``BEGIN``) on every checkout:
on a hot path answering from one query that doubled the round trips and cost 40 % of
introspection's throughput. A connection returned to the pool less than a second ago is
alive as far as anyone can know, so it is used as is; an older one is pinged first, and
a dead one replaced before the request sees it. A connection that dies between two quick
uses (a database restarted under load) fails that one statement: the request answers
503, SQLAlchemy invalidates the whole pool, and the next checkouts connect afresh.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

#: A connection idle in the pool at least this long is pinged before use (seconds).
PING_AFTER_IDLE = 1.0


def install(engine: sa.Engine) -> None:
    sa.event.listen(engine, "checkin", _returned)
    sa.event.listen(engine, "checkout", _ping_if_idle)


def _returned(_dbapi_connection, record) -> None:
    if record is not None:
        record.info["returned_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection, record, _proxy) -> None:
    returned = record.info.get("returned_at")
    if returned is not None and time.monotonic() - returned < PING_AFTER_IDLE:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        dbapi_connection.rollback()  # end the ping's transaction: the caller sets its own mode
    except Exception as exc:  # noqa: BLE001 - any failure means: not usable
        # The pool discards this connection and checks out (or opens) another.
        raise sa.exc.DisconnectionError("stale connection") from exc
