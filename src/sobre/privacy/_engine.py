"""The de-identification engine: PS3.15 Basic Profile + options, keyed pseudonyms, verified output.

One :class:`Deidentifier` holds the project key, the profile and (optionally) the pseudonym map.
For each instance it

1. reads the source (rejecting what is not a complete DICOM instance),
2. collects the source's identifying values (:func:`~sobre.privacy._verify.identifying_values`),
3. applies the profile to every element at every nesting level: table action, options, private
   safe list, UID remapping, subject pseudonym, per-subject date shift,
4. removes overlays, curves, icons and trailing padding, blanks configured pixel rectangles,
5. rebuilds the file meta (new preamble, no source AE title),
6. encodes the result in memory and scans it for the source's identifying values, raising
   :class:`~sobre.privacy.VerificationError` (nothing written) on any hit,
7. writes it atomically (temporary file + rename).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sobre.errors import InputError, Problem, SobreError, describe_exception
from sobre.image import (
    SOBRE_IMPLEMENTATION_UID, SOBRE_IMPLEMENTATION_VERSION, encode_dataset, read_instance,
    write_atomic,
)

from . import _table
from ._keys import ProjectKey
from ._pixels import blank_regions, pixel_review_reasons
from ._profile import DeidProfile
from ._pseudonyms import PseudonymStore
from ._elements import (
    _TEXT_VRS, _DATE_VRS, _CLASS_UID_TAGS, _FREE_TEXT_PATTERNS, _values, _SCRUB_VRS, _encodings_of, _vr_of, _is_empty, _empty, _dummy, _set, _text, _shift_da, _shift_dt, _age,
)
from ._verify import IdentifyingValues, identifying_values, verify_output

__all__ = ["Deidentifier", "DeidResult", "DeidReport", "DeidentificationError"]


class DeidentificationError(SobreError):
    """An instance could not be de-identified (the output was not written)."""


@dataclass
class DeidResult:
    """What happened to one instance.

    ``output`` is ``None`` when only a dataset/bytes were produced. ``pixel_review`` lists why the
    pixels may hold burned-in identifying text (empty: no known reason); a non-empty list means a
    person must look at the image before it leaves the secure zone.
    """

    source: str | None
    output: str | None
    subject: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    date_shift_days: int | None
    pixel_review: list[str] = field(default_factory=list)
    regions_blanked: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self, *, include_source: bool = False) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "source"}
        if include_source:
            d["source"] = self.source
        return d


@dataclass
class DeidReport:
    """Outcome of a batch: results, the inputs left out (as :class:`~sobre.errors.Problem` s), profile, key id."""

    profile: dict
    key_id: str
    results: list[DeidResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of every input that was not de-identified."""
        return [(p.path, p.message) for p in self.problems if p.level == "error"]

    @property
    def outputs(self) -> list[str]:
        return [r.output for r in self.results if r.output]

    @property
    def pixel_review(self) -> list[DeidResult]:
        return [r for r in self.results if r.pixel_review]

    def to_dict(self, *, include_sources: bool = False) -> dict:
        """JSON-able summary. Source paths (which may contain names) only if asked."""
        return {
            "profile": self.profile,
            "key_id": self.key_id,
            "written": len(self.outputs),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped] if include_sources else
            [{"reason": r} for _, r in self.skipped],
            "problems": [dict(p.to_dict(), path=p.path if include_sources else None) for p in self.problems],
            "needs_pixel_review": len(self.pixel_review),
            "results": [r.to_dict(include_source=include_sources) for r in self.results],
        }


@dataclass
class _Subject:
    identity: str
    pseudonym: str
    shift: int | None


class _Context:
    """Per-instance state of one de-identification pass."""

    def __init__(self, subject: _Subject, ident: IdentifyingValues, path) -> None:
        self.subject = subject
        self.ident = ident
        self.path = path
        self.notes: list[str] = []
        self.visited: set[int] = set()  # items shared by several sequences are processed once
        self.bytes_re = None
        self.byte_safe = False  # the character set encodes the values' ASCII as ASCII

    def raw_clean(self, value) -> bool:
        """True when raw text bytes surely hold no identifying value (so they need no decoding)."""
        if not self.byte_safe or not isinstance(value, (bytes, bytearray)):
            return False
        if self.bytes_re is not None and self.bytes_re.search(value):
            return False
        return not any(u.encode() in value for u in self.ident.uids)


