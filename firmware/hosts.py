"""The host keys enrolled on the box: who may talk to it over the link, and in which role (docs/link.md 5).

One JSON file beside the journal, written whole and atomically (a temporary file, fsync, rename, fsync of
the folder), so a power cut leaves the old list or the new one, never half of either. Keys are ECDSA P-256
public keys only; a revoked key stays listed with the time it was revoked, and is never enrolled again.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from firmware.backup import write_atomically
from firmware.core.errors import FiscalError
from firmware.cose import key_id

ROLES = ("pos", "operator")
FIELDS = ("kid", "role", "label", "public_key", "enrolled_at", "revoked_at")
LABEL = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
FORMAT = 1


def load_p256(public_key_der: bytes) -> ec.EllipticCurvePublicKey:
    """An ECDSA P-256 public key from its SubjectPublicKeyInfo DER; any other key is BOX_LINK_KEY."""
    key = None
    if isinstance(public_key_der, (bytes, bytearray, memoryview)):  # bytes(n) of a number would allocate n
        try:
            key = serialization.load_der_public_key(bytes(public_key_der))
        except (ValueError, TypeError):
            pass
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise FiscalError(
            "BOX_LINK_KEY",
            "A host key must be an ECDSA P-256 public key (SubjectPublicKeyInfo, DER); nothing was enrolled.",
            "public_key",
        )
    return key


class HostKeys:
    """The enrolled host keys, read once from `path` (a missing file is an empty list) and kept in memory;
    every change is written through before it is answered."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._entries: list[dict[str, Any]] = self._load()

    # -----------------------------------------------------------------------------------------------------
    # Reading

    def _damaged(self, why: str) -> FiscalError:
        return FiscalError(
            "BOX_HOSTS",
            f"The host keys file {self.path} is damaged ({why}): restore it from a backup, or remove it and "
            "enroll the hosts again.",
        )

    def _load(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as error:
            raise self._damaged(getattr(error, "strerror", None) or "not UTF-8 text") from None
        try:
            data = json.loads(text)
        except ValueError:
            raise self._damaged("not JSON") from None
        if (
            not isinstance(data, dict)
            or data.get("format") != FORMAT
            or not isinstance(data.get("keys"), list)
        ):
            raise self._damaged(f'not {{"format": {FORMAT}, "keys": [...]}}')
        entries = []
        for n, entry in enumerate(data["keys"]):
            entries.append(self._checked(entry, n))
        if len({e["kid"] for e in entries}) != len(entries):
            raise self._damaged("a key is listed twice")
        return entries

    def _checked(self, entry: Any, n: int) -> dict[str, Any]:
        """One stored entry, checked field by field; its kid must be its key's."""
        if not isinstance(entry, dict) or set(entry) != set(FIELDS):
            raise self._damaged(f"entry {n} does not have the fields {', '.join(FIELDS)}")
        texts = ("kid", "role", "label", "public_key", "enrolled_at")
        if not all(isinstance(entry[name], str) for name in texts) or not (
            entry["revoked_at"] is None or isinstance(entry["revoked_at"], str)
        ):
            raise self._damaged(f"entry {n} has a field of the wrong type")
        if entry["role"] not in ROLES:
            raise self._damaged(f"entry {n} has the role {entry['role']!r}")
        try:
            key = serialization.load_pem_public_key(entry["public_key"].encode())
        except (ValueError, TypeError):
            raise self._damaged(f"entry {n}'s public key is not a PEM public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise self._damaged(f"entry {n}'s public key is not ECDSA P-256")
        if key_id(key).hex() != entry["kid"]:
            raise self._damaged(f"entry {n}'s kid is not its key's")
        self._keys[entry["kid"]] = key
        return {name: entry[name] for name in FIELDS}

    def entries(self) -> list[dict[str, Any]]:
        """Every key ever enrolled, in enrollment order, revoked ones included."""
        return [dict(entry) for entry in self._entries]

    def find(self, kid: bytes) -> dict[str, Any] | None:
        """The entry of `kid`, revoked or not; None when no such key was ever enrolled."""
        wanted = bytes(kid).hex()
        for entry in self._entries:
            if entry["kid"] == wanted:
                return dict(entry)
        return None

    def public_key(self, kid: bytes) -> ec.EllipticCurvePublicKey | None:
        """The enrolled key named `kid`, to verify a request's signature with."""
        return self._keys.get(bytes(kid).hex())

    def has_operator(self) -> bool:
        """Whether an operator key is enrolled and not revoked."""
        return any(e["role"] == "operator" and e["revoked_at"] is None for e in self._entries)

    # -----------------------------------------------------------------------------------------------------
    # Changing

    def enroll(self, public_key_der: bytes, role: str, label: str, at: str) -> dict[str, Any]:
        """Enroll a P-256 key in `role`. The same key again in the same role answers its entry (a host
        retrying after a lost answer); in another role, or once revoked, it is refused."""
        if role not in ROLES:
            raise FiscalError("BOX_LINK_SCHEMA", "A host key's role is pos or operator.", "role")
        if not isinstance(label, str) or not LABEL.fullmatch(label):
            raise FiscalError(
                "BOX_LINK_SCHEMA", "A host key's label is 1 to 64 characters, no control characters.", "label"
            )
        key = load_p256(public_key_der)
        kid = key_id(key)
        with self._lock:
            known = self.find(kid)
            if known is not None:
                if known["revoked_at"] is not None:
                    raise FiscalError(
                        "BOX_LINK_REVOKED",
                        f"Key {known['kid']} ({known['label']}) was revoked at {known['revoked_at']} and "
                        "cannot be enrolled again: make the host a new key.",
                        "public_key",
                    )
                if known["role"] != role:
                    raise FiscalError(
                        "BOX_LINK_ENROLL",
                        f"Key {known['kid']} is already enrolled as {known['role']} ({known['label']}): "
                        "revoke it and enroll a new key for the other role.",
                        "role",
                    )
                return known
            pem = key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            entry: dict[str, Any] = {
                "kid": kid.hex(),
                "role": role,
                "label": label,
                "public_key": pem.decode(),
                "enrolled_at": at,
                "revoked_at": None,
            }
            self._write([*self._entries, entry])
            self._keys[entry["kid"]] = key
            return dict(entry)

    def revoke(self, kid: bytes, at: str) -> dict[str, Any]:
        """Revoke a key; it stays listed. The last operator key is kept: without one nobody could enroll or
        revoke again on a registered box."""
        with self._lock:
            known = self.find(kid)
            if known is None:
                raise FiscalError(
                    "BOX_LINK_UNKNOWN_KEY", f"No host key {bytes(kid).hex()} is enrolled on this box.", "kid"
                )
            if known["revoked_at"] is not None:
                return known
            operators = [
                e["kid"] for e in self._entries if e["role"] == "operator" and e["revoked_at"] is None
            ]
            if operators == [known["kid"]]:
                raise FiscalError(
                    "BOX_LINK_LAST_OPERATOR",
                    f"Key {known['kid']} ({known['label']}) is the box's last operator key: enroll another "
                    "operator key first, then revoke this one.",
                    "kid",
                )
            entries = [dict(e, revoked_at=at) if e["kid"] == known["kid"] else e for e in self._entries]
            self._write(entries)
            return dict(known, revoked_at=at)

    def _write(self, entries: list[dict[str, Any]]) -> None:
        """Replace the file atomically; only once it is on disk does the list in memory change."""
        text = json.dumps({"format": FORMAT, "keys": entries}, indent=1, sort_keys=True) + "\n"
        try:
            write_atomically(self.path, text.encode())
        except OSError as error:
            raise FiscalError(
                "BOX_HOSTS",
                f"The host keys file {self.path} cannot be written ({error.strerror}); nothing was changed.",
            ) from None
        self._entries = entries
