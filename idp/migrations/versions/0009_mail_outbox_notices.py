"""email: the mail outbox, single-use email links, the browsers known to each user, the
new-device notice settings

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 02:45:00
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('new_device_notices', sa.Boolean(), nullable=False,
                                   server_default=sa.true()))
    with op.batch_alter_table('accounts') as batch:
        batch.add_column(sa.Column('require_new_device_notices', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    op.create_table(
        'mail_outbox',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=True),
        sa.Column('to_address', sa.String(length=254), nullable=False),
        sa.Column('session_id', sa.String(length=32), nullable=True),
        sa.Column('link_id', sa.String(length=32), nullable=True),
        sa.Column('subject', sa.String(length=200), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_attempt_at', sa.DateTime(), nullable=True),
        sa.Column('last_error', sa.String(length=300), nullable=True),
        sa.Column('delivered_at', sa.DateTime(), nullable=True),
        sa.Column('given_up_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_mail_outbox_due', 'mail_outbox',
                    ['delivered_at', 'given_up_at', 'next_attempt_at'], unique=False)
    op.create_index('ix_mail_outbox_user_id', 'mail_outbox', ['user_id'], unique=False)
    op.create_index('ix_mail_outbox_session_id', 'mail_outbox', ['session_id'], unique=False)
    op.create_index('ix_mail_outbox_requests', 'mail_outbox', ['created_at'], unique=False,
                    postgresql_where=sa.text('session_id IS NULL'),
                    sqlite_where=sa.text('session_id IS NULL'))
    op.create_table(
        'email_links',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('secret_hash', sa.String(length=64), nullable=True),
        sa.Column('purpose', sa.String(length=16), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('session_id', sa.String(length=32), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.Column('used_at', sa.DateTime(), nullable=True),
        sa.Column('followed_up_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_email_links_user_id', 'email_links', ['user_id'], unique=False)
    op.create_index('ix_email_links_expires_at', 'email_links', ['expires_at'], unique=False)
    op.create_index('ix_email_links_session_id', 'email_links', ['session_id'], unique=False)
    op.create_table(
        'known_devices',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('marker_hash', sa.String(length=64), nullable=False),
        sa.Column('device_label', sa.String(length=120), nullable=False),
        sa.Column('first_seen_at', sa.DateTime(), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('user_id', 'marker_hash', name='uq_known_devices_user_marker'),
    )


def downgrade():
    op.drop_table('known_devices')
    op.drop_index('ix_email_links_session_id', table_name='email_links')
    op.drop_index('ix_email_links_expires_at', table_name='email_links')
    op.drop_index('ix_email_links_user_id', table_name='email_links')
    op.drop_table('email_links')
    op.drop_index('ix_mail_outbox_requests', table_name='mail_outbox')
    op.drop_index('ix_mail_outbox_session_id', table_name='mail_outbox')
    op.drop_index('ix_mail_outbox_user_id', table_name='mail_outbox')
    op.drop_index('ix_mail_outbox_due', table_name='mail_outbox')
    op.drop_table('mail_outbox')
    with op.batch_alter_table('accounts') as batch:
        batch.drop_column('require_new_device_notices')
    with op.batch_alter_table('users') as batch:
        batch.drop_column('new_device_notices')
