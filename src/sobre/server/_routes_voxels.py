"""One series: metadata and geometry, voxels (whole volume, Range-able), single slices, thumbnails.

Every response here shows patient data: each is written to the audit log first (who, which series).
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict

import numpy as np
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from sobre.errors import CatalogError

from ._context import Caller, CallerDep, authenticated, context
from ._decode import decode
from ._errors import ApiError
from ._routes_browse import find_series, project_info, summary
from ._view import Volume, affine_geometry, out_dtype, series_key

router = APIRouter(prefix="/api", dependencies=[Depends(authenticated)], tags=["series and voxels"])

CHUNK = 1 << 20
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

_layouts_lock = threading.Lock()
_layouts: OrderedDict = OrderedDict()  # (workspace root, key, n_files) -> geometry dict (from the catalog)


def _usable(rec: dict) -> None:
    if rec.get("status") != "ok":
        raise ApiError(422, "this series could not be assembled at ingest", found=str(rec.get("problem"))[:300],
                       fix="see `sobre cohort show`; re-ingest after fixing its files")


def volume_of(ctx, rec: dict, t: int = 0) -> Volume:
    """The decoded volume (cached; one decode per series and ``t`` however many ask at once).

    The decode runs in the decoding process (:mod:`._decode`): headers read and pixels decoded there,
    never in the server's interpreter.
    """
    _usable(rec)
    key = series_key(rec)

    def build() -> Volume:
        files = ctx.ws.files_of(rec["series_uid"], rec["label"])
        return decode((str(ctx.ws.root), key, rec.get("n_files")), files, t, series=key,
                      workers=ctx.settings.decode_workers)

    return ctx.volumes.get((key, t), build)


def volume_geometry(shape, spatial_ndim: int, extra_axes, dtype, affine, orientation: str,
                    coordinate_system: str, window: dict | None = None) -> dict:
    """What the decoded volume will look like (:meth:`Volume.geometry`), from its layout alone."""
    shape = [int(x) for x in shape]
    spatial = shape[:spatial_ndim] + ([1] if spatial_ndim == 2 else [])
    extra = dict(zip(extra_axes, shape[spatial_ndim:]))
    comps = 3 if extra.get("channel") in (3, 4) and list(extra_axes)[-1] == "channel" else 1
    out = np.dtype("uint8") if comps == 3 else out_dtype(np.dtype(dtype))
    n = int(np.prod(spatial)) * comps * out.itemsize
    return {"dtype": out.name, "byte_order": "little", "layout": "i-fastest", "dimensions": spatial,
            "components": comps, **affine_geometry(affine), "n_bytes": n, "source_dtype": str(np.dtype(dtype)),
            "is_2d": spatial_ndim == 2 or spatial[2] == 1, "orientation": orientation, "extra_axes": extra,
            "window": window, "coordinate_system": coordinate_system}


def geometry_of(ctx, rec: dict) -> dict:
    """The volume's geometry from the catalog (cached): no file opened, nothing decoded."""
    _usable(rec)
    key = (str(ctx.ws.root), series_key(rec), rec.get("n_files"))
    with _layouts_lock:
        got = _layouts.get(key)
        if got is not None:
            _layouts.move_to_end(key)
            return got
    try:
        lay = ctx.ws.volume_layout(rec["series_uid"], rec["label"])
    except CatalogError as exc:
        raise ApiError.of(exc, 422) from None
    got = volume_geometry(lay["shape"], lay["spatial_ndim"], lay["extra_axes"], lay["dtype"], lay["affine"],
                          lay["orientation"], lay["coordinate_system"])
    with _layouts_lock:
        _layouts[key] = got
        while len(_layouts) > 4096:
            _layouts.popitem(last=False)
    return got


def _view(ctx, caller: Caller, project: str, series: str, what: str, **extra) -> dict:
    project_info(ctx, caller, project, "series.view")
    rec = find_series(ctx, project, series)
    ctx.audit(caller.username, f"view.{what}", project=project, series=rec["series_uid"], label=rec["label"] or None,
              subject=rec.get("subject_id"), client=caller.client, **extra)
    return rec


