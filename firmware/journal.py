"""The fiscal memory: one SQLite file in WAL mode with synchronous=FULL, one writer.

Everything the box has acknowledged is here: the identity and settings in force, fiscal days, receipts
(the exact JSON sent, hash, signature, QR data), per-day counters kept incrementally, the chain head, the
outbox, the print log and an audit log of every state change. Issuing a receipt is one transaction; the box
answers only after COMMIT returns, and with synchronous=FULL a returned COMMIT has reached the disk's WAL.

apsw rather than the stdlib `sqlite3`: it bundles a known SQLite (the same on every box, whatever the OS
ships), leaves transactions entirely to us, and exposes the VFS layer the power-cut tests use, so the code
under those tests is the code in production.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from firmware.core import chain
from firmware.core.errors import FiscalError

SCHEMA_VERSION = 4

# Each entry upgrades a journal from the version before it; a journal is never downgraded.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
        """CREATE TABLE days (
            day_no INTEGER PRIMARY KEY,
            opened TEXT NOT NULL,
            status TEXT NOT NULL,
            first_global_no INTEGER,
            close_request TEXT,
            close_hash TEXT,
            close_signature TEXT,
            close_requested_at TEXT,
            closed_at TEXT,
            server_signature TEXT,
            closing_error TEXT)""",
        """CREATE TABLE receipts (
            global_no INTEGER PRIMARY KEY,
            day_no INTEGER NOT NULL,
            counter INTEGER NOT NULL,
            type TEXT NOT NULL,
            currency TEXT NOT NULL,
            date TEXT NOT NULL,
            total INTEGER NOT NULL,
            invoice_no TEXT NOT NULL,
            note_of INTEGER,
            body TEXT NOT NULL,
            hash TEXT NOT NULL,
            signature TEXT NOT NULL,
            qr_data TEXT NOT NULL,
            link BLOB NOT NULL,
            UNIQUE (day_no, counter))""",
        """CREATE INDEX receipts_invoice_no ON receipts (invoice_no)""",
        """CREATE INDEX receipts_note_of ON receipts (note_of) WHERE note_of IS NOT NULL""",
        """CREATE TABLE counters (
            day_no INTEGER NOT NULL,
            kind INTEGER NOT NULL,
            currency TEXT NOT NULL,
            sub INTEGER NOT NULL,
            pct INTEGER NOT NULL,
            value INTEGER NOT NULL,
            PRIMARY KEY (day_no, kind, currency, sub, pct)) WITHOUT ROWID""",
        """CREATE TABLE head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            last_global_no INTEGER NOT NULL,
            day_no INTEGER NOT NULL,
            link BLOB NOT NULL,
            audit_seq INTEGER NOT NULL,
            audit_link BLOB NOT NULL)""",
        """CREATE TABLE outbox (
            global_no INTEGER PRIMARY KEY,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            receipt_id INTEGER,
            server_date TEXT,
            server_signature TEXT,
            errors TEXT,
            updated TEXT NOT NULL)""",
        """CREATE TABLE print_log (
            global_no INTEGER PRIMARY KEY,
            printed INTEGER NOT NULL,
            copies INTEGER NOT NULL,
            last_at TEXT NOT NULL)""",  # renamed in version 2
        """CREATE TABLE audit_log (
            seq INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            event TEXT NOT NULL,
            detail TEXT NOT NULL,
            link BLOB NOT NULL)""",
        """CREATE TABLE checkpoints (
            seq INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            global_no INTEGER NOT NULL,
            link BLOB NOT NULL,
            audit_seq INTEGER NOT NULL,
            audit_link BLOB NOT NULL,
            day_no INTEGER NOT NULL,
            counters TEXT NOT NULL,
            settings TEXT NOT NULL,
            signature BLOB NOT NULL)""",
        """INSERT INTO head VALUES (1, 0, 0, zeroblob(32), 0, zeroblob(32))""",
    ],
    # A print is now recorded when it starts as well as when it ends, so a receipt half-printed before a
    # paper-out or power cut is reprinted as COPY. Version 1 rows recorded only finished prints.
    2: [
        "ALTER TABLE print_log RENAME COLUMN copies TO started",
        "ALTER TABLE print_log RENAME COLUMN printed TO completed",
        "UPDATE print_log SET completed = started",
    ],
    # Delivery to FDMS: when the day's OpenDay was accepted, the device keys retired by certificate renewal
    # (receipts keep verifying with the key that signed them), and the files an offline-mode device sent.
    3: [
        "ALTER TABLE days ADD COLUMN open_sent_at TEXT",
        # A credit or debit note may name its original by FDMS's receiptID.
        "CREATE INDEX outbox_receipt_id ON outbox (receipt_id) WHERE receipt_id IS NOT NULL",
        # Delivery asks for the next undelivered receipt at every step: without this it walks every row
        # ever delivered, so a box would deliver more slowly with each year of its life.
        "CREATE INDEX outbox_pending ON outbox (global_no) WHERE state = 'pending'",
        # ... and the receipts FDMS flagged, which a day's close and the status look for.
        "CREATE INDEX outbox_flagged ON outbox (global_no) WHERE errors IS NOT NULL AND errors != '[]'",
        """CREATE TABLE device_keys (
            seq INTEGER PRIMARY KEY,
            algorithm TEXT NOT NULL,
            public_key TEXT NOT NULL,
            last_global_no INTEGER NOT NULL,
            retired_at TEXT NOT NULL)""",
        """CREATE TABLE files (
            day_no INTEGER NOT NULL,
            sequence INTEGER NOT NULL,
            first_global_no INTEGER,
            last_global_no INTEGER,
            has_footer INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            operation_id TEXT,
            status TEXT NOT NULL,
            error TEXT,
            updated TEXT NOT NULL,
            close_requested_at TEXT,
            PRIMARY KEY (day_no, sequence))""",
    ],
    # Exactly once from the POS: the request ID of each sale that came with one, written in the receipt's
    # own transaction, so a retry after a lost answer finds its receipt across power cuts (docs/link.md 6).
    # Keyed on the host key that sent it too: one till's IDs never reach another till's receipts.
    4: [
        """CREATE TABLE requests (
            host TEXT NOT NULL,
            request_id TEXT NOT NULL,
            sale_sha256 TEXT NOT NULL,
            global_no INTEGER NOT NULL,
            PRIMARY KEY (host, request_id))""",
    ],
}

DAY_COLUMNS = (
    "day_no",
    "opened",
    "status",
    "first_global_no",
    "close_request",
    "close_hash",
    "close_signature",
    "close_requested_at",
    "closed_at",
    "server_signature",
    "closing_error",
    "open_sent_at",
)

OPENED = "FiscalDayOpened"
CLOSE_INITIATED = "FiscalDayCloseInitiated"
CLOSED = "FiscalDayClosed"
CLOSE_FAILED = "FiscalDayCloseFailed"

CounterKey = tuple[int, str, int, int]


def detail_json(value: Any) -> str:
    """Audit details and settings are stored as compact JSON with sorted keys, so their links are stable."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Head:
    """What issuing the next receipt needs, read inside its transaction."""

    day_no: int
    day_opened: str
    global_no: int
    counter: int
    previous: (
        dict[str, Any] | None
    )  # the day's last receipt: receiptCounter, receiptGlobalNo, receiptDate, hash
    last_date: str | None  # the last receipt's date, across days
    link: bytes


