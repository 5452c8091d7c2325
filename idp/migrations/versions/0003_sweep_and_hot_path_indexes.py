"""indexes for the set-based sweep, the retention purge and the hot paths

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 21:40:00

On PostgreSQL the indexes are built CONCURRENTLY (outside the migration's transaction),
so applying this to a large, live database does not block logins or token requests.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

# (name, table, columns, partial-index condition or None)
INDEXES = [
    ('ix_login_sessions_open_created', 'login_sessions', ['created_at', 'id', 'account_id'],
     'ended_at IS NULL'),
    ('ix_login_sessions_open_last_active', 'login_sessions', ['last_active_at', 'id', 'account_id'],
     'ended_at IS NULL'),
    ('ix_login_sessions_ended', 'login_sessions', ['ended_at', 'id'], 'ended_at IS NOT NULL'),
    ('ix_authorization_codes_pending', 'authorization_codes', ['session_id'], 'used_at IS NULL'),
    ('ix_authorization_codes_client_nonce', 'authorization_codes', ['client_id', 'nonce'],
     'nonce IS NOT NULL'),
]


def _where(condition):
    if condition is None:
        return {}
    return {'postgresql_where': sa.text(condition), 'sqlite_where': sa.text(condition)}


def upgrade():
    if op.get_bind().dialect.name == 'postgresql':
        with op.get_context().autocommit_block():
            for name, table, columns, condition in INDEXES:
                # An interrupted concurrent build leaves an invalid index behind: start afresh.
                op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS {name}')
                op.create_index(name, table, columns, unique=False, postgresql_concurrently=True,
                                **_where(condition))
    else:
        for name, table, columns, condition in INDEXES:
            op.create_index(name, table, columns, unique=False, **_where(condition))


def downgrade():
    for name, table, _columns, _condition in reversed(INDEXES):
        op.drop_index(name, table_name=table)
