"""Model packages: built atomically from a run, signed, verified file by file, exported and imported between sites.

One changed byte in any file is refused naming that file; a wrong signature is refused; a package from
another site is refused until its key is trusted; ``load()`` gives the run's own model; bad input gets
one clear error and leaves nothing in the registry.
"""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest

from sobre.base import SiteKey
from sobre.errors import CatalogError, InputError
from sobre.learn import load_model
from sobre.models import Registry, check_package, register

from .conftest import SCRIPT, make_site


def registry_state(ws) -> list[str]:
    """Everything under the registry folder, hidden build folders included."""
    root = ws.layout.models
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def trusted_here(ws) -> dict:
    return Registry(ws).trusted()


# ------------------------------------------------------------------------------------ build
def test_package_holds_everything_and_verifies(site, package):
    ws, run = site
    files = set(package.files)
    assert {"model/run.json", "model/checkpoints/fold0/best.pt", "interface.json", "config.json", "provenance.json",
            "validation/report.json", "validation/report.html", "card/card.json", "card/card.md", "card/card.html",
            "signer.pem"} <= files
    on_disk = {p.relative_to(package.path).as_posix() for p in package.path.rglob("*") if p.is_file()}
    assert on_disk == files | {"manifest.json", "manifest.sig"}
    chk = package.verify()
    assert chk.ok and chk.signed_by == "this site" and chk.problems == []
    assert package.key_id == SiteKey.load(ws.layout.site_key).key_id
    prov = json.loads((package.path / "provenance.json").read_text())
    r = run.record
    assert prov["dataset"] == {"ref": "all@v1", "content_hash": r["dataset"]["content_hash"], "simulated": False}
    assert prov["code"] == r["code"] and prov["seed"] == r["seed"] and prov["packages"] == r["packages"]
    assert prov["checkpoints"]["checkpoints/fold0/best.pt"] == r["artifacts"]["checkpoints/fold0/best.pt"]["sha256"]
    assert json.loads((package.path / "config.json").read_text()) == r["config"]
    assert json.loads((package.path / "interface.json").read_text())["task"]["positive"] == SCRIPT
    assert package.manifest["report"].startswith("`sobre evaluate` report of run")


def test_package_holds_no_subject_identifier_or_local_path(site, package):
    ws, run = site
    subjects = ws.dataset("all@v1").subjects
    assert "expected_subjects" in run.record  # the run has them; the package must not
    for p in package.path.rglob("*"):
        if p.is_file() and p.suffix != ".pt":
            text = p.read_text(errors="replace")
            leaked = [s for s in subjects if s in text]
            assert not leaked, f"{p.name} holds subject ids {leaked[:3]}"
            assert str(ws.root) not in text, f"{p.name} holds the workspace path"
    rec = json.loads((package.path / "model" / "run.json").read_text())
    assert "expected_subjects" not in rec and "cache" not in rec["dataset"]
    assert set(rec["artifacts"]) == {"checkpoints/fold0/best.pt"}


def test_load_predicts_exactly_as_the_run(site, package):
    ws, run = site
    ds = ws.dataset("all@v1")
    want = load_model(run.path).predict(ds)
    model = package.load()
    got = model.predict(ds)
    np.testing.assert_array_equal(got.scores, want.scores)
    assert got.classes == want.classes and got.series == want.series
    assert model.provenance["checkpoints"] == load_model(run.path).provenance["checkpoints"]
    assert model.provenance["package"] == {"name": "blobs", "version": "1.0", "ref": "blobs@1.0",
                                           "sha256": package.package_sha256, "model_sha256": package.model_sha256,
                                           "key_id": package.key_id, "runtime": "torch"}


# ------------------------------------------------------------------------------ tampering
def _copy(package, tmp_path):
    dst = tmp_path / "pkg"
    shutil.copytree(package.path, dst)
    return dst


def test_one_changed_byte_in_any_file_is_refused_naming_that_file(site, package, tmp_path):
    ws, _ = site
    trusted = trusted_here(ws)
    rels = sorted([*package.files, "manifest.json", "manifest.sig"])
    assert len(rels) >= 13
    for rel in rels:
        dst = _copy(package, tmp_path)
        p = dst / rel
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0x01
        p.write_bytes(bytes(data))
        chk = check_package(dst, trusted)
        assert not chk.ok, rel
        named = [q for q in chk.problems if q.path == rel or rel in q.message]  # a signature names both files
        assert named, (rel, [str(q) for q in chk.problems])
        with pytest.raises(InputError, match=rel.replace(".", r"\.")):
            chk.raise_for_problems("refused")
        shutil.rmtree(dst)


