"""Fuzz runner: feeds mutants through ``sobre info``, ``export``, ``deid``, ``ingest`` and the C-STORE listener.

Each mutant is handled by a long-lived worker process (many mutants per worker, to avoid the
interpreter start per file) that runs the CLI in-process (``sobre.cli.main([...])``) and the
listener in-process (``sobre.pacs.Listener`` on port 0, pynetdicom as the SCU). The parent process
watches every worker: a stage that runs past ``stage_timeout`` (5 s of its own time: wall time less the
time the worker waited for a CPU, from Linux schedstat, so a loaded machine does not make hangs), a
resident set over ``memory_limit`` (1 GiB; polled every 20 ms, and measured per stage from the
kernel's peak-RSS counter, reset before each stage) or a worker that dies (segfault, abort) is charged
to the mutant and the stage it was in (with every thread's Python stack, dumped by faulthandler just
before the kill); the worker is replaced. A kill is re-tried once in a fresh worker and counted
only when it happens again (``confirmed``), so that a loaded machine does not invent hangs.

Stages, in this order, for every mutant (file ``M``):

``info``      ``sobre info M --json``
``export``    ``sobre export M --to out.nii.gz --json``; when ``info`` exited 0 this must succeed
              (every exit-0 file decodes)
``deid``      ``sobre deid M OUT --key-file K``; an output must read back (pydicom) and, when ``M``
              decodes, decode too
``ingest``    ``sobre ingest -w WS M --json`` into a copy of a workspace that already holds the
              original sample files; afterwards the originals' series (status, files, shape,
              spacing, orientation), their files and sha256 must be unchanged; a mutant placed in a
              series with status ok must load; a mutant catalogued in no series must be named in
              the report
``listener``  C-STORE of ``M``'s bytes as they are (pynetdicom, chunked from the file) to a
              listener storing as received (even mutant indices) or de-identifying in memory (odd);
              the answer must be a status of the listener's documented set (no handler exception),
              and a stored instance must read back

Outcome per stage: ``ok`` (accepted), ``refused`` (clean refusal: exit 1/2 or a failure status,
message naming the file), ``n/a`` (not applicable, e.g. the SCU cannot send a file without file
meta), or a failure class from :data:`FAILURES`.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("info", "export", "deid", "ingest", "listener")

# Ingest refusals that keep the catalog consistent (an instance UID another file already claims, a file
# that would change a catalogued volume, an instance without a UID): a decodable file may get them.
CATALOG_REFUSALS = {"uid-conflict", "series-conflict", "no-instance-uid", "duplicate"}

FAILURES = {
    "internal_error": "exit status 3 / 'internal error' on stderr",
    "traceback": "a Python traceback or a Rust panic message (stderr, log, or an exception escaping sobre.cli.main)",
    "hang": "a stage ran past the time limit (killed; confirmed in a fresh worker)",
    "memory": "peak resident memory over the limit, or MemoryError",
    "crash": "the worker process died (signal) while handling the mutant (confirmed in a fresh worker)",
    "undecodable_exit0": "info exited 0 but export of the same file failed (exit-0 file that does not decode)",
    "unnamed_refusal": "a refusal whose message does not name the input file",
    "unexpected_exit": "an exit status outside 0/1/2 (1 only for deid)",
    "geometry_fallback": "the unmodified file has patient coordinates (LPS); the mutant is accepted (exit 0) in pixel "
                         "coordinates without a warning",
    "workspace_changed": "the originals' series, files or hashes changed after ingesting the mutant",
    "ingest_ok_undecodable": "ingest put the mutant in a series with status ok that does not load",
    "ingest_silent_drop": "the mutant is catalogued in no series (or not at all) and no message names it",
    "inconsistent_verdict": "export decodes the mutant (exit 0) but ingest refuses it as unreadable (its SOP Instance "
                            "UID is not one already catalogued)",
    "deid_output_unreadable": "deid exited 0 but its output does not read back / decode",
    "input_modified": "a command changed the bytes of its input file (checked after every stage)",
    "listener_exception": "the listener's handler raised (pynetdicom logged an exception)",
    "listener_no_status": "the listener aborted or did not answer (no status)",
    "listener_down": "the listener did not accept an association",
    "listener_stored_unreadable": "success status but the stored instance is missing or does not read back",
}


# ========================================================================================== worker side

class _Worker:
    """Runs in the worker process: sets up once, then handles tasks read from stdin."""

    def __init__(self, cfg: dict, proto) -> None:
        import logging

        self.cfg = cfg
        self.proto = proto
        self.quiet = False
        self.root = Path(cfg["workdir"])
        self.root.mkdir(parents=True, exist_ok=True)
        self.capture_path = self.root / "capture.txt"
        self.capture_pos = 0
        self.log_records: list[str] = []
        handler = _ListHandler(self.log_records)
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
        import pydicom  # noqa: F401
        from pynetdicom import _config

        import sobre
        import sobre.cli

        _config.STORE_SEND_CHUNKED_DATASET = True
        self.sobre = sobre
        self.cli = sobre.cli
        # main() builds its argparse parser on every call (40 % of a mutant's time here, in gettext's
        # locale look-ups); the parser is not what is fuzzed, so the worker builds it once
        import functools

        sobre.cli.build_parser = functools.lru_cache(maxsize=1)(sobre.cli.build_parser)
        from sobre.privacy import load_or_create_key

        self.key_path = self.root / "fuzz.project.key"
        load_or_create_key(self.key_path)
        self.listeners = {}
        self.assocs: dict = {}
        self.contexts = {tuple(c) for c in cfg.get("contexts", [])}
        self._start_listeners()

    # -- listeners ---------------------------------------------------------------------------
    def _start_listeners(self) -> None:
        from sobre.pacs import Listener

        for mode in ("plain", "deid"):
            store = self.root / f"store-{mode}"
            shutil.rmtree(store, ignore_errors=True)
            deid = None
            if mode == "deid":
                from sobre.privacy import Deidentifier, DeidProfile, load_key

                deid = Deidentifier(load_key(self.key_path), DeidProfile())
            lst = Listener(store, port=0, deidentifier=deid, on_files=None, deid_workers=0)
            lst.start()
            self.listeners[mode] = lst

    # -- helpers ------------------------------------------------------------------------------
    def _stray(self) -> str:
        """What reached the process's stdout/stderr file descriptors since the last call."""
        try:
            with open(self.capture_path, "rb") as fh:
                fh.seek(self.capture_pos)
                data = fh.read()
                self.capture_pos += len(data)
        except OSError:
            return ""
        return data.decode("utf-8", "replace")

    def _cli(self, args: list[str]) -> dict:
        """Run ``sobre ARGS`` in-process: exit status, stdout, stderr (and a traceback if one escaped)."""
        import contextlib
        import io
        import warnings

        out, err = io.StringIO(), io.StringIO()
        tb = None
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rc = self.cli.main(args)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 2
            except BaseException as exc:  # noqa: BLE001 - escaped main(): a traceback reached the user
                if isinstance(exc, MemoryError):
                    tb = "MemoryError\n" + traceback.format_exc()
                else:
                    tb = traceback.format_exc()
                rc = None
        # what Sobre warned about (pydicom's complaints about values are left out); a user sees them on stderr
        sobre_warnings = sorted({f"{w.category.__name__}: {w.message}"[:300] for w in caught
                                 if w.category.__module__.startswith("sobre")})
        return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "escaped": tb,
                "seconds": round(time.perf_counter() - t0, 4), "warnings": sobre_warnings}

    def _debug_traceback(self, args: list[str]) -> str | None:
        """Re-run an internal error with ``--debug`` to learn where it was raised (the traceback text)."""
        r = self._cli(["--debug", *args])
        return r["escaped"]

    def _stage(self, name: str) -> None:
        _clear_peak()
        self.log_records.clear()
        self._stray()
        if not self.quiet:
            self.proto.write(json.dumps({"ev": "stage", "stage": name}) + "\n")
            self.proto.flush()

    def _judge_cli(self, res: dict, args: list[str], mutant: Path, *, allowed=(0, 2)) -> list[dict]:
        """Failure records for one CLI run (empty list: no failure)."""
        fails = []
        rc, err = res["rc"], res["stderr"]
        stray = self._stray()
        res["stray"] = stray[-2000:]
        if res["escaped"]:
            cls = "memory" if res["escaped"].startswith("MemoryError") or "MemoryError" in res["escaped"] \
                else "traceback"
            fails.append({"class": cls, "detail": _last_line(res["escaped"]), "traceback": res["escaped"][-6000:]})
            return fails
        if rc == 3 or "internal error" in err:
            tb = self._debug_traceback(args)
            cls = "memory" if "MemoryError" in err else "internal_error"
            fails.append({"class": cls, "detail": _first_error_line(err), "traceback": (tb or "")[-6000:]})
        elif rc not in allowed:
            fails.append({"class": "unexpected_exit", "detail": f"exit {rc}: {_first_error_line(err)}"})
        for text in (err, stray):
            if "Traceback (most recent call last)" in text:
                fails.append({"class": "traceback", "detail": _first_error_line(text),
                              "traceback": text[text.index("Traceback"):][-6000:]})
                break
            if "panicked at" in text:  # a native (Rust) decoder's panic message reaches the user's terminal
                at = text.index("panicked at")
                line = text[text.rfind("\n", 0, at) + 1:].split("\n", 2)
                fails.append({"class": "traceback", "detail": "Rust panic on stderr: " + " ".join(line[:2])[:300],
                              "traceback": text[max(0, at - 200):][-6000:]})
                break
        if rc in (1, 2) and rc in allowed and not fails and mutant.name not in err:
            fails.append({"class": "unnamed_refusal", "detail": _first_error_line(err)})
        return fails

    # -- one mutant ---------------------------------------------------------------------------
    def handle(self, task: dict) -> dict:
        path = Path(task["path"])
        self.task_sop = task.get("sop")
        work = self.root / "task"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        result: dict = {"stages": {}}
        st = result["stages"]
        digest0 = _sha256(path)

        # info
        self._stage("info")
        args = ["info", str(path), "--json"]
        r = self._cli(args)
        fails = self._judge_cli(r, args, path)
        info = None
        if r["rc"] == 0:
            try:
                info = json.loads(r["stdout"])
            except ValueError:
                info = None
        coord = None
        if isinstance(info, dict) and isinstance(info.get("images"), list):  # several images + problems
            info = info["images"]
        if isinstance(info, dict):
            coord = info.get("coordinate_system")
        elif isinstance(info, list) and info:
            coord = ",".join(sorted({str(i.get("coordinate_system")) for i in info}))
        info_warnings = r["warnings"]
        st["info"] = _outcome(r, fails, peak=_peak(), extra={"coordinate_system": coord,
                                                              "shape": _get(info, "shape"),
                                                              "dtype": _get(info, "dtype")})
        digest0 = self._input_intact(path, digest0, st["info"])
        info_ok = r["rc"] == 0 and not fails

        # export
        self._stage("export")
        out = work / "out.nii.gz"
        args = ["export", str(path), "--to", str(out), "--json"]
        r = self._cli(args)
        fails = self._judge_cli(r, args, path)
        if info_ok and r["rc"] != 0 and not any(f["class"] in ("internal_error", "traceback", "memory")
                                                 for f in fails):
            fails.append({"class": "undecodable_exit0",
                          "detail": f"info exit 0 (shape {_get(info, 'shape')}, dtype {_get(info, 'dtype')}); "
                                    f"export exit {r['rc']}: {_first_error_line(r['stderr'])}"})
        # geometry silently lost: the unmodified source is in patient coordinates (LPS), the mutant is
        # accepted in pixel coordinates, and neither info nor export warned about it
        if (info_ok and task.get("orig_coord") == "LPS" and coord == "pixel" and not info_warnings
                and not r["warnings"]):
            st["info"].setdefault("failures", []).append({
                "class": "geometry_fallback",
                "detail": f"unmodified file: coordinate_system LPS; mutant ({task.get('geometry_tag') or 'see params'}"
                          "): exit 0 with coordinate_system 'pixel', no warning"})
            st["info"]["outcome"] = "geometry_fallback"
        st["export"] = _outcome(r, fails, peak=_peak(), extra={"warnings": r["warnings"] or None})
        digest0 = self._input_intact(path, digest0, st["export"])
        decodes = r["rc"] == 0 and not fails

        # deid
        self._stage("deid")
        dout = work / "deid"
        args = ["deid", str(path), str(dout), "--key-file", str(self.key_path)]
        r = self._cli(args)
        fails = self._judge_cli(r, args, path, allowed=(0, 1, 2))
        if r["rc"] == 0 and not fails:
            outs = sorted(p for p in dout.rglob("*.dcm")) if dout.exists() else []
            problem = None
            if not outs:
                problem = "exit 0 but no output file"
            else:
                try:
                    import pydicom

                    pydicom.dcmread(outs[0])
                    if decodes:
                        self.sobre.load(outs[0]).array  # noqa: B018
                except BaseException as exc:  # noqa: BLE001 - also pyo3 PanicException (a BaseException)
                    _reraise_interrupts(exc)
                    problem = f"{type(exc).__name__}: {exc}"
            if problem:
                fails.append({"class": "deid_output_unreadable", "detail": problem[:500]})
        st["deid"] = _outcome(r, fails, peak=_peak())
        digest0 = self._input_intact(path, digest0, st["deid"])

        # ingest
        self._stage("ingest")
        st["ingest"] = ing = self._ingest(path, work)
        reason = ing.get("skip_reason") or ""
        if (decodes and ing["outcome"] == "ok" and ing.get("placed") == "skipped" and not ing.get("sop_of_original")
                and not ing.get("catalog_refusal")
                and not reason.startswith("same content") and "already catalogued" not in reason):
            ing.setdefault("failures", []).append({"class": "inconsistent_verdict",
                                                   "detail": f"export exit 0; ingest skipped it: {reason[:300]}"})
            ing["outcome"] = "inconsistent_verdict"
        digest0 = self._input_intact(path, digest0, ing)

        # listener
        self._stage("listener")
        st["listener"] = self._listener(path, task, decodes)
        self._input_intact(path, digest0, st["listener"])
        shutil.rmtree(work, ignore_errors=True)
        return result

    @staticmethod
    def _input_intact(path: Path, digest: str | None, stage: dict) -> str | None:
        """Record ``input_modified`` on ``stage`` if the file's bytes changed; returns the current digest."""
        now = _sha256(path)
        if now != digest:
            stage.setdefault("failures", []).append({"class": "input_modified",
                                                     "detail": f"sha256 {digest} -> {now}"})
            stage["outcome"] = "input_modified"
        return now

    def _ingest(self, path: Path, work: Path) -> dict:
        ws_dir = work / "ws"
        shutil.copytree(self.cfg["template"], ws_dir)
        args = ["ingest", "-w", str(ws_dir), str(path), "--json"]
        r = self._cli(args)
        fails = self._judge_cli(r, args, path)
        extra: dict = {}
        if r["rc"] == 0 and not fails:
            try:
                report = json.loads(r["stdout"])
            except ValueError:
                report = {}
            try:
                fails += self._check_workspace(ws_dir, path, report, extra)
            except Exception as exc:  # noqa: BLE001 - opening/reading the catalog failed after an ingest
                fails.append({"class": "traceback", "detail": f"reading the catalog after ingest: "
                                                              f"{type(exc).__name__}: {exc}",
                              "traceback": traceback.format_exc()[-6000:]})
        return _outcome(r, fails, peak=_peak(), extra=extra)

    def _check_workspace(self, ws_dir: Path, path: Path, report: dict, extra: dict) -> list[dict]:
        fails: list[dict] = []
        after = snapshot(ws_dir)
        base = self.cfg["baseline"]
        changed = []
        for key, rec in base["series"].items():
            now = after["series"].get(key)
            if now is None:
                changed.append(f"series {key} disappeared")
            elif now != rec:
                diff = {k: [rec.get(k), now.get(k)] for k in set(rec) | set(now) if rec.get(k) != now.get(k)}
                changed.append(f"series {key} changed: {diff}")
        for fpath, rec in base["files"].items():
            now = after["files"].get(fpath)
            if now is None:
                changed.append(f"file {fpath} no longer catalogued")
            elif (now["sha256"], now["series"]) != (rec["sha256"], rec["series"]):
                changed.append(f"file {Path(fpath).name}: series {rec['series']} -> {now['series']}"
                               + ("" if now["sha256"] == rec["sha256"] else ", sha256 changed"))
        mine = after["files"].get(str(path)) or after["files"].get(str(path.resolve()))
        extra["mutant_series"] = mine["series"] if mine else None
        extra["mutant_sop"] = mine.get("sop") if mine else None
        sop = (mine or {}).get("sop") or self.task_sop
        if changed:
            same_sop = bool(sop and sop in base["sops"])
            how = _how_changed(base, after)
            fails.append({"class": "workspace_changed",
                          "detail": f"[{how}] " + ("mutant carries the SOP Instance UID of a catalogued original; "
                                                   if same_sop else "") + "; ".join(changed)[:800],
                          "sub": how + (", same SOP Instance UID" if same_sop else "")})
        reasons = [s.get("reason", "") if isinstance(s, dict) else str(s[1] if len(s) > 1 else s)
                   for s in report.get("skipped", []) if path.name in json.dumps(s)]
        named = bool(reasons)
        if reasons:
            extra["skip_reason"] = reasons[0][:300]
        # refusals that protect the catalog's identity (not readability): a readable file may get them
        codes = {p.get("code") for p in report.get("problems", []) if isinstance(p, dict)
                 and path.name in str(p.get("path") or "")}
        extra["catalog_refusal"] = bool(codes & CATALOG_REFUSALS)
        extra["sop_of_original"] = bool(sop and sop in base["sops"])
        if mine is None:
            if not named and not report.get("duplicates"):
                fails.append({"class": "ingest_silent_drop", "detail": "not catalogued, not in report.skipped"})
            extra["placed"] = "skipped" if named else "absent"
            return fails
        if mine["series"] is None:
            problems = json.dumps(report.get("problems", []))
            if not named and (not mine.get("series_uid") or mine["series_uid"] not in problems):
                fails.append({"class": "ingest_silent_drop",
                              "detail": f"file row in no series (series_uid {mine.get('series_uid')}); "
                                        "neither skipped nor a problem names it"})
            extra["placed"] = "no series"
            return fails
        srec = after["series"].get(mine["series"])
        extra["placed"] = f"series status {srec and srec.get('status')}"
        if srec and srec.get("status") == "ok":
            try:
                from sobre.catalog import Workspace

                ws = Workspace.open(ws_dir)
                try:
                    ws.load(mine["series"]).array  # noqa: B018
                finally:
                    ws.close()
            except BaseException as exc:  # noqa: BLE001 - also pyo3 PanicException (a BaseException)
                _reraise_interrupts(exc)
                fails.append({"class": "ingest_ok_undecodable",
                              "detail": f"series {mine['series']} status ok; load: {type(exc).__name__}: "
                                        f"{str(exc)[:300]}"})
        return fails

    def _association(self, mode: str, sop_class: str, ts: str):
        return _association_cache_method(self, mode, sop_class, ts)

    def _listener(self, path: Path, task: dict, decodes: bool) -> dict:
        mode = "plain" if task["index"] % 2 == 0 else "deid"
        lst = self.listeners[mode]
        t0 = time.perf_counter()
        extra: dict = {"mode": mode}
        fails: list[dict] = []
        try:
            from pydicom import dcmread
            from pynetdicom.dsutils import split_dataset

            meta, _ = split_dataset(path)
            sop_class = str(meta.MediaStorageSOPClassUID)
            ts = str(meta.TransferSyntaxUID)
            sop = str(meta.MediaStorageSOPInstanceUID)
            bad = [u for u in (sop_class, ts, sop) if not _UID.match(u)]
            if bad:  # pynetdicom's SCU thread dies encoding such a UID and the SCU then waits forever
                raise ValueError(f"file meta UID {bad[0]!r} is not a valid UID")
        except Exception as exc:  # noqa: BLE001 - the SCU cannot send this file: nothing to test
            return {"outcome": "n/a", "detail": f"not sendable: {type(exc).__name__}: {str(exc)[:200]}",
                    "seconds": round(time.perf_counter() - t0, 4), "peak_rss_mb": _peak()}
        try:
            assoc = self._association(mode, sop_class, ts)
        except _NotSendable as exc:
            return {"outcome": "n/a", "detail": str(exc), "peak_rss_mb": _peak(),
                    "seconds": round(time.perf_counter() - t0, 4), "mode": mode}
        before = set(_stored(lst.store_dir))
        status = None
        if assoc is None:
            fails.append({"class": "listener_down", "detail": "the listener did not accept an association"})
        else:
            try:
                rsp = assoc.send_c_store(path)
                status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
            except Exception as exc:  # noqa: BLE001 - the SCU could not read/encode/send it
                return {"outcome": "n/a", "detail": f"SCU error: {type(exc).__name__}: {str(exc)[:200]}",
                        "peak_rss_mb": _peak(), "seconds": round(time.perf_counter() - t0, 4), "mode": mode}
            if status is None and assoc.is_established:
                # pynetdicom (the SCU) did not send: e.g. a retired SOP class it has no service for
                scu = [m for m in self.log_records if "pynetdicom" in m]
                return {"outcome": "n/a", "detail": "SCU did not send: " + (scu[-1][:200] if scu else "?"),
                        "peak_rss_mb": _peak(), "seconds": round(time.perf_counter() - t0, 4), "mode": mode}
        logs = list(self.log_records)
        stray = self._stray()
        extra["status"] = None if status is None else f"0x{status:04X}"
        at = [i for i, m in enumerate(logs) if "Exception in" in m]
        handler_exc = [logs[i] for i in at]
        if handler_exc:  # pynetdicom logs the message, then the exception with its traceback
            fails.append({"class": "listener_exception", "detail": handler_exc[0][:300],
                          "traceback": "\n".join(logs[at[0]:at[0] + 3])[-6000:]})
        logged_tb = [m for m in logs if "Traceback (most recent call last)" in m]
        if not handler_exc and (logged_tb or "Traceback (most recent call last)" in stray or "panicked at" in stray):
            text = (logged_tb or [stray])[0]
            fails.append({"class": "traceback", "detail": "traceback text in the listener's log/output: "
                                                          + _first_error_line(text)[:250],
                          "traceback": text[-6000:]})
        from sobre.pacs import STATUS

        if not fails and status is None and assoc is not None:
            fails.append({"class": "listener_no_status",
                          "detail": "no C-STORE response; association " +
                                    ("aborted" if assoc.is_aborted else "released" if assoc.is_released else "lost")})
        new = sorted(set(_stored(lst.store_dir)) - before)
        if status == 0 and not fails:
            if not new:
                fails.append({"class": "listener_stored_unreadable", "detail": "success but nothing stored"})
            else:
                try:
                    ds = dcmread(new[0])
                    for _ in ds.iterall():
                        pass
                    if mode == "deid" and decodes:
                        self.sobre.load(new[0]).array  # noqa: B018
                except BaseException as exc:  # noqa: BLE001 - also pyo3 PanicException (a BaseException)
                    _reraise_interrupts(exc)
                    fails.append({"class": "listener_stored_unreadable",
                                  "detail": f"{type(exc).__name__}: {str(exc)[:300]}"})
        elif status is not None and status != 0 and status not in STATUS.values() and not fails:
            fails.append({"class": "listener_exception", "detail": f"undocumented status 0x{status:04X}"})
        for p in new:
            try:
                p.unlink()
            except OSError:
                pass
        refusal = [m for m in logs if "refused" in m]
        if refusal:
            extra["message"] = refusal[0][:300]
        outcome = "ok" if status == 0 else "refused"
        if fails:
            outcome = fails[0]["class"]
        return {"outcome": outcome, "failures": fails, "seconds": round(time.perf_counter() - t0, 4),
                "peak_rss_mb": _peak(), **extra}


