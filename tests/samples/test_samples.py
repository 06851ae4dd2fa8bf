"""The sample cache: pinned versions and SHA-256, refusal on mismatch with nothing left behind, the
cache record, idempotent fetches. Archives are local fake files; nothing here downloads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
import zipfile
from pathlib import Path

import pytest

from sobre import samples
from sobre.cli import main
from sobre.errors import SobreError

from .conftest import make_tar, sha256

HEX64 = re.compile(r"[0-9a-f]{64}")


def _cache_entries(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir()} if cache.exists() else set()


# --------------------------------------------------------------------------- declared sources
def test_every_source_is_pinned_by_version_and_sha256():
    assert "pyradiomics-data" in samples.SOURCES
    for s in samples.SOURCES.values():
        assert s.pins, s.name
        for pin in s.pins:
            assert pin.version and HEX64.fullmatch(pin.sha256), s.name
        if s.registry.startswith("pypi"):
            assert len(s.pins) == 1
    rad = samples.SOURCES["pyradiomics-data"].pins[0]
    assert rad.version == "3.1.0" and rad.url.endswith("/pyradiomics-3.1.0.tar.gz")
    assert rad.url.startswith("https://files.pythonhosted.org/")


def test_bad_pins_are_refused_at_declaration():
    with pytest.raises(ValueError, match="64 lowercase hex"):
        samples.Pin("1.0", "abc")
    with pytest.raises(ValueError, match="exactly one"):
        samples.Source("x", "pypi-wheel", "x", (samples.Pin("1", "0" * 64), samples.Pin("2", "1" * 64)),
                       ("a/",), "", "")
    with pytest.raises(ValueError, match="url"):
        samples.Source("x", "pypi-file", "x", (samples.Pin("1", "0" * 64),), ("a/",), "", "")


def test_keep_patterns_prefixes_and_wildcards():
    s = samples.SOURCES["pyradiomics-data"]
    assert s.keeps("pyradiomics-3.1.0/data/lung1_image.nrrd")
    assert s.keeps("./pyradiomics-3.1.0/data/lung1_label.nrrd")
    assert s.keeps("pyradiomics-3.1.0/LICENSE.txt")
    assert not s.keeps("pyradiomics-3.1.0/data/baseline/lung1_glcm.npy")  # '*' never crosses '/'
    assert not s.keeps("pyradiomics-3.1.0/radiomics/base.py")
    d = samples.SOURCES["pydicom-data"]
    assert d.keeps("data_store/data/CT_small.dcm") and d.keeps("data_store/data/sub/x.dcm")
    assert not d.keeps("data_store/data/../../etc/passwd")


# --------------------------------------------------------------------------- fetch, record, list
def test_fetch_keeps_only_the_wanted_files_and_records_what_was_fetched(cache, fake_archive, fake_source):
    fake_source(fake_archive)
    got = samples.fetch(["fake"])
    root = got["fake"]
    assert root == cache / "fake" == samples.path("fake")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == [".complete", "fake-1.0/LICENSE", "fake-1.0/data/a_image.nrrd", "fake-1.0/data/a_label.nrrd"]
    rec = json.loads((root / ".complete").read_text())
    assert rec["version"] == "1.0" and rec["sha256"] == sha256(fake_archive) and rec["pinned"] is True
    assert rec["archive"] == "fake-1.0.tar.gz" and rec["files"] == 3 and rec["package"] == "fake"
    assert _cache_entries(cache) == {"fake", ".lock"}  # no temporary folder left


def test_fetch_is_idempotent(cache, fake_archive, fake_source, monkeypatch):
    fake_source(fake_archive)
    samples.fetch(["fake"])
    first = (cache / "fake" / ".complete").read_text()
    fake_archive.unlink()  # a second download would now fail: the cached copy must be used as is
    calls = []
    monkeypatch.setattr(samples, "_fetch_one", lambda *a, **k: calls.append(a))
    assert samples.fetch(["fake"]) == {"fake": cache / "fake"}
    assert calls == []
    assert (cache / "fake" / ".complete").read_text() == first


def test_force_fetches_again(cache, fake_archive, fake_source):
    fake_source(fake_archive)
    samples.fetch(["fake"])
    (cache / "fake" / "fake-1.0" / "LICENSE").write_text("edited")
    samples.fetch(["fake"], force=True)
    assert (cache / "fake" / "fake-1.0" / "LICENSE").read_text() == "BSD-3 (fake)\n"
    assert _cache_entries(cache) == {"fake", ".lock"}


def test_list_json_shows_pinned_and_fetched_versions(cache, fake_archive, fake_source, capsys):
    fake_source(fake_archive)
    assert main(["samples", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) >= {"pydicom-data", "pyradiomics-data", "mricron-data", "fake"}
    assert rows["fake"]["cached"] is False and rows["fake"]["state"] == "missing" and rows["fake"]["fetched"] is None
    assert rows["nibabel-data"]["pins"] == [{"version": "5.4.2", "sha256": samples.SOURCES["nibabel-data"].pins[0].sha256}]

    assert main(["samples", "fetch", "fake", "--cache", str(cache)]) == 0
    capsys.readouterr()
    assert main(["samples", "list", "--json", "--cache", str(cache)]) == 0
    row = {r["name"]: r for r in json.loads(capsys.readouterr().out)}["fake"]
    assert row["cached"] is True and row["state"] == "fetched"
    assert row["fetched"]["version"] == "1.0" and row["fetched"]["sha256"] == sha256(fake_archive)
    assert main(["samples", "list"]) == 0
    assert re.search(r"\[yes\] fake .* 1\.0 ", capsys.readouterr().out)


def test_unknown_source_is_refused(cache, capsys):
    with pytest.raises(SobreError, match="unknown sample"):
        samples.fetch(["no-such-source"])
    assert main(["samples", "fetch", "no-such-source"]) == 2
    assert "unknown sample source" in capsys.readouterr().err
    assert not cache.exists() or _cache_entries(cache) <= {".lock"}


# --------------------------------------------------------------------------- refusals leave nothing behind
def test_hash_mismatch_is_refused_before_extraction_and_leaves_nothing(cache, fake_archive, fake_source):
    wrong = "0" * 64
    fake_source(fake_archive, sha256_=wrong)
    with pytest.raises(samples.FetchIncomplete) as info:
        samples.fetch(["fake"])
    err = info.value.errors["fake"]
    assert isinstance(err, samples.HashMismatch)
    text = str(err)
    assert "'fake'" in text and "fake-1.0.tar.gz" in text
    assert err.expected == f"SHA-256 {wrong}" and err.found == f"SHA-256 {sha256(fake_archive)}"
    assert "nothing was extracted" in text and err.fix
    assert _cache_entries(cache) == {".lock", ".fake.failed.json"}  # no folder, no temporary folder
    with pytest.raises(samples.SampleMissing, match="the last fetch .* failed: .*SHA-256 0000"):
        samples.path("fake")
    assert samples.status("fake")["state"] == "failed"


def test_hash_mismatch_keeps_the_previous_good_copy(cache, fake_archive, fake_source, tmp_path):
    fake_source(fake_archive)
    samples.fetch(["fake"])
    before = (cache / "fake" / ".complete").read_text()
    # the registry now serves other bytes under the same name and version
    make_tar(fake_archive, {"fake-1.0/data/a_image.nrrd": b"tampered"})
    with pytest.raises(samples.FetchIncomplete):
        samples.fetch(["fake"], force=True)
    assert (cache / "fake" / ".complete").read_text() == before
    assert (cache / "fake" / "fake-1.0/data/a_image.nrrd").read_bytes().startswith(b"NRRD0004")
    assert samples.path("fake") == cache / "fake"
    assert _cache_entries(cache) == {"fake", ".lock", ".fake.failed.json"}


def test_failed_extraction_leaves_nothing(cache, tmp_path, fake_source):
    archive = make_tar(tmp_path / "fake-1.0.tar.gz", {"fake-1.0/unrelated.txt": b"x"})
    fake_source(archive)
    with pytest.raises(samples.FetchIncomplete) as info:
        samples.fetch(["fake"])
    assert "holds none of the files to keep" in str(info.value.errors["fake"])
    assert _cache_entries(cache) == {".lock", ".fake.failed.json"}


def test_an_archive_that_cannot_be_unpacked_leaves_nothing(cache, tmp_path, fake_source):
    archive = tmp_path / "fake-1.0.tar.gz"
    archive.write_bytes(b"not a tar file at all")
    fake_source(archive)  # pinned to these very bytes: the hash passes, unpacking fails
    with pytest.raises(samples.FetchIncomplete) as info:
        samples.fetch(["fake"])
    err = info.value.errors["fake"]
    assert isinstance(err, samples.SampleFetchError) and "could not unpack fake-1.0.tar.gz" in str(err)
    assert _cache_entries(cache) == {".lock", ".fake.failed.json"}


def test_leftovers_of_a_killed_fetch_are_removed(cache, fake_archive, fake_source):
    fake_source(fake_archive)
    (cache / ".fake-abc123" / "out").mkdir(parents=True)  # what a fetch killed by SIGKILL leaves
    samples.fetch(["fake"])
    assert _cache_entries(cache) == {"fake", ".lock"}


def test_success_after_failure_clears_the_failure(cache, fake_archive, fake_source):
    fake_source(fake_archive, sha256_="1" * 64)
    with pytest.raises(samples.FetchIncomplete):
        samples.fetch(["fake"])
    fake_source(fake_archive)
    samples.fetch(["fake"])
    assert _cache_entries(cache) == {"fake", ".lock"}


def test_one_failure_does_not_stop_the_others(cache, fake_archive, fake_source, tmp_path):
    fake_source(fake_archive, sha256_="2" * 64, name="bad")
    fake_source(fake_archive, name="good")
    with pytest.raises(samples.FetchIncomplete) as info:
        samples.fetch(["bad", "good"])
    assert set(info.value.errors) == {"bad"} and set(info.value.fetched) == {"good"}
    assert samples.is_available("good") and not samples.is_available("bad")


def test_cli_fetch_reports_the_mismatch_and_exits_2(cache, fake_archive, fake_source, capsys):
    fake_source(fake_archive, sha256_="3" * 64)
    assert main(["samples", "fetch", "fake"]) == 2
    err = capsys.readouterr().err
    assert "error: fake:" in err and "3333" in err and sha256(fake_archive) in err


def test_an_older_unhashed_cache_entry_is_not_used_and_is_fetched_again(cache, fake_archive, fake_source):
    fake_source(fake_archive)
    old = cache / "fake"
    old.mkdir(parents=True)
    (old / ".complete").write_text("fake==1.0\n3 files\n")  # what Sobre wrote before hashes were checked
    with pytest.raises(samples.SampleMissing, match="older Sobre"):
        samples.path("fake")
    assert samples.status("fake")["state"] == "stale"
    samples.fetch(["fake"])
    assert json.loads((old / ".complete").read_text())["sha256"] == sha256(fake_archive)


def test_a_copy_of_a_version_no_longer_pinned_is_stale(cache, fake_archive, fake_source):
    fake_source(fake_archive)
    samples.fetch(["fake"])
    fake_source(fake_archive, sha256_="4" * 64)  # Sobre moved its pin on
    with pytest.raises(samples.SampleMissing, match="not a version this Sobre pins"):
        samples.path("fake")


# --------------------------------------------------------------------------- PyPI through pip (local index)
def _wheel(folder: Path, name: str, version: str) -> Path:
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}.dist-info/RECORD", "")
        zf.writestr("sobre_fake_data/data/x.dcm", b"DICM fake")
    return path


@pytest.fixture
def local_pypi(tmp_path, monkeypatch) -> Path:
    """pip sees only a local folder (no index, no machine configuration)."""
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def _pip_source(monkeypatch, sha: str) -> None:
    monkeypatch.setitem(samples.SOURCES, "fake-wheel", samples.Source(
        "fake-wheel", "pypi-wheel", "sobre-fake-data", (samples.Pin("1.0", sha),),
        ("sobre_fake_data/data/",), "fake wheel", "MIT"))


def test_pip_download_is_pinned_by_hash(cache, local_pypi, monkeypatch):
    wheel = _wheel(local_pypi, "sobre-fake-data", "1.0")
    _pip_source(monkeypatch, sha256(wheel))
    root = samples.fetch(["fake-wheel"])["fake-wheel"]
    assert (root / "sobre_fake_data/data/x.dcm").read_bytes() == b"DICM fake"
    assert json.loads((root / ".complete").read_text())["archive"] == wheel.name


def test_pip_hash_mismatch_names_expected_and_found(cache, local_pypi, monkeypatch):
    wheel = _wheel(local_pypi, "sobre-fake-data", "1.0")
    _pip_source(monkeypatch, "5" * 64)
    with pytest.raises(samples.FetchIncomplete) as info:
        samples.fetch(["fake-wheel"])
    err = info.value.errors["fake-wheel"]
    assert isinstance(err, samples.HashMismatch)
    assert err.expected == "SHA-256 " + "5" * 64 and err.found == "SHA-256 " + sha256(wheel)
    assert _cache_entries(cache) == {".lock", ".fake-wheel.failed.json"}


# --------------------------------------------------------------------------- Debian (fake apt on PATH)
@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """``fake_apt(offered, deb)``: apt-cache/apt-get scripts offering ``offered`` and serving ``deb``."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (Debian's dpkg); the .deb path is not tested")
    bin_ = tmp_path / "bin"
    bin_.mkdir()

    def make(offered: str, deb: Path | None) -> None:
        (bin_ / "apt-cache").write_text(textwrap.dedent(f"""\
            #!/bin/sh
            echo "fake-deb | {offered} | http://deb.example/debian bookworm/main amd64 Packages"
            """))
        (bin_ / "apt-get").write_text(textwrap.dedent(f"""\
            #!/bin/sh
            [ "$2" = "fake-deb={offered}" ] || {{ echo "E: Version not found" >&2; exit 100; }}
            cp "{deb}" .
            """))
        for f in bin_.iterdir():
            f.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")

    return make


