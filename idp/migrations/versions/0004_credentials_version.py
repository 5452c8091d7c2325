"""users.credentials_version: what a sign-in re-checks under the user's row lock

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 18:00:00

A constant default: adding the column rewrites nothing on PostgreSQL (11+), so a large
users table is not locked for long.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('credentials_version', sa.Integer(), nullable=False,
                                   server_default='0'))


def downgrade():
    with op.batch_alter_table('users') as batch:
        batch.drop_column('credentials_version')
