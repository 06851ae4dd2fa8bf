"""initial catalog schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 00:06:10.288437
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('cohort',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('expression', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('pending_series',
    sa.Column('series_uid', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('series_uid')
    )
    op.create_table('site',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('variable',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('unit', sa.String(length=32), nullable=True),
    sa.Column('source', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('dataset_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('cohort_pk', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('manifest_path', sa.Text(), nullable=False),
    sa.Column('n_series', sa.Integer(), nullable=False),
    sa.Column('n_files', sa.Integer(), nullable=False),
    sa.Column('n_subjects', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['cohort_pk'], ['cohort.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('cohort_pk', 'version')
    )
    with op.batch_alter_table('dataset_version', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dataset_version_cohort_pk'), ['cohort_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_dataset_version_content_hash'), ['content_hash'], unique=False)

    op.create_table('subject',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('subject_id', sa.String(length=200), nullable=False),
    sa.Column('sex', sa.String(length=8), nullable=True),
    sa.Column('site_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['site_id'], ['site.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('subject', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_subject_subject_id'), ['subject_id'], unique=True)

    op.create_table('study',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_uid', sa.String(length=128), nullable=False),
    sa.Column('subject_pk', sa.Integer(), nullable=False),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('age_years', sa.Float(), nullable=True),
    sa.Column('height_m', sa.Float(), nullable=True),
    sa.Column('weight_kg', sa.Float(), nullable=True),
    sa.Column('bmi', sa.Float(), nullable=True),
    sa.Column('description', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['subject_pk'], ['subject.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_study_uid'), ['study_uid'], unique=True)
        batch_op.create_index(batch_op.f('ix_study_subject_pk'), ['subject_pk'], unique=False)

    op.create_table('subject_value',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('subject_pk', sa.Integer(), nullable=False),
    sa.Column('variable_pk', sa.Integer(), nullable=False),
    sa.Column('num', sa.Float(), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['subject_pk'], ['subject.id'], ),
    sa.ForeignKeyConstraint(['variable_pk'], ['variable.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('subject_pk', 'variable_pk')
    )
    with op.batch_alter_table('subject_value', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_subject_value_subject_pk'), ['subject_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_subject_value_variable_pk'), ['variable_pk'], unique=False)

    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_uid', sa.String(length=128), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('study_pk', sa.Integer(), nullable=True),
    sa.Column('site_pk', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('problem', sa.Text(), nullable=True),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('manufacturer', sa.String(length=200), nullable=True),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('field_strength', sa.Float(), nullable=True),
    sa.Column('protocol', sa.String(length=200), nullable=True),
    sa.Column('description', sa.String(length=200), nullable=True),
    sa.Column('body_part', sa.String(length=64), nullable=True),
    sa.Column('shape', sa.JSON(), nullable=True),
    sa.Column('spacing', sa.JSON(), nullable=True),
    sa.Column('affine', sa.JSON(), nullable=True),
    sa.Column('orientation', sa.String(length=8), nullable=True),
    sa.Column('dtype', sa.String(length=16), nullable=True),
    sa.Column('n_files', sa.Integer(), nullable=False),
    sa.Column('meta', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['site_pk'], ['site.id'], ),
    sa.ForeignKeyConstraint(['study_pk'], ['study.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('series_uid', 'label')
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_modality'), ['modality'], unique=False)
        batch_op.create_index(batch_op.f('ix_series_series_uid'), ['series_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_series_study_pk'), ['study_pk'], unique=False)

    op.create_table('file',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('source_path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('series_uid', sa.String(length=128), nullable=False),
    sa.Column('sop_uid', sa.String(length=128), nullable=True),
    sa.Column('series_pk', sa.Integer(), nullable=True),
    sa.Column('frames', sa.JSON(), nullable=True),
    sa.Column('header', sa.JSON(), nullable=True),
    sa.Column('stored_copy', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['series_pk'], ['series.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('path'),
    sa.UniqueConstraint('source_path')
    )
    with op.batch_alter_table('file', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_file_series_pk'), ['series_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_file_series_uid'), ['series_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_file_sha256'), ['sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_file_sop_uid'), ['sop_uid'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('file', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_file_sop_uid'))
        batch_op.drop_index(batch_op.f('ix_file_sha256'))
        batch_op.drop_index(batch_op.f('ix_file_series_uid'))
        batch_op.drop_index(batch_op.f('ix_file_series_pk'))

    op.drop_table('file')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_pk'))
        batch_op.drop_index(batch_op.f('ix_series_series_uid'))
        batch_op.drop_index(batch_op.f('ix_series_modality'))

    op.drop_table('series')
    with op.batch_alter_table('subject_value', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_subject_value_variable_pk'))
        batch_op.drop_index(batch_op.f('ix_subject_value_subject_pk'))

    op.drop_table('subject_value')
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_subject_pk'))
        batch_op.drop_index(batch_op.f('ix_study_study_uid'))

    op.drop_table('study')
    with op.batch_alter_table('subject', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_subject_subject_id'))

    op.drop_table('subject')
    with op.batch_alter_table('dataset_version', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dataset_version_content_hash'))
        batch_op.drop_index(batch_op.f('ix_dataset_version_cohort_pk'))

    op.drop_table('dataset_version')
    op.drop_table('variable')
    op.drop_table('site')
    op.drop_table('pending_series')
    op.drop_table('cohort')

