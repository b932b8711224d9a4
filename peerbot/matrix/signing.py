"""The bot's cross-signing keys: canonical JSON, Ed25519 signatures, the sealed key file.

Pure functions and frozen data; the only I/O is reading and writing the key file.
:mod:`peerbot.crosssign` uses these to talk to the homeserver.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from Crypto.Cipher import AES
from Crypto.Protocol.KDF import scrypt
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

__all__ = [
    "CrossSigningError",
    "CrossSigningKeys",
    "KeyFileInfo",
    "KeyStoreError",
    "KeysMissing",
    "canonical_json",
    "ed25519_key_id",
    "key_file_info",
    "load_keys",
    "public_key",
    "save_keys",
    "sign_json",
    "verify_json",
]

_FORMAT_VERSION = 1
# scrypt cost: 2**15 * 8 * 128 bytes = 32 MiB and about 0.13 s here, once per start.
_SCRYPT_N = 2**15
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_BYTES = 16
_NONCE_BYTES = 12
_SEED_BYTES = 32


# --- errors --------------------------------------------------------------------------------------


class CrossSigningError(RuntimeError):
    """The bot's cross-signing identity could not be set up or checked."""


class KeyStoreError(CrossSigningError):
    """The sealed key file cannot be read or written (wrong passphrase, damaged, unwritable)."""


class KeysMissing(KeyStoreError):
    """There is no key file at the given path."""


# --- canonical JSON and signatures (pure) --------------------------------------------------------


def canonical_json(obj: Any) -> bytes:
    """Matrix canonical JSON: sorted keys, no spaces, UTF-8 kept as is, no NaN."""
    return json.dumps(
        obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    ).encode("utf-8")


def _b64encode(data: bytes) -> str:
    """Unpadded standard base64, as Matrix writes keys and signatures."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    """Decode unpadded (or padded) standard base64."""
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _check_seed(seed: bytes) -> None:
    if len(seed) != _SEED_BYTES:
        raise ValueError(f"an Ed25519 seed is {_SEED_BYTES} bytes, not {len(seed)}")


def public_key(seed: bytes) -> str:
    """The unpadded base64 Ed25519 public key of a 32-byte seed."""
    _check_seed(seed)
    key = ECC.construct(curve="Ed25519", seed=seed)
    raw: bytes = key.public_key().export_key(format="raw")
    return _b64encode(raw)


def ed25519_key_id(public_key_b64: str) -> str:
    """The key ID Matrix uses for a cross-signing key: ``ed25519:<public key>``."""
    return f"ed25519:{public_key_b64}"


def _signable(obj: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in obj.items() if k not in ("signatures", "unsigned")})


def sign_json(obj: dict[str, Any], seed: bytes, user_id: str, key_id: str) -> dict[str, Any]:
    """A copy of ``obj`` with ``signatures[user_id][key_id]`` added (other signatures kept).

    ``key_id`` is the full ID, e.g. ``ed25519:<public key>`` or ``ed25519:<device id>``.
    """
    _check_seed(seed)
    signer = eddsa.new(ECC.construct(curve="Ed25519", seed=seed), "rfc8032")
    signature: bytes = signer.sign(_signable(obj))
    signed = copy.deepcopy(obj)
    signed.setdefault("signatures", {}).setdefault(user_id, {})[key_id] = _b64encode(signature)
    return signed


def verify_json(obj: dict[str, Any], public_key_b64: str, user_id: str, key_id: str) -> bool:
    """Whether ``obj`` carries a valid ``signatures[user_id][key_id]`` by that public key."""
    signature = (obj.get("signatures") or {}).get(user_id, {}).get(key_id)
    if not isinstance(signature, str):
        return False
    try:
        key = eddsa.import_public_key(_b64decode(public_key_b64))
        eddsa.new(key, "rfc8032").verify(_signable(obj), _b64decode(signature))
    except ValueError:  # bad signature, bad base64 or not a key: all mean "not signed by it"
        return False
    return True


# --- the three keys (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class CrossSigningKeys:
    """The seeds of the master, self-signing and user-signing keys (secrets: never logged)."""

    master_seed: bytes = field(repr=False)
    self_signing_seed: bytes = field(repr=False)
    user_signing_seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        """Refuse seeds of the wrong length at once."""
        for seed in (self.master_seed, self.self_signing_seed, self.user_signing_seed):
            _check_seed(seed)

    @classmethod
    def generate(cls) -> CrossSigningKeys:
        """Three fresh random keys."""
        return cls(*(secrets.token_bytes(_SEED_BYTES) for _ in range(3)))

    @property
    def master_public(self) -> str:
        """The master public key (unpadded base64)."""
        return public_key(self.master_seed)

    @property
    def self_signing_public(self) -> str:
        """The self-signing public key (unpadded base64)."""
        return public_key(self.self_signing_seed)

    @property
    def user_signing_public(self) -> str:
        """The user-signing public key (unpadded base64)."""
        return public_key(self.user_signing_seed)

    def to_upload(self, user_id: str) -> dict[str, Any]:
        """The ``/keys/device_signing/upload`` body: three keys, ssk and usk signed by master."""

        def key_object(public: str, usage: str) -> dict[str, Any]:
            return {
                "user_id": user_id,
                "usage": [usage],
                "keys": {ed25519_key_id(public): public},
            }

        master_id = ed25519_key_id(self.master_public)
        return {
            "master_key": key_object(self.master_public, "master"),
            "self_signing_key": sign_json(
                key_object(self.self_signing_public, "self_signing"),
                self.master_seed,
                user_id,
                master_id,
            ),
            "user_signing_key": sign_json(
                key_object(self.user_signing_public, "user_signing"),
                self.master_seed,
                user_id,
                master_id,
            ),
        }

    def sign_device(self, device_keys: dict[str, Any], user_id: str) -> dict[str, Any]:
        """The device-keys object signed by the self-signing key, ``unsigned`` left out."""
        device = {k: v for k, v in device_keys.items() if k != "unsigned"}
        return sign_json(
            device, self.self_signing_seed, user_id, ed25519_key_id(self.self_signing_public)
        )


# --- sealed storage ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyFileInfo:
    """What a key file says without its passphrase."""

    version: int
    user_id: str | None
    master_key: str | None


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    if not passphrase:
        raise KeyStoreError("PEERBOT_KEY_PASSPHRASE is empty: the key file needs a passphrase")
    key: bytes = scrypt(passphrase.encode("utf-8"), salt, 32, N=n, r=r, p=p)
    return key


def _associated_data(envelope: dict[str, Any]) -> bytes:
    # Everything but the ciphertext and tag is authenticated, so the header cannot be swapped.
    return canonical_json({k: v for k, v in envelope.items() if k not in ("ciphertext", "tag")})


def save_keys(
    path: Path, keys: CrossSigningKeys, passphrase: str, *, user_id: str | None = None
) -> None:
    """Seal the seeds with AES-GCM (key from scrypt) into ``path``, mode 0600, atomically."""
    salt = secrets.token_bytes(_SALT_BYTES)
    nonce = secrets.token_bytes(_NONCE_BYTES)
    envelope: dict[str, Any] = {
        "format": "peerbot-cross-signing-keys",
        "version": _FORMAT_VERSION,
        "user_id": user_id,
        "master_key": keys.master_public,
        "kdf": {"name": "scrypt", "n": _SCRYPT_N, "r": _SCRYPT_R, "p": _SCRYPT_P},
        "salt": _b64encode(salt),
        "cipher": "AES-256-GCM",
        "nonce": _b64encode(nonce),
    }
    plaintext = canonical_json(
        {
            "master": _b64encode(keys.master_seed),
            "self_signing": _b64encode(keys.self_signing_seed),
            "user_signing": _b64encode(keys.user_signing_seed),
        }
    )
    cipher = AES.new(
        _derive(passphrase, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P), AES.MODE_GCM, nonce=nonce
    )
    cipher.update(_associated_data(envelope))
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    envelope["ciphertext"] = _b64encode(ciphertext)
    envelope["tag"] = _b64encode(tag)
    _write_private(Path(path), json.dumps(envelope, indent=2).encode("utf-8") + b"\n")


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 via a temporary file and a rename."""
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise KeyStoreError(f"cannot write the cross-signing key file {path}: {exc}") from exc