class _NotSendable(Exception):
    pass


def _association_cache_method(self, mode: str, sop_class: str, ts: str):
    """An established association to listener ``mode`` whose contexts include (SOP class, transfer syntax).

    One association per listener proposes the (SOP class, transfer syntax) of every source (kept open
    and re-opened when a mutant ended it); other pairs (mutated UIDs) get a short-lived one. Returns
    None when the listener does not associate at all (it is down); raises :class:`_NotSendable` when
    it works but does not accept this pair (the listener's documented scope, not a failure).
    """
    from pynetdicom import AE

    pair = (sop_class, ts)
    main = pair in self.contexts
    key = (mode, "main") if main else (mode, sop_class, ts)
    a = self.assocs.get(key)
    if a is not None and a.is_established:
        if any(cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == ts for cx in a.accepted_contexts):
            return a
        raise _NotSendable(f"presentation context {sop_class} / {ts} not accepted")
    self.assocs.pop(key, None)
    if not main:
        for k in [k for k in self.assocs if len(k) == 3]:  # at most one short-lived association open
            try:
                self.assocs.pop(k).release()
            except Exception:  # noqa: BLE001
                pass
    ae = AE(ae_title="FUZZSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    try:
        for sc, t in (sorted(self.contexts) if main else [pair]):
            ae.add_requested_context(sc, [t])
    except Exception as exc:  # noqa: BLE001 - not a UID pynetdicom puts in a context
        raise _NotSendable(f"not sendable: {type(exc).__name__}: {str(exc)[:200]}") from None
    a = ae.associate("127.0.0.1", self.listeners[mode].port, ae_title="SOBRE")
    if not a.is_established:
        if a.is_rejected:
            raise _NotSendable("association rejected")
        # pynetdicom (the SCU) aborts by itself when no presentation context was accepted: the
        # listener is only "down" if a plain C-ECHO association fails too
        if _echo_ok(self.listeners[mode].port):
            raise _NotSendable(f"no presentation context accepted for {sop_class} / {ts}")
        return None
    self.assocs[key] = a
    if not any(cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == ts for cx in a.accepted_contexts):
        raise _NotSendable(f"presentation context {sop_class} / {ts} not accepted")
    return a


_UID = __import__("re").compile(r"^[0-9]+(\.[0-9]+)*$")


def _echo_ok(port: int) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title="FUZZSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context("1.2.840.10008.1.1")
    a = ae.associate("127.0.0.1", port, ae_title="SOBRE")
    if not a.is_established:
        return False
    try:
        st = a.send_c_echo()
        return st is not None and "Status" in st and int(st.Status) == 0
    finally:
        a.release()


class _ListHandler:
    """A logging handler (duck-typed subclass created lazily) collecting WARNING+ messages."""

    def __new__(cls, sink: list[str]):
        import logging

        class H(logging.Handler):
            def emit(self, record):
                try:
                    msg = f"{record.name}: {record.getMessage()}"
                    if record.exc_info:
                        msg += "\n" + "".join(traceback.format_exception(*record.exc_info))
                    sink.append(msg)
                except Exception:  # noqa: BLE001
                    pass

        h = H(level=logging.WARNING)
        return h


def _how_changed(base: dict, after: dict) -> str:
    """``altered``: an original volume now has other files or another status/shape/geometry (or lost a file);
    ``relabelled``: every original volume is intact, but some are now named by another ``uid#label``."""
    members: dict = defaultdict(set)
    for fpath, rec in base["files"].items():
        members[rec["series"]].add(fpath)
    relabelled = False
    for key, rec in base["series"].items():
        files = members.get(key, set())
        now_keys = {(after["files"].get(f) or {}).get("series") for f in files} if files else {key}
        if len(now_keys) != 1 or None in now_keys:
            return "altered"
        (now_key,) = now_keys
        if after["series"].get(now_key) != rec:
            return "altered"
        if files and any((after["files"].get(f) or {}).get("sha256") != base["files"][f]["sha256"] for f in files):
            return "altered"
        if now_key != key:
            relabelled = True
    # an original volume that gained the mutant: same record? n_files would differ, so "altered" above
    return "relabelled" if relabelled else "altered"


def _sha256(path: Path) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _reraise_interrupts(exc: BaseException) -> None:
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        raise exc


def _stored(store: Path) -> list[Path]:
    out = []
    for p in store.rglob("*.dcm"):
        rel = p.relative_to(store).parts
        if not any(part.startswith(".") for part in rel):
            out.append(p)
    return out


def _get(info, key):
    if isinstance(info, dict):
        return info.get(key)
    if isinstance(info, list):
        return [i.get(key) for i in info]
    return None


def _outcome(r: dict, fails: list[dict], *, peak: float | None, extra: dict | None = None) -> dict:
    if fails:
        outcome = fails[0]["class"]
    elif r["rc"] == 0:
        outcome = "ok"
    else:
        outcome = "refused"
    d = {"outcome": outcome, "rc": r["rc"], "seconds": r["seconds"], "peak_rss_mb": peak,
         "stderr_first": _first_error_line(r["stderr"])}
    if fails:
        d["failures"] = fails
    if extra:
        d.update({k: v for k, v in extra.items() if v is not None})
    return d


def _first_error_line(text: str) -> str:
    """The line a user would read first: 'internal error: ...' or 'error: ...', else the first line."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for prefix in ("internal error", "error:", "skipped"):
        for ln in lines:
            if ln.startswith(prefix):
                return ln[:400]
    for ln in lines:
        if "Warning" not in ln and not ln.startswith("warn"):
            return ln[:400]
    return lines[0][:400] if lines else ""


def _last_line(text: str) -> str:
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1].strip()[:400] if lines else ""


def _clear_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak() -> float | None:
    """Peak resident set (MB) since the last :func:`_clear_peak` (Linux VmHWM)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def snapshot(ws_dir: str | Path) -> dict:
    """Series records and file rows of a workspace: what must not change when a mutant is ingested.

    Read straight from the SQLite catalog (``series`` and ``file`` tables) with the standard library:
    opening a :class:`~sobre.catalog.Workspace` runs the migration check, ten times the cost.
    """
    import sqlite3

    db = Path(ws_dir) / "catalog.sqlite"
    if not db.exists():
        raise RuntimeError(f"{db} not found: the fuzz runner expects a workspace with the default SQLite catalog")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        def js(v):
            try:
                return json.loads(v) if isinstance(v, str) else v
            except ValueError:
                return v

        series, by_pk = {}, {}
        for pk, uid, label, status, n_files, shape, spacing, orientation, modality in con.execute(
                "SELECT id, series_uid, label, status, n_files, shape, spacing, orientation, modality FROM series"):
            key = f"{uid}#{label}"
            by_pk[pk] = key
            series[key] = {"status": status, "n_files": n_files, "shape": js(shape), "spacing": js(spacing),
                           "orientation": orientation, "modality": modality}
        files = {}
        for source_path, sha, series_pk, sop, series_uid in con.execute(
                "SELECT source_path, sha256, series_pk, sop_uid, series_uid FROM file"):
            files[source_path] = {"sha256": sha, "series": by_pk.get(series_pk), "sop": sop,
                                  "series_uid": series_uid}
    finally:
        con.close()
    return {"series": series, "files": files}


def _frozen_baseline(snap: dict) -> dict:
    """The part of a snapshot compared after each ingest (file rows without the sop/series_uid helpers)."""
    files = {p: {"sha256": v["sha256"], "series": v["series"]} for p, v in snap["files"].items()}
    sops = sorted({v["sop"] for v in snap["files"].values() if v.get("sop")})
    return {"series": snap["series"], "files": files, "sops": sops}


def template_main(job_path: str) -> int:
    """Build the template workspace (originals ingested) and print its snapshot and the sources' geometry."""
    import warnings

    import sobre
    from sobre.catalog import Workspace

    job = json.loads(Path(job_path).read_text())
    ws = Workspace.init(job["template"])
    report = ws.ingest(job["originals"], workers=1)
    ws.close()
    coords, contexts = {}, []
    for key, path in job["sources"].items():
        try:
            from pydicom.filereader import read_file_meta_info

            meta = read_file_meta_info(path)
            contexts.append([str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)])
        except Exception:  # noqa: BLE001
            pass
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                images = sobre.load_all(path, on_warning=lambda m: None)
            coords[key] = ",".join(sorted({im.coordinate_system for im in images}))
        except BaseException:  # noqa: BLE001 - an unreadable source has no geometry to lose
            coords[key] = None
    print(json.dumps({"report": report.to_dict(), "snap": snapshot(job["template"]), "coords": coords,
                      "contexts": contexts}))
    return 0