class Deidentifier:
    """De-identifies instances with one project key and profile (thread-safe).

    Parameters
    ----------
    key : ProjectKey
        The project key (pseudonyms, UIDs, date shifts derive from it).
    profile : DeidProfile, optional
        Options; the research defaults of :class:`DeidProfile` if omitted.
    pseudonyms : PseudonymStore, optional
        Where to record ``subject -> pseudonym`` for authorised re-identification.

    Examples
    --------
    >>> from sobre.privacy import Deidentifier, DeidProfile, ProjectKey
    >>> deid = Deidentifier(ProjectKey(bytes(32)), DeidProfile())
    >>> deid.key.uid("1.2.3") == deid.key.uid("1.2.3")
    True
    """

    def __init__(self, key: ProjectKey, profile: DeidProfile | None = None,
                 pseudonyms: PseudonymStore | None = None) -> None:
        self.key = key
        self.profile = profile or DeidProfile()
        self.pseudonyms = pseudonyms
        self._safe = {s.key() for s in self.profile.safe_private}
        self._written_lock = threading.Lock()
        from pydicom._uid_dict import UID_dictionary

        self._well_known = frozenset(UID_dictionary)

    # -- subject -----------------------------------------------------------------------------
    def pseudonym_of(self, patient_id: str) -> str:
        """The pseudonym a subject with this PatientID receives (to join tables keyed by original ids)."""
        return self.key.pseudonym("id:" + str(patient_id).strip(), self.profile.pseudonym_prefix)

    def _subject(self, ds) -> _Subject:
        pid = str(ds.get("PatientID", "") or "").strip()
        name = str(ds.get("PatientName", "") or "").strip()
        birth = str(ds.get("PatientBirthDate", "") or "").strip()
        if pid:
            identity = "id:" + pid
        elif name:
            identity = f"name:{name}|{birth}"
        elif ds.get("StudyInstanceUID"):
            identity = "study:" + str(ds.StudyInstanceUID)
        else:
            identity = "instance:" + str(ds.SOPInstanceUID)
        pseudonym = self.key.pseudonym(identity, self.profile.pseudonym_prefix)
        shift = self.key.date_shift(identity, *self.profile.date_shift_days) if self.profile.retain_modified_dates \
            else None
        if self.pseudonyms is not None:
            self.pseudonyms.record(pseudonym, identity, patient_id=pid, patient_name=name,
                                   issuer=str(ds.get("IssuerOfPatientID", "") or ""), date_shift_days=shift)
        return _Subject(identity, pseudonym, shift)

    # -- cleaning ----------------------------------------------------------------------------
    def _clean_text(self, value, ctx: _Context) -> str:
        s = ctx.ident.scrub(str(value))
        s = _FREE_TEXT_PATTERNS.sub("", s)
        return re.sub(r"\s{2,}", " ", s).strip(" ,;:-")

    def _scrub(self, ds, tag, ctx: _Context) -> None:
        """Remove identifying values of the source from a kept text element (residual pass)."""
        if not ctx.ident:
            return
        raw = ds.get_item(tag)
        if getattr(raw, "is_raw", False) and ctx.raw_clean(raw.value):
            return  # nothing to remove: leave the element raw (not decoded, written as it came)
        elem = self._decode(ds, tag, ctx)
        if elem is None:
            return
        vals = _values(elem.value)
        changed = False
        out = []
        for v in vals:
            if isinstance(v, str) or type(v).__name__ == "PersonName":
                s = str(v)
                t = ctx.ident.scrub(s)
                if t != s:
                    changed = True
                    s = t.strip()
                out.append(s)
            else:
                out.append(v)
        if changed:
            elem.value = out if len(out) > 1 else (out[0] if out else "")
            ctx.notes.append(f"identifying text removed from ({tag.group:04X},{tag.element:04X})")

    def _clean(self, ds, tag, ctx: _Context) -> None:
        """Clean Descriptors: keep the text, minus identifying values, dates, long numbers, e-mails."""
        elem = self._decode(ds, tag, ctx)
        if elem is not None:
            cleaned = [self._clean_text(v, ctx) for v in _values(elem.value)]
            elem.value = cleaned if len(cleaned) > 1 else (cleaned[0] if cleaned else "")

    def _remap_uid(self, elem, ctx: _Context) -> None:
        out = []
        for v in _values(elem.value):
            s = str(v).strip()
            if not s or s in self._well_known:
                out.append(s)
                continue
            new = self.key.uid(s)
            ctx.ident.add_uid(s, f"UID of ({elem.tag.group:04X},{elem.tag.element:04X})")
            out.append(new)
        elem.value = out if len(out) > 1 else (out[0] if out else "")

    def _dates(self, ds, elem, action: str | None, ctx: _Context) -> None:
        tag = int(elem.tag)
        vr = elem.VR
        if tag in _table.BIRTH_DATES:
            if action and action.startswith("X"):
                del ds[elem.tag]
            else:
                elem.value = ""
            return
        shift = ctx.subject.shift
        if shift is not None:
            if vr == "TM":
                return  # times of day are kept with modified dates
            fn = _shift_da if vr == "DA" else _shift_dt
            out = []
            for v in _values(elem.value):
                new = fn(v, shift)
                if new is None:
                    ctx.notes.append(f"unparsable date in ({elem.tag.group:04X},{elem.tag.element:04X}) removed")
                    new = ""
                out.append(new)
            elem.value = out if len(out) > 1 else (out[0] if out else "")
            return
        # No date option: Basic Profile action; dates the table does not list are replaced too
        # (PS3.15 E.1.1 note 4: handle dates by VR), times outside the table are kept.
        if action is None:
            if vr != "TM" and elem.value not in (None, ""):
                elem.value = _dummy(vr)
            return
        self._apply_code(ds, elem.tag, elem, vr, action)

    def _apply_code(self, ds, tag, raw, vr: str, action: str) -> None:
        """Apply a Basic Profile action code to one (possibly still raw) element."""
        if action == "X":
            del ds[tag]
        elif action in ("Z", "X/Z"):
            _set(ds, tag, vr, [] if vr == "SQ" else _empty(vr))
        elif action in ("D", "Z/D", "X/D", "X/Z/D"):
            if vr == "SQ":
                # a sequence that may name people or places: removed, or emptied when only Z/D allowed
                if action.startswith("X"):
                    del ds[tag]
                else:
                    _set(ds, tag, "SQ", [])
            elif _is_empty(raw) and action != "D":
                return  # already empty: keeps Type 2 conformance
            else:
                _set(ds, tag, vr, _dummy(vr))
        else:  # pragma: no cover - codes are enumerated in _table
            del ds[tag]

    # -- the walk ----------------------------------------------------------------------------
    def _process(self, ds, ctx: _Context, *, top: bool, in_content: bool = False) -> None:
        """Apply the profile to every element of ``ds`` (recursively).

        Elements are decided on their tag and VR while still raw; only those whose value matters
        (text that may name someone, UIDs, dates, sequences) are decoded. The others (numbers,
        codes, binary data) stay raw and are written back byte for byte.
        """
        if id(ds) in ctx.visited:
            return
        ctx.visited.add(id(ds))
        profile = self.profile
        kept_blocks: set[tuple[int, int]] = set()
        creators: dict[tuple[int, int], object] = {}
        creator_names: dict[tuple[int, int], str] = {}
        stored = getattr(ds, "_dict", None)  # pydicom's element dict: elements as stored, raw ones undecoded
        if type(stored) is not dict:
            stored = None
        safe = self._safe
        action_for = _table.action_for
        for tag in list(ds.keys()):
            itag = int(tag)
            group = itag >> 16
            element = itag & 0xFFFF
            if element == 0x0000 or group in (0x0002, 0x0004):  # group lengths; meta/dir in dataset
                del ds[tag]
                continue
            if group & 1:  # private
                if 0x0010 <= element <= 0x00FF:
                    creators[(group, element)] = tag
                    continue
                if profile.retain_safe_private:
                    block = element >> 8
                    key = (group, block)
                    creator = creator_names.get(key)
                    if creator is None:
                        creator = creator_names[key] = self._creator(ds, (group << 16) | block)
                    if (creator, group, element & 0xFF) in safe:
                        kept_blocks.add((group, block))
                        elem = self._decode(ds, tag, ctx)
                        if elem is not None and elem.VR == "SQ":
                            for item in elem.value or []:
                                self._process(item, ctx, top=False)
                        continue
                del ds[tag]
                continue
            if 0x6000 <= group <= 0x601E or 0x5000 <= group <= 0x501E:  # overlays and curves
                del ds[tag]
                continue
            if itag > 0x7FE00010 and group >= 0x7FE0:  # anything after Pixel Data (padding, signatures)
                del ds[tag]
                continue
            if itag == 0x7FE00010:
                continue
            raw = stored.get(tag) if stored is not None else ds.get_item(tag)
            if raw is None:
                continue  # removed while an earlier element was processed
            if raw.is_raw and raw.value is None and raw.length:
                raw = ds.get_item(tag)  # a deferred value: read it
            vr = _vr_of(raw, itag)
            action = action_for(itag)
            # subject identity: pseudonym instead of emptying
            if itag in _table.PSEUDONYM_TAGS:
                elem = self._decode(ds, tag, ctx)
                if elem is None:
                    continue
                if top:
                    elem.value = ctx.subject.pseudonym
                elif itag == 0x00100020 and str(elem.value or "").strip():
                    elem.value = self.key.pseudonym("id:" + str(elem.value).strip(), profile.pseudonym_prefix)
                else:
                    pid = str(ds.get("PatientID", "") or "").strip()
                    elem.value = self.key.pseudonym("id:" + pid, profile.pseudonym_prefix) if pid else ""
                continue
            if profile.retain_patient_characteristics:
                if itag in _table.PATIENT_CHARACTERISTICS_KEEP:
                    if vr in _SCRUB_VRS:
                        self._scrub(ds, tag, ctx)
                    continue
                if itag in _table.PATIENT_CHARACTERISTICS_CLEAN and vr in _TEXT_VRS:
                    self._clean(ds, tag, ctx)
                    continue
            if vr in _DATE_VRS:
                if vr == "TM" and ctx.subject.shift is not None:
                    continue  # times of day are kept with modified dates (raw, untouched)
                elem = self._decode(ds, tag, ctx)
                if elem is not None:
                    self._dates(ds, elem, action, ctx)
                continue
            if vr == "SQ":
                if itag in _table.STRUCTURED_CONTENT:
                    if profile.clean_structured_content:
                        self._recurse(ds, tag, ctx, in_content=True)
                    else:
                        del ds[tag]
                    continue
                if itag in _table.CLEAN_DESCRIPTOR_SEQUENCES and profile.clean_descriptions:
                    self._recurse(ds, tag, ctx, in_content=in_content)
                    continue
                if action is None or action in ("K", "X/Z/U*", "U", "D"):
                    self._recurse(ds, tag, ctx, in_content=in_content)
                    continue
                if action == "Z":
                    _set(ds, tag, "SQ", [])
                    continue
                self._apply_code(ds, tag, raw, vr, action)
                continue
            if vr == "UI" and _standard_vr(itag) not in (None, "UI"):
                # a standard attribute written with the wrong VR (e.g. a position as UI): it is not an
                # identifier to remap, and a remapped "UID" would make the output unreadable
                del ds[tag]
                ctx.notes.append(f"({itag >> 16:04X},{itag & 0xFFFF:04X}) removed: written as UI, "
                                 f"which its definition is not ({_standard_vr(itag)})")
                continue
            if vr == "UI":
                elem = self._decode(ds, tag, ctx)
                if elem is None:
                    continue
                if action is not None and "U" in action:
                    self._remap_uid(elem, ctx)
                elif action is None:
                    if itag not in _CLASS_UID_TAGS and str(elem.value or "") not in self._well_known:
                        self._remap_uid(elem, ctx)
                else:
                    self._apply_code(ds, tag, raw, vr, action)
                continue
            if action is None:
                if vr == "PN":  # names of people are never kept, whatever the attribute
                    _set(ds, tag, "PN", "")
                elif in_content and itag == 0x0040A160 and profile.clean_structured_content:
                    self._clean(ds, tag, ctx)  # SR TEXT content item
                elif vr in _SCRUB_VRS:
                    self._scrub(ds, tag, ctx)
                continue  # numbers, codes, binary: kept raw
            if itag in _table.CLEAN_DESCRIPTORS and profile.clean_descriptions and vr in _TEXT_VRS:
                self._clean(ds, tag, ctx)
                continue
            self._apply_code(ds, tag, raw, vr, action)
        # private creators: kept only for blocks that still hold a safe element
        for (group, element), tag in creators.items():
            if (group, element) not in kept_blocks and tag in ds:
                del ds[tag]

    def _decode(self, ds, tag, ctx: _Context):
        """``ds[tag]`` decoded; an element pydicom cannot decode is removed (it cannot be checked)."""
        try:
            return ds[tag]
        except Exception as exc:
            del ds[tag]
            ctx.notes.append(f"undecodable element ({tag.group:04X},{tag.element:04X}) removed: "
                             f"{type(exc).__name__}")
            return None

    def _recurse(self, ds, tag, ctx: _Context, *, in_content: bool) -> None:
        elem = self._decode(ds, tag, ctx)
        if elem is not None:
            for item in elem.value or []:
                self._process(item, ctx, top=False, in_content=in_content)

    @staticmethod
    def _creator(ds, tag: int) -> str:
        stored = getattr(ds, "_dict", None)
        raw = stored.get(tag) if type(stored) is dict else None
        if raw is not None and raw.is_raw and isinstance(raw.value, bytes) and raw.value.isascii() \
                and b"\\" not in raw.value:
            # what pydicom's decoded value would give (ASCII: the same in every character set)
            return raw.value.decode("ascii").rstrip("\x00 ").strip().upper()
        try:
            elem = ds.get(tag)
        except Exception:
            return ""
        return _text(elem.value).strip().upper() if elem is not None else ""

    # -- public API --------------------------------------------------------------------------
    def deidentify_dataset(self, ds, *, source=None, copy: bool = True) -> tuple[object, DeidResult,
                                                                                IdentifyingValues]:
        """De-identify ``ds``; returns ``(new dataset, result, identifying values of the source)``.

        A value the engine cannot read (an unknown VR, a damaged sequence) refuses the instance with
        :class:`DeidentificationError` naming the source: nothing is written for it.
        """
        try:
            return self._deidentify_dataset(ds, source=source, copy=copy)
        except SobreError:
            raise
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except BaseException as exc:  # noqa: BLE001 - pydicom raises many types on damaged values
            raise DeidentificationError("cannot de-identify this instance: a value cannot be read", path=source,
                                        found=describe_exception(exc),
                                        fix="the instance is damaged; re-export or re-send it") from None

    def _deidentify_dataset(self, ds, *, source=None, copy: bool = True) -> tuple[object, DeidResult,
                                                                                  IdentifyingValues]:
        """The work of :meth:`deidentify_dataset`.

        ``ds`` is left untouched unless ``copy=False`` (then it is changed in place: only for
        datasets nobody else holds, since datasets built in memory often share elements, e.g. a
        highdicom SEG shares its study attributes with its source images). The caller must encode
        and verify (see :meth:`encode`); :meth:`deidentify_file` and :meth:`deidentify_to_bytes`
        do both.
        """
        if copy:
            import copy as _copy

            ds = _copy.deepcopy(ds)
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.sequence import Sequence
        from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        profile = self.profile
        ident = identifying_values(ds, include_exam_dates=True)
        subject = self._subject(ds)
        ctx = _Context(subject, ident, source)
        encodings = _encodings_of(ds)
        if encodings is not None and all(v.isascii() for v in ident.values):
            ctx.byte_safe = True
            ctx.bytes_re = ident.bytes_re(encodings)
        # Patient's Age from the birth date when the option keeps age and the file lacks it.
        if profile.retain_patient_characteristics and not str(ds.get("PatientAge", "") or "").strip():
            ref = next((str(ds.get(k)) for k in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
                        if str(ds.get(k, "") or "").strip()), None)
            age = _age(ds.get("PatientBirthDate", ""), ref) if ref else None
            if age:
                ds.PatientAge = age
                ctx.notes.append("Patient's Age computed from the birth date")
        reasons = pixel_review_reasons(ds)
        sop_class = str(ds.SOPClassUID)
        old_meta = getattr(ds, "file_meta", None)
        ts = None
        if old_meta is not None and "TransferSyntaxUID" in old_meta:
            ts = old_meta.TransferSyntaxUID
        if ts is None:
            ts = ImplicitVRLittleEndian if ds.original_encoding == (True, True) else ExplicitVRLittleEndian
        if ts == DeflatedExplicitVRLittleEndian:
            ts = ExplicitVRLittleEndian  # written inflated, so the verification can read every byte
            ctx.notes.append("deflated transfer syntax written as Explicit VR Little Endian")
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
        institution = str(ds.get("InstitutionName", "") or "").strip()  # site_pseudonym normalises it
        self._process(ds, ctx, top=True)
        if profile.site_pseudonyms and institution:
            _set(ds, 0x00080080, "LO", self.key.site_pseudonym(institution))  # keyed "D": sites stay apart
        _set(ds, 0x00120062, "CS", "YES")  # Patient Identity Removed
        _set(ds, 0x00280303, "CS", "MODIFIED" if subject.shift is not None else "REMOVED")  # Longitudinal ...
        blanked = 0
        if profile.blank_regions:
            blanked = blank_regions(ds, profile.blank_regions, path=source)
            if blanked:
                ctx.notes.append(f"{blanked} pixel region(s) blanked")
        codes = Sequence()
        option_codes = profile.option_codes(pixels_cleaned=bool(blanked))
        for value, meaning in option_codes:
            item = Dataset()
            _set(item, 0x00080100, "SH", value)  # Code Value
            _set(item, 0x00080102, "SH", "DCM")  # Coding Scheme Designator
            _set(item, 0x00080104, "LO", meaning)  # Code Meaning
            codes.append(item)
        _set(ds, 0x00120064, "SQ", codes)  # De-identification Method Code Sequence
        _set(ds, 0x00120063, "LO", "Sobre PS3.15 " + " ".join(c for c, _ in option_codes))  # ... Method
        meta = ds.file_meta
        sop_instance = ds.SOPInstanceUID
        _set(meta, 0x00020002, "UI", ds.SOPClassUID)  # Media Storage SOP Class UID
        _set(meta, 0x00020003, "UI", sop_instance)  # Media Storage SOP Instance UID
        _set(meta, 0x00020012, "UI", SOBRE_IMPLEMENTATION_UID)  # Implementation Class UID
        _set(meta, 0x00020013, "SH", SOBRE_IMPLEMENTATION_VERSION)  # Implementation Version Name
        ds.preamble = b"\x00" * 128
        result = DeidResult(
            source=str(source) if source is not None else None,
            output=None,
            subject=subject.pseudonym,
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=sop_class,
            date_shift_days=subject.shift,
            pixel_review=reasons,
            regions_blanked=blanked,
            notes=ctx.notes,
        )
        return ds, result, ident

    def deidentify_to_bytes(self, ds, *, source=None, name: str = "", copy: bool = True) -> tuple[bytes, DeidResult]:
        """De-identify ``ds``, encode and verify; returns ``(file bytes, result)``.

        ``copy=False`` saves a deep copy for datasets nobody else holds (decoded from the network).

        Raises
        ------
        VerificationError
            An identifying value of the source is still in the encoded output.
        """
        ds, result, ident = self.deidentify_dataset(ds, source=source, copy=copy)
        try:
            data, header_len = encode_dataset(ds)
        except Exception as exc:
            raise DeidentificationError("cannot encode the de-identified instance", path=source,
                                        found=f"{describe_exception(exc)}") from None
        verify_output(data, header_len, ds, ident, path=source, name=name)
        return data, result

    def output_relpath(self, result: DeidResult) -> str:
        """Layout of de-identified files: ``SUBJECT/STUDY_UID/SERIES_UID/SOP_UID.dcm``."""
        study = result.study_instance_uid or "no-study"
        series = result.series_instance_uid or "no-series"
        return f"{result.subject}/{study}/{series}/{result.sop_instance_uid}.dcm"

    def deidentify_file(self, src: str | Path, dst: str | Path, *, layout: bool | None = None) -> DeidResult:
        """De-identify one file, verify it, and write it atomically.

        Parameters
        ----------
        src : path
            Source DICOM file.
        dst : path
            Output file, or an output folder when ``layout`` is true (the default when ``dst`` is an
            existing folder or has no ``.dcm`` suffix): the file then goes to
            ``dst/SUBJECT/STUDY/SERIES/SOP.dcm`` (:meth:`output_relpath`), names that carry no
            source value.

        Returns
        -------
        DeidResult
        """
        src, dst = Path(src), Path(dst)
        return self._write_deidentified(read_instance(src, decode_all=False), src, dst, layout)

    def _write_deidentified(self, ds, src: Path, dst: Path, layout: bool | None) -> DeidResult:
        if layout is None:
            layout = dst.is_dir() or dst.suffix.lower() != ".dcm"
        ds, result, ident = self.deidentify_dataset(ds, source=src, copy=False)
        target = dst / self.output_relpath(result) if layout else dst
        try:
            data, header_len = encode_dataset(ds)
        except Exception as exc:
            raise DeidentificationError("cannot encode the de-identified instance", path=src,
                                        found=f"{describe_exception(exc)}") from None
        name = str(target.relative_to(dst)) if layout else target.name
        verify_output(data, header_len, ds, ident, path=src, name=name)
        write_atomic(target, data)
        result.output = str(target)
        return result

    def deidentify_tree(self, inputs, out_dir: str | Path, *, progress: Callable[[int, int], None] | None = None,
                        on_files: Callable[[list[str]], object] | None = None, batch: int = 200,
                        compute=None) -> DeidReport:
        """De-identify every file under ``inputs`` into ``out_dir`` (layout of :meth:`output_relpath`).

        Files that are not DICOM, damaged, DICOMDIRs or duplicates (same SOP Instance UID twice) are
        skipped with a reason; a verification failure also skips the file (nothing written) and is
        reported. ``on_files`` receives the written paths in batches (e.g. ``Workspace.ingest``).

        ``compute``: a distributed :class:`~sobre.base.Compute` de-identifies on the cluster's
        workers, which then read the originals and receive the project key (docs/cluster.md, privacy).
        Each task writes into a hidden staging folder of ``out_dir``; this process alone decides, in
        the order of the files, which outputs are kept (the first of duplicate instances), moves them
        into place and records the pseudonyms: the same outputs as here, whatever worker ran what.
        """
        from sobre.image import discover

        out_dir = Path(out_dir)
        found = discover(inputs, exclude=[out_dir])
        if found.missing:
            raise InputError("input not found", path=found.missing[0], fix="check the path; nothing was written")
        files = found.files
        report = DeidReport(profile=self.profile.to_dict(), key_id=self.key.key_id)
        report.problems.extend(found.problems)
        seen: dict[str, str] = {}
        pending: list[str] = []

        def kept(result: DeidResult) -> None:
            nonlocal pending
            report.results.append(result)
            pending.append(result.output)
            if on_files is not None and len(pending) >= batch:
                on_files(pending)
                pending = []

        if compute is not None and getattr(compute, "distributed", False):
            self._tree_on(compute, files, out_dir, seen, report, kept, progress)
        else:
            for i, path in enumerate(files):
                try:
                    result = self._one_into(path, out_dir, seen)
                except SobreError as exc:
                    report.problems.append(Problem.from_error(exc, path=str(path),
                                                              code="duplicate" if "duplicate instance" in exc.what
                                                              else ""))
                else:
                    kept(result)
                if progress:
                    progress(i + 1, len(files))
        if on_files is not None and pending:
            on_files(pending)
        return report

    def _tree_on(self, compute, files: list, out_dir: Path, seen: dict, report: DeidReport, kept, progress) -> None:
        """:meth:`deidentify_tree` on a cluster's workers (staged outputs, published here in file order)."""
        import secrets
        import shutil

        compute.check_shared(read=[str(p) for p in files[::max(1, len(files) // 15)] + files[-1:]], write=[out_dir])
        stage = out_dir / f".sobre-partial-{secrets.token_hex(8)}"
        job = _TreeJob(self.key._secret, self.profile, str(stage))
        chunks = [(i, [str(p) for p in files[i:i + _TREE_CHUNK]]) for i in range(0, len(files), _TREE_CHUNK)]
        done = 0
        try:
            for (first, chunk), outcomes in zip(chunks, compute.map(_deidentify_chunk, chunks, shared=job,
                                                                     stage="de-identifying")):
                for path, (sop, result, problem, subjects) in zip(chunk, outcomes):
                    done += 1
                    if sop is not None and sop in seen:  # refused before de-identifying, as here: nothing recorded
                        report.problems.append(Problem.from_error(InputError(
                            "duplicate instance: same SOP Instance UID as an earlier file", path=path,
                            tag="(0008,0018) SOPInstanceUID", fix="keep one copy of each instance"),
                            path=path, code="duplicate"))
                        continue
                    if sop is not None:
                        seen[sop] = path
                    if self.pseudonyms is not None:  # as here, also for an instance refused after its subject was
                        for pseudonym, identity, kw in subjects:
                            self.pseudonyms.record(pseudonym, identity, **kw)
                    if problem is not None:
                        report.problems.append(problem)
                        continue
                    rel = self.output_relpath(result)
                    target = out_dir / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(stage / str(first) / rel, target)
                    result.output = str(target)
                    kept(result)
                if progress:
                    progress(done, len(files))
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _one_into(self, path: Path, out_dir: Path, seen: dict[str, str]) -> DeidResult:
        ds = read_instance(path, decode_all=False)
        sop = self.key.uid(str(ds.SOPInstanceUID).strip())
        with self._written_lock:
            if sop in seen:
                raise InputError("duplicate instance: same SOP Instance UID as an earlier file", path=path,
                                 tag="(0008,0018) SOPInstanceUID", fix="keep one copy of each instance")
            seen[sop] = str(path)
        return self._write_deidentified(ds, path, out_dir, True)


_TREE_CHUNK = 16  # instances per task of a distributed deidentify_tree
_TREE_DEID: dict = {}


@dataclass(frozen=True)
class _TreeJob:
    """What every worker of a distributed :meth:`Deidentifier.deidentify_tree` needs (sent once per worker)."""

    secret: bytes
    profile: DeidProfile
    stage: str

    def __repr__(self) -> str:  # never show the secret
        return f"_TreeJob(stage={self.stage!r})"


class _Subjects:
    """Stands in for the pseudonym map on a worker: the driver, the one writer, records what it collects."""

    def __init__(self) -> None:
        self.rows: list = []

    def record(self, pseudonym: str, identity: str, **kw) -> None:
        self.rows.append((pseudonym, identity, kw))


def _deidentify_chunk(job: _TreeJob, task: tuple[int, list[str]]) -> list[tuple]:  # pragma: no cover - on workers
    """De-identify the paths of ``task = (first index, paths)`` into ``job.stage/<first index>``.

    Returns ``(mapped SOP UID, result, problem, subjects)`` per path. Each task has its own staging
    folder: two files of one instance (duplicates) never write over each other before the driver chose.
    """
    first, paths = task
    deid = _TREE_DEID.get(job.stage)
    if deid is None:
        _TREE_DEID.clear()
        deid = _TREE_DEID[job.stage] = Deidentifier(ProjectKey(job.secret), job.profile)
    out = []
    for path in paths:
        deid.pseudonyms = subjects = _Subjects()
        sop = None
        try:
            ds = read_instance(path, decode_all=False)
            sop = deid.key.uid(str(ds.SOPInstanceUID).strip())
            result = deid._write_deidentified(ds, Path(path), Path(job.stage) / str(first), True)
        except SobreError as exc:
            out.append((sop, None, Problem.from_error(exc, path=str(path)), subjects.rows))
        else:
            out.append((sop, result, None, subjects.rows))
    return out


def _standard_vr(tag: int) -> str | None:
    """The dictionary VR of a standard (even-group) attribute, or None (private, unknown, ambiguous)."""
    if (tag >> 16) & 1:
        return None
    from pydicom.datadict import dictionary_VR

    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return None if " or " in vr else vr