SeriesKey = Path(..., max_length=300, description="series key: SeriesInstanceUID, or UID#label (URL-encoded)")


@router.get("/projects/{project}/series/{series}", summary="one series: catalog record, volume geometry, annotations")
def series_detail(*, project: str, request: Request, series: str = SeriesKey,
                  caller: CallerDep) -> dict:
    ctx = context(request)
    rec = _view(ctx, caller, project, series, "series")
    out = summary(rec, ctx.view.snapshot().variables)
    out["variables"] = {v: rec.get(v) for v in ctx.view.snapshot().variables}
    out["volume"] = dict(geometry_of(ctx, rec))
    out["annotations"] = [v.to_dict() for v in ctx.ws.annotations.versions(project=project, series=series_key(rec))]
    for v in out["annotations"]:
        v.pop("path", None)
    return out


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise ApiError(416, "unsupported Range", expected="one range: bytes=START-END", found=header[:100],
                       headers={"Content-Range": f"bytes */{size}"})
    a, _, b = spec.strip().partition("-")
    try:
        if a == "":
            start, end = max(0, size - int(b)), size - 1
        else:
            start, end = int(a), (int(b) if b else size - 1)
    except ValueError:
        raise ApiError(416, "malformed Range", expected="bytes=START-END", found=header[:100],
                       headers={"Content-Range": f"bytes */{size}"}) from None
    end = min(end, size - 1)
    if start > end or start >= size:
        raise ApiError(416, "Range outside the volume", expected=f"within 0-{size - 1}", found=header[:100],
                       headers={"Content-Range": f"bytes */{size}"})
    return start, end


def _geometry_headers(vol: Volume) -> dict:
    g = vol.geometry()
    fmt = ",".join
    return {"X-Sobre-Dtype": g["dtype"], "X-Sobre-Dimensions": fmt(str(x) for x in g["dimensions"]),
            "X-Sobre-Components": str(g["components"]), "X-Sobre-Spacing": fmt(repr(x) for x in g["spacing"]),
            "X-Sobre-Origin": fmt(repr(x) for x in g["origin"]),
            "X-Sobre-Direction": fmt(repr(x) for x in g["direction"]),
            "X-Sobre-Window": f"{g['window']['center']!r},{g['window']['width']!r}"}


