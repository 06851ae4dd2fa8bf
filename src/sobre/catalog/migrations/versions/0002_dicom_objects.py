"""non-image DICOM objects (RT structure sets, RT plans, reports) with their references

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'dicom_object',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('file_pk', sa.Integer(), nullable=False),
        sa.Column('sop_uid', sa.String(length=128), nullable=False),
        sa.Column('sop_class_uid', sa.String(length=128), nullable=True),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('modality', sa.String(length=16), nullable=True),
        sa.Column('series_uid', sa.String(length=128), nullable=False),
        sa.Column('study_pk', sa.Integer(), nullable=True),
        sa.Column('references', sa.JSON(), nullable=True),
        sa.Column('meta', sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(['file_pk'], ['file.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['study_pk'], ['study.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('file_pk'),
    )
    with op.batch_alter_table('dicom_object', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dicom_object_sop_uid'), ['sop_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_dicom_object_series_uid'), ['series_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_dicom_object_study_pk'), ['study_pk'], unique=False)


def downgrade() -> None:
    op.drop_table('dicom_object')
