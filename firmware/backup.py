"""Backups of the journal, their signed manifests, and restoring one without going backwards.

A backup is SQLite's online copy plus a manifest (file hash, last global number, the open day's counters)
signed with the device key. Restoring compares the backup with an anchor kept outside the journal: the
highest global number the box is known to have committed. A restore that would lose receipts is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from firmware.core import fdms
from firmware.core.errors import FiscalError
from firmware.journal import Journal, counters_json, detail_json
from hardware import KeyStore
from hardware.signatures import load_public_key, verify

FORMAT = "fiscalbox-backup/1"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Write a temporary file, fsync it, rename it over `path`, fsync the directory."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


class Anchor:
    """A high-water mark outside the journal: the highest global number known to be committed.

    A file here; a TPM NV counter where one is fitted. It only moves forward, and it moves at boot, day
    open and close, and every backup (not every receipt: that would cost a second fsync per sale).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def value(self) -> int:
        try:
            return int(json.loads(self.path.read_text())["last_global_no"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError):
            raise FiscalError(
                "BOX_ANCHOR", f"The anchor {self.path} is unreadable; restore refuses to guess."
            ) from None

    def advance(self, global_no: int) -> None:
        if global_no > self.value():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, detail_json({"last_global_no": global_no}).encode())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_backup(
    journal: Journal, keys: KeyStore, device_id: int, dest: Path, at: str, retain: int | None
) -> dict[str, Any]:
    """Copy the journal online into `dest`, write its signed manifest, keep the newest `retain` copies."""
    if retain is not None and retain < 1:
        raise FiscalError("BOX_BACKUP", "--retain must keep at least one backup.", "retain")
    dest.mkdir(parents=True, exist_ok=True)
    head = journal.head()
    stamp = at.replace("-", "").replace(":", "")
    prefix = f"journal-{head['last_global_no']:010d}-{stamp}-"
    name = f"{prefix}{len(list(dest.glob(prefix + '*.db'))) + 1:03d}.db"  # names sort oldest first
    temporary = dest / (name + ".tmp")
    try:
        journal.backup_to(temporary)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise FiscalError(
            "BOX_BACKUP", f"The backup could not be written to {dest}: {error.strerror}."
        ) from None
    os.replace(temporary, dest / name)
    _fsync_directory(dest)
    copy = Journal(dest / name)
    try:
        copied = copy.head()
        counters = copy.counters(copied["day_no"])
    finally:
        copy.close()
    manifest = {
        "format": FORMAT,
        "device_id": device_id,
        "created": at,
        "file": name,
        "sha256": file_sha256(dest / name),
        "last_global_no": copied["last_global_no"],
        "day_no": copied["day_no"],
        "link": copied["link"].hex(),
        "counters": counters_json(counters),
    }
    signature = fdms.b64(keys.sign(detail_json(manifest).encode()))
    manifest_path = dest / (name + ".manifest.json")
    write_atomically(
        manifest_path, (json.dumps({"manifest": manifest, "signature": signature}, indent=1) + "\n").encode()
    )
    removed = _retain(dest, retain) if retain is not None else []
    with journal.transaction():
        journal.log(
            at,
            "backup",
            {"file": name, "last_global_no": manifest["last_global_no"], "sha256": manifest["sha256"]},
        )
    return {
        "file": str(dest / name),
        "manifest_file": str(manifest_path),
        "manifest": manifest,
        "removed": removed,
    }


def _retain(dest: Path, keep: int) -> list[str]:
    manifests = sorted(dest.glob("journal-*.db.manifest.json"))
    removed = []
    for manifest in manifests[:-keep]:
        database = manifest.with_name(manifest.name[: -len(".manifest.json")])
        database.unlink(missing_ok=True)
        manifest.unlink()
        removed.append(database.name)
    return removed


def read_manifest(manifest_path: Path, public_key_pem: bytes) -> dict[str, Any]:
    """The manifest, once its signature and the backup file's hash check out."""
    try:
        document = json.loads(manifest_path.read_text())
        manifest, signature = document["manifest"], fdms.unb64(document["signature"])
    except (OSError, ValueError, KeyError, TypeError, FiscalError):
        raise FiscalError("BOX_BACKUP_INVALID", f"{manifest_path} is not a backup manifest.") from None
    if manifest.get("format") != FORMAT:
        raise FiscalError("BOX_BACKUP_INVALID", f"{manifest_path} is not a {FORMAT} manifest.")
    if not verify(load_public_key(public_key_pem), detail_json(manifest).encode(), signature):
        raise FiscalError(
            "BOX_BACKUP_INVALID", "The backup manifest's signature does not verify with this box's key."
        )
    database = manifest_path.parent / manifest["file"]
    if not database.exists() or file_sha256(database) != manifest["sha256"]:
        raise FiscalError("BOX_BACKUP_INVALID", f"The backup file {database.name} is missing or was changed.")
    return manifest


def restore(manifest_path: Path, journal_path: Path, public_key_pem: bytes, anchor: Anchor) -> dict[str, Any]:
    """Put a verified backup in place of the journal, unless that would lose receipts."""
    manifest = read_manifest(manifest_path, public_key_pem)
    known = anchor.value()
    if journal_path.exists():
        current = Journal(journal_path)
        try:
            known = max(known, current.head()["last_global_no"])
        finally:
            current.close()
    if manifest["last_global_no"] < known:
        raise FiscalError(
            "BOX_RESTORE_BEHIND",
            f"This backup ends at receipt {manifest['last_global_no']} but the box has committed receipts "
            f"up to {known}; restoring it would lose {known - manifest['last_global_no']} receipts. "
            "Nothing was changed.",
        )
    data = (manifest_path.parent / manifest["file"]).read_bytes()
    for suffix in ("-wal", "-shm"):
        Path(str(journal_path) + suffix).unlink(missing_ok=True)
    write_atomically(journal_path, data)
    anchor.advance(manifest["last_global_no"])
    return {"restored": str(journal_path), "last_global_no": manifest["last_global_no"], "anchor": known}
