"""Identifying values of a source instance, and the scan that proves an output holds none of them.

:func:`identifying_values` collects, from the *original* dataset (every nesting level), the values a
re-identification would use: every person name (any PN attribute), patient IDs and other IDs,
birth date, addresses and telephone numbers, institution names and departments, accession and
order numbers, the examination dates, and every instance UID that de-identification replaced.

:func:`scan_output` then looks for them in the output three ways, and :func:`verify_output` raises
:class:`VerificationError` on any hit:

* in the encoded bytes of the file before the pixel data (all elements, nested sequences,
  private tags, file meta and preamble), values encoded in the dataset's character set;
* in every decoded text value (covers character sets whose bytes differ from UTF-8);
* in the output file name.

Matching is case-insensitive and whole-token: a value must not be glued to letters or digits on
either side (so patient ID ``123`` is not "found" inside ``2.25.81234...``). Values shorter than 3
characters are too common to test and are skipped (they are still removed or replaced).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from sobre.errors import SobreError

__all__ = ["IdentifyingValues", "identifying_values", "scan_output", "verify_output", "VerificationError",
           "Finding"]

MIN_LENGTH = 3

# Attributes whose values identify a person or organisation (besides every PN attribute).
IDENTIFYING_KEYWORDS = (
    "PatientID", "OtherPatientIDs", "IssuerOfPatientID", "PatientBirthDate", "PatientAddress",
    "PatientTelephoneNumbers", "PatientTelecomInformation", "MedicalRecordLocator", "MilitaryRank",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "PersonAddress",
    "PersonTelephoneNumbers", "PersonTelecomInformation", "AccessionNumber", "AdmissionID",
    "StudyID", "RequestedProcedureID", "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest", "PerformedProcedureStepID", "ScheduledProcedureStepID",
    "ServiceEpisodeID", "IssuerOfAdmissionID", "PatientInsurancePlanCodeSequence",
    "ResponsibleOrganization", "ResponsiblePerson", "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID", "CurrentPatientLocation", "PatientInstitutionResidence",
    "RegionOfResidence", "BranchOfService", "PatientReligiousPreference", "InsurancePlanIdentification",
    "PatientPrimaryLanguageCodeSequence",
)
# Dates that place the examination in time (checked when dates were shifted or removed).
EXAM_DATE_KEYWORDS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "AcquisitionDateTime")

# Values that carry no information (never treated as identifying).
NEUTRAL = frozenset({"", "ANONYMIZED", "ANONYMOUS", "ANON", "UNKNOWN", "NONE", "N/A", "NULL", "NA",
                     "REMOVED", "YES", "NO", "0", "00000000", "19000101", "TEST", "PHANTOM"})


# Words of the text Sobre itself inserts (De-identification Method and its code meanings): a source
# value equal to one of them (a placeholder name such as "PATIENT") would otherwise be "found" there.
_INSERTED_TEXT = (
    "Sobre PS3.15 DCM Basic Application Confidentiality Profile Clean Pixel Data Option Structured Content "
    "Descriptors Retain Longitudinal Temporal Information Modified Dates Patient Characteristics Safe Private "
    "MODIFIED REMOVED YES SUBJ"
)
NEUTRAL = NEUTRAL | {w.upper() for w in _INSERTED_TEXT.split()}
MIN_UID_LENGTH = 8  # shorter "UIDs" (e.g. "0" in test files) are remapped but too short to search


class VerificationError(SobreError):
    """An output file still holds an identifying value of its source."""


@dataclass(frozen=True)
class Finding:
    """One identifying value found in an output: where (tag or ``bytes@offset`` or ``file name``)."""

    where: str
    kind: str  # which source attribute the value came from, e.g. "(0010,0010) PatientName"


@lru_cache(maxsize=512)
def _values_text_re(values: frozenset) -> re.Pattern:
    alts = "|".join(re.escape(v) for v in sorted(values, key=lambda v: (-len(v), v)))
    return re.compile(rf"(?<![^\W_])(?:{alts})(?![^\W_])", re.IGNORECASE)


@lru_cache(maxsize=512)
def _values_bytes_re(values: frozenset, encodings: tuple) -> re.Pattern | None:
    from pydicom.charset import encode_string

    alts: set[bytes] = set()
    for v in values:
        for enc in (None, "utf-8"):
            try:
                alts.add(encode_string(v, list(encodings)) if enc is None else v.encode(enc))
            except Exception:  # not representable in this charset: the decoded scan covers it
                pass
    if not alts:
        return None
    joined = b"|".join(re.escape(a) for a in sorted(alts, key=lambda a: (-len(a), a)))
    return re.compile(rb"(?<![A-Za-z0-9])(?:" + joined + rb")(?![A-Za-z0-9])", re.IGNORECASE)


_UID_EDGE = frozenset(b"0123456789.")


@dataclass
class IdentifyingValues:
    """Identifying strings of one source instance, with the attribute each came from.

    Patterns over ``values`` are compiled once per distinct set (instances of one series share
    them); replaced ``uids`` differ per instance and are searched as plain substrings.
    """

    values: dict[str, str] = field(default_factory=dict)  # value -> "(gggg,eeee) Keyword"
    uids: dict[str, str] = field(default_factory=dict)  # original UID -> kind

    def add(self, value: str, kind: str) -> None:
        value = str(value).strip().strip("^=").strip()
        if len(value) < MIN_LENGTH or value.upper() in NEUTRAL:
            return
        self.values.setdefault(value, kind)

    def add_uid(self, uid: str, kind: str) -> None:
        uid = str(uid).strip()
        if len(uid) >= MIN_UID_LENGTH:
            self.uids.setdefault(uid, kind)

    def __bool__(self) -> bool:
        return bool(self.values or self.uids)

    @property
    def text_re(self) -> re.Pattern | None:
        """Pattern matching any value in text (case-insensitive, whole token); UIDs not included."""
        return _values_text_re(frozenset(self.values)) if self.values else None

    def bytes_re(self, encodings: list[str]) -> re.Pattern | None:
        """Byte pattern for the values encoded in ``encodings`` (the dataset's charset)."""
        return _values_bytes_re(frozenset(self.values), tuple(encodings)) if self.values else None

    def scrub(self, text: str) -> str:
        """``text`` without any identifying value or replaced UID."""
        pattern = self.text_re
        if pattern is not None:
            text = pattern.sub("", text)
        for uid in self.uids:
            if uid in text:
                text = re.sub(rf"(?<![0-9.]){re.escape(uid)}(?![0-9.])", "", text)
        return text

    def search_text(self, text: str) -> str | None:
        """The first identifying value or UID found in ``text``, or ``None``."""
        pattern = self.text_re
        if pattern is not None:
            m = pattern.search(text)
            if m:
                return m.group(0)
        for uid in self.uids:
            if uid in text and re.search(rf"(?<![0-9.]){re.escape(uid)}(?![0-9.])", text):
                return uid
        return None

    def find_uids(self, data: bytes, end: int) -> list[tuple[int, str]]:
        """Offsets of replaced UIDs in ``data[:end]`` (whole UIDs only)."""
        hits = []
        for uid in self.uids:
            needle = uid.encode("ascii", "ignore")
            start = data.find(needle, 0, end)
            while start != -1:
                after = start + len(needle)
                if (start == 0 or data[start - 1] not in _UID_EDGE) and (after >= len(data) or
                                                                         data[after] not in _UID_EDGE):
                    hits.append((start, uid))
                    break
                start = data.find(needle, start + 1, end)
        return hits

    def kind_of(self, text: str) -> str:
        for v, kind in self.values.items():
            if v.lower() == text.lower():
                return kind
        return self.uids.get(text, "an identifying value")


@lru_cache(maxsize=4096)
def _tag_str(tag) -> str:
    from pydicom.datadict import keyword_for_tag
    from pydicom.tag import Tag

    tag = Tag(tag)
    kw = keyword_for_tag(tag) or ("private" if tag.is_private else "unknown")
    return f"({tag.group:04X},{tag.element:04X}) {kw}"


@lru_cache(maxsize=1)
def _keyword_tags() -> tuple[frozenset, frozenset]:
    """(identifying tags, examination date tags) as integers."""
    from pydicom.datadict import tag_for_keyword

    ident = frozenset(t for t in (tag_for_keyword(k) for k in IDENTIFYING_KEYWORDS) if t is not None)
    dates = frozenset(t for t in (tag_for_keyword(k) for k in EXAM_DATE_KEYWORDS) if t is not None)
    return ident, dates


def _raw_items(dataset) -> list:
    """``(tag, element)`` pairs of one dataset level, elements as stored (raw ones not decoded)."""
    d = getattr(dataset, "_dict", None)
    if type(d) is not dict:  # not a pydicom Dataset as we know it: use the public accessors
        return [(tag, dataset.get_item(tag)) for tag in list(dataset.keys())]
    items = list(d.items())
    for i, (tag, elem) in enumerate(items):
        if getattr(elem, "is_raw", False) and elem.value is None and elem.length:  # deferred read
            items[i] = (tag, dataset.get_item(tag))
    return items


def _person_name_parts(value) -> list[str]:
    text = str(value)
    out = [text]
    for group in text.split("="):
        out.append(group)
        out.extend(group.split("^"))
    return out


def identifying_values(ds, *, include_exam_dates: bool = True) -> IdentifyingValues:
    """Collect the identifying values of dataset ``ds`` (all nesting levels).

    Parameters
    ----------
    ds : pydicom.Dataset
        The original (identifiable) dataset.
    include_exam_dates : bool
        Also collect study/series/acquisition/content dates (use when the output's dates were
        shifted or removed).
    """
    found = IdentifyingValues()
    ident_tags, date_tags = _keyword_tags()

    def values_of(elem) -> list:
        v = elem.value
        if v is None:
            return []
        if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
            return list(v)
        return [v]

    from ._elements import _vr_of

    def walk(dataset) -> None:
        for key, raw in _raw_items(dataset):
            tag = int(key)
            try:
                vr = _vr_of(raw, tag)
            except Exception:
                continue
            if vr == "CS":
                try:
                    if getattr(raw, "is_raw", False) and isinstance(raw.value, bytes):
                        coded.update(v.strip(" \x00").upper() for v in raw.value.decode("latin-1").split("\\"))
                    else:
                        coded.update(str(v).strip().upper() for v in values_of(dataset[key]))
                except Exception:
                    pass
                continue
            if vr != "PN" and vr != "SQ" and tag not in ident_tags and tag not in date_tags:
                continue  # left undecoded
            try:
                elem = dataset[key]
            except Exception:
                continue
            if elem.VR == "SQ":
                for item in elem.value or []:
                    walk(item)
                continue
            kind = _tag_str(tag)
            if vr == "PN":
                for v in values_of(elem):
                    found.add(str(v), kind)
                    for part in _person_name_parts(v)[1:]:
                        components.append((part, kind))
            elif tag in ident_tags and elem.VR not in ("OB", "OW", "UN", "SQ"):
                for v in values_of(elem):
                    if tag == 0x00100030:  # birth date: also common written forms
                        s = str(v).strip()
                        if len(s) == 8 and s.isdigit():
                            found.add(f"{s[:4]}-{s[4:6]}-{s[6:]}", kind)
                            found.add(f"{s[6:]}/{s[4:6]}/{s[:4]}", kind)
                            found.add(f"{s[4:6]}/{s[6:]}/{s[:4]}", kind)
                    found.add(str(v), kind)
            elif include_exam_dates and tag in date_tags:
                for v in values_of(elem):
                    s = str(v).strip()[:8]
                    if len(s) == 8 and s.isdigit():
                        found.add(s, kind)

    coded: set[str] = set()
    components: list[tuple[str, str]] = []
    walk(ds)
    # A name component that is also a coded value of the same dataset (a phantom "named"
    # Perfusion^MCA Stroke beside ImageType PERFUSION) is a defined term, not an identity.
    for part, kind in components:
        if part.strip().upper() not in coded:
            found.add(part, kind)
    return found


_SKIP_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN", "UI", "US", "SS", "UL", "SL", "FL", "FD",
                       "SV", "UV", "AT", "OB or OW", "US or SS", "US or OW", "US or SS or OW"})


