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
