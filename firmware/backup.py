"""Backups of the journal, their signed manifests, and restoring one without going backwards.

A backup is SQLite's online copy plus a manifest (file hash, last global number, the open day's counters)
signed with the device key. Restoring compares the backup with an anchor kept outside the journal: the
highest global number the box is known to have committed. A restore that would lose receipts is refused.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw

from firmware.core import fdms
from firmware.core.errors import FiscalError
from firmware.journal import Journal, WriterLock, counters_json, detail_json
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
    """Write a temporary file, fsync it, rename it over `path`, fsync the directory: a power cut leaves the
    old file or the new one, never half of one. The one helper for every file the box replaces."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


class Anchor:
    """A high-water mark outside the journal: the device, the highest global number known to be committed,
    and the journal chain's link at that receipt.

    A file here; a TPM NV index where one is fitted. It only moves forward, and it moves at boot, at a day's
    close and at every backup (not every receipt: that would cost a second fsync per sale). At start the box
    compares its journal with it: a journal that is missing, behind it, of another device or with another
    history at the anchored receipt is not the one this box wrote, and the box will not issue on it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Any]:
        """{"device_id", "last_global_no", "link"}; device and link are None in an older anchor."""
        try:
            data = json.loads(self.path.read_text())
            anchored = {
                "device_id": data.get("device_id"),
                "last_global_no": int(data["last_global_no"]),
                "link": data.get("link"),
            }
        except FileNotFoundError:
            return {"device_id": None, "last_global_no": 0, "link": None}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise FiscalError(
                "BOX_ANCHOR", f"The anchor {self.path} is unreadable; the box refuses to guess."
            ) from None
        return anchored

    def value(self) -> int:
        return int(self.read()["last_global_no"])

    def advance(self, global_no: int, device_id: int | None = None, link: bytes | None = None) -> None:
        """Move the mark up to `global_no` (never down, never to another device). Callers advance it only
        from a journal that passed its check against the anchor."""
        anchored = self.read()
        if anchored["device_id"] is not None and device_id not in (None, anchored["device_id"]):
            raise FiscalError(
                "BOX_JOURNAL_FOREIGN",
                f"The anchor belongs to device {anchored['device_id']}, not {device_id}; it was not moved.",
            )
        if global_no > anchored["last_global_no"] or (device_id and anchored["device_id"] is None):
            record: dict[str, Any] = {
                "device_id": device_id or anchored["device_id"],
                "last_global_no": global_no,
            }
            if link is not None and global_no > 0:  # before the first receipt there is no link to keep
                record["link"] = link.hex()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(self.path, detail_json(record).encode())
            except OSError as error:
                raise FiscalError(
                    "BOX_ANCHOR", f"The anchor {self.path} cannot be written: {error.strerror or error}."
                ) from None

    def problems(self, journal: Journal, anchored: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """What sets the journal apart from the anchor, as boot-check findings (none when it matches).

        Give `anchored` (this anchor's `read()`) when the journal is read in a snapshot: read before the
        snapshot begins, so a writer that commits and then moves the anchor meanwhile is never taken for a
        rolled-back journal."""
        anchored = self.read() if anchored is None else anchored
        last = journal.head()["last_global_no"]
        device = journal.settings().get("device_id")
        restore = "restore the latest backup (`fiscalbox-device restore MANIFEST`)"
        if anchored["device_id"] is not None and device not in (None, anchored["device_id"]):
            return [
                {
                    "code": "BOX_JOURNAL_FOREIGN",
                    "message": f"The journal is device {device}'s, but this box is device "
                    f"{anchored['device_id']}: {restore}.",
                    "field": "device_id",
                }
            ]
        if last < anchored["last_global_no"]:
            return [
                {
                    "code": "BOX_JOURNAL_BEHIND",
                    "message": f"The journal ends at receipt {last}, but this box has committed receipts up "
                    f"to {anchored['last_global_no']}: the journal was replaced or rolled back; {restore}.",
                    "field": "last_global_no",
                }
            ]
        row = journal.receipt(anchored["last_global_no"]) if anchored["last_global_no"] else None
        if (
            anchored["link"] is not None
            and anchored["last_global_no"]
            and (row is None or row["link"].hex() != anchored["link"])
        ):
            return [
                {
                    "code": "BOX_JOURNAL_FOREIGN",
                    "message": f"The journal's receipt {anchored['last_global_no']} is not the one this box "
                    f"committed: the journal was replaced; {restore}.",
                    "field": "link",
                }
            ]
        return []


def missing_journal(path: Path, anchor: Anchor) -> FiscalError:
    """The refusal for a journal file that is not there: a box that has issued says to restore it."""
    anchored = anchor.read()
    if anchored["last_global_no"] or anchored["device_id"]:
        device = f"device {anchored['device_id'] or 'unknown'}"
        done = (
            f"has committed receipts up to {anchored['last_global_no']}"
            if anchored["last_global_no"]
            else "is registered"
        )
        return FiscalError(
            "BOX_JOURNAL_MISSING",
            f"The journal {path} is missing, but this box ({device}) {done}: restore the latest backup "
            "(`fiscalbox-device restore MANIFEST`). Nothing was created.",
        )
    return FiscalError(
        "BOX_NOT_PROVISIONED",
        f"There is no journal at {path} yet: register the box to create it (`fiscalbox register` over the "
        "link when it runs as a service, `fiscalbox-device register` on the box otherwise).",
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_backup(
    journal: Journal,
    keys: KeyStore,
    device_id: int,
    dest: Path,
    at: str,
    retain: int | None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Copy the journal online into `dest`, write its signed manifest, keep the newest `retain` copies."""
    if retain is not None and retain < 1:
        raise FiscalError("BOX_BACKUP", "--retain must keep at least one backup.", "retain")
    if dest.exists() and not dest.is_dir():
        raise FiscalError("BOX_BACKUP", f"{dest} is a file: give a folder to hold the backups.", "dest")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FiscalError(
            "BOX_BACKUP", f"The backup folder {dest} cannot be made: {error.strerror}.", "dest"
        ) from None
    head = journal.head()
    stamp = at.replace("-", "").replace(":", "")
    prefix = f"journal-{head['last_global_no']:010d}-{stamp}-"
    name = f"{prefix}{len(list(dest.glob(prefix + '*.db'))) + 1:03d}.db"  # names sort oldest first
    temporary = dest / (name + ".tmp")
    manifest_path = dest / (name + ".manifest.json")
    try:
        try:
            journal.backup_to(temporary, progress)  # pages copied of the journal's
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        os.replace(temporary, dest / name)
        _fsync_directory(dest)
        copy = Journal(dest / name, read_only=True)
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
        document = {"manifest": manifest, "signature": signature}
        write_atomically(manifest_path, (json.dumps(document, indent=1) + "\n").encode())
        removed = _retain(dest, retain, device_id, manifest_path) if retain is not None else []
    except (OSError, apsw.Error) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise FiscalError(
            "BOX_BACKUP",
            f"The backup could not be written to {dest} ({reason}): give a folder on a disk the box can "
            "write, with room for a copy of the journal.",
            "dest",
        ) from None
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


def _retain(dest: Path, keep: int, device_id: int, written: Path) -> list[str]:
    """Remove this device's oldest backups beyond `keep`: oldest by last receipt, then by time made (names
    need not sort so: a restored journal starts again lower). Never another device's, never `written`."""
    mine = []
    for path in dest.glob("journal-*.db.manifest.json"):
        try:
            manifest = json.loads(path.read_text())["manifest"]
            key = (int(manifest["last_global_no"]), str(manifest["created"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a manifest the box can read: not its to remove
        if manifest.get("device_id") == device_id:
            mine.append((key, path))
    mine.sort(key=lambda entry: (entry[0], entry[1] == written))
    removed = []
    for _, manifest_path in mine[: max(len(mine) - keep, 0)]:
        if manifest_path == written:
            continue
        database = manifest_path.with_name(manifest_path.name[: -len(".manifest.json")])
        database.unlink(missing_ok=True)
        manifest_path.unlink()
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
    """Put a verified backup in place of the journal, unless that would lose receipts or bring in another
    device's journal. Holds the journal's writer lock throughout: a running box is never restored under.

    The journal in place is measured against the backup only when it is this box's own (it passes the
    anchor's device and link check); another device's journal, another history or a file that no longer
    opens says nothing about what this box committed. Whatever was there is kept beside it, renamed
    `<journal>.replaced-<time>`, never overwritten."""
    anchored = anchor.read()
    try:  # another device's backup says so before its signature is checked (it cannot verify here)
        claimed = json.loads(manifest_path.read_text())["manifest"].get("device_id")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        claimed = None
    if anchored["device_id"] is not None and claimed not in (None, anchored["device_id"]):
        raise FiscalError(
            "BOX_RESTORE_FOREIGN",
            f"This backup is device {claimed}'s; this box is device {anchored['device_id']}. "
            "Nothing was changed.",
        )
    manifest = read_manifest(manifest_path, public_key_pem)
    if anchored["device_id"] is not None and manifest.get("device_id") != anchored["device_id"]:
        raise FiscalError(
            "BOX_RESTORE_FOREIGN",
            f"This backup is device {manifest.get('device_id')}'s; this box is device "
            f"{anchored['device_id']}. Nothing was changed.",
        )
    lock = WriterLock(journal_path)
    try:
        known = anchored["last_global_no"]
        current_head = _own_journal_head(journal_path, anchor, anchored)
        if current_head is not None:
            known = max(known, current_head)
        if manifest["last_global_no"] < known:
            raise FiscalError(
                "BOX_RESTORE_BEHIND",
                f"This backup ends at receipt {manifest['last_global_no']} but the box has committed "
                f"receipts up to {known}; restoring it would lose {known - manifest['last_global_no']} "
                "receipts. Nothing was changed.",
            )
        data = (manifest_path.parent / manifest["file"]).read_bytes()
        kept = _set_aside(journal_path)
        write_atomically(journal_path, data)
        link = bytes.fromhex(manifest["link"]) if manifest.get("link") else None
        anchor.advance(manifest["last_global_no"], manifest.get("device_id"), link)
    finally:
        lock.release()
    return {
        "restored": str(journal_path),
        "last_global_no": manifest["last_global_no"],
        "anchor": known,
        "kept": kept,
    }


def _own_journal_head(journal_path: Path, anchor: Anchor, anchored: dict[str, Any]) -> int | None:
    """The last global number of the journal in place when it is this box's own, else None."""
    if not journal_path.exists():
        return None
    try:
        current = Journal(journal_path, read_only=True)
    except FiscalError:
        return None  # a file that does not open as a journal holds nothing of this box's
    try:
        with current.reading():
            foreign = [p for p in anchor.problems(current, anchored) if p["code"] == "BOX_JOURNAL_FOREIGN"]
            return None if foreign else int(current.head()["last_global_no"])
    except FiscalError:
        return None
    finally:
        current.close()


def _set_aside(journal_path: Path) -> str | None:
    """Rename the journal in place (and its WAL files) out of the way, so a restore loses nothing."""
    if not journal_path.exists():
        for suffix in ("-wal", "-shm"):
            Path(str(journal_path) + suffix).unlink(missing_ok=True)
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    kept = journal_path.with_name(f"{journal_path.name}.replaced-{stamp}")
    n = 1
    while any(Path(str(kept) + suffix).exists() for suffix in ("", "-wal", "-shm")):
        n += 1  # never over a journal set aside before: it may be the only copy of some receipts
        kept = journal_path.with_name(f"{journal_path.name}.replaced-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(journal_path) + suffix)
        if source.exists():
            os.replace(source, str(kept) + suffix)
    _fsync_directory(journal_path.parent)
    return str(kept)
