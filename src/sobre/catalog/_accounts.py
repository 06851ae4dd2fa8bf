"""People and projects: accounts (Argon2 password hashes), projects (cohorts + a label schema), roles.

Roles are per project: ``data_manager`` (manages the project and its data), ``annotator`` (draws and
submits), ``reviewer`` (accepts or rejects submitted versions), ``viewer`` (looks). An account may be
an ``admin`` (manages accounts and projects everywhere). The workstation server and the inference
service check these roles; the catalog only stores them.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator
from sqlalchemy import delete, select

from sobre.base import Config, validate_config
from sobre.errors import CatalogError, InputError

from ._models import Membership, Project, User

if TYPE_CHECKING:
    from ._workspace import Workspace

__all__ = ["ROLES", "LabelSchema", "SegmentDef", "LabelDef", "Account", "ProjectInfo", "Accounts"]

ROLES = ("data_manager", "annotator", "reviewer", "viewer")
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MIN_PASSWORD = 12


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


# ---------------------------------------------------------------------------------------------- schema
class Code(Config):
    """A coded concept (e.g. SNOMED-CT ``{"value": "10200004", "scheme": "SCT", "meaning": "Liver"}``)."""

    value: str = Field(min_length=1, max_length=64)
    scheme: str = Field("SCT", min_length=1, max_length=16)
    meaning: str = Field(min_length=1, max_length=64)


class SegmentDef(Config):
    """A named, coloured segment of masks (its label value in the mask array, 1..255)."""

    name: str = Field(min_length=1, max_length=64)
    value: int = Field(ge=1, le=255)
    color: tuple[int, int, int] = (255, 0, 0)
    category: Code | None = None
    type: Code | None = None

    @model_validator(mode="after")
    def _rgb(self):
        if any(not 0 <= c <= 255 for c in self.color):
            raise ValueError(f"segment {self.name!r}: color values must lie in 0..255, not {list(self.color)}")
        return self


class LabelDef(Config):
    """An image-level label: binary (0/1), multiclass (one of ``classes``), multilabel (a subset), numeric, text."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    kind: Literal["binary", "multiclass", "multilabel", "numeric", "text"]
    classes: list[str] | None = None
    unit: str | None = None
    minimum: float | None = None
    maximum: float | None = None

    @model_validator(mode="after")
    def _classes(self):
        if self.kind in ("multiclass", "multilabel") and not self.classes:
            raise ValueError(f"label {self.name!r}: a {self.kind} label needs `classes`")
        if self.kind not in ("multiclass", "multilabel") and self.classes:
            raise ValueError(f"label {self.name!r}: `classes` applies to multiclass and multilabel labels only")
        return self


class LabelSchema(Config):
    """What a project annotates: mask segments, image labels, named points (landmarks) and boxes."""

    docs = "docs/workstation.md"

    segments: list[SegmentDef] = []
    labels: list[LabelDef] = []
    points: list[str] = []
    boxes: list[str] = []

    @model_validator(mode="after")
    def _unique(self):
        for what, names in (("segment", [s.name for s in self.segments]), ("segment value", [s.value for s in self.segments]),
                            ("label", [x.name for x in self.labels]), ("point", self.points), ("box", self.boxes)):
            dup = sorted({str(n) for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} names must be unique: {', '.join(dup)} given twice")
        return self

    def segment(self, value: int) -> SegmentDef | None:
        return next((s for s in self.segments if s.value == value), None)

    def label(self, name: str) -> LabelDef | None:
        return next((x for x in self.labels if x.name == name), None)


# ---------------------------------------------------------------------------------------------- accounts
class Account:
    """What the catalog knows of a user (never the password hash)."""

    def __init__(self, row: User, roles: dict[str, str]) -> None:
        self.username = row.username
        self.display_name = row.display_name or row.username
        self.admin = bool(row.admin)
        self.disabled = bool(row.disabled)
        self.must_change_password = bool(row.must_change_password)
        self.roles = dict(roles)  # project name -> role

    def role_in(self, project: str) -> str | None:
        return "data_manager" if self.admin else self.roles.get(project)

    def to_dict(self) -> dict:
        return {"username": self.username, "display_name": self.display_name, "admin": self.admin,
                "disabled": self.disabled, "must_change_password": self.must_change_password, "roles": self.roles}


class ProjectInfo:
    def __init__(self, row: Project) -> None:
        self.name = row.name
        self.description = row.description
        self.cohorts = list(row.cohorts or [])
        self.schema = LabelSchema.model_validate(row.label_schema or {})
        self.created_at = row.created_at.isoformat()

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "cohorts": self.cohorts,
                "schema": self.schema.model_dump(mode="json"), "created_at": self.created_at}


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()  # argon2id with the library's current recommended parameters


