"""email: every attempt at delivering a message, for the deliveries page

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 05:50:00
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'mail_attempts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('message_id', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(), nullable=False),
        sa.Column('error', sa.String(length=300), nullable=True),
        sa.Column('duration_ms', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['message_id'], ['mail_outbox.id'], ),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_mail_attempts_message_id', 'mail_attempts', ['message_id'],
                    unique=False)


def downgrade():
    op.drop_index('ix_mail_attempts_message_id', table_name='mail_attempts')
    op.drop_table('mail_attempts')
