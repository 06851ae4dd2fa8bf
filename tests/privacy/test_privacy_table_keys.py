"""The PS3.15 table Sobre applies, and the project key."""

from __future__ import annotations

import os
import stat

import pytest

from sobre.errors import ConfigError
from sobre.privacy import ProjectKey, create_key, load_key, load_or_create_key
from sobre.privacy import _table


@pytest.mark.parametrize(
    ("tag", "action"),
    [
        (0x00100010, "Z"),  # Patient's Name
        (0x00100030, "Z"),  # Patient's Birth Date
        (0x00080050, "Z"),  # Accession Number
        (0x00080090, "Z"),  # Referring Physician's Name
        (0x00080020, "Z"),  # Study Date
        (0x00101000, "X"),  # Other Patient IDs
        (0x00101040, "X"),  # Patient's Address
        (0x00081050, "X"),  # Performing Physician's Name
        (0x00080081, "X"),  # Institution Address
        (0x00080080, "X/Z/D"),  # Institution Name
        (0x00081070, "X/Z/D"),  # Operators' Name
        (0x00200010, "Z"),  # Study ID
        (0x0020000D, "U"),  # Study Instance UID
        (0x00080018, "U"),  # SOP Instance UID
        (0x00081155, "U"),  # Referenced SOP Instance UID
        (0x00200052, "U"),  # Frame of Reference UID
        (0x00081140, "X/Z/U*"),  # Referenced Image Sequence
        (0x60003000, "X"),  # Overlay Data (repeating group 60xx)
        (0x60124000, "X"),  # Overlay Comments, another overlay group
        (0x50000000 | 0x3000, "X"),  # Curve Data (50xx,xxxx)
        (0x00880200, "X"),  # Icon Image Sequence
        (0x04000561, "X"),  # Original Attributes Sequence
    ],
)
def test_basic_profile_rows_match_the_standard(tag, action):
    assert _table.action_for(tag) == action


def test_table_is_complete_and_keeps_what_it_should():
    exact, masks = _table.basic_profile()
    assert len(exact) > 600 and masks  # PS3.15 2026c lists about 650 attributes
    assert _table.action_for(0x00100020) in ("Z", "Z/D")  # Patient ID (Z/D since 2025)
    for kept in (0x00080060, 0x00080016, 0x00280010, 0x00180050, 0x7FE00010):  # modality, class, rows, ...
        assert _table.action_for(kept) is None
    assert {0x00101010, 0x00100040, 0x00101020, 0x00101030} <= _table.PATIENT_CHARACTERISTICS_KEEP
    assert {0x0008103E, 0x00081030, 0x00181030, 0x00204000} <= _table.CLEAN_DESCRIPTORS


def test_key_file_is_private_and_never_printed(tmp_path):
    path = tmp_path / "secrets" / "project.key"
    key = create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    secret = path.read_text().strip()
    assert secret not in repr(key) and secret not in str(key)
    assert load_key(path).uid("1.2.3.4") == key.uid("1.2.3.4")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        create_key(path)
    assert load_or_create_key(path)[1] is False
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"readable by other users.*chmod 600"):
        load_key(path)


def test_key_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_key(tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    bad.write_text("not hex at all")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="not hexadecimal"):
        load_key(bad)
    with pytest.raises(ConfigError, match="too short"):
        ProjectKey(b"short")


def test_derivations_are_keyed_and_stable():
    k1, k2 = ProjectKey(b"\x11" * 32), ProjectKey(b"\x22" * 32)
    uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    assert k1.uid(uid) == ProjectKey(b"\x11" * 32).uid(uid) != k2.uid(uid)
    assert k1.uid(uid) == "2.25." + str(int(k1.uid(uid)[5:]))
    assert len(k1.uid(uid)) <= 44
    assert k1.pseudonym("id:123") != k2.pseudonym("id:123")
    shifts = {k1.date_shift(f"id:{i}", -3650, -365) for i in range(200)}
    assert all(-3650 <= s <= -365 for s in shifts) and len(shifts) > 150
    assert k1.date_shift("id:x", -1, 1) != 0
    assert k1.key_id == ProjectKey(b"\x11" * 32).key_id != k2.key_id
