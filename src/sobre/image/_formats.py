"""Non-DICOM formats: NIfTI (nibabel), NRRD/MetaImage (SimpleITK), PNG/JPEG/TIFF (Pillow, tifffile)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from sobre.errors import InputError
from sobre.image._image import Image

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
OPTICAL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def sniff(path: str | Path) -> str | None:
    """Guess a file's format from its first bytes (then its name): dicom, nifti, itk, optical or None."""
    from sobre.image._dicom import looks_like_dicom

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
        raise InputError(f"NIfTI file cannot be read ({type(exc).__name__}: {exc})", path=path,
                         fix="the file may be truncated; re-export it") from None
    shape = tuple(int(s) for s in nimg.shape)
    if len(shape) > 4 and not all(s == 1 for s in shape[4:]):
        raise InputError("NIfTI image has more than 4 dimensions", path=path, expected="2 to 4 dimensions",
                         found=str(shape))
    shape = shape[:4]
    hdr = nimg.header
    raw_dtype = hdr.get_data_dtype()
    slope, inter = hdr.get_slope_inter() if hasattr(hdr, "get_slope_inter") else (None, None)
    scaled = slope not in (None, 1.0) or inter not in (None, 0.0)
    rgb = raw_dtype.names is not None
    if rgb:
        dtype = np.dtype(np.uint8)
        shape = shape + (len(raw_dtype.names),)
    else:
        dtype = np.dtype(np.float32) if scaled else raw_dtype.newbyteorder("=")

    def loader():
        data = np.asanyarray(nimg.dataobj)
        if len(data.shape) > 4:
            data = data.reshape(data.shape[:4])
        if rgb:
            return np.stack([data[n] for n in raw_dtype.names], axis=-1).astype(np.uint8)
        return data.astype(dtype, copy=False)

    extra = ()
    spatial = min(len(shape), 3)
    if len(nimg.shape[:4]) == 4:
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


def write_nifti(image: Image, path: str | Path) -> None:
    import nibabel as nib

    arr = image.array
    nimg = nib.Nifti1Image(arr, image.affine_ras)
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
    import SimpleITK as sitk

    nd = image.spatial_ndim
    arr = image.array
    vector = "channel" in image.extra_axes
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
        if path.suffix.lower() in (".tif", ".tiff") or open(path, "rb").read(4) in (b"II*\x00", b"MM\x00*"):
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
        raise InputError(f"image cannot be decoded ({type(exc).__name__}: {exc})", path=path,
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
    arr = np.swapaxes(image.array, 0, 1)
    PILImage.fromarray(arr).save(path)
