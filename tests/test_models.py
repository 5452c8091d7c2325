"""Hot statements on the driver's cursor (``HotQuery``) answer exactly as SQLAlchemy
would, and fail as it would."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from idp import postgres
from idp.models import Account, HotQuery, User, db, read_only

USERS = HotQuery(sa.select(User.__table__, Account.max_session_duration)
                 .join(Account.__table__, Account.id == User.account_id)
                 .where(User.sub == sa.bindparam("sub")))


def test_a_hot_query_gives_the_row_sqlalchemy_gives(app, make_user):
    sub = make_user("ada@example.com")
    with app.app_context(), read_only() as connection:
        hot = USERS.first(connection, {"sub": sub})
        expected = connection.execute(USERS.statement, {"sub": sub}).first()
        assert hot == tuple(expected)
        # The columns' own conversions: aware UTC datetimes, booleans, not driver values.
        assert [type(value) for value in hot] == [type(value) for value in expected]
        assert any(isinstance(value, datetime) and value.tzinfo is not None for value in hot)
        assert USERS.first(connection, {"sub": "nobody"}) is None


def test_a_hot_query_on_the_requests_transaction_sees_its_uncommitted_writes(app, make_user):
    """``tokens.load_holder`` also runs on the ORM session's connection (refresh,
    revocation): the driver's cursor must read inside that transaction."""
    sub = make_user("ada@example.com")
    with app.app_context():
        db.session.execute(sa.update(User).values(name="Changed"))
        assert USERS.first(db.session.connection(), {"sub": sub})[
            list(USERS.statement.selected_columns.keys()).index("name")] == "Changed"
        db.session.rollback()
        with read_only() as connection:
            assert "Changed" not in USERS.first(connection, {"sub": sub})


RENAME = HotQuery(sa.update(User.__table__)
                  .where(User.sub == sa.bindparam("sub"), User.disabled_at.is_(None))
                  .values(name=sa.bindparam("name"), disabled_at=sa.bindparam("at")))


def test_a_hot_write_converts_its_parameters_as_sqlalchemy_would_and_counts_its_rows(
        app, make_user):
    """``run`` (the refresh grant's writes): an aware datetime is stored as the column's
    type stores it, and the matched rows are counted, so a lost race reads as 0."""
    sub = make_user("ada@example.com")
    at = datetime(2026, 11, 24, 12, 30, 15, 123456, tzinfo=UTC)
    with app.app_context():
        assert RENAME.run(db.session.connection(), {"sub": sub, "name": "Ada", "at": at}) == 1
        assert RENAME.run(db.session.connection(), {"sub": sub, "name": "Again", "at": at}) == 0
        db.session.commit()
        user = db.session.scalars(sa.select(User).where(User.sub == sub)).one()
        assert (user.name, user.disabled_at) == ("Ada", at)
        with pytest.raises(ValueError, match="naive"):  # the column type's own check
            RENAME.run(db.session.connection(), {"sub": "x", "name": "x", "at": datetime(2026, 1, 1)})
        db.session.rollback()


def test_a_dead_connection_fails_once_through_sqlalchemy_then_the_pool_starts_afresh(
        app, backend, make_user, monkeypatch):
    """A driver error is raised again through ``Connection.execute``: wrapped (the error
    handlers answer 503) and the dead connection invalidated, as for any statement."""
    if backend.kind != "postgresql":
        pytest.skip("PostgreSQL variant: set IDP_TEST_DATABASE_URL to run it (.ci/run does)")
    sub = make_user("ada@example.com")
    monkeypatch.setattr(postgres, "PING_AFTER_IDLE", 3600.0)
    with app.app_context():
        engine = db.engine
        engine.dispose()
        with read_only() as connection:
            pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        killer = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
        with killer.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        killer.dispose()
        with pytest.raises(sa.exc.OperationalError) as failure, read_only() as connection:
            USERS.first(connection, {"sub": sub})
        assert failure.value.connection_invalidated
        with read_only() as connection:
            assert USERS.first(connection, {"sub": sub}) is not None