def test_missing_extra_and_linked_files_are_refused(site, package, tmp_path):
    ws, _ = site
    dst = _copy(package, tmp_path)
    (dst / "card" / "card.md").unlink()
    (dst / "notes.txt").write_text("added later")
    (dst / "card" / "link.html").symlink_to(dst / "card" / "card.html")
    chk = check_package(dst, trusted_here(ws))
    got = {(q.code, q.path) for q in chk.problems}
    assert {("missing-file", "card/card.md"), ("extra-file", "notes.txt"), ("unsafe-file", "card/link.html")} <= got


def test_a_wrong_signature_is_refused(site, package, tmp_path):
    ws, _ = site
    dst = _copy(package, tmp_path)
    other = SiteKey.create(tmp_path / "keys" / "other.pem")
    sig = json.loads((dst / "manifest.sig").read_text())
    sig["signature"] = base64.b64encode(other.sign((dst / "manifest.json").read_bytes())).decode()
    (dst / "manifest.sig").write_text(json.dumps(sig))
    chk = check_package(dst, trusted_here(ws))
    assert [q.code for q in chk.problems] == ["bad-signature"]
    assert chk.problems[0].path == "manifest.json" and "manifest.sig" in chk.problems[0].message


def test_a_package_resigned_with_another_key_is_untrusted(site, package, tmp_path):
    """Whoever changes a file and signs the manifest again with a key of their own is refused by trust."""
    ws, _ = site
    from sobre.models._package import write_manifest  # the same writer, as an attacker would use it

    dst = _copy(package, tmp_path)
    (dst / "model" / "checkpoints" / "fold0" / "best.pt").write_bytes(b"not the weights")
    header = {k: v for k, v in package.manifest.items() if k not in ("format", "files", "signer", "model_sha256")}
    (dst / "manifest.json").unlink()
    (dst / "manifest.sig").unlink()
    write_manifest(dst, header, SiteKey.create(tmp_path / "keys" / "evil.pem"))
    chk = check_package(dst, trusted_here(ws))
    assert [q.code for q in chk.problems] == ["untrusted-key"]
    assert "sobre model trust" in chk.problems[0].fix


# ------------------------------------------------------------------------------ two sites
def test_other_site_refuses_until_the_key_is_trusted(site, package, tmp_path):
    ws_a, _ = site
    (tmp_path / "out").mkdir()
    archive = Registry(ws_a).export(package.ref, tmp_path / "out")
    assert archive.name == "blobs@1.0.tar"
    again = Registry(ws_a).export(package.ref, tmp_path / "again.tar")
    assert again.read_bytes() == archive.read_bytes()  # deterministic

    from sobre.catalog import Workspace

    ws_b = Workspace.init(tmp_path / "site-b")
    reg_b = Registry(ws_b)
    with pytest.raises(InputError, match=r"signer\.pem: signed by site key [0-9a-f]{16}, which this workspace does "
                                         r"not trust.*sobre model trust"):
        reg_b.import_(archive)
    assert registry_state(ws_b) == [] and reg_b.list() == []
    res = reg_b.trust(archive, label="site A")
    assert res["key_id"] == package.key_id and res["added"]
    pkg_b = reg_b.import_(archive)
    chk = pkg_b.verify()
    assert chk.ok and chk.signed_by == "trusted key site A"
    assert pkg_b.package_sha256 == package.package_sha256
    assert reg_b.import_(archive).path == pkg_b.path  # the same package again: nothing to do
    np.testing.assert_array_equal(pkg_b.load().predict(ws_a.dataset("all@v1")).scores,
                                  package.load().predict(ws_a.dataset("all@v1")).scores)
    assert reg_b.untrust(package.key_id)
    assert [q.code for q in reg_b.verify(package.ref).problems] == ["untrusted-key"]
    with pytest.raises(InputError, match="does not trust"):
        pkg_b.load()


def test_import_refuses_a_changed_archive_naming_the_file(site, package, tmp_path):
    import tarfile

    ws_a, _ = site
    archive = Registry(ws_a).export(package.ref, tmp_path / "a.tar")
    bad = tmp_path / "bad.tar"
    with tarfile.open(archive) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name.endswith("card/card.html"):
                data = data.replace(b"Model card", b"Model cart")
            dst.addfile(m, None if data is None else __import__("io").BytesIO(data))
    from sobre.catalog import Workspace

    ws_b = Workspace.init(tmp_path / "b")
    Registry(ws_b).trust(package.path / "signer.pem", label="A")
    with pytest.raises(InputError, match=r"refused bad\.tar: card/card\.html: differs from the signed manifest"):
        Registry(ws_b).import_(bad)
    assert registry_state(ws_b) == []


