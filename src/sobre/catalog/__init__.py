"""The workspace and its catalog: ingest, typed clinical variables, cohorts, frozen dataset versions."""

from sobre.catalog._query import compile_filter
from sobre.catalog._workspace import DatasetRef, IngestReport, Workspace

__all__ = ["Workspace", "IngestReport", "DatasetRef", "compile_filter"]
