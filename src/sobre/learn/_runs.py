"""Run records: every training, pretraining or benchmark run leaves a folder in the workspace.

::

    WS/runs/<RUN_ID>/run.json          the record (below), rewritten atomically after every epoch
                     config.toml        the resolved configuration, as TOML-like JSON in run.json too
                     split.csv          subject → split (train/validation/test) and fold
                     predictions.csv    one row per subject (format of sobre.validate)
                     checkpoints/       last.pt (resume), best.pt (the model kept)
                     encoder.pt         pretraining: the encoder weights for transfer

``run.json`` holds: ``run_id``, ``kind`` (train, pretrain, benchmark), ``status`` (running,
completed, interrupted, failed), the resolved ``config`` and its SHA-256, the ``dataset``
(ref, content hash, simulated or not), ``code`` (sobre version, git SHA and dirty flag),
``packages`` (versions of torch, monai, numpy, ...), ``platform`` (CPU, threads, precision),
``seed``, ``split`` (sizes and hash), ``epochs`` (metrics per epoch), ``metrics`` (final),
``artifacts`` (path → SHA-256 and size) and, for :mod:`sobre.validate`, ``task``,
``positive_label``, ``dataset_version``, ``simulated`` and ``expected_subjects``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import subprocess
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

from sobre.base import sha256_file, write_atomic
from sobre.errors import CatalogError, ConfigError

__all__ = ["Run", "begin_run", "dataset_record", "reopen_run", "list_runs", "open_run", "code_version", "package_versions", "sha256_file", "runs_root"]

RUN_FORMAT = "sobre.run/1"
PACKAGES = ("sobre", "torch", "monai", "numpy", "scipy", "scikit-learn", "pandas", "pydantic", "nibabel", "pydicom")


def runs_root(ws_or_path) -> Path:
    """The runs folder of a workspace (``ws.layout.runs``), or the folder given."""
    layout = getattr(ws_or_path, "layout", None)
    return layout.runs if layout is not None else Path(ws_or_path)


def _atomic_write_text(path: Path, text: str) -> None:
    write_atomic(path, text, fsync=True)


_CODE_CACHE: dict | None = None


def code_version() -> dict:
    """Sobre's version and, in a git checkout, the commit SHA and whether sources differ from it."""
    global _CODE_CACHE
    if _CODE_CACHE is not None:
        return dict(_CODE_CACHE)
    import sobre

    out = {"sobre_version": sobre.__version__, "git_sha": None, "git_dirty": None}
    repo = Path(sobre.__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if sha.returncode == 0:
            out["git_sha"] = sha.stdout.strip()
            st = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "src", "pyproject.toml"],
                                capture_output=True, text=True, timeout=20)
            out["git_dirty"] = bool(st.stdout.strip()) if st.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    _CODE_CACHE = out
    return dict(out)


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def platform_info() -> dict:
    from sobre.learn._engine import cpu_bf16_support

    import torch

    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_bf16_support(),
            "torch_threads": torch.get_num_threads()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Run:
    """One run folder and its ``run.json`` record."""

    def __init__(self, path: Path, record: dict) -> None:
        self.path = Path(path)
        self.record = record

    @property
    def run_id(self) -> str:
        return self.record["run_id"]

    @classmethod
    def create(cls, root: str | Path, kind: str, *, config: dict, seed: int, dataset: dict | None = None,
               name: str | None = None) -> Run:
        root = Path(root)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        run_id = f"{stamp}-{kind}-{secrets.token_hex(3)}"
        path = root / run_id
        path.mkdir(parents=True, exist_ok=False)
        cfg_text = json.dumps(config, sort_keys=True)
        record = {
            "format": RUN_FORMAT, "run_id": run_id, "kind": kind, "name": name, "status": "running",
            "created_at": _now(), "finished_at": None, "seed": seed,
            "config": config, "config_sha256": hashlib.sha256(cfg_text.encode()).hexdigest(),
            "dataset": dataset or {}, "code": code_version(), "packages": package_versions(),
            "platform": platform_info(), "epochs": [], "metrics": {}, "artifacts": {},
        }
        if dataset:
            record["dataset_version"] = dataset.get("ref")
            record["dataset_hash"] = dataset.get("content_hash")
            record["simulated"] = bool(dataset.get("simulated", False))
        run = cls(path, record)
        run.save()
        return run

    @classmethod
    def open(cls, root: str | Path, run_id: str) -> Run:
        return open_run(root, run_id)

    def save(self) -> None:
        _atomic_write_text(self.path / "run.json", json.dumps(self.record, indent=1, sort_keys=False, default=str))

    def update(self, **fields) -> None:
        self.record.update(fields)
        self.save()

    def log_epoch(self, metrics: dict, *, group: str | None = None) -> None:
        row = dict(metrics)
        if group is not None:
            row["group"] = group
        self.record["epochs"].append(row)
        self.save()

    def truncate_epochs(self, group: str | None, after_epoch: int) -> None:
        """Forget epochs logged after a checkpoint (an interrupted run resumes from its checkpoint)."""
        self.record["epochs"] = [e for e in self.record["epochs"]
                                 if e.get("group") != group or e.get("epoch", 0) <= after_epoch]
        self.save()

    def add_artifact(self, relpath: str | Path, **info) -> dict:
        p = self.path / relpath
        entry = {"sha256": sha256_file(p), "size": p.stat().st_size, **info}
        self.record["artifacts"][str(Path(relpath).as_posix())] = entry
        self.save()
        return entry

    def finish(self, status: str = "completed", **fields) -> None:
        self.record.update(fields)
        self.record["status"] = status
        self.record["finished_at"] = _now()
        self.save()


