"""DICOMweb: QIDO-RS search, WADO-RS retrieve into a folder (or workspace), STOW-RS store.

Built on `dicomweb-client <https://github.com/ImagingDataCommons/dicomweb-client>`_ (maintained by
the Imaging Data Commons team). Retrieval is all-or-nothing per study: instances are streamed into a
hidden staging folder (de-identified in memory first when a :class:`~sobre.privacy.Deidentifier` is
given, so identifiable data never touches the disk), checked against the QIDO-RS instance list, and
only then moved into place and handed to ``on_files`` (e.g. ``Workspace.ingest``). Any failure
removes the staging folder: nothing is partially ingested.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from sobre.errors import InputError, SobreError, describe_exception

__all__ = ["DicomWebPacs", "PacsError", "PullReport", "PushReport", "parse_query"]

# Ask for the stored transfer syntax, so pixel data comes back byte for byte.
_ANY_SYNTAX = (("application/dicom", "*"),)


class PacsError(SobreError):
    """A PACS (DICOMweb server or DICOM peer) is unreachable, refused a request or answered badly."""


@dataclass
class PullReport:
    """Outcome of :meth:`DicomWebPacs.pull`: studies and files retrieved, failures per study."""

    studies: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (study UID, reason)
    deidentified: bool = False
    pixel_review: list[tuple[str, list[str]]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"studies": self.studies, "instances": len(self.files), "files": self.files,
                "failed": [{"study": s, "reason": r} for s, r in self.failed],
                "deidentified": self.deidentified,
                "needs_pixel_review": [{"file": f, "reasons": r} for f, r in self.pixel_review]}


@dataclass
class PushReport:
    """Outcome of :meth:`DicomWebPacs.push`."""

    stored: list[str] = field(default_factory=list)  # SOP Instance UIDs
    failed: list[tuple[str, str]] = field(default_factory=list)  # (SOP Instance UID or path, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not sent

    def to_dict(self) -> dict:
        return {"stored": len(self.stored), "failed": [{"instance": i, "reason": r} for i, r in self.failed],
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


def parse_query(items: Iterable[str]) -> dict[str, str]:
    """Turn ``["PatientID=123", "StudyDate=20200101-20201231"]`` into QIDO-RS search filters.

    Keys must be DICOM keywords (or ``ggggeeee`` hex tags); raises :class:`InputError` otherwise.
    """
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError("cannot read query term", expected="KEY=VALUE, e.g. PatientID=123", found=item)
        if tag_for_keyword(key) is None:
            try:
                if len(key) != 8 or not keyword_for_tag(int(key, 16)):
                    raise ValueError
            except ValueError:
                raise InputError(f"unknown DICOM attribute in query: {key}",
                                 expected="a keyword such as PatientID, StudyDate, ModalitiesInStudy, "
                                          "AccessionNumber", found=key) from None
        out[key] = value.strip()
    return out


def _value(item: dict, tag: str):
    v = item.get(tag, {}).get("Value")
    if not v:
        return None
    first = v[0]
    if isinstance(first, dict):  # PN
        return first.get("Alphabetic")
    return first


class DicomWebPacs:
    """A DICOMweb server (QIDO-RS, WADO-RS, STOW-RS under one base URL).

    Parameters
    ----------
    url : str
        Base URL of the DICOMweb service, e.g. ``http://127.0.0.1:8042/dicom-web``.
    timeout : float
        Seconds to wait for each HTTP answer.
    headers : dict, optional
        Extra HTTP headers (e.g. ``{"Authorization": "Bearer ..."}``).
    attempts : int
        Tries per request on connection errors and HTTP 408/429/503/504, with exponential back-off
        from 0.2 s (``1``: no retry).
    """

    def __init__(self, url: str, *, timeout: float = 30, headers: dict | None = None, attempts: int = 3) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError("DICOMweb URL must start with http:// or https://", found=url,
                             expected="e.g. http://pacs.local:8042/dicom-web")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = headers or {}
        self.attempts = max(1, int(attempts))
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from dicomweb_client.api import DICOMwebClient

            client = DICOMwebClient(self.url, headers=self.headers, timeout=self.timeout)
            # dicomweb-client retries every exception 5 times with 1 s x 2^n back-off (30 s per call to
            # an unreachable server); keep retries short so a dead PACS is reported promptly.
            client.set_http_retry_params(retry=self.attempts > 1, max_attempts=self.attempts,
                                         wait_exponential_multiplier=100)
            self._client = client
        return self._client

    def _call(self, what: str, fn, *args, **kwargs):
        import requests

        try:
            return fn(*args, **kwargs)
        except requests.exceptions.ConnectionError as exc:
            raise PacsError(f"cannot reach the DICOMweb server for {what}", path=self.url,
                            found=type(exc).__name__,
                            fix="check the URL, that the server is running and that this machine may reach it") \
                from None
        except requests.exceptions.Timeout:
            raise PacsError(f"the DICOMweb server did not answer {what} within {self.timeout:g} s",
                            path=self.url, fix="retry later, or raise --timeout") from None
        except requests.exceptions.HTTPError as exc:
            resp = exc.response
            status = resp.status_code if resp is not None else "?"
            body = (resp.text or "")[:200].strip() if resp is not None else ""
            hint = {401: "the server wants credentials", 403: "this user may not do this",
                    404: "wrong URL prefix (often /dicom-web) or unknown UID"}.get(status, "see the server's log")
            raise PacsError(f"DICOMweb {what} failed with HTTP {status}", path=self.url,
                            found=body or None, fix=hint) from None

    # -- QIDO-RS -----------------------------------------------------------------------------
    def search_studies(self, query: dict[str, str] | None = None, *, limit: int | None = None) -> list[dict]:
        """QIDO-RS study search; returns ``[{"StudyInstanceUID", "StudyDate", "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances"}]`` (no patient-identifying fields)."""
        found = self._call("study search (QIDO-RS)", self.client.search_for_studies,
                           search_filters=query or {}, limit=limit, get_remaining=limit is None)
        out = []
        for item in found or []:
            uid = _value(item, "0020000D")
            if uid:
                out.append({"StudyInstanceUID": uid, "StudyDate": _value(item, "00080020"),
                            "ModalitiesInStudy": (item.get("00080061", {}).get("Value") or []),
                            "NumberOfStudyRelatedInstances": _value(item, "00201208")})
        return out

    def instance_uids(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs of a study (QIDO-RS instance search)."""
        found = self._call("instance search (QIDO-RS)", self.client.search_for_instances,
                           study_instance_uid=study_uid, get_remaining=True)
        return {u for u in (_value(i, "00080018") for i in found or []) if u}

    # -- WADO-RS -----------------------------------------------------------------------------
    def pull(self, dest: str | Path, *, studies: Iterable[str] = (), query: dict[str, str] | None = None,
             deidentifier=None, on_files: Callable[[list[str]], object] | None = None) -> PullReport:
        """Retrieve studies (by UID, or all those matching ``query``) into ``dest``.

        Each study is retrieved completely or not at all; ``on_files(paths)`` is called once per
        complete study. Files go to ``dest/STUDY/SERIES/SOP.dcm`` (de-identified UIDs when a
        ``deidentifier`` is given).

        Raises
        ------
        PacsError
            The server is unreachable or refuses the search; a failure of one study's retrieval is
            recorded in :attr:`PullReport.failed` and the other studies go on.
        """
        dest = Path(dest)
        uids = list(studies)
        if query:
            uids += [s["StudyInstanceUID"] for s in self.search_studies(query) if s["StudyInstanceUID"] not in uids]
        report = PullReport(deidentified=deidentifier is not None)
        if not uids:
            return report
        for uid in uids:
            try:
                files, review = self._pull_study(uid, dest, deidentifier)
            except SobreError as exc:
                report.failed.append((uid, str(exc)))
                continue
            if on_files is not None:
                on_files(files)
            report.studies.append(uid)
            report.files.extend(files)
            report.pixel_review.extend(review)
        return report

    def _pull_study(self, uid: str, dest: Path, deidentifier) -> tuple[list[str], list]:
        import pydicom

        from sobre.image import check_pixel_length, write_atomic

        expected = self.instance_uids(uid)
        if not expected:
            raise PacsError("study not found on the server", path=self.url, tag="(0020,000D) StudyInstanceUID",
                            found=uid, fix="check the UID (sobre pull --query ... lists what exists)")
        staging = dest / ".partial" / uuid.uuid4().hex
        staging.mkdir(parents=True)
        staged: list[tuple[Path, str]] = []
        review = []
        received: set[str] = set()
        try:
            stream = self._call("study retrieval (WADO-RS)", self.client.iter_study, uid, media_types=_ANY_SYNTAX)
            while True:
                try:
                    ds = self._call("study retrieval (WADO-RS)", next, stream)
                except StopIteration:
                    break
                except SobreError:
                    raise
                except Exception as exc:  # malformed multipart or dataset
                    raise PacsError("the server sent an unreadable instance", path=self.url,
                                    found=f"{describe_exception(exc)}") from None
                sop = str(ds.get("SOPInstanceUID", "")).strip()
                if not sop or sop not in expected:
                    raise PacsError("the server sent an instance that is not in the study", path=self.url,
                                    tag="(0008,0018) SOPInstanceUID", found=sop or "none")
                received.add(sop)
                check_pixel_length(ds, f"{self.url} instance {sop}")
                if deidentifier is not None:
                    data, result = deidentifier.deidentify_to_bytes(ds, source=f"{self.url} instance {sop}",
                                                                      copy=False)
                    rel = f"{result.study_instance_uid}/{result.series_instance_uid}/{result.sop_instance_uid}.dcm"
                    if result.pixel_review:
                        review.append((rel, result.pixel_review))
                else:
                    from io import BytesIO

                    buf = BytesIO()
                    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
                    data = buf.getvalue()
                    rel = f"{ds.StudyInstanceUID}/{ds.get('SeriesInstanceUID', 'no-series')}/{sop}.dcm"
                tmp = staging / f"{len(staged):06d}.dcm"
                write_atomic(tmp, data)
                staged.append((tmp, rel))
            missing = expected - received
            if missing:
                raise PacsError("study retrieval incomplete", path=self.url, tag="(0020,000D) StudyInstanceUID",
                                expected=f"{len(expected)} instances", found=f"{len(received)} received",
                                fix="retry; nothing of this study was kept")
            final = []
            for tmp, rel in staged:
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
                final.append(str(target))
            return final, review
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            try:
                (dest / ".partial").rmdir()
            except OSError:
                pass

    # -- STOW-RS -----------------------------------------------------------------------------
    def push(self, paths: Iterable[str | Path], *, batch: int = 50, max_batch_bytes: int = 64 << 20) -> PushReport:
        """Store files (or folders of files) on the server with STOW-RS, in batches.

        Files that are not complete DICOM instances are not sent (listed in ``skipped``).
        """
        from sobre.image import discover, read_instance

        report = PushReport()
        pending: list = []
        size = 0

        def flush() -> None:
            nonlocal pending, size
            if pending:
                self._store(pending, report)
            pending, size = [], 0

        found = discover(paths)
        report.skipped.extend((p.path, p.message) for p in found.problems)
        for path in found.files:
            try:
                ds = read_instance(path)
            except SobreError as exc:
                report.skipped.append((str(path), str(exc)))
                continue
            pending.append(ds)
            size += path.stat().st_size
            if len(pending) >= batch or size >= max_batch_bytes:
                flush()
        flush()
        return report

    def _store(self, datasets: list, report: PushReport) -> None:
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        try:
            response = self._call("store (STOW-RS)", self.client.store_instances, datasets)
        except PacsError as exc:
            report.failed.extend((u, str(exc)) for u in uids)
            return
        failed = {}
        for item in (response.get("FailedSOPSequence") or []) if response is not None else []:
            reason = item.get("FailureReason")
            failed[str(item.get("ReferencedSOPInstanceUID", ""))] = (
                f"failure reason 0x{int(reason):04X}" if reason is not None else "refused")
        for u in uids:
            if u in failed:
                report.failed.append((u, failed[u]))
            else:
                report.stored.append(u)