def worker_main(cfg_path: str) -> int:
    """Entry point of a worker process: JSON tasks on stdin, JSON events on the original stdout."""
    import faulthandler

    cfg = json.loads(Path(cfg_path).read_text())
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    cap = open(Path(cfg["workdir"]) / "capture.txt", "ab", buffering=0)
    os.dup2(cap.fileno(), 1)
    os.dup2(cap.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    faulthandler.enable(file=cap)
    faulthandler.register(signal.SIGUSR1, file=cap, all_threads=True)  # the parent asks before a kill
    w = _Worker(cfg, proto)
    # warm up: the first use of each command imports its modules (seconds under load), which would
    # otherwise count against the first mutant's stages
    try:
        from pydicom.data import get_testdata_file

        warm = Path(cfg["workdir"]) / "warm-up.dcm"
        shutil.copy(get_testdata_file("CT_small.dcm"), warm)
        w.quiet = True
        for i in (0, 1):  # both listeners
            w.handle({"index": i, "path": str(warm)})
    except Exception:  # noqa: BLE001, S110 - only a warm-up; real problems show on the mutants
        pass
    finally:
        w.quiet = False
    if cfg.get("as_limit_mb"):  # a safety net for the shared machine; the verdict uses the measured RSS
        import resource

        limit = int((_vm_size_mb() + cfg["as_limit_mb"]) * 1024 * 1024)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        proto.write(json.dumps({"ev": "ready", "pid": os.getpid()}) + "\n")
        proto.flush()
        for line in sys.stdin:
            task = json.loads(line)
            if task.get("op") == "stop":
                break
            try:
                res = w.handle(task)
                out = {"ev": "done", "result": res}
            except BaseException as exc:  # noqa: BLE001 - a harness error: report, do not die silently
                out = {"ev": "harness_error", "error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()[-4000:]}
            proto.write(json.dumps(out, default=str) + "\n")
            proto.flush()
    except BrokenPipeError:  # the parent is gone
        pass
    finally:
        for a in w.assocs.values():
            try:
                a.release()
            except Exception:  # noqa: BLE001, S110 - best effort on the way out
                pass
        for lst in w.listeners.values():
            try:
                lst.stop(grace=1)
            except Exception:  # noqa: BLE001, S110
                pass
        os._exit(0)  # leave even if a library thread (pynetdicom's servers) is still alive


def _vm_size_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ========================================================================================== parent side

@dataclass
class Config:
    n: int = 500
    seed: int = 20241125
    workers: int = 2
    stage_timeout: float = 5.0
    memory_limit_mb: float = 1024.0
    # RLIMIT_AS head-room above the worker's start-up size: only a safety net for the shared machine (a
    # 4 GB *virtual* allocation is not resident memory and must not be turned into a MemoryError here)
    as_limit_mb: float | None = 8192.0
    workdir: str | None = None
    controls: bool = True
    keep_examples: str | None = None  # folder to copy one mutant file per failure class into
    progress: bool = True
    code_label: str | None = None  # what code is tested, for the report (e.g. "git archive of HEAD abc1234")
    python: str = sys.executable
    env: dict = field(default_factory=dict)


class _Slot:
    """One worker process and the thread that drives it."""

    def __init__(self, runner: Runner, k: int) -> None:
        self.runner = runner
        self.k = k
        self.proc: subprocess.Popen | None = None
        self.buf = b""
        self.started = 0

    def start(self) -> None:
        r = self.runner
        wdir = Path(r.tmp) / f"w{self.k}-{self.started}"
        self.started += 1
        wdir.mkdir(parents=True, exist_ok=True)
        cfg = {"workdir": str(wdir), "template": str(r.template), "baseline": r.baseline,
               "as_limit_mb": r.cfg.as_limit_mb, "contexts": r.contexts}
        cfg_path = wdir / "config.json"
        cfg_path.write_text(json.dumps(cfg))
        env = dict(os.environ, **r.cfg.env)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(HERE.parent), env.get("PYTHONPATH", "")] if p)
        with open(wdir / "boot.txt", "wb") as boot:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([r.cfg.python, "-m", "fuzz.runner", "--worker", str(cfg_path)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=boot, env=env, cwd=str(wdir))
        self.buf = b""
        ev = self._read(timeout=120)
        if ev is None or ev.get("ev") != "ready":
            boot = (wdir / "boot.txt").read_text(errors="replace")[-3000:]
            cap = (wdir / "capture.txt").read_text(errors="replace")[-3000:] if (wdir / "capture.txt").exists() else ""
            self.kill()
            raise RuntimeError(f"fuzz worker did not start: {ev}\n{boot}\n{cap}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()
        self._close_pipes()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"op": "stop"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=20)
            except Exception:  # noqa: BLE001
                self.kill()
        self._close_pipes()
        self.proc = None

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout) if self.proc is not None else ():
            try:
                pipe.close()
            except OSError:  # a broken pipe to a killed worker
                pass

    def _read(self, timeout: float, *, watch_rss: bool = False) -> dict | None:
        """Next event line, or None on timeout/EOF; ``{'ev': 'rss'}`` when the RSS limit is crossed."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            if b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                try:
                    return json.loads(line)
                except ValueError:
                    continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], min(left, 0.02))
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return {"ev": "eof"}
                self.buf += chunk
            if watch_rss:
                rss = _rss_mb(self.proc.pid)
                if rss is not None and rss > self.runner.cfg.memory_limit_mb:
                    return {"ev": "rss", "rss_mb": rss}

    def run(self, task: dict) -> dict:
        """Send one task; returns the worker's result or a synthetic one for a kill/crash."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write((json.dumps(task) + "\n").encode())
        self.proc.stdin.flush()
        stage = "start"
        pid = self.proc.pid
        t_stage, delay0 = time.monotonic(), _run_delay(pid)
        timeline = {}
        limit = self.runner.cfg.stage_timeout
        while True:
            ev = self._read(0.25, watch_rss=True)
            if ev is None:
                # the time a stage takes is its wall time less the time its process waited for a CPU
                # (other programs on a loaded machine): a starved worker is not a hang
                wall = time.monotonic() - t_stage
                own = wall - (_run_delay(pid) - delay0)
                if own > limit or wall > limit * 12:
                    cap = self._dump_and_kill()
                    return {"killed": "hang", "stage": stage, "after_s": round(wall, 2),
                            "own_s": round(own, 2), "timeline": timeline, "capture": cap}
                continue
            kind = ev.get("ev")
            if kind == "stage":
                timeline[stage] = round(time.monotonic() - t_stage, 3)
                stage = ev["stage"]
                t_stage, delay0 = time.monotonic(), _run_delay(pid)
            elif kind == "done":
                return ev["result"]
            elif kind == "rss":
                cap = self._dump_and_kill()
                return {"killed": "memory", "stage": stage, "rss_mb": ev["rss_mb"], "capture": cap}
            elif kind == "eof":
                code = self.proc.wait()
                cap = self._capture_tail()
                self.proc = None
                return {"killed": "crash", "stage": stage, "returncode": code,
                        "signal": signal.Signals(-code).name if code < 0 else None, "capture": cap}
            elif kind == "harness_error":
                return {"harness_error": ev["error"], "traceback": ev.get("traceback"), "stage": stage}

    def _dump_and_kill(self) -> str:
        """Ask the worker for every thread's Python stack (faulthandler on SIGUSR1), then kill it."""
        try:
            os.kill(self.proc.pid, signal.SIGUSR1)
            time.sleep(0.5)
        except OSError:
            pass
        cap = self._capture_tail()
        self.kill()
        return cap

    def _capture_tail(self) -> str:
        try:
            wdirs = sorted(Path(self.runner.tmp).glob(f"w{self.k}-*"), key=lambda p: p.stat().st_mtime)
            return (wdirs[-1] / "capture.txt").read_text(errors="replace")[-8000:]
        except (OSError, IndexError):
            return ""


