"""SQLite writers queue instead of sleeping in SQLite's busy handler (idp/sqlite.py)."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from idp import create_app
from idp.models import db

from .conftest import FAST_ARGON2, SECRET_KEY


@pytest.fixture
def engine(tmp_path, keys_dir):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}",
                      "INSTANCE_DIR": str(tmp_path), "KEYS_DIR": str(keys_dir),
                      "SECRET_KEY": SECRET_KEY, **FAST_ARGON2})
    with app.app_context():
        engine = db.engine
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE counter (n INTEGER)"))
            conn.execute(sa.text("INSERT INTO counter VALUES (0)"))
        yield engine
        engine.dispose()


def test_concurrent_writers_all_commit_without_losing_an_update(engine):
    """Eight threads write in turn, 25 times each: every increment lands, and a
    writer waits only for those ahead of it, not for SQLite's sleeping retries."""
    errors: list = []
    waits: list[float] = []

    def bump():
        try:
            for _ in range(25):
                asked = time.monotonic()
                with engine.begin() as conn:
                    conn.execute(sa.text("UPDATE counter SET n = n + 1"))
                    waits.append(time.monotonic() - asked)
                    time.sleep(0.002)  # hold the write turn a little, as a request does
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT n FROM counter")).scalar() == 200
    assert time.monotonic() - started < 20
    # Queued, a writer waits for the few ahead of it (7 x 2 ms here); SQLite's busy
    # handler alone lets an unlucky one sleep 25-100 ms at a time, again and again.
    assert max(waits) < 0.3


def test_a_rolled_back_or_abandoned_writer_gives_up_its_turn(engine):
    """Rollback, and a connection returned to the pool mid-transaction, both free the
    turn: the next writer on another thread is not kept waiting."""
    conn = engine.connect()
    conn.begin()
    conn.execute(sa.text("UPDATE counter SET n = 5"))
    conn.rollback()
    conn.begin()
    conn.execute(sa.text("UPDATE counter SET n = 6"))
    conn.close()  # back to the pool without a commit: reset rolls it back

    done = threading.Event()

    def write():
        with engine.begin() as other:
            other.execute(sa.text("UPDATE counter SET n = 7"))
        done.set()

    threading.Thread(target=write).start()
    assert done.wait(timeout=5)
    with engine.connect() as check:
        assert check.execute(sa.text("SELECT n FROM counter")).scalar() == 7
