"""Everything the simulated FDMS remembers, in one SQLite file (`<state_dir>/fdms.sqlite3`).

Devices (mode, registration, last ping), the certificates issued to them, fiscal days, receipts with their
server signatures and validation errors, and submitted files. A new simulator on the same state directory
continues where the last one stopped. One connection, guarded by one lock: the simulator's load is small and
this keeps every read consistent with the write before it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

FIRST_RECEIPT_ID = 50001  # FDMS receipt IDs look nothing like global numbers; neither do ours

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices(
    device_id INTEGER PRIMARY KEY,
    serial TEXT NOT NULL,
    mode TEXT NOT NULL,
    registered_at TEXT,
    last_ping TEXT
);
CREATE TABLE IF NOT EXISTS certificates(
    serial TEXT PRIMARY KEY,
    device_id INTEGER NOT NULL,
    pem TEXT NOT NULL,
    not_before REAL NOT NULL,
    not_after REAL NOT NULL,
    issued_at TEXT NOT NULL,
    current INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS days(
    device_id INTEGER NOT NULL,
    day_no INTEGER NOT NULL,
    opened TEXT NOT NULL,
    status TEXT NOT NULL,
    closing_error TEXT,
    closed_at TEXT,
    reconciliation TEXT,
    server_signature TEXT,
    device_signature TEXT,
    close_request TEXT,
    close_cert TEXT,
    close_due REAL,
    close_file INTEGER,
    PRIMARY KEY(device_id, day_no)
);
CREATE TABLE IF NOT EXISTS receipts(
    receipt_id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER NOT NULL,
    global_no INTEGER NOT NULL,
    day_no INTEGER NOT NULL,
    counter INTEGER,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL,
    invoice_no TEXT,
    receipt_type TEXT,
    currency TEXT,
    total_cents INTEGER,
    receipt_date TEXT,
    body TEXT NOT NULL,
    server_date TEXT NOT NULL,
    server_signature TEXT NOT NULL,
    errors TEXT NOT NULL,
    cert_serial TEXT,
    submitted_at TEXT NOT NULL,
    original_id INTEGER,
    held INTEGER NOT NULL DEFAULT 1,
    file_id INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS receipts_held ON receipts(device_id, global_no) WHERE held = 1;
CREATE INDEX IF NOT EXISTS receipts_day ON receipts(device_id, day_no);
CREATE INDEX IF NOT EXISTS receipts_invoice ON receipts(invoice_no);
CREATE INDEX IF NOT EXISTS receipts_original ON receipts(original_id) WHERE original_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS files(
    file_id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER NOT NULL,
    file_name TEXT NOT NULL,
    upload_date TEXT NOT NULL,
    upload_seconds REAL NOT NULL,
    day_no INTEGER NOT NULL,
    day_opened TEXT,
    sequence INTEGER NOT NULL,
    processing_date TEXT,
    status TEXT NOT NULL,
    error TEXT,
    has_footer INTEGER NOT NULL,
    operation_id TEXT NOT NULL,
    ip_address TEXT,
    invalid TEXT NOT NULL DEFAULT '[]',
    body TEXT NOT NULL,
    cert_serial TEXT,
    due REAL NOT NULL
);
"""


@dataclass
class DeviceRow:
    device_id: int
    serial: str
    mode: str
    registered_at: str | None
    last_ping: str | None


@dataclass
class CertificateRow:
    serial: str
    device_id: int
    pem: str
    not_before: float
    not_after: float
    issued_at: str
    current: bool


@dataclass
class DayRow:
    device_id: int
    day_no: int
    opened: str
    status: str
    closing_error: str | None = None
    closed_at: str | None = None
    reconciliation: str | None = None
    server_signature: dict[str, str] | None = None
    device_signature: dict[str, str] | None = None
    close_request: dict[str, Any] | None = None
    close_cert: str | None = None
    close_due: float | None = None
    close_file: int | None = None