def _run_delay(pid: int) -> float:
    """Seconds the process's main thread has spent runnable but waiting for a CPU (Linux schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Runner:
    """A fuzz campaign: controls (unmodified sources) then ``cfg.n`` mutants, on ``cfg.workers`` workers."""

    def __init__(self, cfg: Config) -> None:
        from fuzz import mutants as M

        self.cfg = cfg
        self.M = M
        self.sources = M.sources_available()
        if not self.sources:
            raise RuntimeError("no sample file is available")
        self.keys = [s.key for s in self.sources]
        self.original_keys = M.originals(self.keys)
        self.tmp = cfg.workdir or tempfile.mkdtemp(prefix="sobre-fuzz-")
        Path(self.tmp).mkdir(parents=True, exist_ok=True)
        self.results: list[dict] = []
        self.controls: list[dict] = []
        self.lock = threading.Lock()
        self.done = 0

    # -- set-up -----------------------------------------------------------------------------
    def build_template(self) -> None:
        """A workspace holding the original sample files (one per SOP Instance UID), its snapshot, and the
        coordinate system ``sobre.load_all`` gives every unmodified source (for the geometry check)."""
        env = dict(os.environ, **self.cfg.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(HERE.parent), env.get("PYTHONPATH", "")] if p)
        tpl = Path(self.tmp) / "template"
        shutil.rmtree(tpl, ignore_errors=True)
        srcdir = Path(self.tmp) / "sources"
        srcdir.mkdir(exist_ok=True)
        files = {}
        for j, k in enumerate(self.keys):
            p = self.M.source_path(k)
            if k.startswith("derived-"):
                p = srcdir / f"source{j:03d}.dcm"
                p.write_bytes(self.M.load_source(k))
            files[k] = str(p)
        job = {"template": str(tpl), "originals": [files[k] for k in self.original_keys], "sources": files}
        job_path = Path(self.tmp) / "template-job.json"
        job_path.write_text(json.dumps(job))
        out = subprocess.run([self.cfg.python, "-m", "fuzz.runner", "--template", str(job_path)],
                             capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"could not build the template workspace:\n{out.stderr[-3000:]}")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        self.template = tpl
        self.contexts = sorted({tuple(c) for c in data["contexts"] if c})[:120]  # 128 contexts at most
        self.template_report = data["report"]
        self.baseline = _frozen_baseline(data["snap"])
        self.orig_coord = data["coords"]

    # -- tasks ------------------------------------------------------------------------------
    def _materialise(self, t: dict) -> dict:
        if t["control"]:
            k = t["source"]
            short = k.rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".dcm")
            d = Path(self.tmp) / "mutants"
            d.mkdir(exist_ok=True)
            path = d / f"control{t['index']:03d}-{short}.dcm"
            path.write_bytes(self.M.load_source(k))
            return {"index": t["index"], "path": str(path), "control": True, "sop": self.M.sop_uid(k),
                    "orig_coord": self.orig_coord.get(k),
                    "mutant": {"index": t["index"], "source": k, "kind": "none", "seed": None, "params": {}}}
        m = self.M.plan(self.cfg.seed, t["index"], self.sources)
        d = Path(self.tmp) / "mutants"
        d.mkdir(exist_ok=True)
        path = d / f"{m.name}.dcm"
        path.write_bytes(m.data)
        geometry = {"ImageOrientationPatient": "ImageOrientationPatient", "(0020,0037)": "ImageOrientationPatient",
                    "ImagePositionPatient": "ImagePositionPatient", "(0020,0032)": "ImagePositionPatient"}.get(
                        str(m.params.get("tag")))
        sop = _sop_of(m.data, self.M)
        task = {"index": m.index, "path": str(path), "control": False, "mutant": m.describe(), "sop": sop,
                "geometry_tag": geometry, "orig_coord": self.orig_coord.get(m.source)}
        return task

    # -- run --------------------------------------------------------------------------------
    def run(self) -> dict:
        t0 = time.perf_counter()
        load0 = os.getloadavg()
        real = {k: self.M.source_path(k) for k in self.keys}
        before = {k: _sha256(p) for k, p in real.items()}
        self.build_template()
        t_tpl = time.perf_counter() - t0
        slots = [_Slot(self, k) for k in range(self.cfg.workers)]
        # controls first: failures of the unmodified files, told apart from those the mutations make
        if self.cfg.controls:
            self._run_phase(slots, [{"control": True, "index": j, "source": k} for j, k in enumerate(self.keys)],
                            self.controls)
        t_ctl = time.perf_counter() - t0 - t_tpl
        self._run_phase(slots, [{"control": False, "index": i} for i in range(self.cfg.n)], self.results)
        for s in slots:
            s.stop()
        wall = time.perf_counter() - t0
        self.sources_changed = [k for k, p in real.items() if _sha256(p) != before[k]]
        self.report = self._report(wall, t_tpl, t_ctl, load0, os.getloadavg())
        return self.report

    def _run_phase(self, slots: list[_Slot], todo: list[dict], sink: list[dict]) -> None:
        queue = list(reversed(todo))
        total = len(todo)
        errors: list[BaseException] = []

        def drive(slot: _Slot) -> None:
            try:
                while True:
                    with self.lock:
                        if not queue:
                            return
                        t = queue.pop()
                    task = self._materialise(t)
                    res = self._run_one(slot, task)
                    with self.lock:
                        sink.append(res)
                        n = len(sink)
                    if self.cfg.progress and (n % 50 == 0 or n == total):
                        fails = sum(1 for r in sink if r.get("failures"))
                        print(f"\r  {'controls' if t['control'] else 'mutants'}: {n}/{total}, "
                              f"{fails} with failures", end="\n" if n == total else "", file=sys.stderr,
                              flush=True)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=drive, args=(s,), daemon=True) for s in slots]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        sink.sort(key=lambda r: r["mutant"]["index"])

    def _run_one(self, slot: _Slot, task: dict) -> dict:
        res = slot.run(task)
        rec = {"mutant": task["mutant"], "control": task["control"], "file": Path(task["path"]).name}
        if "killed" in res:
            # confirm in a fresh worker: a loaded machine must not invent hangs or memory blow-ups
            first = res
            res2 = slot.run(task)
            if "killed" in res2:
                cls = {"hang": "hang", "memory": "memory", "crash": "crash"}[res2["killed"]]
                detail = {"hang": f"stage {res2['stage']} still running after {self.cfg.stage_timeout:g} s "
                                  f"(twice; wall {res2.get('after_s')} s, less CPU wait {res2.get('own_s')} s)",
                          "memory": f"stage {res2['stage']} resident memory {res2.get('rss_mb', 0):.0f} MB > "
                                    f"{self.cfg.memory_limit_mb:.0f} MB (twice)",
                          "crash": f"worker died in stage {res2['stage']} (returncode {res2.get('returncode')}, "
                                   f"signal {res2.get('signal')}) twice"}[res2["killed"]]
                stage = res2["stage"] if res2["stage"] in STAGES else "info"
                rec["stages"] = {stage: {"outcome": cls, "failures": [{
                    "class": cls, "detail": detail, "traceback": res2.get("capture", "")[-4000:]}]}}
                rec["killed"] = {"first": {k: v for k, v in first.items() if k != "capture"},
                                 "second": {k: v for k, v in res2.items() if k != "capture"}}
            else:
                rec.update(res2)
                rec["unconfirmed_kill"] = {k: v for k, v in first.items() if k != "capture"}
        elif "harness_error" in res:
            rec["harness_error"] = res
        else:
            rec.update(res)
        # per-stage memory: the kernel's peak RSS, a completed stage over the limit is a failure too
        for name, st in (rec.get("stages") or {}).items():
            peak = st.get("peak_rss_mb")
            if peak and peak > self.cfg.memory_limit_mb and not any(f["class"] == "memory"
                                                                     for f in st.get("failures", [])):
                st.setdefault("failures", []).append({"class": "memory",
                                                      "detail": f"peak RSS {peak:.0f} MB in stage {name}"})
                st["outcome"] = "memory"
        rec["failures"] = [{"stage": name, **f} for name, st in (rec.get("stages") or {}).items()
                           for f in st.get("failures", [])]
        if self.cfg.keep_examples and rec["failures"]:
            self._keep(task, rec)
        try:
            os.unlink(task["path"])
        except OSError:
            pass
        return rec

    def _keep(self, task: dict, rec: dict) -> None:
        dest = Path(self.cfg.keep_examples)
        dest.mkdir(parents=True, exist_ok=True)
        with self.lock:
            for f in rec["failures"]:
                key = f"{f['stage']}-{f['class']}"
                if not any(dest.glob(f"{key}--*")):
                    shutil.copy(task["path"], dest / f"{key}--{Path(task['path']).name}")

    # -- report -----------------------------------------------------------------------------
    def _report(self, wall: float, t_tpl: float, t_ctl: float, load0, load1) -> dict:
        def table(records: list[dict]) -> dict:
            t: dict = {s: Counter() for s in STAGES}
            for r in records:
                for s in STAGES:
                    st = (r.get("stages") or {}).get(s)
                    t[s][st["outcome"] if st else "not run"] += 1
            return {s: dict(c) for s, c in t.items()}

        in_control = {(r["mutant"]["source"], f["stage"], f["class"]) for r in self.controls
                      for f in r.get("failures", [])}

        def classes(records: list[dict]) -> dict:
            by: dict = defaultdict(list)
            for r in records:
                for f in r.get("failures", []):
                    by[(f["stage"], f["class"])].append((r, f))
            out = {}
            for (stage, cls), items in sorted(by.items(), key=lambda kv: -len(kv[1])):
                r, f = items[0]
                subs = Counter(_kind_label(ri["mutant"]) for ri, fi in items)
                subclasses = Counter(fi["sub"] for _, fi in items if fi.get("sub"))
                out[f"{stage}/{cls}"] = {
                    "stage": stage, "class": cls, "count": len(items),
                    "mutants": len({ri["mutant"]["index"] for ri, _ in items}),
                    "source_fails_unmodified": sum(1 for ri, _ in items
                                                   if (ri["mutant"]["source"], stage, cls) in in_control
                                                   and not ri.get("control")),
                    "by_mutation": dict(subs.most_common()),
                    "subclasses": dict(subclasses.most_common()),
                    "sources": dict(Counter(ri["mutant"]["source"] for ri, _ in items).most_common(8)),
                    "example": _example(r, f, stage, self.cfg.seed),
                    "more_examples": [_example(ri, fi, stage, self.cfg.seed, short=True) for ri, fi in items[1:4]],
                }
            return out

        def timing(records: list[dict]) -> dict:
            t = {}
            for s in STAGES:
                secs = sorted(st["seconds"] for r in records
                              if (st := (r.get("stages") or {}).get(s)) and st.get("seconds") is not None)
                peaks = sorted(st["peak_rss_mb"] for r in records
                               if (st := (r.get("stages") or {}).get(s)) and st.get("peak_rss_mb"))
                if secs:
                    t[s] = {"n": len(secs), "median_s": secs[len(secs) // 2],
                            "p99_s": secs[min(len(secs) - 1, int(len(secs) * 0.99))], "max_s": secs[-1],
                            "peak_rss_max_mb": peaks[-1] if peaks else None}
            return t

        harness = [r for r in self.results + self.controls if r.get("harness_error")]
        mutant_fail = [r for r in self.results if r.get("failures")]
        return {
            "config": {"n": self.cfg.n, "seed": self.cfg.seed, "workers": self.cfg.workers,
                       "stage_timeout_s": self.cfg.stage_timeout, "memory_limit_mb": self.cfg.memory_limit_mb,
                       "python": self.cfg.python, "sobre": _sobre_origin(self.cfg)},
            "sources": [{"key": s.key, "note": s.note, "original_in_workspace": s.key in self.original_keys}
                        for s in self.sources],
            "sample_files_changed": self.sources_changed,  # the real sample files themselves (must be [])
            "template_ingest": {k: self.template_report.get(k) for k in ("new", "series_new", "skipped", "problems")},
            "runtime": {"wall_s": round(wall, 1), "template_s": round(t_tpl, 1), "controls_s": round(t_ctl, 1),
                        "mutants_s": round(wall - t_tpl - t_ctl, 1),
                        "mutants_per_s": round(self.cfg.n / max(wall - t_tpl - t_ctl, 1e-9), 2),
                        "loadavg_start": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in load1],
                        "cpus": os.cpu_count(),
                        "stages": timing(self.results)},
            "mutants": {"total": len(self.results), "with_failures": len(mutant_fail),
                        "kinds": dict(Counter(r["mutant"]["kind"] for r in self.results)),
                        "outcomes": table(self.results), "failure_classes": classes(self.results),
                        "unconfirmed_kills": [{"mutant": r["mutant"]["index"], **r["unconfirmed_kill"]}
                                              for r in self.results if r.get("unconfirmed_kill")]},
            "controls": {"total": len(self.controls),
                         "with_failures": sum(1 for r in self.controls if r.get("failures")),
                         "outcomes": table(self.controls), "failure_classes": classes(self.controls)},
            "harness_errors": [{"mutant": r["mutant"], "error": r["harness_error"]} for r in harness],
            "records": self.results,
            "control_records": self.controls,
        }


def _sop_of(data: bytes, M) -> str | None:
    """The SOP Instance UID a mutant carries (pydicom, forced; else the walker), None if unreadable."""
    import io
    import warnings

    try:
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True, specific_tags=["SOPInstanceUID"])
            uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        if uid:
            return uid
    except Exception:  # noqa: BLE001
        pass
    try:
        lay = M.parse(data, lenient=True)
        occ = [i for i in lay.find(M.KW["SOPInstanceUID"], meta=False) if lay.elems[i].depth == 0]
        return M._read_value(lay, occ[0], "UI") if occ else None
    except Exception:  # noqa: BLE001 - too damaged to walk: the catalog row (if any) tells
        return None


def _kind_label(m: dict) -> str:
    p = m.get("params") or {}
    if m["kind"] == "set_value":
        return f"set_value:{p.get('tag')}"
    if m["kind"] in ("truncate", "flip"):
        return f"{m['kind']}:{p.get('where') or p.get('region')}"
    if m["kind"] in ("deflate", "fragments", "garbage", "dup_uid"):
        return f"{m['kind']}:{p.get('how')}"
    if m["kind"] == "delete":
        return f"delete:{p.get('tag')}"
    return m["kind"]


_CMD = {
    "info": "sobre info {f} --json",
    "export": "sobre export {f} --to out.nii.gz --json",
    "deid": "sobre deid {f} OUT --key-file KEY",
    "ingest": "sobre ingest -w WS {f} --json   (WS: a workspace holding the original sample files)",
    "listener": "C-STORE of {f} (pynetdicom, chunked) to sobre.pacs.Listener",
}


def _frames(tb: str | None) -> list[tuple[str, str, str]]:
    """(file, line, function) of a traceback, innermost last.

    Understands Python tracebacks and faulthandler dumps (``most recent call first``; the thread that
    runs ``worker_main`` is the one that was handling the mutant).
    """
    import re

    if not tb:
        return []
    pat = re.compile(r'File "([^"]+)", line (\d+),? in (\S+)')
    if "(most recent call first)" in tb:
        blocks = re.split(r"\n(?=(?:Current thread|Thread) 0x[0-9a-f]+)", tb)
        main = [b for b in blocks if "worker_main" in b]
        block = main[-1] if main else blocks[-1]
        return list(reversed(pat.findall(block)))
    return pat.findall(tb)


def _src_function(tb: str | None) -> str | None:
    """``sobre/module.py:line in function`` of the innermost frame inside the sobre package."""
    inside = [(f, ln, fn) for f, ln, fn in _frames(tb) if "/sobre/" in f and "site-packages" not in f]
    if not inside:
        return None
    f, ln, fn = inside[-1]
    return f"{f[f.rindex('/sobre/') + 1:]}:{ln} in {fn}"


def _raised_at(tb: str | None) -> str | None:
    """The innermost frame of the traceback (maybe in a library)."""
    frames = [fr for fr in _frames(tb) if "fuzz/runner.py" not in fr[0]]
    if not frames:
        return None
    f, ln, fn = frames[-1]
    for marker in ("site-packages/", "/src/"):
        if marker in f:
            f = f[f.index(marker) + len(marker):]
    return f"{f}:{ln} in {fn}"


def _example(r: dict, f: dict, stage: str, seed: int, *, short: bool = False) -> dict:
    m = r["mutant"]
    regen = (f".venv/bin/python tests/fuzz/mutants.py regen --source {m['source']} --kind {m['kind']} "
             f"--seed {m['seed']} --out /tmp/{r['file']}" if m["kind"] != "none"
             else f"(unmodified sample file {m['source']})")
    st = (r.get("stages") or {}).get(stage, {})
    ex = {"mutant": m["index"], "file": r["file"], "source": m["source"], "kind": m["kind"], "seed": m["seed"],
          "params": m.get("params"), "detail": f.get("detail"), "rc": st.get("rc"),
          "stderr_first": st.get("stderr_first"), "src_function": _src_function(f.get("traceback")),
          "raised_at": _raised_at(f.get("traceback"))}
    if not short:
        ex["regenerate"] = regen
        ex["command"] = _CMD[stage].format(f=f"/tmp/{r['file']}")
        ex["plan"] = f".venv/bin/python tests/fuzz/mutants.py show --seed {seed} --index {m['index']}"
        ex["traceback_tail"] = (f.get("traceback") or "")[-1500:]
    return ex


def _sobre_origin(cfg: Config) -> dict:
    env = dict(os.environ, **cfg.env)
    try:
        out = subprocess.run([cfg.python, "-c", "import sobre; print(sobre.__file__)"], capture_output=True,
                             text=True, env=env, timeout=60, check=False)
        path = out.stdout.strip()
    except Exception:  # noqa: BLE001
        path = "?"
    info = {"module": path}
    if cfg.code_label:
        info["label"] = cfg.code_label
    try:
        root = Path(path).resolve().parents[2]
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src"],
                                   capture_output=True, text=True, timeout=30, check=False).stdout.strip()
            info.update(commit=head.stdout.strip(), src_modified_files=len(dirty.splitlines()))
    except Exception:  # noqa: BLE001
        pass
    return info


def summary_text(rep: dict) -> str:
    """A human-readable summary: outcome table per stage, failure classes with one example each, timings."""
    lines = []
    mu = rep["mutants"]
    rt = rep["runtime"]
    cfg = rep["config"]
    lines.append(f"sobre fuzz: {mu['total']} mutants of {len(rep['sources'])} real sample files "
                 f"(seed {cfg['seed']}, {cfg['workers']} workers, stage limit {cfg['stage_timeout_s']:g} s, "
                 f"memory limit {cfg['memory_limit_mb']:.0f} MB); sobre from {cfg['sobre'].get('module')}"
                 + (f" [{cfg['sobre']['label']}]" if cfg["sobre"].get("label") else "")
                 + (f" (commit {cfg['sobre'].get('commit')}, {cfg['sobre'].get('src_modified_files')} "
                    f"modified files under src/)" if cfg["sobre"].get("commit") else ""))
    lines.append(f"mutants with at least one failure: {mu['with_failures']} / {mu['total']}")
    lines.append("")
    cols = ["ok", "refused", "n/a"]
    fail_cols = sorted({o for s in STAGES for o in mu["outcomes"][s] if o not in cols + ["not run"]})
    cols_all = cols + fail_cols
    width = max([len(c) for c in cols_all] + [7])
    lines.append(f"{'stage':9s} " + " ".join(f"{c:>{width}s}" for c in cols_all))
    for s in STAGES:
        row = mu["outcomes"][s]
        lines.append(f"{s:9s} " + " ".join(f"{row.get(c, 0):>{width}d}" for c in cols_all))
    lines.append("")
    if not mu["failure_classes"]:
        lines.append("no failure.")
    for key, fc in mu["failure_classes"].items():
        ex = fc["example"]
        same = fc.get("source_fails_unmodified")
        lines.append(f"FAIL {key}: {fc['count']} ({FAILURES.get(fc['class'], '')})"
                     + (f"; {same} of them from sources whose unmodified file fails the same way" if same else ""))
        lines.append(f"     by mutation: {', '.join(f'{k} {v}' for k, v in list(fc['by_mutation'].items())[:6])}")
        if fc.get("subclasses"):
            lines.append(f"     kinds: {', '.join(f'{k} {v}' for k, v in fc['subclasses'].items())}")
        lines.append(f"     example: mutant {ex['mutant']} = {ex['source']} + {ex['kind']} "
                     f"{json.dumps(ex['params'], default=str)[:200]} (seed {ex['seed']})")
        lines.append(f"     regenerate: {ex['regenerate']}")
        lines.append(f"     command: {ex['command']}")
        what = ex.get("stderr_first") or ""
        lines.append(f"     got: exit {ex.get('rc')}; {ex.get('detail')}" + (f" | stderr: {what}" if what and
                                                                                 what not in str(ex.get('detail'))
                                                                                 else ""))
        if ex.get("src_function") or ex.get("raised_at"):
            lines.append(f"     raised in: {ex.get('src_function')}  (innermost: {ex.get('raised_at')})")
    ctl = rep["controls"]
    if ctl["total"]:
        lines.append("")
        lines.append(f"controls (unmodified sources): {ctl['with_failures']} / {ctl['total']} with failures")
        for key, fc in ctl["failure_classes"].items():
            ex = fc["example"]
            lines.append(f"  CONTROL FAIL {key}: {fc['count']} (e.g. {ex['source']}: {ex['detail']})"[:300])
    if rep["sample_files_changed"]:
        lines.append(f"SAMPLE FILES CHANGED during the run: {rep['sample_files_changed']}")
    if rep["harness_errors"]:
        lines.append(f"harness errors: {len(rep['harness_errors'])} (e.g. {rep['harness_errors'][0]['error']})")
    if mu["unconfirmed_kills"]:
        lines.append(f"kills not confirmed on retry (not counted): {len(mu['unconfirmed_kills'])}")
    lines.append("")
    lines.append(f"runtime: {rt['wall_s']} s wall ({rt['mutants_per_s']} mutants/s; template {rt['template_s']} s, "
                 f"controls {rt['controls_s']} s); load average {rt['loadavg_start'][0]} -> {rt['loadavg_end'][0]} "
                 f"on {rt['cpus']} CPUs")
    for s, t in rt["stages"].items():
        lines.append(f"  {s:9s} median {t['median_s']:.3f} s, p99 {t['p99_s']:.3f} s, max {t['max_s']:.3f} s, "
                     f"peak RSS max {t['peak_rss_max_mb']} MB")
    return "\n".join(lines)


def run(cfg: Config) -> dict:
    runner = Runner(cfg)
    try:
        return runner.run()
    finally:
        if cfg.workdir is None:
            shutil.rmtree(runner.tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2]))
    if len(sys.argv) == 3 and sys.argv[1] == "--template":
        sys.exit(template_main(sys.argv[2]))
    print("usage: run bench/bench_fuzz.py (this module is the fuzz runner and its worker)", file=sys.stderr)
    sys.exit(2)
