"""Non-DICOM formats: NIfTI (nibabel), NRRD/MetaImage (SimpleITK), PNG/JPEG/TIFF (Pillow, tifffile)."""

from __future__ import annotations

import gzip
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


def write_nifti(image: Image, path: str | Path) -> None:
    """Write NIfTI-1 with the RAS affine in both sform and qform (code 1, scanner).

    Channels: 3- or 4-channel uint8 images become NIfTI RGB24/RGBA32 voxels; other channel images
    keep their channels in the 5th dimension (the NIfTI vector convention, dimension 4 of size 1),
    which :func:`read_nifti` reads back as a ``channel`` axis. A ``frame`` axis is written as the
    4th (time) dimension. bool pixels are stored as uint8, float16 as float32.
    """
    import nibabel as nib

    arr = _storable(image.array)
    nd = image.spatial_ndim
    extra = image.extra_axes
    spatial3 = arr.shape[:nd] + (1,) * (3 - nd)
    n_time = arr.shape[nd] if extra and extra[0] in ("time", "frame") else None
    vector = False
    if "channel" in extra:
        c = arr.shape[-1]
        if arr.dtype == np.uint8 and c in (3, 4):
            names = ("R", "G", "B", "A")[:c]
            rgb = np.empty(spatial3 + (n_time,) if n_time else arr.shape[:-1], dtype=[(n, "u1") for n in names])
            for i, n in enumerate(names):
                rgb[n] = arr[..., i].reshape(rgb.shape)
            arr = rgb
        else:
            arr = arr.reshape(spatial3 + (n_time or 1, c))
            vector = True
    elif n_time:
        arr = arr.reshape(spatial3 + (n_time,))
    nimg = nib.Nifti1Image(arr, image.affine_ras, dtype=arr.dtype)
    if vector:
        nimg.header.set_intent("vector")
    nimg.header.set_xyzt_units("mm", "sec")
    nimg.set_sform(image.affine_ras, code=1)
    nimg.set_qform(image.affine_ras, code=1)
    if image.modality:
        nimg.header["descrip"] = f"sobre {image.modality}"[:79].encode()
    nib.save(nimg, str(path))


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