@router.get("/projects/{project}/series/{series}/volume", summary="every voxel: little-endian, i fastest (Range-able)",
            response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
def volume(*, project: str, request: Request, series: str = SeriesKey, t: int = Query(0, ge=0),
           caller: CallerDep):
    ctx = context(request)
    rec = _view(ctx, caller, project, series, "volume", t=t or None)
    vol = volume_of(ctx, rec, t)
    buf = vol.bytes_view()
    size = len(buf)
    etag = '"' + hashlib.sha256(f"{series_key(rec)}|{rec.get('n_files')}|{t}|{size}".encode()).hexdigest()[:32] + '"'
    headers = {**NO_STORE, **_geometry_headers(vol), "Accept-Ranges": "bytes", "ETag": etag}
    rng = _parse_range(request.headers.get("range"), size)
    if rng is not None and request.headers.get("if-range") not in (None, etag):
        rng = None  # the volume changed since the client's first part: send it whole
    start, end = rng if rng is not None else (0, size - 1)
    headers["Content-Length"] = str(end - start + 1 if size else 0)
    if rng is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"

    def chunks():
        pos = start
        while pos <= end:
            stop = min(end + 1, pos + CHUNK)
            yield bytes(buf[pos:stop])
            pos = stop

    return StreamingResponse(chunks(), status_code=206 if rng is not None else 200,
                             media_type="application/octet-stream", headers=headers)


def _plane(vol: Volume, axis: str, index: int) -> np.ndarray:
    """A 2D plane ``(height, width[, C])``, width fastest: k → (J, I); j → (K, I); i → (K, J)."""
    n = {"i": vol.dims[0], "j": vol.dims[1], "k": vol.dims[2]}[axis]
    if not 0 <= index < n:
        raise ApiError(404, f"no slice {index} along {axis}", expected=f"0 to {n - 1}", found=str(index))
    d = vol.data
    return d[index] if axis == "k" else (d[:, index] if axis == "j" else d[:, :, index])


def _png(plane: np.ndarray, window: tuple[float, float], size: int | None = None,
         aspect: float = 1.0) -> bytes:
    from PIL import Image as PILImage

    c, w = window
    lo = c - w / 2
    scaled = np.clip((plane.astype(np.float32) - lo) / max(w, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    if plane.ndim == 3 and plane.dtype == np.uint8:
        scaled = plane[..., :3]
    im = PILImage.fromarray(np.ascontiguousarray(scaled))
    if size is not None:
        h, wd = scaled.shape[:2]
        hh = h * aspect
        f = size / max(hh, wd)
        im = im.resize((max(1, round(wd * f)), max(1, round(hh * f))), PILImage.Resampling.BILINEAR)
    out = io.BytesIO()
    im.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _window_param(text: str | None, vol: Volume) -> tuple[float, float]:
    if not text:
        return vol.window
    try:
        c, w = (float(x) for x in text.split(","))
    except ValueError:
        raise ApiError(400, "malformed window", expected="CENTER,WIDTH (numbers)", found=text[:50]) from None
    if not (np.isfinite(c) and np.isfinite(w) and w > 0):
        raise ApiError(400, "malformed window", expected="finite centre, width > 0", found=text[:50])
    return c, w


@router.get("/projects/{project}/series/{series}/slices/{index}", summary="one slice (raw or PNG) for a fast first image",
            response_class=Response, responses={200: {"content": {"application/octet-stream": {}, "image/png": {}}}})
def slice_(*, project: str, index: int, request: Request, series: str = SeriesKey,
           axis: str = Query("k", pattern="^[ijk]$"), format: str = Query("raw", pattern="^(raw|png)$"),
           window: str | None = Query(None, max_length=60), t: int = Query(0, ge=0),
           caller: CallerDep) -> Response:
    ctx = context(request)
    rec = _view(ctx, caller, project, series, "slice", axis=axis, index=index)
    vol = volume_of(ctx, rec, t)
    win = _window_param(window, vol)
    plane = _plane(vol, axis, index)
    headers = {**NO_STORE, **_geometry_headers(vol), "X-Sobre-Width": str(plane.shape[1]),
               "X-Sobre-Height": str(plane.shape[0])}
    if format == "png":
        return Response(_png(plane, win), media_type="image/png", headers=headers)
    return Response(np.ascontiguousarray(plane).tobytes(), media_type="application/octet-stream", headers=headers)


@router.get("/projects/{project}/series/{series}/thumbnail.png", summary="PNG of the middle slice (cached)",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
def thumbnail(*, project: str, request: Request, series: str = SeriesKey, caller: CallerDep):
    from sobre.base import write_atomic

    ctx = context(request)
    rec = _view(ctx, caller, project, series, "thumbnail")
    size = ctx.settings.thumbnail_size
    name = hashlib.sha256(f"{series_key(rec)}|{rec.get('n_files')}|{rec.get('shape')}|{size}|1".encode()).hexdigest()
    path = ctx.ws.layout.cache_for("thumbnails") / f"{name}.png"
    if path.exists():
        data = path.read_bytes()
    else:
        vol = volume_of(ctx, rec)
        plane = _plane(vol, "k", vol.dims[2] // 2)
        g = vol.geometry()
        aspect = g["spacing"][1] / g["spacing"][0] if g["spacing"][0] > 0 else 1.0
        data = _png(plane, vol.window, size, aspect if 0.1 < aspect < 10 else 1.0)
        write_atomic(path, data)
    return Response(data, media_type="image/png", headers=dict(NO_STORE))