def test_import_refuses_unsafe_archives(tmp_path, site):
    import io
    import tarfile

    ws, _ = site
    for name, kind in (("../evil/x", tarfile.REGTYPE), ("pkg/link", tarfile.SYMTYPE), ("/abs/x", tarfile.REGTYPE)):
        path = tmp_path / "u.tar"
        with tarfile.open(path, "w") as tf:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tf.addfile(ti, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
        before = registry_state(ws)
        with pytest.raises(InputError, match="unsafe path|link or special file"):
            Registry(ws).import_(path)
        assert registry_state(ws) == before
    (tmp_path / "not.tar").write_bytes(b"hello")
    with pytest.raises(InputError, match="not a tar archive"):
        Registry(ws).import_(tmp_path / "not.tar")


# -------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_and_leaves_nothing_behind(site, package, tmp_path):
    ws, run = site
    before = registry_state(ws)
    with pytest.raises(CatalogError, match="no run 'nope'"):
        register(ws, "nope", "x", "1", measure=False)
    with pytest.raises(CatalogError, match=r"model blobs@1\.0 is already registered.*never overwritten"):
        register(ws, run.run_id, "blobs", "1.0", measure=False)
    with pytest.raises(InputError, match="invalid model name"):
        register(ws, run.run_id, "../x", "1", measure=False)
    with pytest.raises(InputError, match="invalid model version"):
        register(ws, run.run_id, "x", "1/2", measure=False)
    running = ws.layout.run("20990101-000000-train-running")
    shutil.copytree(run.path, running)
    rec = json.loads((running / "run.json").read_text())
    rec.update(run_id=running.name, status="running")
    (running / "run.json").write_text(json.dumps(rec))
    with pytest.raises(InputError, match="is not completed.*status running"):
        register(ws, running.name, "x", "1", measure=False)
    with pytest.raises(InputError, match="codes given for unknown output classes: tumour"):
        register(ws, run.run_id, "x", "1", measure=False, info={"codes": {"tumour": {
            "scheme": "SCT", "value": "1", "meaning": "x"}}})
    other = tmp_path / "report"
    other.mkdir()
    rep = json.loads((run.path / "report" / "report.json").read_text())
    rep["model"]["run_id"] = "someone-else"
    (other / "report.json").write_text(json.dumps(rep))
    with pytest.raises(InputError, match="does not evaluate run"):
        register(ws, run.run_id, "x", "1", measure=False, report=other)
    shutil.rmtree(running)
    assert registry_state(ws) == before
    reg = Registry(ws)
    with pytest.raises(CatalogError, match=r"no model nope.*one of: blobs"):
        reg.get("nope@1")
    with pytest.raises(CatalogError, match=r"no version 9 of model blobs.*one of: 1\.0"):
        reg.get("blobs@9")
    with pytest.raises(InputError, match="not a model reference"):
        reg.get("blobs")


def test_failure_midway_leaves_nothing_in_the_registry(site, monkeypatch, tmp_path):
    """An error while building (here: writing the card) removes the build folder and the new name's folder."""
    ws, run = site
    from sobre.models import _register

    before = registry_state(ws)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(_register, "write_card", boom)
    with pytest.raises(OSError, match="disk full"):
        register(ws, run.run_id, "half", "1", measure=False)
    assert registry_state(ws) == before


def test_no_report_is_not_stated(tmp_path):
    from learn.helpers import tiny_train_config

    from sobre.learn import train

    ws = make_site(tmp_path, 16)
    run = train(tiny_train_config(data={"dataset": "all@v1"}, task={"positive": SCRIPT}, optim={"epochs": 1}),
                workspace=ws).run
    pkg = register(ws, run.path, "bare", "0.1", measure=True)
    card = pkg.card
    assert "validation/report.json" not in pkg.files
    assert card["sections"]["metrics"]["performance_measures"] == "not stated"
    assert card["sections"]["quantitative_analyses"]["metrics"] == "not stated"
    assert card["notice"].startswith("No validation report")
    assert any("no validation report" in c for c in card["sections"]["caveats_and_recommendations"])
    rt = card["sections"]["runtime"]["measured_at_registration"]
    assert rt["measured"] and rt["peak_memory_mib"] > 0 and rt["forward_ms_per_image"] > 0
    assert json.loads((pkg.path / "runtime.json").read_text()) == rt
