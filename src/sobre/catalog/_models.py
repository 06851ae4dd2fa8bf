"""Catalog tables (SQLAlchemy 2). The schema evolves through Alembic migrations in ``migrations/``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Site(Base):
    """Acquisition site (hospital, centre, scanner park)."""

    __tablename__ = "site"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)


class Subject(Base):
    """A person, known only by a (pseudonymous) identifier."""

    __tablename__ = "subject"
    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    sex: Mapped[str | None] = mapped_column(String(8))
    site_id: Mapped[int | None] = mapped_column(ForeignKey("site.id"))
    studies: Mapped[list[Study]] = relationship(back_populates="subject")


class Study(Base):
    """One imaging visit; age, height, weight are per study because they change over time."""

    __tablename__ = "study"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    subject_pk: Mapped[int] = mapped_column(ForeignKey("subject.id"), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))  # YYYYMMDD
    age_years: Mapped[float | None] = mapped_column(Float)
    height_m: Mapped[float | None] = mapped_column(Float)
    weight_kg: Mapped[float | None] = mapped_column(Float)
    bmi: Mapped[float | None] = mapped_column(Float)
    description: Mapped[str | None] = mapped_column(String(200))
    subject: Mapped[Subject] = relationship(back_populates="studies")


class Series(Base):
    """One consistent image volume. A DICOM series split on reading gives several rows (``label``)."""

    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("series_uid", "label"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(128), index=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    study_pk: Mapped[int | None] = mapped_column(ForeignKey("study.id"), index=True)
    site_pk: Mapped[int | None] = mapped_column(ForeignKey("site.id"))
    status: Mapped[str] = mapped_column(String(16), default="ok")  # ok | error
    problem: Mapped[str | None] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))  # dicom | nifti | nrrd | optical
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    manufacturer: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    field_strength: Mapped[float | None] = mapped_column(Float)
    protocol: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(200))
    body_part: Mapped[str | None] = mapped_column(String(64))
    shape: Mapped[list | None] = mapped_column(JSON)
    spacing: Mapped[list | None] = mapped_column(JSON)
    affine: Mapped[list | None] = mapped_column(JSON)  # 4×4, LPS
    orientation: Mapped[str | None] = mapped_column(String(8))
    dtype: Mapped[str | None] = mapped_column(String(16))
    n_files: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[dict | None] = mapped_column(JSON)


class File(Base):
    """A file on disk with its content hash and the frame geometry read from its header."""

    __tablename__ = "file"
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)  # where the bytes are (a workspace copy with --copy)
    source_path: Mapped[str] = mapped_column(Text, unique=True)  # where they were found
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    series_uid: Mapped[str] = mapped_column(String(128), index=True)
    sop_uid: Mapped[str | None] = mapped_column(String(128), index=True)
    series_pk: Mapped[int | None] = mapped_column(ForeignKey("series.id", ondelete="SET NULL"), index=True)
    frames: Mapped[list | None] = mapped_column(JSON)  # per-frame geometry, enough to re-assemble
    header: Mapped[dict | None] = mapped_column(JSON)  # catalogued header facts
    stored_copy: Mapped[bool] = mapped_column(Boolean, default=False)


class PendingSeries(Base):
    """Series whose files changed and whose volumes must be (re)assembled: the crash-safe to-do list."""

    __tablename__ = "pending_series"
    series_uid: Mapped[str] = mapped_column(String(128), primary_key=True)


class Variable(Base):
    """A typed clinical variable: numeric (with unit), categorical, or date."""

    __tablename__ = "variable"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    unit: Mapped[str | None] = mapped_column(String(32))
    source: Mapped[str | None] = mapped_column(Text)


class SubjectValue(Base):
    __tablename__ = "subject_value"
    __table_args__ = (UniqueConstraint("subject_pk", "variable_pk"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    subject_pk: Mapped[int] = mapped_column(ForeignKey("subject.id"), index=True)
    variable_pk: Mapped[int] = mapped_column(ForeignKey("variable.id"), index=True)
    num: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str | None] = mapped_column(Text)


class Cohort(Base):
    __tablename__ = "cohort"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    expression: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class DatasetVersion(Base):
    """An immutable, hashed snapshot of a cohort: the manifest file is the source of truth."""

    __tablename__ = "dataset_version"
    __table_args__ = (UniqueConstraint("cohort_pk", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    cohort_pk: Mapped[int] = mapped_column(ForeignKey("cohort.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    manifest_path: Mapped[str] = mapped_column(Text)
    n_series: Mapped[int] = mapped_column(Integer)
    n_files: Mapped[int] = mapped_column(Integer)
    n_subjects: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class DicomObject(Base):
    """A DICOM instance that is not an image: RT structure set, RT plan, structured report, ...

    Catalogued with what it refers to (``references``: the SeriesInstanceUIDs of the images it was
    drawn on or planned on), so that a structure set can be found from its CT and the other way round.
    """

    __tablename__ = "dicom_object"

    id: Mapped[int] = mapped_column(primary_key=True)
    file_pk: Mapped[int] = mapped_column(ForeignKey("file.id", ondelete="CASCADE"), unique=True)
    sop_uid: Mapped[str] = mapped_column(String(128), index=True)
    sop_class_uid: Mapped[str | None] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))  # rtstruct | rtplan | sr | other
    modality: Mapped[str | None] = mapped_column(String(16))
    series_uid: Mapped[str] = mapped_column(String(128), index=True)
    study_pk: Mapped[int | None] = mapped_column(ForeignKey("study.id"), index=True)
    references: Mapped[list | None] = mapped_column(JSON)  # referenced SeriesInstanceUIDs
    meta: Mapped[dict | None] = mapped_column(JSON)


# --------------------------------------------------------------------------- people and projects
class User(Base):
    """An account of the workstation and the inference service's reviewers (password hashed with Argon2)."""

    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(255))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Project(Base):
    """A set of cohorts and a label schema: the unit of annotation work and of membership."""

    __tablename__ = "project"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    cohorts: Mapped[list] = mapped_column(JSON)  # cohort names
    label_schema: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Membership(Base):
    """A user's role in a project: data_manager, annotator, reviewer or viewer."""

    __tablename__ = "membership"
    __table_args__ = (UniqueConstraint("user_pk", "project_pk"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    project_pk: Mapped[int] = mapped_column(ForeignKey("project.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))


class Annotation(Base):
    """One annotated object of a volume in a project (a mask, points, boxes or image labels), with versions."""

    __tablename__ = "annotation"
    __table_args__ = (UniqueConstraint("project_pk", "series_uid", "series_label", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_pk: Mapped[int] = mapped_column(ForeignKey("project.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(128), index=True)
    series_label: Mapped[str] = mapped_column(String(200), default="")
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))  # mask | points | boxes | labels
    created_at: Mapped[datetime] = mapped_column(DateTime)


class AnnotationVersion(Base):
    """An immutable version of an annotation: who, when, from which parent, with which tool, what content."""

    __tablename__ = "annotation_version"
    __table_args__ = (UniqueConstraint("annotation_pk", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    annotation_pk: Mapped[int] = mapped_column(ForeignKey("annotation.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    parent_pk: Mapped[int | None] = mapped_column(ForeignKey("annotation_version.id"))
    branch: Mapped[str] = mapped_column(String(64), default="main")
    author: Mapped[str] = mapped_column(String(64))
    tool: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))  # draft | submitted | accepted | rejected
    payload_path: Mapped[str] = mapped_column(Text)  # relative to the workspace, content-addressed
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    summary: Mapped[dict | None] = mapped_column(JSON)  # segments and voxel counts, label values, ...
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Review(Base):
    """A reviewer's decision on a submitted version."""

    __tablename__ = "review"

    id: Mapped[int] = mapped_column(primary_key=True)
    version_pk: Mapped[int] = mapped_column(ForeignKey("annotation_version.id"), index=True)
    reviewer: Mapped[str] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(16))  # accept | reject
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