def _safe_elements(dataset):
    """Elements of ``dataset``, skipping (not raising on) those pydicom cannot decode."""
    for tag in list(dataset.keys()):
        try:
            yield dataset[tag]
        except Exception:
            continue


def scan_output(data: bytes, header_len: int, ds, ident: IdentifyingValues, *, name: str = "") -> list[Finding]:
    """Find identifying values in one output (see module docstring); returns findings (empty = clean).

    Parameters
    ----------
    data : bytes
        The encoded output file.
    header_len : int
        Number of bytes before the pixel data element (the bytes scanned); ``len(data)`` if none.
    ds : pydicom.Dataset
        The output dataset (decoded text scan).
    ident : IdentifyingValues
        From :func:`identifying_values` on the source (plus replaced UIDs).
    name : str
        Output file name (path relative to the output root).
    """
    findings: list[Finding] = []
    if not ident:
        return findings
    from pydicom.charset import convert_encodings

    charset = ds.get("SpecificCharacterSet") or "ISO_IR 6"
    try:
        encodings = convert_encodings(charset if isinstance(charset, (list, tuple)) or type(charset).__name__ ==
                                      "MultiValue" else [charset])
    except Exception:
        encodings = ["iso8859"]
    pattern = ident.bytes_re(list(encodings))
    if pattern is not None:
        for m in pattern.finditer(data, 0, header_len):
            text = m.group(0).decode("latin-1")
            findings.append(Finding(f"bytes@{m.start()}", ident.kind_of(text)))
    for offset, uid in ident.find_uids(data, header_len):
        findings.append(Finding(f"bytes@{offset}", ident.kind_of(uid)))
    # The byte scan already covers every value whose encoding is plain ASCII in an ASCII-compatible
    # character set; decode the output only when a value or the character set is not.
    single = ("iso8859", "iso_8859", "iso_ir_1", "latin", "utf_8", "utf8", "ascii", "tis_620", "tis620", "cp", "koi8")
    multibyte = any(not str(e).lower().replace("-", "_").startswith(single) for e in encodings)
    need_decoded = multibyte or not all(v.isascii() for v in ident.values)
    if name:
        hit = ident.search_text(name)
        if hit:
            findings.append(Finding("file name", ident.kind_of(hit)))
    if need_decoded:
        def walk(dataset) -> None:
            for elem in _safe_elements(dataset):
                if elem.VR == "SQ":
                    for item in elem.value or []:
                        walk(item)
                    continue
                if elem.VR in _SKIP_VRS:
                    continue
                value = elem.value
                items = list(value) if type(value).__name__ == "MultiValue" else [value]
                for v in items:
                    if v is None or isinstance(v, (bytes, int, float)):
                        continue
                    hit = ident.search_text(str(v))
                    if hit:
                        findings.append(Finding(_tag_str(elem.tag), ident.kind_of(hit)))

        walk(ds)
        if hasattr(ds, "file_meta"):
            walk(ds.file_meta)
    return findings


def verify_output(data: bytes, header_len: int, ds, ident: IdentifyingValues, *, path=None,
                  name: str = "") -> None:
    """Raise :class:`VerificationError` if :func:`scan_output` finds anything.

    The message names the output, where the value was found and which source attribute it came
    from, never the value itself.
    """
    findings = scan_output(data, header_len, ds, ident, name=name)
    if findings:
        first = findings[0]
        more = f" and {len(findings) - 1} more" if len(findings) > 1 else ""
        raise VerificationError(
            "de-identification verification failed: an identifying value of the source remains",
            path=path,
            tag=first.where if first.where.startswith("(") else None,
            expected="no identifying value of the source",
            found=f"the value of {first.kind} at {first.where}{more}",
            fix="nothing was written; report this file to the Sobre developers (the profile table may "
                "miss an attribute), or add a rule for it",
        )
