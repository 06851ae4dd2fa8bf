"""Applications: a segmentation app in a few lines writes SEG + SR + SC that highdicom reads and
dciodvfy accepts, referring to the received instances; refusals name the rule; runs are all or nothing;
apps are found through entry points; the CLI is thin over it all."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

import sobre
from sobre.apps import Accept, App, AppConfig, AppModel, AppRefusal, get_app, list_apps
from sobre.base import sha256_file
from sobre.cli import main
from sobre.errors import ConfigError, GeometryError, InputError
from sobre.image import Segment, read_header

from image.test_dicom_objects import iod_check  # one dciodvfy rule set for every DICOM output

LESION = ("52988006", "SCT", "Lesion")


def lesion_app(model=None, **config) -> App:
    """The documented few-lines app."""
    return App("test-lesions", "1.0",
               accepts=Accept(modality=["CT"], dims=3, exclude_description="scout|localizer"),
               models=[AppModel(model, name="lesions", segments=[Segment("lesion", 1, type=LESION)])],
               config=AppConfig(outputs=["seg", "sr", "sc", "json", "mask"], **config))


def source_uids(folder) -> list[str]:
    return sorted(str(read_header(p).SOPInstanceUID) for p in sorted(folder.iterdir()))


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def test_a_segmentation_app_writes_seg_sr_and_sc_about_the_received_instances(tmp_path, seg_run, ct_series):
    import highdicom as hd

    folder, img, truth = ct_series
    result = lesion_app(seg_run).run([folder], tmp_path / "out")
    assert [c.folder for c in result.cases] == ["case-001"] and result.refused == []
    case = result.cases[0]
    kinds = [o["kind"] for o in case.outputs]
    assert kinds[:3] == ["mask", "SEG", "SR"] and kinds[-1] == "json" and set(kinds[3:-1]) == {"SC"}
    for o in result.outputs:  # every output hashed as written
        assert sha256_file(o["path"]) == o["sha256"]
    uids = source_uids(folder)
    assert sorted(i["sop_instance_uid"] for i in case.input["instances"]) == uids
    for i in case.input["instances"]:
        assert sha256_file(i["path"]) == i["sha256"]
    out = {o["kind"]: o for o in result.outputs if o["kind"] != "SC"}
    mask = sobre.load(out["mask"]["path"])
    assert dice(mask.array, truth.array) > 0.5  # the tiny model found the lesions
    seg = hd.seg.segread(out["SEG"]["path"])
    src = {str(read_header(p).SOPInstanceUID): p for p in sorted(folder.iterdir())}
    order = [str(read_header(p).SOPInstanceUID) for p in sobre.load(folder).sources]
    px = seg.get_pixels_by_source_instance(order, segment_numbers=[1], assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(px[..., 0], np.transpose(mask.array, (2, 1, 0)) == 1)
    assert sorted(out["SEG"]["references"]) == uids and set(src) == set(uids)
    sr = hd.sr.srread(out["SR"]["path"])
    assert sorted(out["SR"]["references"]) == sorted(uids + [out["SEG"]["sop_instance_uid"]])
    groups = sr.content.get_volumetric_roi_measurement_groups()
    vol = [m for m in groups[0].get_measurements() if m.name.meaning == "Volume"][0]
    assert vol.value == pytest.approx(float((mask.array == 1).sum()) * np.prod(img.spacing), rel=1e-6)
    assert [q.value.meaning for q in groups[0].get_qualitative_evaluations()] == ["Present"]
    identity = result.models[0]
    assert identity["run_id"] == seg_run.name and len(identity["sha256"]) == 64 and identity["source"] == "run"
    device = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Device Observer Serial Number"]
    assert device[0].TextValue == identity["sha256"]
    for o in result.outputs:
        if o["kind"] in ("SEG", "SR", "SC"):
            iod_check(o["path"])
    written = json.loads((tmp_path / "out" / "app-result.json").read_text())
    assert written["format"] == "sobre.app-result/1" and written["cases"][0]["outputs"] == case.outputs
    assert written["app"] == {"name": "test-lesions", "version": "1.0"} and written["config"]["outputs"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_series_an_app_does_not_accept_are_refused_naming_the_rule(tmp_path, seg_run, ct_series, mr_series):
    app = lesion_app(seg_run)
    with pytest.raises(AppRefusal, match="app test-lesions does not accept series .*: rule 'modality'") as e:
        app.run([mr_series], tmp_path / "out")
    assert e.value.expected == "modality CT" and e.value.found.startswith("MR")
    assert "sobre app check" in e.value.fix
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    # mixed inputs: strict refuses all; otherwise the accepted series are processed and the others listed
    with pytest.raises(AppRefusal):
        app.run([ct_series[0], mr_series], tmp_path / "out")
    res = app.run([ct_series[0], mr_series], tmp_path / "out", strict=False, config={"outputs": ["json"]})
    assert len(res.cases) == 1 and [r.refusals[0].rule for r in res.refused] == ["modality"]
    # NIfTI input cannot give DICOM outputs
    sobre.save(ct_series[1], tmp_path / "ct.nii.gz")
    with pytest.raises(AppRefusal, match="rule 'dicom_sources'"):
        app.run([tmp_path / "ct.nii.gz"], tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_the_rules_say_why(ct_series):
    img = ct_series[1].with_array(ct_series[1].array, metadata={"series_description": "Scout 2", "body_part": "HEAD"})
    v = Accept(modality=["MR"], body_part=["chest"], exclude_description="scout", dims=2, min_slices=40,
               max_spacing_mm=1.0).check(img)
    assert [r.rule for r in v.refusals] == ["modality", "body_part", "exclude_description", "dims", "min_slices",
                                            "max_spacing_mm"]
    assert str(v.refusals[1]) == "rule 'body_part': expected body part CHEST; found HEAD"
    assert Accept(body_part=["CHEST"]).check(ct_series[1]).accepted  # no stated body part: not refused ...
    assert not Accept(body_part=["CHEST"], body_part_required=True).check(ct_series[1]).accepted  # ... unless required
    assert not Accept(description="arterial").check(img).accepted
    flat = sobre.Image(np.zeros((8, 8), np.int16), coordinate_system="pixel")
    assert [r.rule for r in Accept().check(flat).refusals] == ["patient_frame"]
    with pytest.raises(ConfigError, match="not a regular expression"):
        Accept(description="(unclosed")
    with pytest.raises(ConfigError, match="unknown key 'modalities'; did you mean 'modality'"):
        Accept(modalities=["CT"])


def test_a_run_that_fails_half_way_leaves_nothing(tmp_path, seg_run, ct_series):
    def shift(mask):  # a broken post-processing step: its mask leaves the source grid
        a = mask.affine.copy()
        a[:3, 3] += 0.5 * a[:3, 0]
        return sobre.Image(mask.array, a)

    app = App("broken", "0", models=[AppModel(seg_run)], postprocess=[shift])
    with pytest.raises(GeometryError, match="the mask is not on the grid of the source images"):
        app.run([ct_series[0]], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x")
    with pytest.raises(InputError, match="the output folder is not empty"):
        lesion_app(seg_run).run([ct_series[0]], tmp_path / "full")
    with pytest.raises(InputError, match="app test-lesions needs a model for 'lesions'"):
        lesion_app().run([ct_series[0]], tmp_path / "x")
    with pytest.raises(InputError, match="unknown model 'no-such-run'"):
        lesion_app("no-such-run").run([ct_series[0]], tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_apps_are_found_through_entry_points(tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    (pkg / "my_apps").mkdir(parents=True)
    (pkg / "my_apps" / "__init__.py").write_text(textwrap.dedent("""
        from sobre.apps import Accept, App, AppModel

        def liver():
            return App("liver", "2.0", accepts=Accept(modality=["CT"]), models=[AppModel(None)],
                       description="liver lesions")

        broken = 42
    """))
    dist = pkg / "my_apps-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-apps\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[sobre.apps]\nliver = my_apps:liver\nnot-an-app = my_apps:broken\n")
    monkeypatch.syspath_prepend(str(pkg))
    rows = {r["name"]: r for r in list_apps()}
    assert rows["ct-lesions"]["origin"] == "built-in"
    assert rows["liver"]["origin"] == "my-apps 1.0" and rows["liver"]["version"] == "2.0"
    assert "is not a sobre.apps.App" in rows["not-an-app"]["error"]
    assert get_app("liver").accepts.modality == ["CT"]
    with pytest.raises(InputError, match="unknown app 'livr'; did you mean 'liver'"):
        get_app("livr")
    monkeypatch.delitem(sys.modules, "my_apps", raising=False)


# ------------------------------------------------------------------------------------------- CLI
def test_cli_app_list_check_and_run(tmp_path, capsys, seg_run, ct_series, mr_series):
    assert main(["app", "list", "--json"]) == 0
    assert "ct-lesions" in {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert main(["app", "check", "ct-lesions", str(ct_series[0]), str(mr_series)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("accepted ") and lines[1].startswith("REFUSED ") and "rule 'modality'" in lines[1]
    out = tmp_path / "out"
    assert main(["app", "run", "ct-lesions", str(ct_series[0]), "--out", str(out), "--model", str(seg_run),
                 "--set", "min_volume_mm3=5", "--set", "sc_slices=\"middle\"", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["config"]["min_volume_mm3"] == 5 and res["config"]["window"] == "soft-tissue"
    assert [o["kind"] for o in res["cases"][0]["outputs"]].count("SC") == 1
    assert (out / "app-result.json").is_file()
    # bad input: one clear line, status 2, nothing written
    for args, message in [
        (["app", "run", "ct-lesions", str(mr_series), "--out", str(tmp_path / "a"), "--model", str(seg_run)],
         "does not accept series"),
        (["app", "run", "no-such-app", str(mr_series), "--out", str(tmp_path / "a")], "unknown app 'no-such-app'"),
        (["app", "run", "ct-lesions", str(ct_series[0]), "--out", str(tmp_path / "a"), "--model",
          str(tmp_path / "nope")], "unknown model"),
        (["app", "run", "ct-lesions", str(ct_series[0]), "--out", str(tmp_path / "a"), "--model", str(seg_run),
          "--set", "windw=\"lung\""], "unknown key 'windw'; did you mean 'window'"),
        (["predict", str(tmp_path / "nope"), str(ct_series[0]), "--out", str(tmp_path / "a")], "unknown model"),
    ]:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert not (tmp_path / "a").exists()
