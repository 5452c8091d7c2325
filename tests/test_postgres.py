"""PostgreSQL connections are pinged only after idling (idp/postgres.py)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from idp import postgres
from idp.models import db


@pytest.fixture
def pg(app, backend):
    if backend.kind != "postgresql":
        pytest.skip("PostgreSQL connection pool: runs in the postgresql variant "
                    "(IDP_TEST_DATABASE_URL, which .ci/run sets)")
    with app.app_context():
        yield db.engine


def _backend_pid(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()


def _kill(engine, pid: int) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def test_a_connection_that_died_while_idle_is_replaced_before_anyone_uses_it(pg, monkeypatch):
    engine = pg
    engine.dispose()
    first = _backend_pid(engine)  # the pool's only connection, now idle in it
    killer = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
    _kill(killer, first)
    killer.dispose()
    monkeypatch.setattr(postgres, "PING_AFTER_IDLE", 0.0)  # every checkout counts as idle
    assert _backend_pid(engine) != first  # no error: the dead one was replaced


def test_a_connection_used_a_moment_ago_is_not_pinged(pg, monkeypatch):
    """No extra round trip on a busy pool: a dead connection returned just now is only
    found out by the statement that uses it, which fails once; the pool then starts afresh."""
    engine = pg
    engine.dispose()
    first = _backend_pid(engine)
    killer = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
    _kill(killer, first)
    killer.dispose()
    monkeypatch.setattr(postgres, "PING_AFTER_IDLE", 3600.0)
    with pytest.raises(sa.exc.OperationalError) as failure:
        _backend_pid(engine)
    assert failure.value.connection_invalidated
    assert _backend_pid(engine) != first
