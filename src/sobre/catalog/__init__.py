"""The workspace and its catalog: the intake (with the privacy policy), clinical variables, cohorts,
frozen dataset versions.

Public API
----------
``Workspace``
    ``init``/``open``; ``ingest`` (through ``intake``), ``add_clinical``, ``records``, ``query``,
    ``select``, ``series``, ``load``, ``objects``, ``cohort_create``, ``freeze``, ``dataset``, ``verify``.
``Intake``, ``IntakeRoute``, ``IngestReport``
    The one way data enters a workspace; receiving routes for pull and listen.
``WorkspaceLayout``, ``WorkspaceSettings``
    Where everything lives; every setting of ``sobre.toml``.
``Dataset``, ``DatasetRef``, ``DatasetManifest``, ``ManifestSeries``
    Frozen dataset versions, typed.
``QueryResult``, ``compile_filter``, ``BASE_FIELDS``
    The filter language.
``Accounts``, ``LabelSchema``, ``Annotations``, ``AnnotationConflict``
    People, projects and roles; annotation versions (immutable, reviewed, filterable, frozen).
``PERMISSIONS``, ``can``, ``require``, ``actions_of``, ``ACTIONS``, ``ADMIN_ACTIONS``
    Which role may do which action in a project (the one rule table).
"""

from sobre.catalog._accounts import ROLES, Account, Accounts, LabelDef, LabelSchema, ProjectInfo, SegmentDef
from sobre.catalog._annotations import AnnotationConflict, Annotations, AnnotationVersionInfo, ReviewedElsewhere
from sobre.catalog._cohorts import BASE_FIELDS, QueryResult
from sobre.catalog._datasets import Dataset, DatasetManifest, DatasetRef, ManifestFile, ManifestSeries
from sobre.catalog._ingest import IngestReport
from sobre.catalog._intake import Intake, IntakeRoute
from sobre.catalog._layout import WorkspaceLayout
from sobre.catalog._permissions import ACTIONS, ADMIN_ACTIONS, PERMISSIONS, actions_of, can, require
from sobre.catalog._query import compile_filter
from sobre.catalog._settings import WorkspaceSettings
from sobre.catalog._workspace import Workspace

__all__ = [
    "Workspace", "Intake", "IntakeRoute", "IngestReport", "WorkspaceLayout", "WorkspaceSettings",
    "Dataset", "DatasetRef", "DatasetManifest", "ManifestSeries", "ManifestFile", "QueryResult",
    "compile_filter", "BASE_FIELDS",
    "Accounts", "Account", "ProjectInfo", "LabelSchema", "SegmentDef", "LabelDef", "ROLES",
    "Annotations", "AnnotationVersionInfo", "AnnotationConflict", "ReviewedElsewhere",
    "ACTIONS", "ADMIN_ACTIONS", "PERMISSIONS", "can", "require", "actions_of",
]