def open_run(root: str | Path, run_id: str) -> Run:
    """Open a run by id (a unique prefix works)."""
    root = Path(root)
    cands = [p for p in root.glob(f"{run_id}*") if (p / "run.json").exists()] if root.exists() else []
    exact = [p for p in cands if p.name == run_id]
    cands = exact or cands
    if not cands:
        known = sorted(p.name for p in root.iterdir() if (p / "run.json").exists())[-5:] if root.exists() else []
        raise CatalogError(f"no run '{run_id}'", path=root, expected="a run id from `sobre runs list`",
                           found=", ".join(known) or "no runs yet", fix="check the id (a unique prefix is enough)")
    if len(cands) > 1:
        raise CatalogError(f"'{run_id}' matches {len(cands)} runs", found=", ".join(p.name for p in cands[:5]),
                           fix="give more of the id")
    path = cands[0]
    try:
        record = json.loads((path / "run.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError("run record is unreadable", path=path / "run.json", found=str(exc)) from None
    return Run(path, record)


def list_runs(root: str | Path) -> list[dict]:
    """Summaries of every run under ``root``, oldest first."""
    root = Path(root)
    out = []
    if not root.exists():
        return out
    for p in sorted(root.iterdir()):
        f = p / "run.json"
        if not f.exists():
            continue
        try:
            r = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            out.append({"run_id": p.name, "status": "unreadable"})
            continue
        out.append({"run_id": r.get("run_id", p.name), "kind": r.get("kind"), "name": r.get("name"),
                    "status": r.get("status"), "created_at": r.get("created_at"),
                    "dataset": (r.get("dataset") or {}).get("ref"), "task": r.get("task_kind") or r.get("task"),
                    "headline": r.get("headline"), "n_epochs": len(r.get("epochs") or [])})
    return out


def reopen_run(rroot: Path | None, run_id: str, kind: str, what: str) -> "Run":
    """The ``kind`` run ``run_id``, opened to be resumed (``what`` names the kind in the error)."""
    if rroot is None:
        raise ConfigError("resume needs a workspace (or runs_dir) holding the run")
    run = open_run(rroot, run_id)
    if run.record.get("kind") != kind:
        raise ConfigError(f"run {run.run_id} is a {run.record.get('kind')} run, not a {what} run")
    return run


def dataset_record(cohort) -> dict:
    """What a run record (and an encoder checkpoint) says of its data: version, content hash, counts."""
    return {"ref": cohort.source.get("dataset"), "content_hash": cohort.content_hash,
            "simulated": cohort.source.get("simulated", False), "cache": cohort.source.get("cache"),
            "n_images": len(cohort), "n_subjects": int(cohort.table["subject_id"].nunique())}


def begin_run(run: "Run | None", rroot: Path | None, kind: str, *, record: bool, cohort, config: dict, seed: int,
              name: str | None) -> "Run | None":
    """Create the run record of a new ``kind`` run, or reopen ``run`` (resume) after checking its data.

    The record's ``dataset`` entry is :func:`dataset_record` of ``cohort``.
    Returns None when nothing is recorded (``record`` false or no runs folder).
    """
    from sobre.errors import InputError

    if run is None:
        if record and rroot is not None:
            return Run.create(rroot, kind, config=config, seed=seed, dataset=dataset_record(cohort), name=name)
        return None
    if run.record["dataset"].get("content_hash") != cohort.content_hash:
        raise InputError("the data changed since the run started", path=run.path / "run.json",
                         expected=run.record["dataset"].get("content_hash"), found=cohort.content_hash,
                         fix="resume on the same dataset version")
    run.update(status="running")
    return run