class Accounts:
    """Accounts, projects and memberships of a workspace (``ws.accounts``)."""

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    # -- users
    def add_user(self, username: str, password: str, *, display_name: str | None = None, admin: bool = False,
                 must_change_password: bool = False) -> Account:
        if not _USERNAME.match(username or ""):
            raise InputError("invalid user name", expected="2 to 64 letters, digits, '.', '_' or '-' (not first)",
                             found=repr(username))
        _check_password(password)
        with self._ws.session() as s, s.begin():
            if s.execute(select(User).where(User.username == username)).scalar_one_or_none() is not None:
                raise CatalogError(f"user '{username}' exists", fix="choose another name, or reset its password")
            s.add(User(username=username, display_name=display_name, password_hash=_hasher().hash(password),
                       admin=admin, disabled=False, must_change_password=must_change_password, created_at=_now()))
        return self.user(username)

    def user(self, username: str) -> Account:
        with self._ws.session() as s:
            row = s.execute(select(User).where(User.username == username)).scalar_one_or_none()
            if row is None:
                raise CatalogError(f"no user '{username}'", fix="list users with `sobre users list`")
            roles = {name: role for role, name in s.execute(
                select(Membership.role, Project.name).join(Project, Project.id == Membership.project_pk)
                .where(Membership.user_pk == row.id))}
            return Account(row, roles)

    def users(self) -> list[Account]:
        with self._ws.session() as s:
            names = list(s.execute(select(User.username).order_by(User.username)).scalars())
        return [self.user(n) for n in names]

    def authenticate(self, username: str, password: str) -> Account | None:
        """The account when the password is right and the account enabled; None otherwise (no hint which)."""
        from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

        with self._ws.session() as s, s.begin():
            row = s.execute(select(User).where(User.username == username)).scalar_one_or_none()
            if row is None:
                _hasher().hash(password or "x")  # same work whether the user exists or not
                return None
            try:
                _hasher().verify(row.password_hash, password or "")
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return None
            if row.disabled:
                return None
            if _hasher().check_needs_rehash(row.password_hash):
                row.password_hash = _hasher().hash(password)
        return self.user(username)

    def set_password(self, username: str, password: str, *, must_change: bool = False) -> None:
        _check_password(password)
        with self._ws.session() as s, s.begin():
            row = self._row(s, username)
            row.password_hash = _hasher().hash(password)
            row.must_change_password = must_change

    def set_disabled(self, username: str, disabled: bool = True) -> None:
        with self._ws.session() as s, s.begin():
            self._row(s, username).disabled = disabled

    @staticmethod
    def _row(s, username: str) -> User:
        row = s.execute(select(User).where(User.username == username)).scalar_one_or_none()
        if row is None:
            raise CatalogError(f"no user '{username}'", fix="list users with `sobre users list`")
        return row

    # -- projects
    def create_project(self, name: str, *, cohorts: list[str] = (), schema: LabelSchema | dict | None = None,
                       description: str | None = None) -> ProjectInfo:
        if not _NAME.match(name or ""):
            raise InputError("invalid project name", expected="1 to 100 letters, digits, '.', '_' or '-' (not first)",
                             found=repr(name))
        schema = schema if isinstance(schema, LabelSchema) else validate_config(dict(schema or {}), LabelSchema)
        known = {c["name"] for c in self._ws.cohorts()}
        unknown = [c for c in cohorts if c not in known]
        if unknown:
            raise CatalogError(f"unknown cohort(s) {', '.join(unknown)}",
                               expected="cohorts of the workspace: " + (", ".join(sorted(known)) or "(none yet)"))
        with self._ws.session() as s, s.begin():
            if s.execute(select(Project).where(Project.name == name)).scalar_one_or_none() is not None:
                raise CatalogError(f"project '{name}' exists", fix="choose another name")
            s.add(Project(name=name, description=description, cohorts=list(cohorts),
                          label_schema=schema.model_dump(mode="json"), created_at=_now()))
        return self.project(name)

    def project(self, name: str) -> ProjectInfo:
        with self._ws.session() as s:
            row = s.execute(select(Project).where(Project.name == name)).scalar_one_or_none()
            if row is None:
                known = list(s.execute(select(Project.name).order_by(Project.name)).scalars())
                raise CatalogError(f"no project '{name}'", expected="one of: " + (", ".join(known) or "(none yet)"))
            return ProjectInfo(row)

    def projects(self) -> list[ProjectInfo]:
        with self._ws.session() as s:
            return [ProjectInfo(r) for r in s.execute(select(Project).order_by(Project.name)).scalars()]

    def grant(self, username: str, project: str, role: str) -> None:
        """Give ``username`` the ``role`` in ``project`` (replacing another role there)."""
        if role not in ROLES:
            raise InputError("unknown role", expected=", ".join(ROLES), found=repr(role))
        with self._ws.session() as s, s.begin():
            user = self._row(s, username)
            proj = s.execute(select(Project).where(Project.name == project)).scalar_one_or_none()
            if proj is None:
                raise CatalogError(f"no project '{project}'")
            s.execute(delete(Membership).where(Membership.user_pk == user.id, Membership.project_pk == proj.id))
            s.add(Membership(user_pk=user.id, project_pk=proj.id, role=role))

    def revoke(self, username: str, project: str) -> None:
        with self._ws.session() as s, s.begin():
            user = self._row(s, username)
            proj = s.execute(select(Project).where(Project.name == project)).scalar_one_or_none()
            if proj is not None:
                s.execute(delete(Membership).where(Membership.user_pk == user.id, Membership.project_pk == proj.id))


def _check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise InputError("password too short", expected=f"at least {MIN_PASSWORD} characters",
                         found=f"{len(password or '')} characters", fix="choose a longer passphrase")
    if len(password) > 1024:
        raise InputError("password too long", expected="at most 1024 characters", found=f"{len(password)}")
