"""``load``, ``load_all`` and ``save``: one entry point for every format."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sobre.errors import InputError, SobreError
from sobre.image import _formats
from sobre.image._dicom import read_dicom
from sobre.image._image import Image


def load_all(paths: str | Path | Iterable[str | Path], *, on_warning=None, problems=None,
             verify: bool = False) -> list[Image]:
    """Read every image in ``paths`` (files or folders, walked recursively).

    DICOM files are recognised by content and assembled into one Image per consistent volume;
    NIfTI, NRRD/MetaImage and PNG/JPEG/TIFF files give one Image each. Files of unknown type inside
    a folder are ignored (DICOMDIR index files too); a file named explicitly must be readable.

    Parameters
    ----------
    paths : str, Path or iterable of them
    on_warning : callable, optional
        Receives each series warning (a split series, a damaged orientation) as a string; by
        default they are issued as :class:`~sobre.image.SeriesWarning`.
    problems : sobre.errors.Problems, optional
        Strict when None (the default): the first unreadable file or series raises. With a
        :class:`~sobre.errors.Problems`, every unreadable file and every series that cannot be
        assembled is added to it as an ``error`` (series warnings as ``warning``) and the readable
        images are returned — what ``sobre info FOLDER`` shows. The ``Problems``' own
        ``raise_at`` still applies.
    verify : bool
        Also decode compressed DICOM pixel data now (frame by frame, bounded memory): damage inside a
        codestream shows only when decoded. A volume whose pixels cannot be decoded is then an error
        (raised, or added to ``problems``) instead of an image that fails on first access.

    Files and folders are walked by :func:`sobre.image.discover` (the same walk as ingest and
    de-identification: hidden files, DICOMDIR and sidecars left out, links leaving a folder not
    followed).

    Returns
    -------
    list of Image
        Lazily loaded: pixels are read on first access to ``.array``.

    Examples
    --------
    >>> from sobre.errors import Problems
    >>> found = Problems()
    >>> images = load_all("study_dir", problems=found)   # doctest: +SKIP
    >>> [str(p) for p in found]                           # doctest: +SKIP
    ['[error] study_dir/plan.dcm: (7FE0,0010) PixelData: DICOM object holds no pixel data ...']
    """
    from sobre.errors import Problem
    from sobre.image._discover import discover

    if isinstance(paths, (str, Path)):
        paths = [paths]
    lenient = problems is not None
    dicom: list[Path] = []
    images: list[Image] = []
    for p in paths:
        p = Path(p)
        found = discover(p)
        for prob in found.problems:
            if prob.code == "missing" and not lenient:
                raise InputError("no such file or folder", path=p)
            if lenient:
                problems.add(prob)
        explicit = p.is_file()
        for f in found.files:
            try:
                kind = _formats.sniff(f)
                if kind == "dicom":
                    dicom.append(f)
                elif kind == "nifti":
                    images.append(_formats.read_nifti(f))
                elif kind == "itk":
                    images.append(_formats.read_itk(f))
                elif kind == "optical":
                    images.append(_formats.read_optical(f))
                elif explicit:
                    if f.stat().st_size == 0:
                        raise InputError("file is empty (0 bytes)", path=f, expected="an image file", found="0 bytes")
                    raise InputError("unrecognised file type", path=f,
                                     expected="DICOM, NIfTI, NRRD/MetaImage, PNG, JPEG or TIFF content",
                                     found="none of these", fix="check the file; types are recognised by content")
            except SobreError as exc:
                if not lenient:
                    raise
                problems.add(Problem.from_error(exc, path=str(f)))
    if dicom:
        found_dicom = read_dicom(dicom, on_warning=on_warning, problems=problems)
        if verify:
            found_dicom = [im for im in found_dicom if _pixels_decode(im, problems)]
        images[:0] = found_dicom
    return images


def _pixels_decode(image: Image, problems) -> bool:
    """Whether every source file of a DICOM image decodes; else raise, or add the problem and say False."""
    from sobre.errors import Problem
    from sobre.image._part10 import verify_pixels

    try:
        for src in dict.fromkeys(image.sources):
            verify_pixels(src)
    except SobreError as exc:
        if problems is None:
            raise
        problems.add(Problem.from_error(exc))
        return False
    return True


def load(path: str | Path | Iterable[str | Path], *, series_uid: str | None = None, on_warning=None) -> Image:
    """Read exactly one image (a file, a DICOM series folder, or a list of files).

    Raises
    ------
    InputError
        When nothing, or more than one volume, is found (the message lists them; pass
        ``series_uid`` or use :func:`load_all`).

    Examples
    --------
    >>> img = load("ct_series_dir")          # doctest: +SKIP
    >>> img.shape, img.spacing, img.orientation  # doctest: +SKIP
    ((512, 512, 300), (0.7, 0.7, 1.0), 'LPS')
    """
    images = load_all(path, on_warning=on_warning)
    if series_uid is not None:
        images = [im for im in images if im.metadata.get("series_uid") == series_uid]
    where = path if isinstance(path, (str, Path)) else "the given files"
    if not images:
        raise InputError("no image found", path=where if isinstance(where, (str, Path)) else None,
                         expected="at least one readable image", found="none")
    if len(images) > 1:
        listing = "; ".join(
            f"{im.metadata.get('series_uid', im.sources[0])}"
            f"{' [' + im.metadata['volume_label'] + ']' if im.metadata.get('volume_label') else ''} {im.shape}"
            for im in images[:10]
        )
        raise InputError(f"{len(images)} volumes found where one was expected: {listing}",
                         path=where if isinstance(where, (str, Path)) else None,
                         fix="pass series_uid=..., or use sobre.load_all()")
    return images[0]


def save(image: Image, path: str | Path) -> Path:
    """Write an image: ``.nii``/``.nii.gz`` (NIfTI, RAS on disk), ``.nrrd``/``.mha`` (LPS), ``.png``/``.jpg``.

    The pixels are read first (an error there names the input file and tag, as ``image.array``
    would); the file is written to a temporary name and renamed into place, so a crash never leaves
    a half-written file under the final name.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        writer = _formats.write_nifti
    elif name.endswith((".nrrd", ".mha", ".mhd")):
        writer = _formats.write_itk
    elif name.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff")):
        writer = _formats.write_optical
    else:
        raise InputError("unknown output format", path=path, expected=".nii.gz, .nii, .nrrd, .mha or .png",
                         found=path.suffix or "no suffix", fix="for DICOM use sobre.write_dicom_series()")
    image.array  # noqa: B018 - pixels first: an error reading them names the input file and tag, not the output
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        try:
            writer(image, tmp)
        except SobreError as exc:
            if exc.path not in (None, str(tmp)):
                raise  # about an input file (pixels that cannot be read): it names that file and tag
            # about the output: name the file the caller asked for, not the temporary one
            raise type(exc)(exc.what, path=path, tag=exc.tag, expected=exc.expected, found=exc.found,
                            fix=exc.fix) from None
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
