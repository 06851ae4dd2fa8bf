"""Non-DICOM formats: NIfTI (read with nibabel, written here), NRRD/MetaImage (SimpleITK), PNG/JPEG/TIFF (Pillow, tifffile)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from sobre.errors import InputError, describe_exception
from sobre.image._image import Image

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
OPTICAL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def sniff(path: str | Path) -> str | None:
    """Guess a file's format from its first bytes (then its name): dicom, nifti, itk, optical or None."""
    from sobre.image._part10 import looks_like_dicom

    path = Path(path)
    name = path.name.lower()
    try:
        with open(path, "rb") as fh:
            head = fh.read(352)
    except OSError:
        return None
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"  # before TIFF: a DICOM preamble may itself be a TIFF header (dual-personality files)
    if head[:4] == b"NRRD":
        return "itk"
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or head[:4] in (b"II*\x00", b"MM\x00*"):
        return "optical"
    if head[:2] == b"\x1f\x8b" and name.endswith((".nii.gz", ".gz")):
        try:
            with gzip.open(path, "rb") as gz:
                inner = gz.read(352)
        except (OSError, EOFError):
            return "nifti" if name.endswith(".nii.gz") else None
        if len(inner) >= 348 and inner[344:348] in (b"n+1\x00", b"ni1\x00", b"n+2\x00"):
            return "nifti"
        if inner[4:8] in (b"n+2\x00",):
            return "nifti"
        return "nifti" if name.endswith(".nii.gz") else None
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if len(head) >= 8 and head[4:8] == b"n+2\x00":
        return "nifti"
    if name.endswith((".mha", ".mhd")):
        return "itk"
    if looks_like_dicom(path):
        return "dicom"
    return None


