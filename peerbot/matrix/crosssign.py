"""The bot's own cross-signing identity, so that Element trusts its device.

matrix-nio has no cross-signing. Element's "exclude insecure devices" mode only shares room keys
with devices that their owner has cross-signed, so the bot makes its own three keys (master,
self-signing, user-signing), uploads them once and signs its device with the self-signing key
(recipe: ``shared/notes/e2ee-cross-signing.md``).

The pure parts (canonical JSON, Ed25519 keys, signatures, the sealed key file) are plain
functions. :func:`bootstrap` and :func:`device_signed_by_owner` talk to the homeserver through a
logged-in ``nio.AsyncClient`` with raw client-server API calls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nio
from Crypto.Cipher import AES
from Crypto.Protocol.KDF import scrypt
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

__all__ = [
    "BootstrapReport",
    "CrossSigningError",
    "CrossSigningKeys",
    "IdentityMismatch",
    "KeyFileInfo",
    "KeyStoreError",
    "KeysLost",
    "KeysMissing",
    "ServerError",
    "bootstrap",
    "canonical_json",
    "device_signed_by_owner",
    "ed25519_key_id",
    "key_file_info",
    "load_keys",
    "public_key",
    "save_keys",
    "sign_json",
    "verify_json",
]

log = logging.getLogger(__name__)

_API = "/_matrix/client/v3"
_FORMAT_VERSION = 1
# scrypt cost: 2**15 * 8 * 128 bytes = 32 MiB and about 0.13 s here, once per start.
_SCRYPT_N = 2**15
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_BYTES = 16
_NONCE_BYTES = 12
_SEED_BYTES = 32
_MAX_RATE_LIMIT_RETRIES = 5


# --- errors --------------------------------------------------------------------------------------


class CrossSigningError(RuntimeError):
    """The bot's cross-signing identity could not be set up or checked."""


class KeyStoreError(CrossSigningError):
    """The sealed key file cannot be read or written (wrong passphrase, damaged, unwritable)."""


class KeysMissing(KeyStoreError):
    """There is no key file at the given path."""


class IdentityMismatch(CrossSigningError):
    """The server holds a master key other than the stored one."""


class KeysLost(CrossSigningError):
    """The server has a cross-signing identity for the bot but the keys are not stored here."""


