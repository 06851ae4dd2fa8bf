"""accounts, projects and memberships; annotations with immutable versions and reviews

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'user_account',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('display_name', sa.String(length=200), nullable=True),
        sa.Column('password_hash', sa.String(length=255), nullable=False),
        sa.Column('admin', sa.Boolean(), nullable=False),
        sa.Column('disabled', sa.Boolean(), nullable=False),
        sa.Column('must_change_password', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_user_account_username', 'user_account', ['username'], unique=True)
    op.create_table(
        'project',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('description', sa.Text(), nullable=True),
        sa.Column('cohorts', sa.JSON(), nullable=False),
        sa.Column('label_schema', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.create_table(
        'membership',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_pk', sa.Integer(), nullable=False),
        sa.Column('project_pk', sa.Integer(), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(['user_pk'], ['user_account.id']),
        sa.ForeignKeyConstraint(['project_pk'], ['project.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('user_pk', 'project_pk'),
    )
    op.create_index('ix_membership_user_pk', 'membership', ['user_pk'])
    op.create_index('ix_membership_project_pk', 'membership', ['project_pk'])
    op.create_table(
        'annotation',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('project_pk', sa.Integer(), nullable=False),
        sa.Column('series_uid', sa.String(length=128), nullable=False),
        sa.Column('series_label', sa.String(length=200), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['project_pk'], ['project.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('project_pk', 'series_uid', 'series_label', 'name'),
    )
    op.create_index('ix_annotation_project_pk', 'annotation', ['project_pk'])
    op.create_index('ix_annotation_series_uid', 'annotation', ['series_uid'])
    op.create_table(
        'annotation_version',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('annotation_pk', sa.Integer(), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('parent_pk', sa.Integer(), nullable=True),
        sa.Column('branch', sa.String(length=64), nullable=False),
        sa.Column('author', sa.String(length=64), nullable=False),
        sa.Column('tool', sa.String(length=100), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('payload_path', sa.Text(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('summary', sa.JSON(), nullable=True),
        sa.Column('comment', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['annotation_pk'], ['annotation.id']),
        sa.ForeignKeyConstraint(['parent_pk'], ['annotation_version.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('annotation_pk', 'number'),
    )
    op.create_index('ix_annotation_version_annotation_pk', 'annotation_version', ['annotation_pk'])
    op.create_index('ix_annotation_version_sha256', 'annotation_version', ['sha256'])
    op.create_table(
        'review',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('version_pk', sa.Integer(), nullable=False),
        sa.Column('reviewer', sa.String(length=64), nullable=False),
        sa.Column('decision', sa.String(length=16), nullable=False),
        sa.Column('comment', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['version_pk'], ['annotation_version.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_review_version_pk', 'review', ['version_pk'])


def downgrade() -> None:
    for t in ('review', 'annotation_version', 'annotation', 'membership', 'project', 'user_account'):
        op.drop_table(t)