# --------------------------------------------------------------------------- NIfTI
def read_nifti(path: str | Path) -> Image:
    """Read NIfTI-1/2 with nibabel; the RAS affine (sform, else qform) becomes LPS."""
    import nibabel as nib

    path = Path(path)
    try:
        nimg = nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, ValueError, EOFError...
        raise InputError(f"NIfTI file cannot be read ({describe_exception(exc)})", path=path,
                         fix="the file may be truncated; re-export it") from None
    shape = tuple(int(s) for s in nimg.shape)
    # NIfTI keeps vector-valued voxels (channels) in the 5th dimension, after time (size 1 if none)
    vector = len(shape) == 5 and shape[4] > 1
    if len(shape) > 5 or len(shape) == 5 and not vector and not all(s == 1 for s in shape[4:]):
        raise InputError("NIfTI image has more than 5 dimensions", path=path,
                         expected="2 to 4 dimensions, or 5 with channels in the 5th",
                         found=str(shape))
    if vector:
        shape = shape[:3] + shape[4:] if shape[3] == 1 else shape
    else:
        shape = shape[:4]
    hdr = nimg.header
    raw_dtype = hdr.get_data_dtype()
    if path.suffix.lower() == ".nii":  # one uncompressed file: its size must hold what the header says
        try:
            offset = getattr(nimg.dataobj, "offset", None)
            offset = int(hdr.get_data_offset() if offset is None else offset)
            need = offset + int(np.prod(hdr.get_data_shape(), dtype=np.float64)) * raw_dtype.itemsize
            size = path.stat().st_size
        except (OSError, ValueError, TypeError, AttributeError):
            need = size = 0
        if size < need:
            raise InputError("NIfTI voxel data is truncated", path=path, tag="dim / vox_offset",
                             expected=f"{need} bytes (header offset + {'×'.join(str(int(v)) for v in hdr.get_data_shape())}"
                                      f" voxels × {raw_dtype.itemsize} bytes)", found=f"{size} bytes",
                             fix="the file was cut short, or its header dimensions are wrong; re-export or re-send it")
    # nibabel moves scl_slope / scl_inter from the header to the array proxy when it loads a file
    slope = float(getattr(nimg.dataobj, "slope", 1.0))
    inter = float(getattr(nimg.dataobj, "inter", 0.0))
    scaled = slope != 1.0 or inter != 0.0
    rgb = raw_dtype.names is not None
    if rgb:
        dtype = np.dtype(np.uint8)
        shape = shape + (len(raw_dtype.names),)
    elif scaled:
        # float32 holds every scaled value of 8/16-bit storage; wider storage needs float64
        dtype = np.dtype(np.float32 if raw_dtype.itemsize <= 2 else np.float64)
    else:
        dtype = raw_dtype.newbyteorder("=")

    def loader():
        try:
            data = np.asanyarray(nimg.dataobj)
        except Exception as exc:  # nibabel/gzip raise EOFError, OSError, zlib.error, ValueError ...
            raise InputError(f"NIfTI pixel data cannot be read ({describe_exception(exc)})".replace("\n", " "),
                             path=path, fix="the file is probably truncated; re-export it") from None
        if vector:
            data = data.reshape(shape)
        elif len(data.shape) > 4:
            data = data.reshape(data.shape[:4])
        if rgb:
            return np.stack([data[n] for n in raw_dtype.names], axis=-1).astype(np.uint8)
        return data.astype(dtype, copy=False)

    extra: tuple[str, ...] = ()
    spatial = min(len(shape), 3)
    if vector:
        extra = ("channel",) if len(shape) == 4 else ("time", "channel")
    elif len(nimg.shape[:4]) == 4:
        extra = ("time",)
    if rgb:
        extra = extra + ("channel",)
        spatial = len(nimg.shape[:4]) - (1 if len(nimg.shape[:4]) == 4 else 0)
    try:
        units = hdr.get_xyzt_units()[0]
    except Exception:
        units = "unknown"
    affine_ras = nimg.affine
    meta = {"format": "nifti", "spatial_unit": units,
            "sform_code": int(hdr["sform_code"]) if "sform_code" in hdr else None,
            "qform_code": int(hdr["qform_code"]) if "qform_code" in hdr else None}
    descrip = hdr.get("descrip")
    if descrip is not None:
        d = bytes(np.asarray(descrip).tobytes()).split(b"\x00")[0].decode("latin-1").strip()
        if d:
            meta["description"] = d
    return Image(
        loader=loader, shape=shape, dtype=dtype, affine=np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras,
        spatial_ndim=spatial, extra_axes=extra, metadata={k: v for k, v in meta.items() if v is not None},
        sources=[str(path)],
    )


def _storable(arr: np.ndarray) -> np.ndarray:
    """Lossless dtype changes for types NIfTI / NRRD cannot hold: bool -> uint8, float16 -> float32."""
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    return arr


# NIfTI-1 codes of the numpy types a .nii can hold (nibabel's table; RGB24/RGBA32 are uint8 records)
_NIFTI_TYPES = {
    "uint8": 2, "int16": 4, "int32": 8, "float32": 16, "complex64": 32, "float64": 64, "int8": 256,
    "uint16": 512, "uint32": 768, "int64": 1024, "uint64": 1280, "complex128": 1792,
}
_NIFTI_HEADER = np.dtype([
    ("sizeof_hdr", "<i4"), ("data_type", "S10"), ("db_name", "S18"), ("extents", "<i4"),
    ("session_error", "<i2"), ("regular", "S1"), ("dim_info", "u1"), ("dim", "<i2", (8,)),
    ("intent_p1", "<f4"), ("intent_p2", "<f4"), ("intent_p3", "<f4"), ("intent_code", "<i2"),
    ("datatype", "<i2"), ("bitpix", "<i2"), ("slice_start", "<i2"), ("pixdim", "<f4", (8,)),
    ("vox_offset", "<f4"), ("scl_slope", "<f4"), ("scl_inter", "<f4"), ("slice_end", "<i2"),
    ("slice_code", "u1"), ("xyzt_units", "u1"), ("cal_max", "<f4"), ("cal_min", "<f4"),
    ("slice_duration", "<f4"), ("toffset", "<f4"), ("glmax", "<i4"), ("glmin", "<i4"), ("descrip", "S80"),
    ("aux_file", "S24"), ("qform_code", "<i2"), ("sform_code", "<i2"), ("quatern_b", "<f4"),
    ("quatern_c", "<f4"), ("quatern_d", "<f4"), ("qoffset_x", "<f4"), ("qoffset_y", "<f4"),
    ("qoffset_z", "<f4"), ("srow_x", "<f4", (4,)), ("srow_y", "<f4", (4,)), ("srow_z", "<f4", (4,)),
    ("intent_name", "S16"), ("magic", "S4"),
])
assert _NIFTI_HEADER.itemsize == 348
NIFTI_VOX_OFFSET = 352  # 348-byte header + 4-byte extension flag (no extensions)