def _deb(tmp_path: Path, version: str) -> Path:
    root = tmp_path / "debroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: fake-deb\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: t\n")
    (root / "usr/share/fake").mkdir(parents=True)
    (root / "usr/share/fake/t1.nii.gz").write_bytes(b"fake nifti")
    (root / "usr/share/doc/fake-deb").mkdir(parents=True)
    (root / "usr/share/doc/fake-deb/copyright").write_text("BSD\n")
    (root / "usr/share/doc/fake-deb/changelog").write_text("not kept\n")
    out = tmp_path / f"fake-deb_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(out)], check=True,
                   capture_output=True)
    return out


def _deb_source(monkeypatch, pins) -> None:
    monkeypatch.setitem(samples.SOURCES, "fake-deb", samples.Source(
        "fake-deb", "debian", "fake-deb", tuple(samples.Pin(v, s) for v, s in pins),
        ("usr/share/fake/", "usr/share/doc/fake-deb/copyright"), "fake deb", "BSD"))


def test_debian_pinned_version_is_fetched(cache, tmp_path, fake_apt, monkeypatch):
    deb = _deb(tmp_path, "1.0-2")
    fake_apt("1.0-2", deb)
    _deb_source(monkeypatch, [("1.0-1", "6" * 64), ("1.0-2", sha256(deb))])  # known versions, the mirror has one
    root = samples.fetch(["fake-deb"])["fake-deb"]
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == [".complete", "usr/share/doc/fake-deb/copyright", "usr/share/fake/t1.nii.gz"]
    rec = json.loads((root / ".complete").read_text())
    assert rec["version"] == "1.0-2" and rec["pinned"] is True and rec["sha256"] == sha256(deb)
    assert _cache_entries(cache) == {"fake-deb", ".lock"}