@dataclass
class ReceiptRow:
    receipt_id: int
    device_id: int
    global_no: int
    day_no: int
    counter: int | None
    hash: str
    signature: str
    invoice_no: str | None
    receipt_type: str | None
    currency: str | None
    total_cents: int | None
    receipt_date: str | None
    receipt: dict[str, Any]
    server_date: str
    server_signature: dict[str, str]
    errors: list[dict[str, Any]]
    cert_serial: str | None
    submitted_at: str
    original_id: int | None
    held: bool
    file_id: int | None

    @property
    def colours(self) -> list[str]:
        return [str(e.get("validationErrorColor")) for e in self.errors]


@dataclass
class FileRow:
    file_id: int
    device_id: int
    file_name: str
    upload_date: str
    upload_seconds: float
    day_no: int
    day_opened: str | None
    sequence: int
    processing_date: str | None
    status: str
    error: str | None
    has_footer: bool
    operation_id: str
    ip_address: str | None
    invalid: list[dict[str, Any]] = field(default_factory=list)
    body: str = ""
    cert_serial: str | None = None
    due: float = 0.0


def loads(text: str | bytes) -> Any:
    """JSON with every decimal number read exactly, as FDMS (ASP.NET, System.Decimal) reads it: a binary
    float keeps only about 15 significant digits, and a decimal(21,2) amount has up to 21."""
    return json.loads(text, parse_float=Decimal)