def _read_envelope(path: Path) -> dict[str, Any]:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeysMissing(f"no cross-signing key file at {path}") from None
    except OSError as exc:
        raise KeyStoreError(f"cannot read the cross-signing key file {path}: {exc}") from exc
    try:
        envelope = json.loads(raw)
    except ValueError:
        raise KeyStoreError(f"the cross-signing key file {path} is damaged (not JSON)") from None
    if not isinstance(envelope, dict) or envelope.get("format") != "peerbot-cross-signing-keys":
        raise KeyStoreError(f"{path} is not a PeerBot cross-signing key file")
    if envelope.get("version") != _FORMAT_VERSION:
        raise KeyStoreError(
            f"the cross-signing key file {path} has version {envelope.get('version')!r}; "
            f"this PeerBot reads version {_FORMAT_VERSION}"
        )
    return envelope


def key_file_info(path: Path) -> KeyFileInfo:
    """The unencrypted header of a key file (for diagnostics); raises like :func:`load_keys`."""
    envelope = _read_envelope(path)
    user_id = envelope.get("user_id")
    master = envelope.get("master_key")
    return KeyFileInfo(
        version=int(envelope["version"]),
        user_id=user_id if isinstance(user_id, str) else None,
        master_key=master if isinstance(master, str) else None,
    )


def load_keys(path: Path, passphrase: str) -> CrossSigningKeys:
    """Open a key file written by :func:`save_keys`."""
    envelope = _read_envelope(path)
    try:
        kdf = envelope["kdf"]
        if kdf["name"] != "scrypt" or envelope["cipher"] != "AES-256-GCM":
            raise KeyStoreError(f"the cross-signing key file {path} uses an unknown cipher")
        salt = _b64decode(envelope["salt"])
        nonce = _b64decode(envelope["nonce"])
        ciphertext = _b64decode(envelope["ciphertext"])
        tag = _b64decode(envelope["tag"])
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyStoreError(f"the cross-signing key file {path} is damaged ({exc!r})") from None
    try:
        cipher = AES.new(_derive(passphrase, salt, n, r, p), AES.MODE_GCM, nonce=nonce)
        cipher.update(_associated_data(envelope))
        plaintext = cipher.decrypt_and_verify(ciphertext, tag)
    except ValueError:
        raise KeyStoreError(
            f"cannot decrypt the cross-signing key file {path}: wrong PEERBOT_KEY_PASSPHRASE, "
            "or the file was altered"
        ) from None
    try:
        seeds = json.loads(plaintext)
        keys = CrossSigningKeys(
            _b64decode(seeds["master"]),
            _b64decode(seeds["self_signing"]),
            _b64decode(seeds["user_signing"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyStoreError(f"the cross-signing key file {path} is damaged ({exc!r})") from None
    if envelope.get("master_key") not in (None, keys.master_public):
        raise KeyStoreError(f"the cross-signing key file {path} is inconsistent (master key)")
    return keys
