"""What the server reads from the catalog, cached briefly: records, cohorts, dataset versions, project scopes;
and decoded volumes (a byte-bounded LRU), laid out for streaming.

The catalog stays the source of truth: a snapshot is reused for ``catalog_ttl_s`` seconds (and
refreshed at once after the server's own changes), volumes are decoded from the catalogued files.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from sobre.catalog import BASE_FIELDS

__all__ = ["OUT_DTYPES", "CatalogView", "Snapshot", "Volume", "VolumeCache", "series_key"]


def series_key(rec: dict) -> str:
    return f"{rec['series_uid']}#{rec['label']}" if rec.get("label") else rec["series_uid"]


@dataclass
class Snapshot:
    time: float
    records: list[dict]  # every catalogued volume (errors included)
    by_key: dict[str, dict]
    fields: list[str]
    cohorts: dict[str, dict]  # name -> {name, where, created_at, versions, members: set of keys}
    datasets: list  # DatasetRef
    projects: dict  # name -> ProjectInfo
    variables: dict  # clinical variable name -> {kind, unit}
    dataset_keys: dict  # project -> series keys of the frozen versions of its cohorts (filled by the server)
    scopes: dict[str, set[str]] = field(default_factory=dict)  # project -> series keys

    def scope(self, project: str) -> set[str]:
        got = self.scopes.get(project)
        if got is None:
            info = self.projects.get(project)
            keys: set[str] = set()
            for c in (info.cohorts if info else []):
                keys |= self.cohorts.get(c, {}).get("members", set())
            keys |= self.dataset_keys.get(project, set())
            got = self.scopes[project] = keys
        return got


class CatalogView:
    """Catalog snapshots, rebuilt in the background when older than ``ttl`` (stale-while-revalidate).

    Requests never wait for a rebuild except the first one (and ``snapshot(fresh=True)``); with
    ``ttl == 0`` every call rebuilds synchronously (tests). Cohort expressions are re-read with
    ``ws.cohorts()`` only when the number of cohorts or frozen versions changes, or every
    ``cohort_ttl`` seconds (evaluating them on the fresh records each time).
    """

    def __init__(self, ws, ttl: float, cohort_ttl: float = 60.0) -> None:
        self.ws = ws
        self.ttl = ttl
        self.cohort_ttl = cohort_ttl
        self._lock = threading.Lock()
        self._flag = threading.Lock()
        self._snap: Snapshot | None = None
        self._stale = False
        self._refreshing = False
        self._generation = 0
        self._datasets: dict = {}
        self._cohort_rows: tuple[float, tuple, list[dict]] | None = None

    def invalidate(self) -> None:
        """The server changed something: the next snapshot is rebuilt (in the background)."""
        self._generation += 1
        self._stale = True
        if self.ttl > 0 and self._snap is not None:
            self._refresh_async()

    def snapshot(self, *, fresh: bool = False) -> Snapshot:
        snap = self._snap
        if snap is not None and not fresh and self.ttl > 0:
            if self._stale or time.monotonic() - snap.time >= self.ttl:
                self._refresh_async()
            return snap
        with self._lock:
            if self._snap is None or fresh or self.ttl <= 0:
                self._stale = False
                self._snap = self._build()
            return self._snap

    def _refresh_async(self) -> None:
        with self._flag:
            if self._refreshing:
                return
            self._refreshing = True
        threading.Thread(target=self._refresh, name="sobre-catalog-snapshot", daemon=True).start()

    def _refresh(self) -> None:
        try:
            gen = self._generation
            snap = self._build()
            with self._lock:
                self._snap = snap
                self._stale = gen != self._generation
        except Exception:
            import logging

            logging.getLogger("sobre.server").exception("catalog snapshot rebuild failed")
        finally:
            with self._flag:
                self._refreshing = False

    def _cohorts(self, records: list[dict], fields: list[str]) -> dict[str, dict]:
        """Cohorts with their members evaluated on ``records``."""
        from sobre.catalog import compile_filter

        summary = self.ws.summary()
        sig = (summary["cohorts"], summary["dataset_versions"])
        got = self._cohort_rows
        if got is None or got[1] != sig or time.monotonic() - got[0] > self.cohort_ttl or self.ttl <= 0:
            rows = []
            for c in self.ws.cohorts():
                c = dict(c)
                c.pop("members", None)
                rows.append(c)
            got = self._cohort_rows = (time.monotonic(), sig, rows)
            fresh = True
        else:
            fresh = False
        ok = [r for r in records if r["status"] == "ok"]
        out = {}
        for c in got[2]:
            try:
                pred = compile_filter(c["where"], fields)
                members = [r for r in ok if pred(r)]
            except Exception:  # noqa: BLE001 - a filter that no longer compiles selects nothing
                members = []
            entry = dict(c, members={series_key(m) for m in members}, refs=[])
            if not fresh:
                entry["n_series"] = len(members)
                entry["n_subjects"] = len({m["subject_id"] for m in members})
            out[c["name"]] = entry
        return out

    def _build(self) -> Snapshot:
        ws = self.ws
        records = ws.records(include_errors=True)
        by_key = {series_key(r): r for r in records}
        fields = sorted(set(BASE_FIELDS) | {k for r in records for k in r} - {"status", "problem", "shape",
                                                                                "spacing", "orientation"})
        cohorts = self._cohorts(records, fields)
        versions = ws.datasets()
        for ref in versions:
            if ref.name in cohorts:
                cohorts[ref.name]["refs"].append(ref)
        projects = {p.name: p for p in ws.accounts.projects()}
        dataset_keys = {}
        for name, info in projects.items():
            keys: set[str] = set()
            for c in info.cohorts:
                for ref in cohorts.get(c, {}).get("refs", []):
                    keys |= {s.key for s in self.dataset(ref.ref, ref.content_hash).series}
            dataset_keys[name] = keys
        return Snapshot(time.monotonic(), records, by_key, fields, cohorts, versions, projects, ws.variables(),
                        dataset_keys)

    def dataset(self, ref: str, content_hash: str | None = None):
        """An opened (hash-checked) dataset version; versions are immutable, so kept once opened."""
        key = (ref, content_hash)
        got = self._datasets.get(key)
        if got is None:
            got = self.ws.dataset(ref)
            self._datasets[(ref, got.content_hash)] = got
            self._datasets[key] = got
        return got


# ------------------------------------------------------------------------------------- volumes
#: dtypes sent as they are; others are converted (see docs/workstation.md, "Voxels").
OUT_DTYPES = {"uint8", "int16", "uint16", "float32"}


def out_dtype(dtype: np.dtype, lo: float | None = None, hi: float | None = None) -> np.dtype:
    d = np.dtype(dtype)
    if d.name in OUT_DTYPES:
        return d.newbyteorder("<")
    if d.kind == "b":
        return np.dtype("uint8")
    if d.name == "int8":
        return np.dtype("<i2")
    if d.kind in "iu" and lo is not None and hi is not None:
        if lo >= 0 and hi <= 65535:
            return np.dtype("<u2")
        if lo >= -32768 and hi <= 32767:
            return np.dtype("<i2")
    return np.dtype("<f4")


@dataclass
class Volume:
    """A decoded volume laid out for streaming: ``data`` is C-contiguous ``(K, J, I[, C])`` (i fastest)."""

    data: np.ndarray
    dims: tuple[int, int, int]  # I, J, K
    components: int
    affine: np.ndarray
    source_dtype: str
    window: tuple[float, float]
    is_2d: bool
    extra: dict

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def bytes_view(self) -> memoryview:
        return memoryview(self.data.reshape(-1).view(np.uint8))

    def geometry(self) -> dict:
        return {"dtype": self.data.dtype.name, "byte_order": "little", "layout": "i-fastest",
                "dimensions": list(self.dims), "components": self.components, **affine_geometry(self.affine),
                "n_bytes": self.nbytes, "source_dtype": self.source_dtype, "is_2d": self.is_2d,
                "window": {"center": self.window[0], "width": self.window[1]}, **self.extra}


def affine_geometry(affine) -> dict:
    """``spacing``, ``origin``, ``direction`` (unit LPS vectors of the i, j, k axes, in that order), ``affine_lps``."""
    aff = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    spacing = np.where(spacing > 0, spacing, 1.0)
    direction = (aff[:3, :3] / spacing).T.reshape(-1)
    return {"spacing": [float(x) for x in spacing], "origin": [float(x) for x in aff[:3, 3]],
            "direction": [float(x) for x in direction], "affine_lps": [[float(v) for v in r] for r in aff]}


def build_volume(img, t: int = 0) -> Volume:
    """Decode ``img`` (a :class:`sobre.Image`) into a :class:`Volume` (one copy at most)."""
    arr = np.asarray(img.array)
    extra_axes = tuple(img.extra_axes)
    comps = 1
    extra = {}
    if extra_axes:
        # keep a trailing channel axis (colour); select index t of every other extra axis
        channel = extra_axes[-1] == "channel" and arr.shape[-1] in (3, 4)
        sel = []
        for n, name in enumerate(extra_axes):
            if channel and n == len(extra_axes) - 1:
                continue
            size = arr.shape[img.spatial_ndim + n]
            sel.append((img.spatial_ndim + n, min(max(t, 0), size - 1), name, size))
        for axis, idx, name, size in sorted(sel, reverse=True):
            arr = np.take(arr, idx, axis=axis)
            extra[f"{name}_count"] = size
            extra[name] = idx
        if channel:
            comps = 3
            arr = arr[..., :3]
    if img.spatial_ndim == 2:
        arr = arr[:, :, None, ...] if comps == 1 else arr[:, :, None, :]
    is_2d = img.spatial_ndim == 2 or arr.shape[2] == 1
    lo = hi = None
    if arr.dtype.kind in "iu" and arr.size:
        lo, hi = float(arr.min()), float(arr.max())
    odt = np.dtype("uint8") if comps == 3 else out_dtype(arr.dtype, lo, hi)
    order = (2, 1, 0, 3) if comps == 3 else (2, 1, 0)
    data = np.ascontiguousarray(arr.transpose(order))  # no copy when arr is Fortran-ordered (nibabel, DICOM reader)
    if data.dtype != odt:
        data = data.astype(odt)
    window = _window(img, data)
    dims = (int(arr.shape[0]), int(arr.shape[1]), int(arr.shape[2]))
    return Volume(data, dims, comps, np.asarray(img.affine, dtype=float), str(np.dtype(img.dtype)), window, is_2d,
                  extra)


def _window(img, data: np.ndarray) -> tuple[float, float]:
    meta = getattr(img, "metadata", {}) or {}
    c, w = meta.get("window_center"), meta.get("window_width")
    try:
        if c is not None and w is not None:
            c = float(c[0] if isinstance(c, (list, tuple)) else c)
            w = float(w[0] if isinstance(w, (list, tuple)) else w)
            if w > 0:
                return c, w
    except (TypeError, ValueError):
        pass
    if data.size == 0:
        return 0.0, 1.0
    sample = data.reshape(-1)[:: max(1, data.size // 1_000_000)]
    lo, hi = np.percentile(sample.astype(np.float64), [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max()) + 1.0
    return float((lo + hi) / 2), float(hi - lo)


class VolumeCache:
    """Decoded volumes by (series key, t), bounded in bytes; one decode at a time per key."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._key_locks: dict = {}

    def get(self, key, build) -> Volume:
        with self._lock:
            got = self._items.get(key)
            if got is not None:
                self._items.move_to_end(key)
                return got
            klock = self._key_locks.setdefault(key, threading.Lock())
        with klock:
            with self._lock:
                got = self._items.get(key)
                if got is not None:
                    return got
            vol = build()
            with self._lock:
                self._key_locks.pop(key, None)
                if vol.nbytes <= self.max_bytes:
                    self._items[key] = vol
                    self._bytes += vol.nbytes
                    while self._bytes > self.max_bytes and self._items:
                        _, old = self._items.popitem(last=False)
                        self._bytes -= old.nbytes
            return vol

    def drop(self, series: str) -> None:
        with self._lock:
            for k in [k for k in self._items if k[0] == series]:
                self._bytes -= self._items.pop(k).nbytes