def dumps(value: Any) -> str:
    """JSON text that writes a Decimal as the exact number it is (json.dumps writes only floats)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(item) for item in value) + "]"
    return json.dumps(value)


_JSON_FIELDS = {
    "server_signature",
    "device_signature",
    "close_request",
    "receipt",
    "errors",
    "invalid",
}


def _decode(kind: Any, row: sqlite3.Row, renames: dict[str, str] | None = None) -> Any:
    values: dict[str, Any] = {}
    for key in row.keys():
        name = (renames or {}).get(key, key)
        value = row[key]
        if name in _JSON_FIELDS and value is not None:
            value = loads(value)
        if name in ("current", "held", "has_footer"):
            value = bool(value)
        values[name] = value
    return kind(**values)


def _encode(name: str, value: Any) -> Any:
    if name in _JSON_FIELDS and value is not None:
        return dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value


class State:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            seq = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'receipts'").fetchone()
            if seq is None:
                self._db.execute(
                    "INSERT INTO sqlite_sequence(name, seq) VALUES ('receipts', ?)", (FIRST_RECEIPT_ID - 1,)
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db.in_transaction:
                yield self._db
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def _update(self, table: str, where: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
        if not fields:
            return
        sets = ", ".join(f"{name} = ?" for name in fields)
        values = tuple(_encode(name, value) for name, value in fields.items())
        with self.transaction() as db:
            db.execute(f"UPDATE {table} SET {sets} WHERE {where}", values + args)

    # -----------------------------------------------------------------------------------------------------
    # devices and certificates

    def ensure_device(self, device_id: int, serial: str, mode: str) -> None:
        """Add a scenario device the state does not know yet; a known device keeps its stored mode."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO devices(device_id, serial, mode) VALUES (?, ?, ?)",
                (device_id, serial, mode),
            )

    def device(self, device_id: int) -> DeviceRow | None:
        row = self._one("SELECT * FROM devices WHERE device_id = ?", (device_id,))
        return None if row is None else _decode(DeviceRow, row)

    def update_device(self, device_id: int, **fields: Any) -> None:
        self._update("devices", "device_id = ?", (device_id,), fields)

    def add_certificate(
        self, device_id: int, serial: str, pem: str, not_before: float, not_after: float, issued_at: str
    ) -> None:
        """Record a certificate issued to a device; it becomes the device's current one."""
        with self.transaction() as db:
            db.execute("UPDATE certificates SET current = 0 WHERE device_id = ?", (device_id,))
            db.execute(
                "INSERT INTO certificates(serial, device_id, pem, not_before, not_after, issued_at, current)"
                " VALUES (?, ?, ?, ?, ?, ?, 1)",
                (serial, device_id, pem, not_before, not_after, issued_at),
            )

    def certificate(self, serial: str) -> CertificateRow | None:
        row = self._one("SELECT * FROM certificates WHERE serial = ?", (serial,))
        return None if row is None else _decode(CertificateRow, row)

    def certificates(self, device_id: int) -> list[CertificateRow]:
        rows = self._all("SELECT * FROM certificates WHERE device_id = ? ORDER BY rowid", (device_id,))
        return [_decode(CertificateRow, row) for row in rows]

    def current_certificate(self, device_id: int) -> CertificateRow | None:
        row = self._one("SELECT * FROM certificates WHERE device_id = ? AND current = 1", (device_id,))
        return None if row is None else _decode(CertificateRow, row)

    # -----------------------------------------------------------------------------------------------------
    # fiscal days

    def last_day(self, device_id: int) -> DayRow | None:
        row = self._one("SELECT * FROM days WHERE device_id = ? ORDER BY day_no DESC LIMIT 1", (device_id,))
        return None if row is None else _decode(DayRow, row)

    def day(self, device_id: int, day_no: int) -> DayRow | None:
        row = self._one("SELECT * FROM days WHERE device_id = ? AND day_no = ?", (device_id, day_no))
        return None if row is None else _decode(DayRow, row)

    def days(self, device_id: int) -> list[DayRow]:
        rows = self._all("SELECT * FROM days WHERE device_id = ? ORDER BY day_no", (device_id,))
        return [_decode(DayRow, row) for row in rows]

    def days_due(self) -> list[DayRow]:
        """Days whose close was accepted and is waiting to be judged."""
        rows = self._all(
            "SELECT * FROM days WHERE status = 'FiscalDayCloseInitiated' AND close_file IS NULL"
            " ORDER BY close_due"
        )
        return [_decode(DayRow, row) for row in rows]

    def add_day(self, device_id: int, day_no: int, opened: str, status: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO days(device_id, day_no, opened, status) VALUES (?, ?, ?, ?)",
                (device_id, day_no, opened, status),
            )

    def update_day(self, device_id: int, day_no: int, **fields: Any) -> None:
        self._update("days", "device_id = ? AND day_no = ?", (device_id, day_no), fields)

    # -----------------------------------------------------------------------------------------------------
    # receipts

    def add_receipt(self, fields: dict[str, Any], sign: Callable[[int], tuple[str, dict[str, str]]]) -> int:
        """Store a receipt; `sign(receipt_id)` gives (serverDate, receiptServerSignature) for the new ID."""
        with self.transaction() as db:
            row = dict(fields)
            row.update(server_date="", server_signature={})
            names = ", ".join("body" if k == "receipt" else k for k in row)
            marks = ", ".join("?" for _ in row)
            cursor = db.execute(
                f"INSERT INTO receipts({names}) VALUES ({marks})",
                tuple(_encode(k, v) for k, v in row.items()),
            )
            receipt_id = int(cursor.lastrowid or 0)
            server_date, signature = sign(receipt_id)
            db.execute(
                "UPDATE receipts SET server_date = ?, server_signature = ? WHERE receipt_id = ?",
                (server_date, json.dumps(signature), receipt_id),
            )
            return receipt_id

    def _receipts(self, where: str, args: tuple[Any, ...], tail: str = "") -> list[ReceiptRow]:
        rows = self._all(f"SELECT * FROM receipts WHERE {where} {tail}", args)
        return [_decode(ReceiptRow, row, {"body": "receipt"}) for row in rows]

    def receipt(self, receipt_id: int) -> ReceiptRow | None:
        found = self._receipts("receipt_id = ?", (receipt_id,))
        return found[0] if found else None

    def held_receipt(self, device_id: int, global_no: int) -> ReceiptRow | None:
        found = self._receipts("device_id = ? AND global_no = ? AND held = 1", (device_id, global_no))
        return found[0] if found else None

    def held_receipts(self, device_id: int, day_no: int | None = None) -> list[ReceiptRow]:
        if day_no is None:
            return self._receipts("device_id = ? AND held = 1", (device_id,), "ORDER BY global_no")
        return self._receipts(
            "device_id = ? AND day_no = ? AND held = 1", (device_id, day_no), "ORDER BY global_no"
        )

    def held_after(self, device_id: int, global_no: int) -> list[ReceiptRow]:
        return self._receipts(
            "device_id = ? AND held = 1 AND global_no > ?", (device_id, global_no), "ORDER BY global_no"
        )

    def update_receipt(self, receipt_id: int, **fields: Any) -> None:
        self._update("receipts", "receipt_id = ?", (receipt_id,), fields)

    def invoice_seen(self, invoice_no: str, except_receipt: int | None = None) -> bool:
        row = self._one(
            "SELECT 1 FROM receipts WHERE invoice_no = ? AND held = 1 AND receipt_id != ?",
            (invoice_no, except_receipt or -1),
        )
        return row is not None

    def last_global_before_day(self, device_id: int, day_no: int) -> int | None:
        """The highest global number held in the device's earlier days; None when none is held."""
        row = self._one(
            "SELECT MAX(global_no) AS n FROM receipts WHERE device_id = ? AND held = 1 AND day_no < ?",
            (device_id, day_no),
        )
        return int(row["n"]) if row is not None and row["n"] is not None else None

    def has_lower_in_day(self, device_id: int, day_no: int, global_no: int) -> bool:
        row = self._one(
            "SELECT 1 FROM receipts WHERE device_id = ? AND day_no = ? AND held = 1 AND global_no < ?",
            (device_id, day_no, global_no),
        )
        return row is not None

    def last_global_no(self, device_id: int) -> int | None:
        row = self._one(
            "SELECT MAX(global_no) AS n FROM receipts WHERE device_id = ? AND held = 1", (device_id,)
        )
        return None if row is None or row["n"] is None else int(row["n"])

    def held_by_place(self, device_id: int, global_no: int, day_no: int) -> ReceiptRow | None:
        found = self._receipts(
            "device_id = ? AND global_no = ? AND day_no = ? AND held = 1", (device_id, global_no, day_no)
        )
        return found[0] if found else None

    def notes_total(self, original_id: int, except_receipt: int | None = None) -> int:
        row = self._one(
            "SELECT COALESCE(SUM(total_cents), 0) AS n FROM receipts"
            " WHERE original_id = ? AND held = 1 AND receipt_id != ?",
            (original_id, except_receipt or -1),
        )
        return int(row["n"]) if row is not None else 0

    # -----------------------------------------------------------------------------------------------------
    # files

    def add_file(self, fields: dict[str, Any]) -> int:
        with self.transaction() as db:
            names = ", ".join(fields)
            marks = ", ".join("?" for _ in fields)
            cursor = db.execute(
                f"INSERT INTO files({names}) VALUES ({marks})",
                tuple(_encode(k, v) for k, v in fields.items()),
            )
            return int(cursor.lastrowid or 0)

    def file(self, file_id: int) -> FileRow | None:
        row = self._one("SELECT * FROM files WHERE file_id = ?", (file_id,))
        return None if row is None else _decode(FileRow, row)

    def update_file(self, file_id: int, **fields: Any) -> None:
        self._update("files", "file_id = ?", (file_id,), fields)

    def files(self, device_id: int | None = None) -> list[FileRow]:
        if device_id is None:
            rows = self._all("SELECT * FROM files ORDER BY file_id")
        else:
            rows = self._all("SELECT * FROM files WHERE device_id = ? ORDER BY file_id", (device_id,))
        return [_decode(FileRow, row) for row in rows]

    def files_pending(self) -> list[FileRow]:
        rows = self._all(
            "SELECT * FROM files WHERE status IN ('FileProcessingInProgress', 'WaitingForPreviousFile')"
            " ORDER BY device_id, day_no, sequence, file_id"
        )
        return [_decode(FileRow, row) for row in rows]