# .nii.gz: ISA-L (python package ``isal``) when installed, else the standard library's zlib; both at level 1
# (ISA-L's 0-3 scale, zlib's 1-9). On the benchmark CT (bench/bench_export.py) zlib level 6 -- dcm2niix's
# and gzip's default -- writes a 0.7 % smaller file than level 3 and 5 % smaller than level 1, at 3x
# and 5x the time; ISA-L level 1 is 4-5x faster than zlib level 1 for a file 6 % larger.
GZIP_BACKEND = "auto"  # "auto", "isal" or "zlib"
GZIP_LEVEL: int | None = None  # None: 1 for either backend
GZIP_BLOCK = 1 << 20  # bytes compressed per task; each task starts from the 32 KiB before it (as pigz does)
GZIP_THREADS: int | None = None  # None: min(4, cores)


def _quaternion(rotation: np.ndarray) -> np.ndarray:
    """(w, x, y, z) of a proper rotation matrix, w >= 0 -- nibabel's ``mat2quat`` (Bar-Itzhack's method)."""
    qxx, qyx, qzx, qxy, qyy, qzy, qxz, qyz, qzz = rotation.flat
    k = np.array([
        [qxx - qyy - qzz, 0, 0, 0],
        [qyx + qxy, qyy - qxx - qzz, 0, 0],
        [qzx + qxz, qzy + qyz, qzz - qxx - qyy, 0],
        [qyz - qzy, qzx - qxz, qxy - qyx, qxx + qyy + qzz],
    ]) / 3.0
    vals, vecs = np.linalg.eigh(k)
    q = vecs[[3, 0, 1, 2], np.argmax(vals)]
    return -q if q[0] < 0 else q


def nifti1_header(shape: tuple[int, ...], dtype: np.dtype, affine_ras: np.ndarray, *, intent_code: int = 0,
                  descrip: bytes = b"") -> bytes:
    """The 352 bytes before the voxels of a single-file NIfTI-1 (``n+1``) image, little endian.

    Field for field what nibabel writes for ``Nifti1Image(data, affine_ras)`` with ``set_sform`` /
    ``set_qform(affine_ras, code=1)`` and units mm/s (``tests/image/test_export_speed_paths.py`` compares
    the bytes): sform = the affine in float32; qform = nibabel's polar decomposition of the affine's
    rotation (shears stripped, qfac = -1 for a left-handed affine) with pixdim[1:4] = column norms;
    scl_slope 1, scl_inter 0 (voxels are the values: no scaling is ever written); vox_offset 352.
    """
    dtype = np.dtype(dtype)
    if dtype.names is not None:
        names = tuple(dtype.names)
        if names not in (("R", "G", "B"), ("R", "G", "B", "A")) or any(dtype[n] != np.uint8 for n in names):
            raise TypeError(f"no NIfTI type for {dtype}")
        code = 128 if len(names) == 3 else 2304
    else:
        code = _NIFTI_TYPES.get(dtype.newbyteorder("=").name)
        if code is None:
            raise TypeError(f"no NIfTI type for {dtype}")
    if not 1 <= len(shape) <= 7 or any(not 0 <= n <= 32767 for n in shape):
        raise ValueError(f"NIfTI-1 holds 1 to 7 dimensions of at most 32767, not {tuple(shape)}")
    h = np.zeros((), _NIFTI_HEADER)
    h["sizeof_hdr"] = 348
    h["dim"] = [len(shape), *shape] + [1] * (7 - len(shape))
    h["datatype"] = code
    h["bitpix"] = dtype.itemsize * 8
    h["intent_code"] = intent_code
    h["vox_offset"] = NIFTI_VOX_OFFSET
    h["scl_slope"], h["scl_inter"] = 1.0, 0.0
    h["xyzt_units"] = 2 | 8  # mm, s
    h["descrip"] = descrip[:79]
    h["magic"] = b"n+1"
    affine = np.asarray(affine_ras, dtype=np.float64)
    h["sform_code"] = h["qform_code"] = 1  # scanner
    h["srow_x"], h["srow_y"], h["srow_z"] = affine[0], affine[1], affine[2]
    rzs = affine[:3, :3]
    zooms = np.sqrt(np.sum(rzs * rzs, axis=0))
    r = rzs / zooms
    qfac = 1.0
    if np.linalg.det(r) <= 0:
        qfac = -1.0
        r[:, -1] *= -1
    p, _, qs = np.linalg.svd(r)
    quat = _quaternion(np.dot(p, qs))
    pixdim = np.ones(8)
    pixdim[0], pixdim[1:4] = qfac, zooms
    h["pixdim"] = pixdim
    h["quatern_b"], h["quatern_c"], h["quatern_d"] = quat[1:]
    h["qoffset_x"], h["qoffset_y"], h["qoffset_z"] = affine[:3, 3]
    return h.tobytes() + b"\x00\x00\x00\x00"  # extension flag: none


