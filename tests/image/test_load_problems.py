"""Reading folders that hold bad files beside good ones, and errors that name the right file.

``load_all(..., problems=Problems())`` returns every readable volume and reports the rest as data;
``sobre info FOLDER`` shows them (exit 0, problems on stderr or in ``--json``) and says clearly when
nothing is readable (exit 2). ``save`` / ``sobre export`` name the input file whose pixels cannot be
read, never the output.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames

import sobre
from sobre import Image
from sobre.cli import main
from sobre.errors import GeometryError, InputError, ProblemError, Problems

AXIAL = np.array([[0.7, 0, 0, -20.0], [0, 0.8, 0, 10.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])


def run(capsys, *args):
    """(status, stdout, stderr) of ``sobre ARGS``; a traceback on stderr is a failure in itself."""
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


@pytest.fixture
def mixed(tmp_path, rng, pydicom_test_files):
    """A folder with a good CT series, an RT Plan, and a series with a missing slice."""
    root = tmp_path / "mixed"
    arr = rng.integers(-1000, 2000, (6, 5, 4)).astype(np.int16)
    sobre.write_dicom_series(Image(arr, AXIAL, modality="CT"), root / "good", uid_seed="good")
    uneven = sobre.write_dicom_series(Image(arr[:, :, :3].copy(), AXIAL, modality="CT"), root / "uneven",
                                      uid_seed="uneven")
    uneven[1].unlink()
    sobre.write_dicom_series(Image(arr, AXIAL, modality="CT"), root / "gap", uid_seed="gap")
    (root / "gap" / "IM0003.dcm").unlink()  # a gap of 5 mm in 2.5 mm steps
    shutil.copy(pydicom_test_files / "rtplan.dcm", root / "plan.dcm")
    (root / "notes.txt").write_text("not an image")
    return root, arr


def test_load_all_is_strict_by_default(mixed):
    root, _ = mixed
    with pytest.raises(InputError, match=r"gap|plan\.dcm"):
        sobre.load_all(root)


def test_load_all_with_problems_returns_every_readable_volume(mixed):
    root, arr = mixed
    found = Problems()
    images = sobre.load_all(root, problems=found)
    assert len(images) == 2  # the good series and the two remaining slices of "uneven" (a regular 2-slice stack)
    good = next(im for im in images if im.shape == (6, 5, 4))
    assert np.array_equal(good.array, arr)
    errors = found.at("error")
    assert len(errors) == 2 and not found.at("warning")
    plan = next(p for p in errors if p.path.endswith("plan.dcm"))
    assert plan.tag == "(7FE0,0010) PixelData" and "holds no pixel data" in plan.message
    assert plan.message.endswith("found SOP class RT Plan Storage)") and plan.code == "input"
    gap = next(p for p in errors if "gap" in p.path)
    assert gap.message.startswith("series ") and "cannot be shown: slice spacing is uneven" in gap.message
    assert gap.code == "geometry" and gap.details["files"] == 3 and gap.tag == "(0020,0032) ImagePositionPatient"
    assert "notes.txt" not in " ".join(str(p) for p in found)  # files of unknown type in a folder: ignored


def test_problems_keep_their_own_strictness(mixed):
    with pytest.raises(ProblemError):
        sobre.load_all(mixed[0], problems=Problems(raise_at="error"))


def test_series_warnings_become_warning_problems(tmp_path, rng):
    arr = rng.integers(0, 9, (6, 5, 3)).astype(np.int16)
    paths = sobre.write_dicom_series(Image(arr, AXIAL, modality="MR"), tmp_path)
    ds = pydicom.dcmread(paths[0])
    ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]  # one file of the series lies sagittal
    ds.save_as(paths[0])
    found = Problems()
    said: list[str] = []
    images = sobre.load_all(tmp_path, problems=found, on_warning=said.append)
    assert len(images) == 2 and [p.level for p in found] == ["warning"]
    assert "split into 2 volumes" in found.items[0].message and said == [found.items[0].message]


def test_info_on_a_folder_shows_every_readable_volume_and_lists_the_rest(mixed, capsys):
    root, _ = mixed
    status, out, err = run(capsys, "info", root, "--json")
    assert status == 0
    info = json.loads(out)
    assert info["images"] and len(info["images"]) == 2 and len(info["problems"]) == 2
    assert {p["level"] for p in info["problems"]} == {"error"}
    assert any(p["path"].endswith("plan.dcm") and p["tag"] == "(7FE0,0010) PixelData" for p in info["problems"])
    assert "note: 2 image(s) shown; 2 file(s) or series could not be shown (listed above)" in err
    status, out, err = run(capsys, "info", root)
    assert status == 0 and out.count("shape [") == 2
    assert err.count("problem: [error] ") == 2 and "plan.dcm: (7FE0,0010) PixelData: DICOM object holds no" in err


def test_info_on_one_image_keeps_its_summary_and_adds_problems(tmp_path, rng, pydicom_test_files, capsys):
    sobre.write_dicom_series(Image(rng.integers(0, 9, (6, 5, 4)).astype(np.int16), AXIAL, modality="CT"),
                             tmp_path / "one")
    status, out, _ = run(capsys, "info", tmp_path / "one", "--json")
    info = json.loads(out)
    assert status == 0 and info["shape"] == [6, 5, 4] and info["problems"] == []
    shutil.copy(pydicom_test_files / "rtplan.dcm", tmp_path / "one" / "plan.dcm")
    status, out, err = run(capsys, "info", tmp_path / "one", "--json")
    info = json.loads(out)
    assert status == 0 and info["shape"] == [6, 5, 4] and len(info["problems"]) == 1
    assert "1 image(s) shown; 1 file(s) or series could not be shown" in err


def test_info_with_nothing_readable_exits_2_saying_so(tmp_path, pydicom_test_files, capsys):
    empty = tmp_path / "no_images"
    empty.mkdir()
    (empty / "readme.txt").write_text("hello")
    status, out, err = run(capsys, "info", empty)
    assert status == 2 and out == ""
    assert err == (f"error: {empty}: no readable image found (expected at least one DICOM series or NIfTI, "
                   "NRRD/MetaImage, PNG, JPEG or TIFF file; found no image file)\n")
    bad = tmp_path / "only_bad"
    bad.mkdir()
    shutil.copy(pydicom_test_files / "rtplan.dcm", bad / "plan.dcm")
    status, out, err = run(capsys, "info", bad, "--json")
    assert status == 2
    answer = json.loads(out)
    assert answer["error"] == "InputError" and answer["message"].endswith(
        "no readable image found (expected at least one DICOM series or NIfTI, NRRD/MetaImage, PNG, JPEG or TIFF "
        "file; found 1 file(s) or series that cannot be read). see the problems listed")
    assert len(answer["problems"]) == 1 and answer["problems"][0]["path"].endswith("plan.dcm")
    assert "problem: [error] " in err and "error: " in err


def test_info_on_an_unreadable_single_file_is_still_an_error(tmp_path, pydicom_test_files, capsys):
    status, _, err = run(capsys, "info", pydicom_test_files / "rtplan.dcm")
    assert status == 2 and "rtplan.dcm: (7FE0,0010) PixelData: DICOM object holds no pixel data" in err


# --------------------------------------------------------------------------- export names the bad input
@pytest.fixture
def j2k_cut(tmp_path, pydicom_test_files):
    """A JPEG 2000 file whose header is fine and whose codestream is a third of what it should be."""
    ds = pydicom.dcmread(pydicom_test_files / "MR_small_jp2klossless.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    ds.save_as(tmp_path / "j2k_cut.dcm")
    return tmp_path / "j2k_cut.dcm"


def test_save_names_the_input_whose_pixels_cannot_be_read(j2k_cut, tmp_path):
    img = sobre.load(j2k_cut)
    with pytest.raises(InputError, match=r"j2k_cut\.dcm: \(7FE0,0010\) PixelData: pixel data cannot be decoded") as info:
        sobre.save(img, tmp_path / "out" / "x.nii.gz")
    assert "x.nii.gz" not in str(info.value)
    assert not (tmp_path / "out").exists()  # pixels are read first: nothing is created, nothing half-written


def test_save_still_names_the_output_for_output_errors(tmp_path, rng):
    img = Image(rng.integers(0, 9, (4, 3, 2, 5)).astype(np.int16), extra_axes="channel")
    with pytest.raises(InputError, match=r"out\.png: ") as info:
        sobre.save(img, tmp_path / "out.png")
    assert ".out.png." not in str(info.value)  # never the temporary name


def test_export_names_the_input_whose_pixels_cannot_be_read(j2k_cut, tmp_path, capsys):
    status, _, err = run(capsys, "export", j2k_cut, "--to", tmp_path / "x.nii.gz")
    assert status == 2 and err.startswith(f"error: {j2k_cut}: (7FE0,0010) PixelData: pixel data cannot be decoded")
    assert "x.nii.gz" not in err


def test_export_of_a_truncated_native_file_names_it(tmp_path, rng, capsys):
    paths = sobre.write_dicom_series(Image(rng.integers(0, 9, (6, 5, 4)).astype(np.int16), AXIAL, modality="CT"),
                                     tmp_path / "s")
    img = sobre.load(tmp_path / "s")
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-20])  # cut after its header was read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=r"IM0003\.dcm: \(7FE0,0010\) PixelData: pixel data is truncated"):
            sobre.save(img, tmp_path / "out.nii.gz")


def test_geometry_errors_stay_geometry_errors(mixed):
    with pytest.raises(GeometryError):
        sobre.load(mixed[0] / "gap")


def test_truncated_uncompressed_nifti_is_refused_when_its_header_is_read(tmp_path, rng, capsys):
    import nibabel as nib

    nib.save(nib.Nifti1Image(rng.integers(0, 9, (20, 20, 20)).astype(np.int16), np.eye(4)), tmp_path / "a.nii")
    raw = (tmp_path / "a.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.nii: dim / vox_offset: NIfTI voxel data is truncated \(expected 16352 "
                                         r"bytes \(header offset \+ 20×20×20 voxels × 2 bytes\); found 8176 bytes\)"):
        sobre.load(tmp_path / "cut.nii")
    status, _, err = run(capsys, "info", tmp_path / "cut.nii")  # info and export agree
    assert status == 2 and "NIfTI voxel data is truncated" in err