class ServerError(CrossSigningError):
    """The homeserver refused a cross-signing call or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, errcode: str | None = None):
        """Keep the HTTP ``status`` and Matrix ``errcode`` beside the message."""
        super().__init__(message)
        self.status = status
        self.errcode = errcode


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


# --- talking to the homeserver -------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapReport:
    """What :func:`bootstrap` did."""

    user_id: str
    device_id: str
    master_key: str
    """The master public key now in force (what users' clients pin)."""
    keys_created: bool
    """New keys were generated (first start, or a reset)."""
    keys_uploaded: bool
    """The keys were uploaded to the homeserver by this call."""
    identity_reset: bool
    """The server's previous identity was replaced: every user sees an identity change."""
    device_signed_now: bool
    """The device was signed by this call (False: it already was)."""

    def summary(self) -> str:
        """One line for the log."""
        if self.identity_reset:
            keys = "identity RESET (new master key uploaded)"
        elif self.keys_created:
            keys = "keys created and uploaded"
        elif self.keys_uploaded:
            keys = "stored keys uploaded"
        else:
            keys = "stored keys match the server"
        device = "signed now" if self.device_signed_now else "already signed"
        return (
            f"cross-signing for {self.user_id}: {keys}; master key {self.master_key}; "
            f"device {self.device_id} {device}"
        )


async def _call(
    client: nio.AsyncClient, method: str, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """One raw client-server API call; returns the HTTP status and the JSON answer."""
    if not client.access_token:
        raise CrossSigningError("the Matrix client is not logged in")
    headers = {
        "Authorization": f"Bearer {client.access_token}",
        "Content-Type": "application/json",
    }
    for _ in range(_MAX_RATE_LIMIT_RETRIES + 1):
        status = 0
        try:
            response = await client.send(method, _API + path, json.dumps(body), headers)
            try:
                status = response.status
                answer = await response.json(content_type=None)
            finally:
                response.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServerError(f"{method} {path}: cannot reach the homeserver: {exc!r}") from exc
        except ValueError:
            raise ServerError(f"{method} {path}: HTTP {status}, not a JSON answer") from None
        if not isinstance(answer, dict):
            raise ServerError(f"{method} {path}: HTTP {status}, unexpected answer", status=status)
        if status == 429:
            delay_ms = answer.get("retry_after_ms")
            delay_ms = delay_ms if isinstance(delay_ms, int) else 1000
            await asyncio.sleep(min(delay_ms, 30_000) / 1000)
            continue
        return status, answer
    raise ServerError(
        f"{method} {path}: still rate-limited", status=429, errcode="M_LIMIT_EXCEEDED"
    )


def _raise_for(method: str, path: str, status: int, answer: dict[str, Any]) -> None:
    if status != 200:
        errcode = answer.get("errcode")
        raise ServerError(
            f"{method} {path}: HTTP {status} {errcode} {answer.get('error')}",
            status=status,
            errcode=errcode if isinstance(errcode, str) else None,
        )


async def _query_keys(
    client: nio.AsyncClient, user_id: str, devices: list[str] | None = None
) -> dict[str, Any]:
    """``POST /keys/query`` for one user (all devices unless ``devices`` is given)."""
    body = {"device_keys": {user_id: devices or []}}
    status, answer = await _call(client, "POST", "/keys/query", body)
    _raise_for("POST", "/keys/query", status, answer)
    return answer


def _single_key(key_object: Any) -> str | None:
    """The one public key of a cross-signing key object, or None."""
    if not isinstance(key_object, dict):
        return None
    keys = key_object.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        return None
    (value,) = keys.values()
    return value if isinstance(value, str) else None


def _server_keys(answer: dict[str, Any], user_id: str) -> tuple[str | None, str | None]:
    """The master and self-signing public keys the server holds for ``user_id``."""
    master = _single_key((answer.get("master_keys") or {}).get(user_id))
    ssk_object = (answer.get("self_signing_keys") or {}).get(user_id)
    return master, _single_key(ssk_object)


async def _upload_keys(
    client: nio.AsyncClient, user_id: str, keys: CrossSigningKeys, password: str | None
) -> None:
    """``/keys/device_signing/upload``, answering the password UIA step if the server asks."""
    path = "/keys/device_signing/upload"
    body = keys.to_upload(user_id)
    status, answer = await _call(client, "POST", path, body)
    if status == 401 and "session" in answer:
        flows = answer.get("flows") or []
        offers_password = any(
            isinstance(f, dict) and f.get("stages") == ["m.login.password"] for f in flows
        )
        if password is None or not offers_password:
            raise ServerError(
                "the homeserver wants the bot's password to replace its cross-signing keys"
                + ("" if offers_password else " (and offers no password step)")
                + ": set matrix.password for the reset",
                status=401,
                errcode=answer.get("errcode") if isinstance(answer.get("errcode"), str) else None,
            )
        body["auth"] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password,
            "session": answer["session"],
        }
        status, answer = await _call(client, "POST", path, body)
    _raise_for("POST", path, status, answer)


def _device_signed(device: dict[str, Any], user_id: str, ssk_public: str) -> bool:
    return verify_json(device, ssk_public, user_id, ed25519_key_id(ssk_public))


async def bootstrap(
    client: nio.AsyncClient,
    *,
    key_path: Path,
    passphrase: str,
    password: str | None,
    reset: bool = False,
) -> BootstrapReport:
    """Make sure the bot has a cross-signing identity and its current device is signed by it.

    Idempotent: on a normal restart it only reads the key file and queries the server. The client
    must be logged in with encryption on; its device keys are uploaded first if nio has not yet.
    Raises :class:`KeysLost` or :class:`IdentityMismatch` rather than changing the identity users
    see, unless ``reset`` is true; ``password`` answers the server's confirmation for a reset.
    """
    user_id: str = client.user_id
    device_id: str | None = client.device_id
    if not client.access_token or not device_id:
        raise CrossSigningError("log the Matrix client in before the cross-signing bootstrap")
    if client.olm is None:
        raise CrossSigningError(
            "the Matrix client has no encryption (encryption_enabled and store_path are needed)"
        )
    if client.should_upload_keys:
        response = await client.keys_upload()
        if isinstance(response, nio.ErrorResponse):
            raise ServerError(f"uploading the device keys failed: {response.message}")

    try:
        # scrypt is deliberately slow (about 0.1 s of CPU): keep it off the event loop.
        stored: CrossSigningKeys | None = await asyncio.to_thread(load_keys, key_path, passphrase)
    except KeysMissing:
        stored = None
    else:
        owner = key_file_info(key_path).user_id
        if owner is not None and owner != user_id:
            raise IdentityMismatch(
                f"{key_path} holds the cross-signing keys of {owner}, not {user_id}"
            )

    answer = await _query_keys(client, user_id)
    server_master, server_ssk = _server_keys(answer, user_id)

    created = uploaded = identity_reset = False
    if stored is not None:
        keys = stored
        if server_master == keys.master_public and server_ssk == keys.self_signing_public:
            pass
        elif server_master is None or server_master == keys.master_public:
            await _upload_keys(client, user_id, keys, password)
            uploaded = True
        elif reset:
            log.warning(
                "replacing the server's cross-signing master key %s with the stored one %s",
                server_master,
                keys.master_public,
            )
            await _upload_keys(client, user_id, keys, password)
            uploaded = identity_reset = True
        else:
            raise IdentityMismatch(
                f"the homeserver holds another cross-signing master key for {user_id} "
                f"({server_master}) than {key_path} ({keys.master_public}); start with "
                "--reset-identity to upload the stored keys: every user will see the bot's "
                "identity change"
            )
    else:
        if server_master is not None and not reset:
            raise KeysLost(
                f"the cross-signing keys are lost (no {key_path}, but {user_id} has master key "
                f"{server_master} on the homeserver); start with --reset-identity to make new "
                "ones: every user will see the bot's identity change"
            )
        keys = CrossSigningKeys.generate()
        # Saved before the upload: keys on the server that we do not hold would be lost keys.
        await asyncio.to_thread(save_keys, key_path, keys, passphrase, user_id=user_id)
        await _upload_keys(client, user_id, keys, password)
        created = uploaded = True
        identity_reset = server_master is not None
        if identity_reset:
            log.warning(
                "cross-signing identity of %s RESET: new master key %s replaces %s",
                user_id,
                keys.master_public,
                server_master,
            )

    device = (answer.get("device_keys") or {}).get(user_id, {}).get(device_id)
    if not isinstance(device, dict):
        raise CrossSigningError(
            f"the homeserver has no keys for the bot's device {device_id}: upload them first"
        )
    signed_now = False
    if not _device_signed(device, user_id, keys.self_signing_public):
        await _sign_device(client, user_id, device_id, device, keys)
        signed_now = True

    report = BootstrapReport(
        user_id=user_id,
        device_id=device_id,
        master_key=keys.master_public,
        keys_created=created,
        keys_uploaded=uploaded,
        identity_reset=identity_reset,
        device_signed_now=signed_now,
    )
    log.info("%s", report.summary())
    return report


async def _sign_device(
    client: nio.AsyncClient,
    user_id: str,
    device_id: str,
    device: dict[str, Any],
    keys: CrossSigningKeys,
) -> None:
    """Upload the self-signing key's signature of the device, then check that it holds."""
    path = "/keys/signatures/upload"
    body = {user_id: {device_id: keys.sign_device(device, user_id)}}
    status, answer = await _call(client, "POST", path, body)
    _raise_for("POST", path, status, answer)
    # The server answers 200 even when it rejects a signature: the verdict is in "failures".
    failures = answer.get("failures") or {}
    if failures:
        raise ServerError(
            f"the homeserver rejected the signature of device {device_id}: "
            f"{json.dumps(failures, sort_keys=True)}"
        )
    if not await device_signed_by_owner(client, user_id, device_id):
        raise CrossSigningError(
            f"the signature of device {device_id} was accepted but does not show in /keys/query"
        )


async def device_signed_by_owner(client: nio.AsyncClient, user_id: str, device_id: str) -> bool:
    """Whether ``/keys/query`` shows the device signed by its owner's self-signing key, itself
    signed by the owner's master key (what Element calls "signed by owner")."""
    answer = await _query_keys(client, user_id, [device_id])
    master_object = (answer.get("master_keys") or {}).get(user_id)
    ssk_object = (answer.get("self_signing_keys") or {}).get(user_id)
    master, ssk = _single_key(master_object), _single_key(ssk_object)
    device = (answer.get("device_keys") or {}).get(user_id, {}).get(device_id)
    if master is None or ssk is None or not isinstance(device, dict):
        return False
    assert isinstance(ssk_object, dict)
    return verify_json(ssk_object, master, user_id, ed25519_key_id(master)) and _device_signed(
        device, user_id, ssk
    )