def _f_order_pieces(arr: np.ndarray, size: int):
    """The bytes of ``arr`` in Fortran order as uint8 views of at most ~``size`` bytes.

    Without a copy when ``arr`` is Fortran-contiguous (what the DICOM reader gives); otherwise one
    slab of whole last-axis slices at a time is copied, never the whole array.
    """
    if arr.flags.f_contiguous:
        flat = arr.T.reshape(-1).view(np.uint8)
        for i in range(0, flat.size, size):
            yield flat[i:i + size]
        return
    per = arr.nbytes // arr.shape[-1] if arr.shape[-1] else 0
    if arr.ndim == 1 or per <= size:
        step = max(1, size // max(per, 1))
        for k in range(0, arr.shape[-1], step):
            yield np.asfortranarray(arr[..., k:k + step]).T.reshape(-1).view(np.uint8)
    else:
        for k in range(arr.shape[-1]):
            yield from _f_order_pieces(arr[..., k], size)


def _gzip_module():
    """(zlib-compatible module, level, name): the compressor .nii.gz files are written with."""
    if GZIP_BACKEND in ("auto", "isal"):
        try:
            from isal import isal_zlib

            return isal_zlib, 1 if GZIP_LEVEL is None else GZIP_LEVEL, "isal"
        except ImportError:
            if GZIP_BACKEND == "isal":
                raise
    import zlib

    return zlib, 1 if GZIP_LEVEL is None else GZIP_LEVEL, "zlib"


def gzip_backend() -> str:
    """What ``.nii.gz`` files are compressed with here, e.g. ``'isal level 1'``, ``'zlib level 1'``."""
    _, level, name = _gzip_module()
    return f"{name} level {level}"


def _write_gzip(fh, pieces, threads: int | None = None) -> None:
    """One gzip member (RFC 1952) of the concatenated pieces, compressed by several threads.

    Each piece is deflated on its own, primed with the 32 KiB that precede it (``zdict``) and ended
    with a sync flush, so the raw deflate streams join into one (pigz's method); an empty final block
    closes it. zlib and ISA-L release the GIL while they compress, so the threads run in parallel.
    The CRC-32 is computed here, piece by piece, while the threads compress.
    """
    import struct
    import zlib
    from collections import deque

    mod, level, _ = _gzip_module()
    fh.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # deflate, no name, mtime 0, OS unknown
    crc, total = 0, 0

    def deflate(piece, zdict):
        c = mod.compressobj(level, zlib.DEFLATED, -15, zdict=zdict) if zdict else \
            mod.compressobj(level, zlib.DEFLATED, -15)
        return c.compress(piece) + c.flush(zlib.Z_SYNC_FLUSH)

    threads = threads or GZIP_THREADS or min(4, os.cpu_count() or 1)
    pool = None
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=threads)
    try:
        pending: deque = deque()
        prev = b""
        for piece in pieces:
            if not len(piece):
                continue
            zdict = bytes(prev[-32768:]) if len(prev) else None
            pending.append(pool.submit(deflate, piece, zdict) if pool else deflate(piece, zdict))
            crc = mod.crc32(piece, crc)
            total += len(piece)
            prev = piece
            while len(pending) > 2 * threads:
                done = pending.popleft()
                fh.write(done.result() if pool else done)
        while pending:
            done = pending.popleft()
            fh.write(done.result() if pool else done)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    fh.write(mod.compressobj(level, zlib.DEFLATED, -15).flush(zlib.Z_FINISH))  # the final (empty) block
    fh.write(struct.pack("<II", crc & 0xFFFFFFFF, total & 0xFFFFFFFF))


