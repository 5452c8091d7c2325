"""passkeys (WebAuthn): credential id, public key and sign count on auth_factors; the
challenges of ceremonies in progress

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 22:10:00
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('auth_factors') as batch:
        batch.alter_column('secret_sealed', existing_type=sa.String(length=300), nullable=True)
        batch.add_column(sa.Column('credential_id', sa.String(length=1400), nullable=True))
        batch.add_column(sa.Column('public_key', sa.LargeBinary(length=2048), nullable=True))
        batch.add_column(sa.Column('sign_count', sa.BigInteger(), nullable=False,
                                   server_default='0'))
        batch.create_unique_constraint('uq_auth_factors_credential_id', ['credential_id'])
    op.create_table(
        'passkey_challenges',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('challenge', sa.String(length=128), nullable=False),
        sa.Column('purpose', sa.String(length=16), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=True),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_passkey_challenges_expires_at', 'passkey_challenges', ['expires_at'],
                    unique=False)


def downgrade():
    op.drop_index('ix_passkey_challenges_expires_at', table_name='passkey_challenges')
    op.drop_table('passkey_challenges')
    with op.batch_alter_table('auth_factors') as batch:
        batch.drop_constraint('uq_auth_factors_credential_id', type_='unique')
        batch.drop_column('sign_count')
        batch.drop_column('public_key')
        batch.drop_column('credential_id')
        batch.alter_column('secret_sealed', existing_type=sa.String(length=300), nullable=False)