@dataclass
class NewReceipt:
    """One receipt ready to be written: the exact JSON sent and what the journal indexes of it."""

    body: str
    receipt_type: str
    currency: str
    date: str
    total: int
    invoice_no: str
    note_of: int | None
    hash: str
    signature: str
    qr_data: str
    counters: dict[CounterKey, int] = field(default_factory=dict)
    request: tuple[str, str, str] | None = None  # (host, request ID, sale SHA-256) when sent with an ID


@dataclass(frozen=True)
class Checkpoint:
    """A verified point of the journal: everything up to here passed a boot check or an audit."""

    seq: int
    at: str
    global_no: int
    link: bytes
    audit_seq: int
    audit_link: bytes
    day_no: int
    counters: dict[CounterKey, int]
    settings: dict[str, Any]
    signature: bytes

    def signed_text(self) -> bytes:
        return checkpoint_text(
            self.at,
            self.global_no,
            self.link,
            self.audit_seq,
            self.audit_link,
            self.day_no,
            self.counters,
            self.settings,
        )


def checkpoint_text(
    at: str,
    global_no: int,
    link: bytes,
    audit_seq: int,
    audit_link: bytes,
    day_no: int,
    counters: dict[CounterKey, int],
    settings: dict[str, Any],
) -> bytes:
    """The bytes a checkpoint's signature covers."""
    return detail_json(
        {
            "at": at,
            "global_no": global_no,
            "link": link.hex(),
            "audit_seq": audit_seq,
            "audit_link": audit_link.hex(),
            "day_no": day_no,
            "counters": counters_json(counters),
            "settings": settings,
        }
    ).encode()


