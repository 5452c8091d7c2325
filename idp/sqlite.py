"""SQLite as a real server's database: WAL, foreign keys, and writers that queue.

SQLite allows one write transaction at a time. A second writer does not queue: it
sleeps (1, 2, 5, 10 … 100 ms) and retries, so under concurrent writes most of a
request's time is spent asleep after the lock was already free (refresh p99 was
hundreds of ms with 2 workers of 4 threads). Here writers take turns from their first
write statement to their commit or rollback: the threads of a process on a
``threading.Lock``, the processes on an ``flock`` of a file beside the database. Both
wake the waiter the moment the turn is free. SQLite's own locking still decides what
is safe; this only orders the writers that would otherwise collide.
"""

from __future__ import annotations

import fcntl
import os
import threading
from datetime import datetime, timedelta

import sqlalchemy as sa

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
#: Longer than any transaction should take: past it, SQLite's own 30 s wait decides.
LOCK_TIMEOUT = 30.0


def install(engine: sa.Engine) -> None:
    sa.event.listen(engine, "connect", _pragmas)
    database = engine.url.database
    writers = Writers(f"{database}-writer" if database and database != ":memory:" else None)
    sa.event.listen(engine, "before_cursor_execute", writers.before_execute)
    dialect = engine.dialect
    dialect.do_commit = writers.releasing(dialect.do_commit)
    dialect.do_rollback = writers.releasing(dialect.do_rollback)
    sa.event.listen(engine, "checkin", lambda dbapi_connection, _record:
                    writers.release(dbapi_connection))
    sa.event.listen(engine, "close", lambda dbapi_connection, _record:
                    writers.release(dbapi_connection))


def _pragmas(connection, _record) -> None:
    """WAL lets readers run beside the writer; foreign keys are off by default in SQLite."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
    connection.create_function("idp_seconds_before", 2, seconds_before, deterministic=True)


#: How SQLAlchemy stores a datetime in SQLite: text that sorts as the instant does.
_STORED = "%Y-%m-%d %H:%M:%S.%f"


def seconds_before(instant: str | None, seconds: int | float | None) -> str | None:
    """SQL ``idp_seconds_before(instant, seconds)`` (``models.seconds_before``): the stored
    instant minus a number of seconds, stored the same way, to the microsecond."""
    if instant is None or seconds is None:
        return None
    return (datetime.fromisoformat(instant) - timedelta(seconds=seconds)).strftime(_STORED)


class Writers:
    """Which connection of this process holds the write turn."""

    def __init__(self, lock_path: str | None):
        self.lock = threading.Lock()
        self.holder: int | None = None  # id() of the DBAPI connection writing
        self.lock_path = lock_path
        self.fd: int | None = None
        self.pid: int | None = None

    def _file(self) -> int | None:
        """This process's descriptor of the lock file (a forked worker opens its own:
        flock belongs to the open file, which a fork would share)."""
        if self.lock_path is None:
            return None
        if self.pid != os.getpid():
            self.fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self.pid = os.getpid()
        return self.fd

    def before_execute(self, conn, _cursor, statement: str, *_args) -> None:
        if statement.lstrip()[:7].upper().startswith(_WRITES):
            raw = id(conn.connection.dbapi_connection)
            if self.holder != raw:
                if not self.lock.acquire(timeout=LOCK_TIMEOUT):
                    return  # leave it to SQLite's busy wait
                fd = self._file()
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                self.holder = raw

    def release(self, dbapi_connection) -> None:
        raw = id(getattr(dbapi_connection, "dbapi_connection", None) or dbapi_connection)
        if self.holder is not None and self.holder == raw:
            self.holder = None
            if self.fd is not None and self.pid == os.getpid():
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.lock.release()

    def releasing(self, method):
        def wrapped(dbapi_connection):
            try:
                method(dbapi_connection)
            finally:
                self.release(dbapi_connection)
        return wrapped
