"""The C-STORE listener with real senders (dcmtk's storescu/echoscu) and with bad input from pynetdicom."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from sobre.pacs import STATUS, Listener
from sobre.pacs._peers import free_port
from sobre.privacy import Deidentifier, DeidProfile, SafePrivateTag

from .pacs_helpers import PHI, make_study


@pytest.fixture
def listener(tmp_path, key):
    got: list[list[str]] = []
    lst = Listener(tmp_path / "store", port=free_port(), deidentifier=Deidentifier(key, DeidProfile()),
                   on_files=got.append, batch_seconds=0.2)
    lst.got = got
    lst.start()
    yield lst
    lst.stop(grace=2)


def _echo(echoscu, port, aec="SOBRE"):
    return subprocess.run([echoscu, "-aet", "TESTSCU", "-aec", aec, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def test_dcmtk_echo_and_store_are_deidentified_and_handed_over(listener, echoscu, storescu, tmp_path):
    assert _echo(echoscu, listener.port).returncode == 0
    _, files = make_study(tmp_path / "src", 3)
    run = subprocess.run([storescu, "-aet", "TESTSCU", "-aec", "SOBRE", "127.0.0.1", str(listener.port),
                          *map(str, files)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    stats = listener.stop(grace=2)
    assert stats.received == 3 and stats.failed == 0 and stats.ingested == 3
    handed = [p for batch in listener.got for p in batch]
    assert len(handed) == 3
    originals = {pydicom.dcmread(f).PixelData for f in files}
    for path in handed:
        data = Path(path).read_bytes()
        for value in PHI:
            assert value.encode() not in data, value
        ds = pydicom.dcmread(path)
        assert ds.PatientID.startswith("SUBJ-") and ds.PixelData in originals
    assert not (listener.store_dir / ".listener-dirty").exists()  # clean stop
    assert not list(listener.store_dir.rglob("*.tmp"))


def test_wrong_called_ae_title_is_rejected_and_service_goes_on(listener, echoscu):
    bad = _echo(echoscu, listener.port, aec="NOT_SOBRE")
    assert bad.returncode != 0
    assert "Called AE Title Not Recognized" in bad.stdout + bad.stderr
    assert _echo(echoscu, listener.port).returncode == 0


def _assoc(port, contexts):
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    return ae.associate("127.0.0.1", port, ae_title="SOBRE")


def test_bad_instances_get_failure_status_and_nothing_is_kept(listener, tmp_path):
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
    from pynetdicom import _config

    _, files = make_study(tmp_path / "src", 2)
    assoc = _assoc(listener.port, [(CTImageStorage, [ExplicitVRLittleEndian])])
    assert assoc.is_established
    try:
        # truncated pixel data
        ds = pydicom.dcmread(files[0])
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        status = assoc.send_c_store(ds)
        assert status.Status == STATUS["incomplete"] == 0xC211
        # a non-DICOM payload behind a valid file meta (sent raw, without decoding)
        from pynetdicom.dsutils import split_dataset

        junk = tmp_path / "junk.dcm"
        good = pydicom.dcmread(files[1])
        _, offset = split_dataset(files[1])  # end of the file meta group
        junk.write_bytes(Path(files[1]).read_bytes()[:offset] + b"\xff\xff\xff\xff this is not a dataset " * 4)
        old = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            status = assoc.send_c_store(junk)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = old
        # garbage reads as a bogus element running past the end, or as nothing at all
        assert status.Status in (STATUS["cannot_understand"], STATUS["incomplete"], STATUS["sop_class_mismatch"])
        # the association still works for a good instance
        status = assoc.send_c_store(good)
        assert status.Status == 0x0000
    finally:
        assoc.release()
    stats = listener.stop(grace=2)
    assert stats.received == 1 and stats.failed == 2
    assert len(list(listener.store_dir.rglob("*.dcm"))) == 1


def test_unsupported_sop_class_and_transfer_syntax_are_refused(listener, echoscu):
    from pydicom.uid import CTImageStorage

    assoc = _assoc(listener.port, [("1.2.826.0.1.3680043.9.7779.99", ["1.2.840.10008.1.2.1"]),
                                   (CTImageStorage, ["1.2.826.0.1.3680043.9.7779.98"]),
                                   ("1.2.840.10008.1.1", ["1.2.840.10008.1.2"])])
    assert assoc.is_established
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
    assoc.release()
    assert accepted == {"1.2.840.10008.1.1"}
    assert rejected == {"1.2.826.0.1.3680043.9.7779.99", CTImageStorage}
    assert _echo(echoscu, listener.port).returncode == 0


def test_deidentification_refusal_is_a_failure_status(tmp_path, key):
    profile = DeidProfile(safe_private=(SafePrivateTag("LEAKY", 0x0029, 0x10),))
    lst = Listener(tmp_path / "store", port=free_port(), deidentifier=Deidentifier(key, profile)).start()
    try:
        from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

        _, files = make_study(tmp_path / "src", 1)
        ds = pydicom.dcmread(files[0])
        ds.private_block(0x0029, "LEAKY", create=True).add_new(0x10, "LO", "PID-778812")
        assoc = _assoc(lst.port, [(CTImageStorage, [ExplicitVRLittleEndian])])
        status = assoc.send_c_store(ds)
        assoc.release()
        assert status.Status == STATUS["deid_refused"]
    finally:
        stats = lst.stop(grace=2)
    assert stats.failed == 1 and not list((tmp_path / "store").rglob("*.dcm"))


def test_restart_after_crash_reingests_stored_files(tmp_path):
    store = tmp_path / "store"
    (store / "a" / "b").mkdir(parents=True)
    (store / "a" / "b" / "x.dcm").write_bytes(b"stored before the crash")
    (store / ".listener-dirty").touch()
    (store / ".partial").mkdir()
    (store / ".partial" / "half.tmp").write_bytes(b"never acknowledged")
    got = []
    lst = Listener(store, port=free_port(), on_files=got.extend, batch_seconds=0.1).start()
    lst.stop(grace=1)
    assert got == [str(store / "a" / "b" / "x.dcm")]
    assert not (store / ".partial").exists() and not (store / ".listener-dirty").exists()


def test_cli_listen_ingests_into_workspace_and_stops_cleanly_on_sigterm(workspace, storescu, tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "sobre", "listen", "--aet", "SOBRE", "--port", str(port),
                             "-w", str(workspace.root), "--batch", "2"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "listening as SOBRE" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, "listener did not start"
            line = proc.stderr.readline()
        _, files = make_study(tmp_path / "src", 5, tag="3")
        run = subprocess.run([storescu, "-aec", "SOBRE", "127.0.0.1", str(port), *map(str, files)],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "5 received, 0 refused, 5 ingested" in err
    stored = sorted((workspace.root / "incoming" / "deidentified").rglob("*.dcm"))
    assert len(stored) == 5  # de-identified: the only DICOM a de-identifying workspace keeps
    assert not [p for p in (workspace.root / "incoming").rglob("*.dcm") if p not in stored]  # spool emptied
    records = workspace.records()
    assert len(records) == 1 and records[0]["n_files"] == 5 and records[0]["subject_id"].startswith("SUBJ-")
    for p in stored:
        assert b"PID-77881" not in p.read_bytes()


def test_worker_mode_quarantines_what_deidentification_refuses(tmp_path, key):
    """With de-identification in a worker process the answer comes first; a refusal is quarantined."""
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    profile = DeidProfile(safe_private=(SafePrivateTag("LEAKY", 0x0029, 0x10),))
    got = []
    lst = Listener(tmp_path / "store", port=free_port(), deidentifier=Deidentifier(key, profile),
                   on_files=got.extend, deid_workers=1, batch_seconds=0.2).start()
    try:
        _, files = make_study(tmp_path / "src", 2)
        bad = pydicom.dcmread(files[0])
        bad.private_block(0x0029, "LEAKY", create=True).add_new(0x10, "LO", "PID-778812")
        assoc = _assoc(lst.port, [(CTImageStorage, [ExplicitVRLittleEndian])])
        statuses = [assoc.send_c_store(bad).Status, assoc.send_c_store(pydicom.dcmread(files[1])).Status]
        assoc.release()
    finally:
        stats = lst.stop(grace=5)
    assert statuses == [0, 0]
    assert stats.received == 2 and len(got) == 1 and len(stats.refused_after_ack) == 1
    assert "verification failed" in stats.refused_after_ack[0][1]
    assert len(list((tmp_path / "store" / ".refused").iterdir())) == 1
    assert not list((tmp_path / "store" / ".spool").iterdir())
    assert b"PID-778812" not in Path(got[0]).read_bytes()


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
def test_part10_bytes_are_pynetdicom_encoded_dataset(ts):
    """The stored/spooled file of a received instance: the same bytes as pynetdicom would write."""
    from io import BytesIO

    from pynetdicom import build_context, evt
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event

    from sobre.pacs._listener import _part10

    req = C_STORE()
    req.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    req.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.9.7779.5.1"  # odd length: padded
    req.DataSet = BytesIO(b"\x08\x00\x18\x00UI\x1e\x00" + b"1.2.826.0.1.3680043.9.7779.5.1\x00"[:30])
    cx = build_context("1.2.840.10008.5.1.4.1.1.2", ts)
    event = Event(None, evt.EVT_C_STORE, {"request": req, "context": cx.as_tuple})
    cx_ts = pydicom.uid.UID(ts)
    assert _part10(event, cx_ts) == event.encoded_dataset(include_meta=True)


def _thorough_verdict(buf: bytes, ts):
    """What the listener's pydicom path concludes: the UIDs, or None when it refuses the instance."""
    from io import BytesIO

    from pynetdicom.dsutils import decode

    from sobre.errors import InputError
    from sobre.image import check_pixel_length, check_raw_lengths

    try:
        ds = decode(BytesIO(buf), ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
        if len(ds) == 0:
            return None
        check_raw_lengths(ds)
        sop = str(ds.get("SOPInstanceUID", "") or "").strip()
        sop_class = str(ds.get("SOPClassUID", "") or "").strip()
        study = str(ds.get("StudyInstanceUID", "") or "no-study").strip()
        series = str(ds.get("SeriesInstanceUID", "") or "no-series").strip()
        if not sop or not sop_class:
            return None
        check_pixel_length(ds, transfer_syntax=ts)
    except (InputError, Exception):  # noqa: BLE001 - any refusal
        return None
    return sop_class, sop, study, series


def test_quick_check_vouches_only_for_what_pydicom_accepts(tmp_path):
    """The listener's byte-level check of a received dataset (used when the dataset is stored as
    received) accepts an instance only if decoding it with pydicom would, with the same UIDs; on
    real files, truncated and damaged copies of them."""
    import random
    import warnings
    from pathlib import Path

    from pynetdicom.dsutils import split_dataset

    from sobre.image import received_facts as _quick_facts

    _, made = make_study(tmp_path / "src", 2)
    bundled = Path(pydicom.__file__).parent / "data" / "test_files"  # pydicom's own test files
    paths = list(made) + sorted(p for p in bundled.rglob("*.dcm") if p.stat().st_size < 1_000_000)
    rng = random.Random(7)
    vouched = checked = 0
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
                ts = meta.TransferSyntaxUID
                _, offset = split_dataset(path)
            except Exception:  # noqa: BLE001 - no file meta: not something a peer sends as is
                continue
            whole = Path(path).read_bytes()[offset:]
            variants = [whole] + [whole[:rng.randrange(0, len(whole))] for _ in range(6)]
            for _ in range(4):
                damaged = bytearray(whole)
                at = rng.randrange(0, max(1, min(len(whole), 2000)))
                damaged[at:at + 4] = bytes(rng.randrange(256) for _ in range(4))
                variants.append(bytes(damaged))
            for buf in variants:
                quick = _quick_facts(buf, ts)
                checked += 1
                if quick is not None:
                    vouched += 1
                    assert quick == _thorough_verdict(buf, ts), (path.name, len(buf))
    assert checked > 500
    # the common case really takes the quick path: complete instances as sent by a modality
    for path in made:
        _, offset = split_dataset(path)
        buf = Path(path).read_bytes()[offset:]
        ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert _quick_facts(buf, ts) is not None
    assert vouched > 50


def test_connections_are_polled_faster_than_pynetdicom_default(listener):
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    from sobre.pacs._net import _DUL_POLL

    assoc = _assoc(listener.port, [(CTImageStorage, [ExplicitVRLittleEndian])])
    assert assoc.is_established
    try:
        (server_side,) = listener._ae.active_associations
        assert server_side.dul._run_loop_delay == _DUL_POLL < 0.001
    finally:
        assoc.release()


# Benchmark mutants (bench/bench_fuzz.py) that the listener acknowledged although the stored instance
# did not read back: a damaged length inside a sequence of an implicit-VR file (the US Region
# Calibration Module of gdcm-US-ALOKA-16.dcm), which the quick check skipped as opaque bytes.
STORED_UNREADABLE = [("pydicom-data:gdcm-US-ALOKA-16.dcm", "bad_length", 4292223782),  # (0018,601E) 4 -> 5
                     ("pydicom-data:gdcm-US-ALOKA-16.dcm", "bad_length", 2342325071),  # (0018,6024) 2 -> 1
                     ("pydicom-data:gdcm-US-ALOKA-16.dcm", "bad_length", 1581820866)]  # item length undefined


def test_what_the_listener_acknowledges_reads_back_completely(tmp_path):
    """Success only for an instance that reads back with a full pydicom read (every element, inside
    sequences too); anything else gets a failure status and nothing is kept. On the benchmark's
    mutants and on damaged lengths and VRs of real files with sequences (implicit and explicit VR)."""
    import warnings

    from fuzz import mutants as M
    from pynetdicom import AE
    from pynetdicom.dsutils import split_dataset

    keys = ["pydicom-data:gdcm-US-ALOKA-16.dcm", "pydicom:rtdose.dcm", "pydicom-data:emri_small.dcm",
            "pydicom:examples_ybr_color.dcm"]
    if any(M.source_path(k) is None for k in keys):
        pytest.skip("sample files are not fetched (sobre samples fetch)")
    cases = list(STORED_UNREADABLE) + [(k, kind, seed) for k in keys for kind in ("bad_length", "bad_vr")
                                       for seed in range(12)]
    lst = Listener(tmp_path / "store", port=free_port(), batch_seconds=0.2)  # stored as received
    lst.start()
    ae = AE(ae_title="TESTSCU")
    sent = acknowledged = refused = 0
    try:
        for key, kind, seed in cases:
            try:
                m = M.make(key, kind, seed)
            except M.NotApplicable:
                continue
            path = tmp_path / f"{m.name.replace(':', '_')}.dcm"
            path.write_bytes(m.data)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    meta, _ = split_dataset(path)
                    sop_class, ts = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
                    ae.requested_contexts = []
                    ae.add_requested_context(sop_class, [ts])
                except Exception:  # noqa: BLE001, S112 - the file meta itself is damaged: not sendable
                    continue
                assoc = ae.associate("127.0.0.1", lst.port, ae_title="SOBRE")
                if not assoc.is_established:
                    continue
                before = set(lst.store_dir.rglob("*.dcm"))
                try:
                    rsp = assoc.send_c_store(path)
                except Exception:  # noqa: BLE001 - pynetdicom could not read or send it: nothing to test
                    assoc.abort()
                    continue
                assoc.release()
                sent += 1
                new = set(lst.store_dir.rglob("*.dcm")) - before
                status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
                if status == 0:
                    acknowledged += 1
                    assert len(new) == 1, (m.name, new)
                    stored = pydicom.dcmread(new.pop())
                    for _ in stored.iterall():  # a full read, every element decoded
                        pass
                    for p in lst.store_dir.rglob("*.dcm"):
                        p.unlink()
                else:
                    refused += 1
                    assert status in STATUS.values() and not new, (m.name, status, new)
                    if (key, kind, seed) in STORED_UNREADABLE:
                        assert status == STATUS["cannot_understand"]
    finally:
        lst.stop(grace=2)
    assert sent > 50 and acknowledged and refused