def stored_json(text: str, where: str) -> Any:
    """JSON the journal stored, read back; damage is BOX_JOURNAL_CORRUPT naming `where` (table and row)."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        raise _error(
            "BOX_JOURNAL_CORRUPT",
            f"The journal is damaged: {where} is not the JSON the box wrote. Restore the latest backup.",
        ) from None


def counters_json(counters: dict[CounterKey, int]) -> list[list[Any]]:
    return [[*key, value] for key, value in sorted(counters.items())]


def counters_from_json(text: str) -> dict[CounterKey, int]:
    return {(k, c, s, p): v for k, c, s, p, v in json.loads(text)}


def _error(code: str, message: str) -> FiscalError:
    return FiscalError(code, message)


SQLITE_HEADER = b"SQLite format 3\x00"


def _read_only_medium(path: Path) -> bool:
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class WriterLock:
    """The one writer of a journal: an exclusive lock on `<journal>.lock`, held for the writer's life.

    SQLite would serialise several writers itself, but each process keeps its own view of the head and of
    what it checked at boot, and two of them make a box whose checks race each other. So a second writer is
    refused before it reads anything, naming the process that holds the journal. The kernel drops the lock
    when its process dies, however it dies.
    """

    def __init__(self, journal_path: Path) -> None:
        journal_path = journal_path.resolve()  # one lock however the path is spelled (a link, relative)
        self.path = journal_path.with_name(journal_path.name + ".lock")
        if not journal_path.parent.is_dir():
            raise _error("BOX_JOURNAL", f"The journal's folder {journal_path.parent} does not exist.")
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise _error(
                "BOX_JOURNAL", f"The journal's lock file {self.path} cannot be opened: {error.strerror}."
            ) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(self._fd)
            raise _error(
                "BOX_BUSY",
                f"The journal {journal_path} is in use by {holder}: stop it (or let it finish) first; "
                "nothing was changed.",
            ) from None
        os.ftruncate(self._fd, 0)
        name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
        os.pwrite(self._fd, f"process {os.getpid()} ({name})\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = -1


class _Cursor(apsw.Cursor):
    """A cursor whose damage never escapes raw: stored text that is no longer UTF-8 (a damaged byte)
    becomes BOX_JOURNAL_CORRUPT naming the table and the row, and a page SQLite finds damaged
    BOX_JOURNAL_CORRUPT with SQLite's own words. (Each method has its own try: a context manager around
    `__next__` costs about 0.8 us a row, four times the plain try, on every row an audit reads.)"""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute(*args, **kwargs)
        except UnicodeDecodeError:
            raise damage_found(self.connection) from None
        except (apsw.CorruptError, apsw.NotADBError) as error:
            raise _file_damaged(error) from None

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except UnicodeDecodeError:
            raise damage_found(self.connection) from None
        except (apsw.CorruptError, apsw.NotADBError) as error:
            raise _file_damaged(error) from None

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except UnicodeDecodeError:
            raise damage_found(self.connection) from None
        except (apsw.CorruptError, apsw.NotADBError) as error:
            raise _file_damaged(error) from None


def _file_damaged(error: apsw.Error) -> FiscalError:
    return _error(
        "BOX_JOURNAL_CORRUPT",
        f"SQLite reports damage in the journal file ({error}): restore the latest backup "
        "(`fiscalbox-device audit --verbose` lists what it can still read).",
    )


def damage_found(db: apsw.Connection) -> FiscalError:
    """BOX_JOURNAL_CORRUPT naming the first row that cannot be read back, found by reading each table row
    by row (only ever on the way to reporting damage)."""
    return _error(
        "BOX_JOURNAL_CORRUPT",
        f"The journal is damaged: {_damaged_place(db)} cannot be read back. Restore the latest backup "
        "(`fiscalbox-device audit --verbose` lists what else it finds).",
    )


def _readable(cursor: apsw.Cursor) -> bool:
    """Whether every row of `cursor` decodes, read one at a time (a table may be large)."""
    try:
        for _ in cursor:
            pass
    except UnicodeDecodeError:
        return False
    return True


def _damaged_place(db: apsw.Connection) -> str:
    def query(sql: str, params: tuple[Any, ...] = ()) -> apsw.Cursor:
        return apsw.Cursor(db).execute(sql, params)

    tables = [name for (name,) in query("SELECT name FROM sqlite_schema WHERE type = 'table'")]
    for table in (t for t in tables if not t.startswith("sqlite_")):
        if _readable(query(f"SELECT * FROM {table}")):
            continue
        keys = [(c[1], c[2]) for c in query(f"PRAGMA table_info({table})") if c[5]]
        key = keys[0][0] if len(keys) == 1 and keys[0][1] == "INTEGER" else None  # the rowid's own name
        try:
            for (rowid,) in query(f"SELECT rowid FROM {table}"):
                if not _readable(query(f"SELECT * FROM {table} WHERE rowid = ?", (rowid,))):
                    return f"table {table}, row {key or 'rowid'} {rowid}"
        except apsw.SQLError:  # a table without rowids (the counters): name the table
            pass
        return f"table {table}"
    return "a row"


class Journal:
    """The journal file, opened by its one writer, or read-only by anyone.

    The writer holds the journal's WriterLock for as long as it is open. A new journal is made only when
    `create` says so (the box's first provisioning), never as a side effect of opening a missing one. A
    reader (`read_only=True`) takes no lock and writes nothing, not even on a medium mounted read-only.

    `synchronous` is FULL in production; only the power-cut tests lower it, to prove that they notice.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        vfs: str | None = None,
        synchronous: str = "FULL",
        create: bool = False,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.writable = not read_only
        self._lock: WriterLock | None = None
        if not self.path.exists() and (read_only or not create):
            raise _error("BOX_JOURNAL_MISSING", f"There is no journal at {self.path}.")
        if self.path.is_dir():
            raise _error("BOX_JOURNAL", f"The journal {self.path} is a folder, not a journal file.")
        if self.path.exists():
            self._check_file(create and not read_only)
        try:
            if read_only:
                self.db = self._open_reader(vfs)
            else:
                if _read_only_medium(self.path):
                    raise _error(
                        "BOX_JOURNAL_READ_ONLY",
                        f"The journal {self.path} is on a read-only medium, so nothing can be written to "
                        "it: mount its storage read-write (read-only commands such as `audit` and "
                        "`status` still work).",
                    )
                self._lock = WriterLock(self.path)
                self.db = apsw.Connection(
                    str(self.path), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE, vfs=vfs
                )
                self.db.cursor_factory = _Cursor
                self.db.set_busy_timeout(5000)
                if self._scalar("PRAGMA user_version") == 0 and (
                    not create or self._scalar("SELECT count(*) FROM sqlite_schema")
                ):
                    raise self._not_a_journal()  # only the box's first provisioning lays a schema down
                self._configure(synchronous)
                self._migrate()
        except apsw.Error as error:
            self._release()
            raise _error("BOX_JOURNAL", f"The journal {self.path} cannot be opened: {error}.") from None
        except BaseException:
            self._release()
            raise

    def _check_file(self, create: bool) -> None:
        """Refuse a file that is not an SQLite database before SQLite is given it: opened for writing, an
        empty or foreign file would silently become a new journal. (An empty file is what a first
        registration cut short leaves; `create` may fill it.)"""
        try:
            with open(self.path, "rb") as handle:
                head = handle.read(len(SQLITE_HEADER))
        except OSError as error:
            message = f"The journal {self.path} cannot be read: {error.strerror}."
            raise _error("BOX_JOURNAL", message) from None
        if head != SQLITE_HEADER and not (create and head == b""):
            what = "an empty file" if head == b"" else "not an SQLite database"
            raise FiscalError(
                "BOX_JOURNAL",
                f"{self.path} is {what}, not a journal: check journal.path (or --journal), or restore the "
                "journal from a backup.",
                "journal.path",
            )

    def _not_a_journal(self) -> FiscalError:
        return FiscalError(
            "BOX_JOURNAL",
            f"{self.path} is an SQLite database but not a journal (it has no journal schema): check "
            "journal.path (or --journal), or restore the journal from a backup.",
            "journal.path",
        )

    def _open_reader(self, vfs: str | None) -> apsw.Connection:
        """A read-only connection. On a read-only medium SQLite cannot make the WAL's shared-memory file,
        so a journal closed cleanly (no WAL left) is opened as immutable instead."""
        flags = apsw.SQLITE_OPEN_READONLY
        try:
            db = apsw.Connection(str(self.path), flags=flags, vfs=vfs)
            db.set_busy_timeout(5000)  # a writer's checkpoint may hold the WAL for a moment
            db.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        except apsw.CantOpenError:
            wal = Path(str(self.path) + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise _error(
                    "BOX_JOURNAL_READ_ONLY",
                    f"The journal {self.path} is on a read-only medium with unmerged changes in "
                    f"{wal.name}: copy both files to writable storage and read the copy.",
                ) from None
            uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?immutable=1"
            db = apsw.Connection(uri, flags=flags | apsw.SQLITE_OPEN_URI, vfs=vfs)
        db.cursor_factory = _Cursor
        db.set_busy_timeout(5000)
        version: int = db.execute("PRAGMA user_version").fetchall()[0][0]  # type: ignore[assignment]
        if version == 0:
            db.close()
            raise self._not_a_journal()
        if version != SCHEMA_VERSION:
            db.close()
            raise _error(
                "BOX_JOURNAL_VERSION",
                f"The journal is schema version {version}; this firmware reads version {SCHEMA_VERSION}. "
                + (
                    "Install newer firmware; the journal was not changed."
                    if version > SCHEMA_VERSION
                    else "A command that writes (or the box's service) upgrades it first."
                ),
            )
        return db

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One read transaction: every query inside sees the same snapshot, so a check never compares
        rows written at different moments (a writer in another process may be committing meanwhile)."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN DEFERRED")
        try:
            yield
        finally:
            self.db.execute("ROLLBACK")

    def _configure(self, synchronous: str) -> None:
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise _error("BOX_JOURNAL", f"The journal {self.path} cannot use WAL mode (got {mode}).")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        levels = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}
        got = self._scalar("PRAGMA synchronous")
        if got != levels[synchronous]:
            raise _error("BOX_JOURNAL", f"The journal refused synchronous={synchronous} (it reports {got}).")
        self.db.execute("PRAGMA foreign_keys=OFF")

    def _migrate(self) -> None:
        version = self._scalar("PRAGMA user_version")
        if version > SCHEMA_VERSION:
            raise _error(
                "BOX_JOURNAL_VERSION",
                f"The journal is schema version {version}; this firmware knows up to {SCHEMA_VERSION}. "
                "Install newer firmware; the journal was not changed.",
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                for statement in MIGRATIONS[target]:
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={target}")

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            self._release()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -----------------------------------------------------------------------------------------------------
    # Plumbing

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        """The one row a query must return (the head row always exists once migrated)."""
        row = self.db.execute(sql, params).fetchone()
        if row is None:
            raise _error("BOX_JOURNAL", "The journal is missing its head row; it was damaged.")
        return tuple(row)

    def _scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = self.db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT: the write lock is taken at once, so no transaction has to retry."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def log(self, at: str, event: str, detail: dict[str, Any]) -> int:
        """Append one audit entry, chained; call inside the transaction that makes the change it records."""
        seq, previous = self._one("SELECT audit_seq, audit_link FROM head")
        seq += 1
        text = detail_json(detail)
        link = chain.audit_link(previous, seq, at, event, text)
        self.db.execute("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?)", (seq, at, event, text, link))
        self.db.execute("UPDATE head SET audit_seq = ?, audit_link = ?", (seq, link))
        return seq

    # -----------------------------------------------------------------------------------------------------
    # Settings: the identity and configuration in force

    def settings(self) -> dict[str, Any]:
        return {
            key: stored_json(value, f"table settings, row key {key}")
            for key, value in self.db.execute("SELECT key, value FROM settings")
        }

    def save_settings(self, values: dict[str, Any], at: str) -> None:
        with self.transaction():
            for key, value in values.items():
                self.db.execute(
                    "INSERT INTO settings VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, detail_json(value)),
                )
            self.log(at, "settings", values)

    # -----------------------------------------------------------------------------------------------------
    # Days

    def head(self) -> dict[str, Any]:
        last, day_no, link, audit_seq, audit_link = self._one(
            "SELECT last_global_no, day_no, link, audit_seq, audit_link FROM head"
        )
        return {
            "last_global_no": last,
            "day_no": day_no,
            "link": link,
            "audit_seq": audit_seq,
            "audit_link": audit_link,
        }

    def _named_row(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        """One row as a dict of its column names (asked for before the cursor is used up)."""
        cursor = self.db.execute(sql, params)
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cursor.get_description()], row, strict=True))

    def day(self, day_no: int) -> dict[str, Any] | None:
        return self._named_row("SELECT * FROM days WHERE day_no = ?", (day_no,))

    def days(self) -> list[dict[str, Any]]:
        return self._days("", ())

    def unfinished_days(self) -> list[dict[str, Any]]:
        """Days FDMS has not confirmed closed, oldest first (few, however long the box has lived)."""
        return self._days("WHERE status != ?", (CLOSED,))

    def _days(self, where: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        rows = self.db.execute(f"SELECT {', '.join(DAY_COLUMNS)} FROM days {where} ORDER BY day_no", params)
        return [dict(zip(DAY_COLUMNS, row, strict=True)) for row in rows]

    def current_day(self) -> dict[str, Any] | None:
        day_no = self._scalar("SELECT day_no FROM head")
        return self.day(day_no) if day_no else None

    def open_day(self, day_no: int, opened: str, at: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO days (day_no, opened, status) VALUES (?, ?, ?)", (day_no, opened, OPENED)
            )
            self.db.execute("UPDATE head SET day_no = ?", (day_no,))
            self.log(at, "day.opened", {"day_no": day_no, "opened": opened})

    def request_close(self, day_no: int, request: str, day_hash: str, signature: str, at: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE days SET status = ?, close_request = ?, close_hash = ?, close_signature = ?, "
                "close_requested_at = ? WHERE day_no = ?",
                (CLOSE_INITIATED, request, day_hash, signature, at, day_no),
            )
            digest = hashlib.sha256(request.encode()).hexdigest()
            self.log(
                at, "day.close_requested", {"day_no": day_no, "hash": day_hash, "request_sha256": digest}
            )

    def set_day_status(self, day_no: int, status: str, at: str, **values: Any) -> None:
        """Record what FDMS said of a close: Closed (with its signature) or CloseFailed (with its code)."""
        allowed = {"closed_at", "server_signature", "closing_error"}
        assignments = ["status = ?"] + [f"{name} = ?" for name in values if name in allowed]
        params = [status] + [values[name] for name in values if name in allowed]
        with self.transaction():
            self.db.execute(f"UPDATE days SET {', '.join(assignments)} WHERE day_no = ?", (*params, day_no))
            self.log(at, "day.status", {"day_no": day_no, "status": status, **values})

    # -----------------------------------------------------------------------------------------------------
    # Receipts

    def _head_for_issue(self) -> Head:
        last, day_no, link = self._one("SELECT last_global_no, day_no, link FROM head")
        day = self.db.execute("SELECT opened, status FROM days WHERE day_no = ?", (day_no,)).fetchone()
        if day is None or day[1] != OPENED:
            raise _error("BOX_DAY_NOT_OPEN", "No fiscal day is open: open a day before issuing receipts.")
        row = self.db.execute(
            "SELECT day_no, counter, date, hash FROM receipts WHERE global_no = ?", (last,)
        ).fetchone()
        previous = None
        counter = 1
        last_date = None
        if row is not None:
            last_date = row[2]
            if row[0] == day_no:
                previous = {
                    "receiptCounter": row[1],
                    "receiptGlobalNo": last,
                    "receiptDate": row[2],
                    "hash": row[3],
                }
                counter = row[1] + 1
        return Head(day_no, day[0], last + 1, counter, previous, last_date, link)

    def commit_receipt(self, make: Callable[[Head], NewReceipt], at: str) -> tuple[Head, NewReceipt]:
        """Allocate the numbers, let `make` validate and sign against them, write everything, COMMIT.

        `make` runs inside the transaction and may raise: then nothing at all is written.
        """
        try:
            return self._commit_receipt(make, at)
        except UnicodeEncodeError:  # a lone surrogate: text that has no UTF-8 form cannot be stored
            raise FiscalError(
                "BOX_SALE_TEXT", "The sale holds text that cannot be stored (a lone surrogate character)."
            ) from None

    def _commit_receipt(self, make: Callable[[Head], NewReceipt], at: str) -> tuple[Head, NewReceipt]:
        with self.transaction():
            head = self._head_for_issue()
            new = make(head)
            link = chain.receipt_link(
                head.link, head.global_no, head.day_no, head.counter, new.body, new.hash, new.signature
            )
            self.db.execute(
                "INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    head.global_no,
                    head.day_no,
                    head.counter,
                    new.receipt_type,
                    new.currency,
                    new.date,
                    new.total,
                    new.invoice_no,
                    new.note_of,
                    new.body,
                    new.hash,
                    new.signature,
                    new.qr_data,
                    link,
                ),
            )
            if head.counter == 1:
                self.db.execute(
                    "UPDATE days SET first_global_no = ? WHERE day_no = ?", (head.global_no, head.day_no)
                )
            self.db.executemany(
                "INSERT INTO counters VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET value = value + excluded.value",
                [(head.day_no, *key, value) for key, value in new.counters.items()],
            )
            self.db.execute("UPDATE head SET last_global_no = ?, link = ?", (head.global_no, link))
            self.db.execute(
                "INSERT INTO outbox (global_no, state, updated) VALUES (?, 'pending', ?)",
                (head.global_no, at),
            )
            if new.request is not None:
                self.db.execute("INSERT INTO requests VALUES (?, ?, ?, ?)", (*new.request, head.global_no))
            self.log(at, "receipt.issued", {"global_no": head.global_no, "hash": new.hash})
        return head, new

    def request(self, request_id: str, host: str = "") -> tuple[str, int] | None:
        """(SHA-256 of the sale, global number) issued under a POS's request ID from `host` (its key ID in
        hex; "" for a sale not sent over the link), if any."""
        row = self.db.execute(
            "SELECT sale_sha256, global_no FROM requests WHERE host = ? AND request_id = ?",
            (host, request_id),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def receipt(self, global_no: int) -> dict[str, Any] | None:
        return self._named_row("SELECT * FROM receipts WHERE global_no = ?", (global_no,))

    def receipts(
        self, first: int = 1, last: int | None = None, day_no: int | None = None
    ) -> Iterator[tuple[Any, ...]]:
        """(global_no, day_no, counter, type, currency, date, total, body, hash, signature, link) rows."""
        sql = (
            "SELECT global_no, day_no, counter, type, currency, date, total, body, hash, signature, link "
            "FROM receipts WHERE global_no >= ?"
        )
        params: list[Any] = [first]
        if last is not None:
            sql += " AND global_no <= ?"
            params.append(last)
        if day_no is not None:
            sql += " AND day_no = ?"
            params.append(day_no)
        yield from self.db.execute(sql + " ORDER BY global_no", params)

    def invoice_seen(self, invoice_no: str) -> bool:
        return self._scalar("SELECT 1 FROM receipts WHERE invoice_no = ? LIMIT 1", (invoice_no,)) is not None

    def notes_total(self, global_no: int) -> int:
        return int(
            self._scalar("SELECT coalesce(sum(total), 0) FROM receipts WHERE note_of = ?", (global_no,))
        )

    def counters(self, day_no: int) -> dict[CounterKey, int]:
        rows = self.db.execute(
            "SELECT kind, currency, sub, pct, value FROM counters WHERE day_no = ?", (day_no,)
        )
        return {(k, c, s, p): v for k, c, s, p, v in rows}

    def last_counter(self, day_no: int) -> int:
        """The day's receipt count, read off the (day_no, counter) index: no scan, however long the day."""
        return int(self._scalar("SELECT coalesce(max(counter), 0) FROM receipts WHERE day_no = ?", (day_no,)))

    def documents(self, day_no: int) -> list[dict[str, Any]]:
        """Receipts of a day per type and currency: how many and their total."""
        rows = self.db.execute(
            "SELECT type, currency, count(*), sum(total) FROM receipts WHERE day_no = ? "
            "GROUP BY type, currency ORDER BY type, currency",
            (day_no,),
        )
        return [{"type": t, "currency": c, "count": n, "total": total} for t, c, n, total in rows]

    # -----------------------------------------------------------------------------------------------------
    # Printing and delivery state

    def print_started(self, global_no: int, at: str) -> int:
        """Record that a print of the receipt begins; returns how many began before (0: this is the original).

        Written before the first byte goes to the printer: whatever happens to the paper after this, the next
        print of this receipt says COPY."""
        with self.transaction():
            before = self._scalar("SELECT started FROM print_log WHERE global_no = ?", (global_no,)) or 0
            self.db.execute(
                "INSERT INTO print_log VALUES (?, 0, 1, ?) "
                "ON CONFLICT DO UPDATE SET started = started + 1, last_at = ?",
                (global_no, at, at),
            )
            self.log(at, "print.started", {"global_no": global_no, "copy": before > 0})
        return int(before)

    def print_completed(self, global_no: int, at: str) -> None:
        """Record that the printer reported the print finished."""
        with self.transaction():
            self.db.execute(
                "UPDATE print_log SET completed = completed + 1, last_at = ? WHERE global_no = ?",
                (at, global_no),
            )
            self.log(at, "print.completed", {"global_no": global_no})

    def prints(self, global_no: int) -> tuple[int, int]:
        """(prints started, prints completed) of a receipt."""
        row = self.db.execute(
            "SELECT started, completed FROM print_log WHERE global_no = ?", (global_no,)
        ).fetchone()
        return (0, 0) if row is None else (row[0], row[1])

    # Receipts with no finished print: never started, or every print began and did not finish.
    UNPRINTED = (
        "FROM receipts r LEFT JOIN print_log p USING (global_no) "
        "WHERE (p.completed IS NULL OR p.completed = 0)"
    )

    def unprinted(self, limit: int | None = None, after: int = 0) -> list[int]:
        """Receipts numbered above `after` with no finished print, oldest first: all of them, or the first
        `limit`."""
        rows = self.db.execute(
            f"SELECT r.global_no {self.UNPRINTED} AND r.global_no > ? ORDER BY r.global_no LIMIT ?",
            (after, -1 if limit is None else limit),
        )
        return [row[0] for row in rows]

    def unprinted_count(self) -> int:
        """How many receipts have no finished print."""
        return int(self._scalar(f"SELECT count(*) {self.UNPRINTED}"))

    def outbox_counts(self) -> dict[str, int]:
        return {state: n for state, n in self.db.execute("SELECT state, count(*) FROM outbox GROUP BY state")}

    def pending(self, limit: int) -> list[dict[str, Any]]:
        """The oldest undelivered receipts, for a person to see what waits for FDMS."""
        names = ("global_no", "day_no", "date", "type", "currency", "total")
        rows = self.db.execute(
            "SELECT r.global_no, r.day_no, r.date, r.type, r.currency, r.total FROM outbox o "
            "JOIN receipts r USING (global_no) WHERE o.state = 'pending' ORDER BY o.global_no LIMIT ?",
            (limit,),
        )
        return [dict(zip(names, row, strict=True)) for row in rows]

    def next_pending(self) -> dict[str, Any] | None:
        """The undelivered receipt with the lowest global number: delivery goes strictly in that order."""
        return self._named_row(
            "SELECT r.global_no, r.day_no, r.counter, r.body, r.hash, r.signature FROM outbox o "
            "JOIN receipts r USING (global_no) WHERE o.state = 'pending' ORDER BY o.global_no LIMIT 1",
            (),
        )

    def pending_in_day(self, day_no: int) -> int:
        return int(
            self._scalar(
                "SELECT count(*) FROM outbox o JOIN receipts r USING (global_no) "
                "WHERE o.state = 'pending' AND r.day_no = ?",
                (day_no,),
            )
        )

    def record_delivery(
        self,
        global_no: int,
        state: str,
        attempts: int,
        at: str,
        receipt_id: int | None = None,
        server_date: str | None = None,
        server_signature: dict[str, Any] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        """What FDMS answered for a receipt (`delivered`), or that it went in an offline file (`filed`).

        Retries are not written: an outage leaves the journal quiet, and the final count is kept here."""
        signature_text = None if server_signature is None else detail_json(server_signature)
        errors_text = None if errors is None else detail_json(errors)
        with self.transaction():
            changed = self.db.execute(
                "UPDATE outbox SET state = ?, attempts = ?, receipt_id = ?, server_date = ?, "
                "server_signature = ?, errors = ?, updated = ? WHERE global_no = ? AND state = 'pending' "
                "RETURNING global_no",
                (state, attempts, receipt_id, server_date, signature_text, errors_text, at, global_no),
            ).fetchall()
            if not changed:
                raise _error("BOX_DELIVERY", f"Receipt {global_no} is not waiting for delivery.")
            self.log(
                at,
                "receipt.delivered",
                {
                    "global_no": global_no,
                    "state": state,
                    "attempts": attempts,
                    "receipt_id": receipt_id,
                    "server_date": server_date,
                    "server_signature": server_signature,
                    "errors": errors,
                },
            )

    def delivery(self, global_no: int) -> dict[str, Any] | None:
        """The outbox row of a receipt, with its server signature and errors parsed."""
        row = self._named_row("SELECT * FROM outbox WHERE global_no = ?", (global_no,))
        if row is not None:
            for name in ("server_signature", "errors"):
                where = f"table outbox, row global_no {global_no}"
                row[name] = None if row[name] is None else stored_json(row[name], where)
        return row

    def global_no_of(self, receipt_id: int) -> int | None:
        """The receipt FDMS gave `receipt_id` when it was delivered, if it was one of this box's."""
        row = self.db.execute("SELECT global_no FROM outbox WHERE receipt_id = ?", (receipt_id,)).fetchone()
        return None if row is None else int(row[0])

    def flagged(self, limit: int = 100, day_no: int | None = None, from_day: int = 0) -> list[dict[str, Any]]:
        """Delivered receipts FDMS reported validation errors for, oldest first: of one day, or of the days
        from `from_day` on."""
        which, value = ("r.day_no >= ?", from_day) if day_no is None else ("r.day_no = ?", day_no)
        rows = self.db.execute(
            "SELECT o.global_no, o.errors FROM outbox o JOIN receipts r USING (global_no) "
            f"WHERE o.errors IS NOT NULL AND o.errors != '[]' AND {which} ORDER BY o.global_no LIMIT ?",
            (value, limit),
        )
        return [
            {"global_no": g, "errors": stored_json(e, f"table outbox, row global_no {g}")} for g, e in rows
        ]

    def mark_open_sent(self, day_no: int, at: str) -> None:
        """FDMS accepted the day's OpenDay: its receipts may now be sent."""
        with self.transaction():
            self.db.execute("UPDATE days SET open_sent_at = ? WHERE day_no = ?", (at, day_no))
            self.log(at, "day.open_sent", {"day_no": day_no})

    # -----------------------------------------------------------------------------------------------------
    # Device keys retired by certificate renewal

    def retire_key(self, algorithm: str, public_key_pem: str, at: str) -> None:
        """Record the key in force until now: receipts up to the last one issued verify with it."""
        with self.transaction():
            last = self._scalar("SELECT last_global_no FROM head")
            self.db.execute(
                "INSERT INTO device_keys (algorithm, public_key, last_global_no, retired_at) "
                "VALUES (?, ?, ?, ?)",
                (algorithm, public_key_pem, last, at),
            )
            self.log(
                at,
                "key.retired",
                {"algorithm": algorithm, "public_key": public_key_pem, "last_global_no": last},
            )

    def retired_keys(self) -> list[dict[str, Any]]:
        """Keys that signed earlier receipts, oldest first: (algorithm, public_key, last_global_no)."""
        rows = self.db.execute(
            "SELECT algorithm, public_key, last_global_no, retired_at FROM device_keys ORDER BY seq"
        )
        return [
            {"algorithm": a, "public_key": k, "last_global_no": n, "retired_at": at} for a, k, n, at in rows
        ]

    # -----------------------------------------------------------------------------------------------------
    # Offline-mode files

    def record_file(
        self,
        day_no: int,
        sequence: int,
        first_global_no: int | None,
        last_global_no: int | None,
        has_footer: bool,
        sha256: str,
        operation_id: str | None,
        at: str,
        close_requested_at: str | None = None,
    ) -> None:
        """A file of the day's receipts accepted by SubmitFile; its receipts are `filed` in the same step.
        `close_requested_at` names the signed close the file belongs to: a day closed again after FDMS
        failed its files is sent again, as new files."""
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, 'submitted', NULL, ?, ?)",
                (
                    day_no,
                    sequence,
                    first_global_no,
                    last_global_no,
                    int(has_footer),
                    sha256,
                    operation_id,
                    at,
                    close_requested_at,
                ),
            )
            detail = {
                "day_no": day_no,
                "sequence": sequence,
                "first_global_no": first_global_no,
                "last_global_no": last_global_no,
                "has_footer": has_footer,
                "sha256": sha256,
                "operation_id": operation_id,
                "close_requested_at": close_requested_at,
            }
            self.log(at, "file.submitted", detail)
            if first_global_no is not None and last_global_no is not None:
                self.db.execute(
                    "UPDATE outbox SET state = 'filed', attempts = 1, updated = ? "
                    "WHERE global_no BETWEEN ? AND ? AND state = 'pending'",
                    (at, first_global_no, last_global_no),
                )

    def files(self, day_no: int) -> list[dict[str, Any]]:
        cursor = self.db.execute("SELECT * FROM files WHERE day_no = ? ORDER BY sequence", (day_no,))
        names = None
        out = []
        for row in cursor:
            names = names or [d[0] for d in cursor.get_description()]
            out.append(dict(zip(names, row, strict=True)))
        return out

    def update_file(self, day_no: int, sequence: int, status: str, error: str | None, at: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE files SET status = ?, error = ?, updated = ? WHERE day_no = ? AND sequence = ?",
                (status, error, at, day_no, sequence),
            )
            self.log(
                at, "file.status", {"day_no": day_no, "sequence": sequence, "status": status, "error": error}
            )

    # -----------------------------------------------------------------------------------------------------
    # Checkpoints

    def last_checkpoint(self) -> Checkpoint | None:
        row = self.db.execute("SELECT * FROM checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else self._checkpoint(row)

    def checkpoints(self) -> list[Checkpoint]:
        return [self._checkpoint(row) for row in self.db.execute("SELECT * FROM checkpoints ORDER BY seq")]

    @staticmethod
    def _checkpoint(row: tuple[Any, ...]) -> Checkpoint:
        seq, at, global_no, link, audit_seq, audit_link, day_no, counters, settings, signature = row
        return Checkpoint(
            seq,
            at,
            global_no,
            link,
            audit_seq,
            audit_link,
            day_no,
            counters_from_json(counters),
            json.loads(settings),
            signature,
        )

    def add_checkpoint(self, at: str, sign: Callable[[bytes], bytes], reason: str) -> None:
        """Record the journal's present state as verified, signed by the device key, so later checks start
        here: the head, the current day's counters and the settings in force."""
        with self.transaction():
            head = self.head()
            counters = self.counters(head["day_no"])
            settings = self.settings()
            where = (
                at,
                head["last_global_no"],
                head["link"],
                head["audit_seq"],
                head["audit_link"],
                head["day_no"],
            )
            self.db.execute(
                "INSERT INTO checkpoints "
                "(at, global_no, link, audit_seq, audit_link, day_no, counters, settings, signature) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *where,
                    detail_json(counters_json(counters)),
                    detail_json(settings),
                    sign(checkpoint_text(*where, counters, settings)),
                ),
            )
            self.log(
                at,
                "checkpoint",
                {"global_no": head["last_global_no"], "audit_seq": head["audit_seq"], "reason": reason},
            )

    # -----------------------------------------------------------------------------------------------------
    # Checks and copies

    def quick_check(self, tables: tuple[str, ...] = ()) -> list[str]:
        """SQLite's own structural check, of the whole file or of `tables` only; ['ok'] when sound."""
        if not tables:
            return self._check("quick_check")
        problems = [line for table in tables for line in self._check(f"quick_check({table})") if line != "ok"]
        return problems or ["ok"]

    def integrity_check(self) -> list[str]:
        """quick_check plus index contents and constraints: slower, for the full audit."""
        return self._check("integrity_check")

    def _check(self, pragma: str) -> list[str]:
        try:
            return [str(row[0]) for row in self.db.execute(f"PRAGMA {pragma}")]
        except apsw.Error as error:
            return [str(error)]

    def backup_to(
        self, dest: str | os.PathLike[str], progress: Callable[[int, int], None] | None = None
    ) -> None:
        """SQLite's online backup, page by page, into a fresh file (then synced)."""
        target = apsw.Connection(str(dest))
        try:
            with target.backup("main", self.db, "main") as backup:
                while not backup.done:
                    backup.step(1024)
                    if progress is not None:
                        progress(backup.page_count - backup.remaining, backup.page_count)
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
        with open(dest, "rb+") as handle:
            os.fsync(handle.fileno())
