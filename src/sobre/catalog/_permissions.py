"""Who may do what: the role rules of projects, as one table.

Roles are per project (:data:`~sobre.catalog.ROLES`); an ``admin`` account is a ``data_manager`` of
every project and may also manage accounts and create projects. Every front end (the workstation
server, the CLI, the inference service) asks :func:`can` or :func:`require`; none holds a rule of its
own. The table is :data:`PERMISSIONS`; ``docs/workstation.md`` prints it.

>>> can("annotator", "annotation.save"), can("viewer", "annotation.save")
(True, False)
>>> sorted(actions_of("viewer"))
['annotation.view', 'project.view', 'series.view']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sobre.errors import AccessError, InputError

if TYPE_CHECKING:
    from ._accounts import Account

__all__ = ["ACTIONS", "ADMIN_ACTIONS", "PERMISSIONS", "actions_of", "can", "require"]

#: Every project action, with what it covers.
ACTIONS = {
    "project.view": "see the project, its cohorts, frozen dataset versions, subjects and their clinical variables",
    "series.view": "see a series of the project: metadata, voxels, slices, thumbnails",
    "annotation.view": "list annotation versions of the project and read their content",
    "annotation.save": "save a new annotation version (a draft or a submission), import one from a file",
    "annotation.submit": "submit one's own draft for review",
    "annotation.review": "accept or reject a submitted version (not one's own), see the review queue",
    "annotation.export": "export a version as DICOM SEG, SR, NIfTI or CSV",
    "annotation.push": "send an exported version to the configured PACS",
    "project.manage": "grant and revoke roles in the project",
}

#: Actions outside any project: only accounts with the ``admin`` flag.
ADMIN_ACTIONS = {
    "users.manage": "create, list, disable accounts and reset passwords",
    "projects.create": "create projects from cohorts and a label schema",
}

_ALL = frozenset(ACTIONS)
_VIEW = frozenset({"project.view", "series.view", "annotation.view"})

#: role -> the actions it allows (the one rule table).
PERMISSIONS: dict[str, frozenset[str]] = {
    "data_manager": _ALL,
    "annotator": _VIEW | {"annotation.save", "annotation.submit", "annotation.export"},
    "reviewer": _VIEW | {"annotation.review", "annotation.export"},
    "viewer": _VIEW,
}


def _check_action(action: str) -> None:
    if action not in ACTIONS and action not in ADMIN_ACTIONS:
        raise InputError("unknown action", expected=", ".join([*ACTIONS, *ADMIN_ACTIONS]), found=repr(action))


def can(role: str | None, action: str) -> bool:
    """Whether ``role`` (None: no role in the project) allows the project ``action``."""
    _check_action(action)
    return role is not None and action in PERMISSIONS.get(role, frozenset())


def actions_of(role: str | None) -> frozenset[str]:
    """The project actions ``role`` allows (empty for None)."""
    return PERMISSIONS.get(role, frozenset()) if role is not None else frozenset()


def require(account: Account, action: str, project: str | None = None) -> str | None:
    """Raise :class:`~sobre.errors.AccessError` unless ``account`` may do ``action`` (in ``project``).

    Returns the account's role in the project (``data_manager`` for admins; None for admin actions).
    A disabled account may do nothing.
    """
    _check_action(action)
    if account.disabled:
        raise AccessError("this account is disabled", found=account.username,
                          fix="ask an administrator to enable it")
    if action in ADMIN_ACTIONS:
        if not account.admin:
            raise AccessError(f"'{action}' needs an administrator", expected="an account with the admin flag",
                              found=account.username)
        return None
    if project is None:
        raise InputError(f"'{action}' is a project action", expected="a project name", found="none")
    role = account.role_in(project)
    if role is None:
        raise AccessError(f"no role in project '{project}'", expected="a role: " + ", ".join(PERMISSIONS),
                          found=f"{account.username} has none", fix="ask a data manager of the project for a role")
    if action not in PERMISSIONS.get(role, frozenset()):
        allowed = sorted(r for r, acts in PERMISSIONS.items() if action in acts)
        raise AccessError(f"'{action}' is not allowed to a {role}", expected="a role among " + ", ".join(allowed),
                          found=f"{account.username} is {role} in '{project}'")
    return role