def test_debian_unknown_version_is_refused_and_the_skip_says_why(cache, tmp_path, fake_apt, monkeypatch):
    deb = _deb(tmp_path, "1.0-3")
    fake_apt("1.0-3", deb)
    _deb_source(monkeypatch, [("1.0-2", "7" * 64)])
    with pytest.raises(samples.FetchIncomplete) as info:
        samples.fetch(["fake-deb"])
    err = info.value.errors["fake-deb"]
    assert isinstance(err, samples.UnpinnedVersion)
    assert "offers fake-deb only in version(s) 1.0-3" in str(err) and "1.0-2" in err.expected
    assert "--accept-unpinned" in err.fix
    assert _cache_entries(cache) == {".lock", ".fake-deb.failed.json"}
    with pytest.raises(samples.SampleMissing, match=r"pins no SHA-256") as missing:
        samples.path("fake-deb")
    # tests/conftest.py skips with this very message
    assert "sobre samples fetch fake-deb" in str(missing.value)


def test_debian_unknown_version_accepted_explicitly_is_recorded_as_unpinned(cache, tmp_path, fake_apt,
                                                                           monkeypatch, capsys):
    deb = _deb(tmp_path, "1.0-3")
    fake_apt("1.0-3", deb)
    _deb_source(monkeypatch, [("1.0-2", "7" * 64)])
    assert main(["samples", "fetch", "fake-deb", "--accept-unpinned"]) == 0
    assert "UNPINNED" in capsys.readouterr().out
    rec = samples.status("fake-deb")["fetched"]
    assert rec["version"] == "1.0-3" and rec["pinned"] is False and rec["sha256"] == sha256(deb)
    assert samples.path("fake-deb") == cache / "fake-deb"


