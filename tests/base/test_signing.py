"""The site key (Ed25519): creation, permissions, loading, signatures, and never showing the private key."""

from __future__ import annotations

import hashlib
import os
import pickle
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from sobre.base import SiteKey, load_public_key, public_key_id, verify_signature
from sobre.errors import ConfigError


@pytest.fixture()
def key_path(tmp_path):
    return tmp_path / "secrets" / "site.key"


def test_create_writes_a_private_pkcs8_pem_in_a_private_folder(key_path):
    key = SiteKey.create(key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    pem = key_path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(loaded, ed25519.Ed25519PrivateKey)
    assert key.path == key_path


def test_load_gives_the_same_key_and_load_or_create_says_whether_it_created(key_path):
    created, was_created = SiteKey.load_or_create(key_path)
    again, created_again = SiteKey.load_or_create(key_path)
    assert (was_created, created_again) == (True, False)
    assert SiteKey.load(key_path).key_id == created.key_id == again.key_id
    assert SiteKey.load(key_path).public_key_pem() == created.public_key_pem()
    sig = again.sign(b"payload")
    assert verify_signature(created.public_key_pem(), sig, b"payload")


def test_create_refuses_to_overwrite(key_path):
    first = SiteKey.create(key_path)
    before = key_path.read_bytes()
    with pytest.raises(ConfigError, match="a site key already exists here; refusing to overwrite it"):
        SiteKey.create(key_path)
    assert key_path.read_bytes() == before
    assert SiteKey.load(key_path).key_id == first.key_id


def test_group_or_world_readable_key_file_is_refused_with_the_fix(key_path):
    SiteKey.create(key_path)
    for mode in (0o640, 0o604, 0o660):
        os.chmod(key_path, mode)
        with pytest.raises(ConfigError, match=rf"readable by other users \(expected mode 0600 \(owner only\); "
                                              rf"found mode 0{mode:o}\)\. run `chmod 600 .*site.key`"):
            SiteKey.load(key_path)
    os.chmod(key_path, 0o600)
    SiteKey.load(key_path)  # fixed as the message says


def test_create_refuses_a_folder_open_to_other_users(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o755)
    with pytest.raises(ConfigError, match=r"folder is open to other users.*found mode 0755.*chmod 700"):
        SiteKey.create(folder / "site.key")
    assert not (folder / "site.key").exists()


def test_load_refuses_missing_foreign_and_encrypted_keys(tmp_path):
    with pytest.raises(ConfigError, match="site key file not found"):
        SiteKey.load(tmp_path / "nope.key")

    def private_file(name, data):
        p = tmp_path / name
        p.write_bytes(data)
        os.chmod(p, 0o600)
        return p

    with pytest.raises(ConfigError, match="not a PEM private key"):
        SiteKey.load(private_file("garbage.key", b"hello"))
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ConfigError, match="holds another kind of key.*expected Ed25519"):
        SiteKey.load(private_file("ec.key", ec_pem))
    enc_pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(ConfigError, match="encrypted with a password"):
        SiteKey.load(private_file("enc.key", enc_pem))


def test_signatures_verify_and_bad_ones_return_false_without_raising(key_path):
    key = SiteKey.create(key_path)
    pub = key.public_key_pem()
    assert pub.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    sig = key.sign(b"model package 3f2a")
    assert len(sig) == 64
    assert verify_signature(pub, sig, b"model package 3f2a")
    assert verify_signature(pub.decode(), sig, b"model package 3f2a")  # PEM as text too
    assert not verify_signature(pub, sig, b"model package 3f2b")
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify_signature(pub, flipped, b"model package 3f2a")
    assert not verify_signature(pub, sig[:63], b"model package 3f2a")
    assert not verify_signature(pub, b"", b"model package 3f2a")
    assert not verify_signature(pub, None, b"model package 3f2a")
    other = SiteKey.create(key_path.parent / "other.key")
    assert not verify_signature(other.public_key_pem(), sig, b"model package 3f2a")


def test_malformed_or_foreign_public_key_raises_a_clear_error(key_path):
    sig = SiteKey.create(key_path).sign(b"x")
    with pytest.raises(ConfigError, match=r"public key is not PEM \(expected -----BEGIN PUBLIC KEY----- \(Ed25519\)"):
        verify_signature(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", sig, b"x")
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ConfigError, match="public key is not an Ed25519 key"):
        verify_signature(ec_pub, sig, b"x")
    with pytest.raises(ConfigError, match="public key is not PEM"):
        load_public_key("")


def test_key_id_is_the_short_sha256_of_the_raw_public_key(key_path):
    key = SiteKey.create(key_path)
    raw = serialization.load_pem_public_key(key.public_key_pem()).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(raw) == 32
    assert key.key_id == hashlib.sha256(raw).hexdigest()[:16] == public_key_id(key.public_key_pem())


def test_private_key_never_shown_nor_pickled(key_path):
    key = SiteKey.create(key_path)
    body = b"".join(key_path.read_bytes().splitlines()[1:-1]).decode()
    for text in (repr(key), str(key), f"{key}"):
        assert body not in text and "PRIVATE" not in text
        assert key.key_id in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
