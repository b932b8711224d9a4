"""The bot's own cross-signing identity, so that Element trusts its device.

matrix-nio has no cross-signing. Element's "exclude insecure devices" mode only shares room keys
with devices that their owner has cross-signed, so the bot makes its own three keys (master,
self-signing, user-signing), uploads them once and signs its device with the self-signing key
(recipe: ``shared/notes/e2ee-cross-signing.md``).

The keys, signatures and the sealed key file are in :mod:`peerbot.signing` (re-exported here).
:func:`bootstrap` and :func:`device_signed_by_owner` talk to the homeserver through anything
with the :class:`HomeserverAccess` shape (``peerbot.matrix.MatrixClient``): raw client-server API
calls, no matrix-nio here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from peerbot.matrix.signing import (
    CrossSigningError,
    CrossSigningKeys,
    KeyFileInfo,
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

__all__ = [
    "BootstrapReport",
    "CrossSigningError",
    "CrossSigningKeys",
    "HomeserverAccess",
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


# --- errors --------------------------------------------------------------------------------------


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


# --- talking to the homeserver -------------------------------------------------------------------


class HomeserverAccess(Protocol):
    """What the bootstrap needs of a logged-in client (``peerbot.matrix.MatrixClient`` has it)."""

    @property
    def user_id(self) -> str:
        """The logged-in account."""
        ...

    @property
    def device_id(self) -> str | None:
        """The device in use; None before a login."""
        ...

    async def raw(
        self, method: str, path: str, body: Mapping[str, Any] | None
    ) -> tuple[int, dict[str, Any] | None]:
        """One authenticated call, rate limits waited out: the HTTP status and the JSON object
        answered (None when the answer is not one); raises when the server cannot be reached."""
        ...


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
    client: HomeserverAccess, method: str, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """One raw client-server API call; returns the HTTP status and the JSON answer."""
    status, answer = await client.raw(method, _API + path, body)
    if answer is None:
        raise ServerError(f"{method} {path}: HTTP {status}, not a JSON object", status=status)
    return status, answer


def _raise_for(method: str, path: str, status: int, answer: dict[str, Any]) -> None:
    if status != 200:
        errcode = answer.get("errcode")
        raise ServerError(
            f"{method} {path}: HTTP {status} {errcode} {answer.get('error')}",
            status=status,
            errcode=errcode if isinstance(errcode, str) else None,
        )


async def _query_keys(
    client: HomeserverAccess, user_id: str, devices: list[str] | None = None
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
    client: HomeserverAccess, user_id: str, keys: CrossSigningKeys, password: str | None
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
    client: HomeserverAccess,
    *,
    key_path: Path,
    passphrase: str,
    password: str | None,
    reset: bool = False,
) -> BootstrapReport:
    """Make sure the bot has a cross-signing identity and its current device is signed by it.

    Idempotent: on a normal restart it only reads the key file and queries the server. The client
    must be logged in with encryption on and its device keys uploaded
    (``MatrixClient.setup_encryption`` does both, then calls this).
    Raises :class:`KeysLost` or :class:`IdentityMismatch` rather than changing the identity users
    see, unless ``reset`` is true; ``password`` answers the server's confirmation for a reset.
    """
    user_id = str(client.user_id)
    device_id = client.device_id
    if not device_id:
        raise CrossSigningError("log the Matrix client in before the cross-signing bootstrap")

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
    client: HomeserverAccess,
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


async def device_signed_by_owner(client: HomeserverAccess, user_id: str, device_id: str) -> bool:
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