def test_debian_pinned_version_with_other_bytes_is_refused(cache, tmp_path, fake_apt, monkeypatch):
    deb = _deb(tmp_path, "1.0-2")
    fake_apt("1.0-2", deb)
    _deb_source(monkeypatch, [("1.0-2", "8" * 64)])
    with pytest.raises(samples.FetchIncomplete) as info:
        samples.fetch(["fake-deb"])
    assert isinstance(info.value.errors["fake-deb"], samples.HashMismatch)
    assert _cache_entries(cache) == {".lock", ".fake-deb.failed.json"}


def test_without_apt_the_debian_source_says_so(cache, monkeypatch, tmp_path):
    _deb_source(monkeypatch, [("1.0-2", "9" * 64)])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(samples.FetchIncomplete) as info:
        samples.fetch(["fake-deb"])
    assert "apt is not available" in str(info.value.errors["fake-deb"])


# --------------------------------------------------------------------------- the cache location
def test_cache_location_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SOBRE_SAMPLES", str(tmp_path / "s"))
    assert samples.default_cache() == tmp_path / "s"
    monkeypatch.delenv("SOBRE_SAMPLES")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert samples.default_cache() == tmp_path / "x" / "sobre" / "samples"


def test_library_never_prints(cache, fake_archive, fake_source, capfd):
    fake_source(fake_archive)
    samples.fetch(["fake"])
    with pytest.raises(samples.FetchIncomplete):
        fake_source(fake_archive, sha256_="a" * 64, name="bad")
        samples.fetch(["bad"])
    out, err = capfd.readouterr()
    assert out == "" and err == ""

