"""The pure parts of the cross-signing module: canonical JSON, signatures, the sealed key file."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from peerbot.matrix.crosssign import (
    CrossSigningKeys,
    KeysMissing,
    KeyStoreError,
    canonical_json,
    ed25519_key_id,
    key_file_info,
    load_keys,
    public_key,
    save_keys,
    sign_json,
    verify_json,
)

ME = "@peerbot:example.org"
PASSPHRASE = "correct horse battery staple"


# --- canonical JSON ------------------------------------------------------------------------------


def test_canonical_json_sorts_keys_and_drops_spaces() -> None:
    assert canonical_json({"b": 1, "a": {"d": [1, 2], "c": None}}) == (
        b'{"a":{"c":null,"d":[1,2]},"b":1}'
    )


def test_canonical_json_keeps_unicode_as_utf8() -> None:
    assert canonical_json({"name": "Pédiatrie ☃"}) == '{"name":"Pédiatrie ☃"}'.encode()


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


# --- signatures ----------------------------------------------------------------------------------

# RFC 8032, section 7.1, test 1: a known seed and its public key.
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def test_public_key_of_a_known_seed() -> None:
    assert public_key(RFC_SEED) == base64.b64encode(RFC_PUBLIC).decode().rstrip("=")


def test_sign_then_verify() -> None:
    pub = public_key(RFC_SEED)
    obj: dict[str, Any] = {"user_id": ME, "usage": ["self_signing"], "keys": {"k": "v"}}
    signed = sign_json(obj, RFC_SEED, ME, ed25519_key_id(pub))
    assert verify_json(signed, pub, ME, ed25519_key_id(pub))
    assert "signatures" not in obj, "the input is left unchanged"
    signature = signed["signatures"][ME][f"ed25519:{pub}"]
    assert "=" not in signature and len(base64.b64decode(signature + "==")) == 64


def test_signature_ignores_signatures_and_unsigned() -> None:
    pub = public_key(RFC_SEED)
    key_id = ed25519_key_id(pub)
    obj = {
        "device_id": "DEV",
        "signatures": {ME: {"ed25519:DEV": "device's own"}},
        "unsigned": {"device_display_name": "bot"},
    }
    signed = sign_json(obj, RFC_SEED, ME, key_id)
    assert signed["signatures"][ME]["ed25519:DEV"] == "device's own", "others are kept"
    signed["unsigned"] = {"device_display_name": "renamed"}
    assert verify_json(signed, pub, ME, key_id)


@pytest.mark.parametrize(
    "change",
    [
        lambda o: o.update(usage=["master"]),
        lambda o: o["keys"].update(extra="x"),
        lambda o: o.update(user_id="@mallory:example.org"),
    ],
)
def test_verification_fails_when_a_field_changes(change: Any) -> None:
    pub = public_key(RFC_SEED)
    signed = sign_json(
        {"user_id": ME, "usage": ["self_signing"], "keys": {"k": "v"}},
        RFC_SEED,
        ME,
        ed25519_key_id(pub),
    )
    change(signed)
    assert not verify_json(signed, pub, ME, ed25519_key_id(pub))


def test_verification_fails_for_another_key_or_signer() -> None:
    keys = CrossSigningKeys.generate()
    signed = sign_json({"a": 1}, keys.master_seed, ME, ed25519_key_id(keys.master_public))
    other = keys.self_signing_public
    assert not verify_json(signed, other, ME, ed25519_key_id(keys.master_public))
    assert not verify_json(signed, keys.master_public, "@x:y", ed25519_key_id(keys.master_public))
    assert not verify_json({"a": 1}, keys.master_public, ME, ed25519_key_id(keys.master_public))
    signed["signatures"][ME][ed25519_key_id(keys.master_public)] = "not base64!"
    assert not verify_json(signed, keys.master_public, ME, ed25519_key_id(keys.master_public))


def test_seed_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        CrossSigningKeys(b"short", b"\0" * 32, b"\0" * 32)


# --- the three keys ------------------------------------------------------------------------------


def test_to_upload_has_three_keys_with_master_signatures() -> None:
    keys = CrossSigningKeys.generate()
    body = keys.to_upload(ME)
    master_id = ed25519_key_id(keys.master_public)
    assert body["master_key"] == {
        "user_id": ME,
        "usage": ["master"],
        "keys": {master_id: keys.master_public},
    }
    for name, usage, pub in (
        ("self_signing_key", "self_signing", keys.self_signing_public),
        ("user_signing_key", "user_signing", keys.user_signing_public),
    ):
        assert body[name]["usage"] == [usage]
        assert body[name]["keys"] == {ed25519_key_id(pub): pub}
        assert verify_json(body[name], keys.master_public, ME, master_id)
    assert len({keys.master_public, keys.self_signing_public, keys.user_signing_public}) == 3


def test_sign_device_drops_unsigned_and_keeps_device_signature() -> None:
    keys = CrossSigningKeys.generate()
    device = {
        "user_id": ME,
        "device_id": "DEV",
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {"ed25519:DEV": "x", "curve25519:DEV": "y"},
        "signatures": {ME: {"ed25519:DEV": "self"}},
        "unsigned": {"device_display_name": "bot"},
    }
    signed = keys.sign_device(device, ME)
    ssk_id = ed25519_key_id(keys.self_signing_public)
    assert "unsigned" not in signed
    assert set(signed["signatures"][ME]) == {"ed25519:DEV", ssk_id}
    assert verify_json(signed, keys.self_signing_public, ME, ssk_id)


def test_seeds_are_not_in_repr() -> None:
    keys = CrossSigningKeys.generate()
    assert keys.master_seed.hex() not in repr(keys)
    assert repr(keys) == "CrossSigningKeys()"


# --- sealed storage ------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    keys = CrossSigningKeys.generate()
    path = tmp_path / "sub" / "cross-signing.json"
    save_keys(path, keys, PASSPHRASE, user_id=ME)
    assert load_keys(path, PASSPHRASE) == keys
    info = key_file_info(path)
    assert (info.version, info.user_id, info.master_key) == (1, ME, keys.master_public)
    text = path.read_text()
    for seed in (keys.master_seed, keys.self_signing_seed, keys.user_signing_seed):
        assert base64.b64encode(seed).decode().rstrip("=") not in text
    assert [p.name for p in path.parent.iterdir()] == ["cross-signing.json"], "no temp file left"


def test_file_mode_is_0600_even_with_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "keys.json"
        save_keys(path, CrossSigningKeys.generate(), PASSPHRASE)
        save_keys(path, CrossSigningKeys.generate(), PASSPHRASE)  # replaced, still 0600
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_each_save_uses_fresh_salt_and_nonce(tmp_path: Path) -> None:
    keys = CrossSigningKeys.generate()
    save_keys(tmp_path / "a", keys, PASSPHRASE)
    save_keys(tmp_path / "b", keys, PASSPHRASE)
    a, b = (json.loads((tmp_path / n).read_text()) for n in "ab")
    assert a["salt"] != b["salt"] and a["nonce"] != b["nonce"]
    assert a["ciphertext"] != b["ciphertext"]


def test_wrong_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    save_keys(path, CrossSigningKeys.generate(), PASSPHRASE)
    with pytest.raises(KeyStoreError, match="wrong PEERBOT_KEY_PASSPHRASE"):
        load_keys(path, "not the passphrase")


def test_empty_passphrase_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="PEERBOT_KEY_PASSPHRASE is empty"):
        save_keys(tmp_path / "keys.json", CrossSigningKeys.generate(), "")


@pytest.mark.parametrize("field", ["ciphertext", "tag", "nonce", "salt", "user_id", "master_key"])
def test_tampered_file(tmp_path: Path, field: str) -> None:
    path = tmp_path / "keys.json"
    save_keys(path, CrossSigningKeys.generate(), PASSPHRASE, user_id=ME)
    envelope = json.loads(path.read_text())
    if field in ("user_id", "master_key"):
        envelope[field] = "@mallory:example.org" if field == "user_id" else "A" * 43
    else:
        raw = bytearray(base64.b64decode(envelope[field] + "=="))
        raw[0] ^= 1
        envelope[field] = base64.b64encode(bytes(raw)).decode().rstrip("=")
    path.write_text(json.dumps(envelope))
    with pytest.raises(KeyStoreError, match="cannot decrypt"):
        load_keys(path, PASSPHRASE)


@pytest.mark.parametrize("content", ["", "not json", "[]", '{"format": "other"}', '{"version": 1}'])
def test_damaged_or_foreign_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(KeyStoreError) as caught:
        load_keys(path, PASSPHRASE)
    assert not isinstance(caught.value, KeysMissing)


def test_unknown_version(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    save_keys(path, CrossSigningKeys.generate(), PASSPHRASE)
    envelope = json.loads(path.read_text())
    envelope["version"] = 2
    path.write_text(json.dumps(envelope))
    with pytest.raises(KeyStoreError, match="version 2"):
        load_keys(path, PASSPHRASE)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeysMissing, match="no cross-signing key file"):
        load_keys(tmp_path / "nothing.json", PASSPHRASE)
    with pytest.raises(KeysMissing):
        key_file_info(tmp_path / "nothing.json")
