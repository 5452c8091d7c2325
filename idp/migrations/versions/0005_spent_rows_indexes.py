"""indexes for purging spent rows: device codes and access-token revocations by expiry

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 20:00:00

`idp sweep` deletes device codes and single access-token revocations once past their
expiry; these indexes let it find them without reading the tables whole. On PostgreSQL
they are built CONCURRENTLY (outside the migration's transaction), as in 0003.
"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

INDEXES = [
    ('ix_device_codes_expires_at', 'device_codes', ['expires_at']),
    ('ix_revoked_access_tokens_expires_at', 'revoked_access_tokens', ['expires_at']),
]


def upgrade():
    if op.get_bind().dialect.name == 'postgresql':
        with op.get_context().autocommit_block():
            for name, table, columns in INDEXES:
                op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS {name}')
                op.create_index(name, table, columns, unique=False, postgresql_concurrently=True)
    else:
        for name, table, columns in INDEXES:
            op.create_index(name, table, columns, unique=False)


def downgrade():
    for name, table, _columns in reversed(INDEXES):
        op.drop_index(name, table_name=table)