def write_nifti(image: Image, path: str | Path) -> None:
    """Write NIfTI-1 with the RAS affine in both sform and qform (code 1, scanner).

    Channels: 3- or 4-channel uint8 images become NIfTI RGB24/RGBA32 voxels; other channel images
    keep their channels in the 5th dimension (the NIfTI vector convention, dimension 4 of size 1),
    which :func:`read_nifti` reads back as a ``channel`` axis. A ``frame`` axis is written as the
    4th (time) dimension. bool pixels are stored as uint8, float16 as float32.

    Voxels are written as they are (scl_slope 1, scl_inter 0: an int16 HU image stays int16, no float
    conversion), little endian, in one pass straight from the array's memory when it is
    Fortran-ordered (as loaded DICOM is); the header is :func:`nifti1_header` (nibabel's, byte for
    byte). ``.nii.gz`` is compressed by several threads (:func:`_write_gzip`, :func:`gzip_backend`).
    """
    arr = _storable(image.array)
    nd = image.spatial_ndim
    extra = image.extra_axes
    spatial3 = arr.shape[:nd] + (1,) * (3 - nd)
    n_time = arr.shape[nd] if extra and extra[0] in ("time", "frame") else None
    intent = 0
    if "channel" in extra:
        c = arr.shape[-1]
        if arr.dtype == np.uint8 and c in (3, 4):
            names = ("R", "G", "B", "A")[:c]
            rgb = np.empty(spatial3 + (n_time,) if n_time else arr.shape[:-1],
                           dtype=[(n, "u1") for n in names], order="F")
            for i, n in enumerate(names):
                rgb[n] = arr[..., i].reshape(rgb.shape)
            arr = rgb
        else:
            arr = arr.reshape(spatial3 + (n_time or 1, c))
            intent = 1007  # vector
    elif n_time:
        arr = arr.reshape(spatial3 + (n_time,))
    if arr.dtype.names is None and arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    try:
        header = nifti1_header(arr.shape, arr.dtype, image.affine_ras, intent_code=intent,
                               descrip=f"sobre {image.modality}".encode() if image.modality else b"")
    except TypeError:
        raise InputError("NIfTI cannot hold these pixels", path=path,
                         expected="integer, float, complex, bool or RGB(A) uint8 pixels",
                         found=str(arr.dtype), fix="convert the pixels explicitly, or save as .nrrd") from None
    except ValueError:
        raise InputError("NIfTI-1 cannot hold an image of this shape", path=path,
                         expected="1 to 7 dimensions of at most 32767 voxels", found=str(tuple(arr.shape)),
                         fix="save as .nrrd or .mha") from None
    path = Path(path)
    try:
        with open(path, "wb") as fh:
            if path.name.lower().endswith(".gz"):
                def pieces():
                    yield header
                    yield from _f_order_pieces(arr, GZIP_BLOCK)
                _write_gzip(fh, pieces())
            else:
                fh.write(header)
                fh.writelines(_f_order_pieces(arr, 1 << 26))
    except OSError as exc:
        raise InputError(f"cannot write the NIfTI file ({exc.strerror or exc})", path=path,
                         fix="check the free space and permissions of the output folder") from None


