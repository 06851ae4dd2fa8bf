"""The browser tests' workspace: two generated CT phantoms, a clinical table, a project, one account per role.

``build(root)`` writes it under ``root`` and returns the workspace folder. Runnable by hand for the dev
server: ``.venv/bin/python -m tests.web.workspace /tmp/wsdev`` then ``sobre serve -w /tmp/wsdev/ws``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

PASSWORD = "correct horse battery staple"
USERS = {"alice": "annotator", "bob": "annotator", "carol": "reviewer", "dave": "viewer"}
SCHEMA = {
    "segments": [
        {"name": "lesion", "value": 1, "color": [255, 0, 0],
         "category": {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically Altered Structure"},
         "type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"}},
        {"name": "<img src=x onerror=alert(1)>liver", "value": 2, "color": [0, 200, 0],
         "category": {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"},
         "type": {"value": "10200004", "scheme": "SCT", "meaning": "Liver"}},
    ],
    "labels": [{"name": "malignant", "kind": "binary"},
               {"name": "quality", "kind": "multiclass", "classes": ["good", "<b>poor</b>"]},
               {"name": "findings", "kind": "multilabel", "classes": ["nodule", "effusion"]},
               {"name": "size_mm", "kind": "numeric", "unit": "mm", "minimum": 0, "maximum": 300},
               {"name": "note", "kind": "text"}],
    "points": ["apex", "carina"],
    "boxes": ["nodule"],
}
CT_SHAPE = (128, 128, 40)  # i, j, k
CT_SPACING = (1.5, 1.5, 2.5)


def phantom_ct(shape=CT_SHAPE) -> np.ndarray:
    """A body ellipse (40 HU) in air, a liver-like region (60 HU), a lesion (120 HU) and a spine (700 HU)."""
    I, J, K = shape
    i, j, k = np.meshgrid(np.arange(I), np.arange(J), np.arange(K), indexing="ij")
    ci, cj = I / 2, J / 2
    body = ((i - ci) / (0.42 * I)) ** 2 + ((j - cj) / (0.34 * J)) ** 2 <= 1
    hu = np.full(shape, -1000, np.int16)
    hu[body] = 40
    liver = body & (((i - 0.35 * I) / (0.16 * I)) ** 2 + ((j - 0.45 * J) / (0.14 * J)) ** 2 <= 1)
    hu[liver] = 60
    lesion = ((i - 0.33 * I) ** 2 + (j - 0.45 * J) ** 2 + ((k - K / 2) * 1.6) ** 2) <= (0.06 * I) ** 2
    hu[lesion] = 120
    spine = ((i - ci) ** 2 + (j - 0.72 * J) ** 2) <= (0.06 * I) ** 2
    hu[spine & body] = 700
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 8, shape).astype(np.int16)
    return np.where(hu > -1000, hu + noise, hu).astype(np.int16)


def write_ct(out: Path, patient: str, *, seed: str, age: int, sex: str) -> None:
    import sobre

    hu = phantom_ct()
    aff = np.diag([*CT_SPACING, 1.0])
    aff[:3, 3] = [-CT_SHAPE[0] * CT_SPACING[0] / 2, -CT_SHAPE[1] * CT_SPACING[1] / 2, -50.0]
    img = sobre.Image(hu, aff, modality="CT")
    sobre.write_dicom_series(img, out, modality="CT", uid_seed=seed, extra={"SyntheticData": "YES"},
                             meta={"patient_id": patient, "patient_age": f"{age:03d}Y", "patient_sex": sex,
                                   "series_description": "phantom abdomen", "manufacturer": "Sobre phantom"})


def sobre_cli(*args: str) -> None:
    """Run the ``sobre ARGS`` command (its ``main``, in this process: no interpreter start per account)."""
    import contextlib
    import io

    from sobre.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = main(list(args))
    if rc != 0:
        raise RuntimeError(f"sobre {' '.join(args)} failed ({rc}):\n{out.getvalue()}")


def build(root: Path) -> Path:
    """Write the data and the workspace under ``root``; returns the workspace folder.

    The catalog part is done from Python; accounts and the project with ``sobre users`` (the CLI).
    """
    import tomli_w

    from sobre.catalog import Workspace

    root = Path(root)
    data = root / "data"
    write_ct(data / "ct1", "P001", seed="web-ct1", age=61, sex="F")
    write_ct(data / "ct2", "P002", seed="web-ct2", age=47, sex="M")
    (root / "clinical.csv").write_text("subject_id,diagnosis,score [points]\nP001,lesion,7.5\nP002,healthy,2\n")
    ws = Workspace.init(root / "ws")
    ws.ingest([data], clinical=root / "clinical.csv", site="web")
    ws.cohort_create("ct", 'modality == "CT"')
    ws.freeze("ct")
    ws.site_key()
    ws.close()
    wsdir = str(root / "ws")
    (root / "schema.toml").write_text(tomli_w.dumps(SCHEMA))
    (root / "password").write_text(PASSWORD + "\n")
    sobre_cli("users", "project", "create", "abdomen", "--cohort", "ct", "--schema", str(root / "schema.toml"),
              "--description", "Phantom CT <i>for the browser tests</i>", "-w", wsdir)
    sobre_cli("users", "add", "admin", "--admin", "--password-file", str(root / "password"), "-w", wsdir)
    for user, role in USERS.items():
        sobre_cli("users", "add", user, "--password-file", str(root / "password"), "-w", wsdir)
        sobre_cli("users", "project", "grant", user, "abdomen", role, "-w", wsdir)
    return root / "ws"


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
