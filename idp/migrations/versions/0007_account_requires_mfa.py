"""accounts.require_mfa: every user of the account signs in with a second factor

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 23:30:00
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('accounts') as batch:
        batch.add_column(sa.Column('require_mfa', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade():
    with op.batch_alter_table('accounts') as batch:
        batch.drop_column('require_mfa')