# --------------------------------------------------------------------------- NRRD / MetaImage
def read_itk(path: str | Path) -> Image:
    """Read NRRD or MetaImage with SimpleITK (whose world coordinates are LPS already)."""
    import SimpleITK as sitk

    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise InputError(f"image header cannot be read ({msg})", path=path,
                         fix="check that the file is a valid NRRD/MetaImage file") from None
    size = reader.GetSize()
    ndim = reader.GetDimension()
    if ndim not in (2, 3):
        raise InputError("only 2D and 3D NRRD/MetaImage files are read", path=path,
                         expected="2 or 3 dimensions", found=str(ndim))
    comps = reader.GetNumberOfComponents()
    spacing = np.array(reader.GetSpacing(), float)
    origin = np.array(reader.GetOrigin(), float)
    direction = np.array(reader.GetDirection(), float).reshape(ndim, ndim)
    affine = np.eye(4)
    affine[:ndim, :ndim] = direction * spacing[None, :]
    affine[:ndim, 3] = origin
    pixel_id = reader.GetPixelID()
    # dtype without reading pixels: ask SimpleITK for the component type name
    comp_type = sitk.GetPixelIDValueAsString(pixel_id)
    dtype_map = {
        "8-bit unsigned integer": np.uint8, "8-bit signed integer": np.int8,
        "16-bit unsigned integer": np.uint16, "16-bit signed integer": np.int16,
        "32-bit unsigned integer": np.uint32, "32-bit signed integer": np.int32,
        "64-bit unsigned integer": np.uint64, "64-bit signed integer": np.int64,
        "32-bit float": np.float32, "64-bit float": np.float64,
    }
    key = comp_type.replace("vector of ", "")
    if key not in dtype_map:
        raise InputError("unsupported pixel type", path=path, expected="integer or float pixels",
                         found=comp_type)
    dtype = np.dtype(dtype_map[key])
    shape = tuple(int(s) for s in size) + ((comps,) if comps > 1 else ())

    def loader():
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"pixel data cannot be read ({str(exc).strip().splitlines()[-1]})",
                             path=path) from None
        arr = sitk.GetArrayFromImage(img)  # (z, y, x[, c])
        axes = list(range(ndim))[::-1] + ([ndim] if comps > 1 else [])
        return np.ascontiguousarray(np.transpose(arr, axes)).astype(dtype, copy=False)

    return Image(loader=loader, shape=shape, dtype=dtype, affine=affine, spatial_ndim=ndim,
                 extra_axes=("channel",) if comps > 1 else (), metadata={"format": path.suffix.lstrip(".")},
                 sources=[str(path)])


def write_itk(image: Image, path: str | Path) -> None:
    """Write NRRD / MetaImage (LPS, like DICOM). 2D or 3D, optionally with a channel axis.

    A 2D image whose plane is not axial (its affine maps i, j outside the x-y plane, e.g. a sagittal
    DICOM slice) is written as a 3D image of one slice, so that its orientation is kept.
    """
    import SimpleITK as sitk

    if any(ax != "channel" for ax in image.extra_axes):
        raise InputError("NRRD/MetaImage files hold 2D or 3D images (with channels) only", path=path,
                         expected="no time or frame axis", found=str(image.extra_axes),
                         fix="save as NIfTI (.nii.gz), which has a time dimension")
    nd = image.spatial_ndim
    arr = _storable(image.array)
    vector = "channel" in image.extra_axes
    a = image.affine
    if nd == 2 and (np.any(np.abs(a[2, :2]) > 1e-9) or np.any(np.abs(a[:2, 2]) > 1e-9)
                    or abs(a[2, 3]) > 1e-9):
        arr = arr.reshape(arr.shape[:2] + (1,) + arr.shape[2:])
        nd = 3
    axes = list(range(nd))[::-1] + list(range(nd, arr.ndim))
    simg = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, axes)), isVector=vector)
    sp = np.linalg.norm(image.affine[:3, :3], axis=0)
    simg.SetSpacing([float(s) for s in sp[:nd]])
    simg.SetOrigin([float(v) for v in image.affine[:nd, 3]])
    d = image.affine[:3, :3] / sp[None, :]
    simg.SetDirection([float(v) for v in d[:nd, :nd].ravel()])
    sitk.WriteImage(simg, str(path), useCompression=True)


# --------------------------------------------------------------------------- optical
def read_optical(path: str | Path) -> Image:
    """Read PNG/JPEG (Pillow) or TIFF (tifffile) as a 2D image in pixel space."""
    path = Path(path)
    meta: dict = {"format": path.suffix.lower().lstrip(".")}
    spacing = (1.0, 1.0)
    try:
        with open(path, "rb") as fh:
            tiff = fh.read(4) in (b"II*\x00", b"MM\x00*")
        if path.suffix.lower() in (".tif", ".tiff") or tiff:
            import tifffile

            with tifffile.TiffFile(str(path)) as tf:
                page = tf.pages[0]
                arr = page.asarray()
                tags = page.tags
                if "XResolution" in tags and "ResolutionUnit" in tags:
                    unit = int(tags["ResolutionUnit"].value)
                    xr = tags["XResolution"].value
                    yr = tags["YResolution"].value
                    mm_per_unit = {2: 25.4, 3: 10.0}.get(unit)  # inch, centimetre
                    if mm_per_unit and xr[0] and yr[0]:
                        spacing = (mm_per_unit * xr[1] / xr[0], mm_per_unit * yr[1] / yr[0])
                        meta["spacing_unit"] = "mm"
        else:
            from PIL import Image as PILImage

            with PILImage.open(path) as pil:
                pil.load()
                if pil.mode == "P":
                    pil = pil.convert("RGBA" if "transparency" in pil.info else "RGB")
                arr = np.asarray(pil)
    except Exception as exc:
        raise InputError(f"image cannot be decoded ({describe_exception(exc)})", path=path,
                         fix="the file may be truncated or not an image") from None
    if arr.ndim not in (2, 3):
        raise InputError("unsupported optical image layout", path=path, expected="2D grey or colour",
                         found=f"array of shape {arr.shape}")
    arr = np.swapaxes(arr, 0, 1)  # (rows, cols[, c]) -> (i=col, j=row[, c])
    affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
    return Image(np.ascontiguousarray(arr), affine, spatial_ndim=2,
                 extra_axes=("channel",) if arr.ndim == 3 else (), modality="XC" if arr.ndim == 3 else "OT",
                 metadata=meta, sources=[str(path)], coordinate_system="pixel")


def write_optical(image: Image, path: str | Path) -> None:
    from PIL import Image as PILImage

    if image.spatial_ndim != 2:
        raise InputError("only 2D images can be written as PNG/JPEG", path=path,
                         expected="a 2D image", found=f"shape {image.shape}")
    arr = _storable(image.array)
    grey = arr.ndim == 2 and arr.dtype in (np.uint8, np.uint16)
    colour = arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.dtype == np.uint8
    if not (grey or colour):
        raise InputError("PNG/JPEG/TIFF hold 8- or 16-bit grey, or 8-bit RGB/RGBA pixels", path=path,
                         expected="uint8/uint16 grey or uint8 with 3-4 channels",
                         found=f"{arr.dtype} with shape {arr.shape}",
                         fix="convert the pixels explicitly (no silent rescaling here), or save as NIfTI/NRRD")
    jpeg_ok = arr.dtype == np.uint8 and (arr.ndim == 2 or arr.shape[2] == 3)
    if str(path).lower().endswith((".jpg", ".jpeg")) and not jpeg_ok:
        raise InputError("JPEG holds 8-bit grey or RGB pixels only", path=path,
                         found=f"{arr.dtype} with shape {arr.shape}", fix="save as PNG")
    PILImage.fromarray(np.ascontiguousarray(np.swapaxes(arr, 0, 1))).save(path)
