"""Tampering with the journal is found: any field of any row, any byte of the file.

A journal with two days (invoices, a credit note, two currencies, prints, deliveries, a signed close) is
copied for each trial, changed in one place, and opened again. The change must make the file unopenable,
fail the boot check, or fail the audit, unless it changed no stored value at all (a byte in unused space).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import apsw
import pytest
from box_rig import DEVICE_ID, SETTINGS, Rig, StepClock, sale

from firmware.core.errors import FiscalError

FIELD_TRIALS = 400
BYTE_TRIALS = 400


def build(rig: Rig) -> Path:
    """The journal every trial starts from, with its WAL folded into the main file."""
    box = rig.box()
    box.provision(SETTINGS)
    box.open_day()
    for n in range(30):
        rig.clock.advance(30)
        box.issue(sale("%d.15" % (n + 1), receiptCurrency="ZWG" if n % 3 == 0 else "USD"))
    note = {"deviceID": DEVICE_ID, "receiptGlobalNo": 2, "fiscalDayNo": 1}
    box.issue(sale("-1.00", kind="CreditNote", creditDebitNote=note, receiptNotes="Returned"))
    for global_no in (1, 2, 2):
        box.journal.print_started(global_no, box.now_local())
        box.journal.print_completed(global_no, box.now_local())
    box.journal.print_started(3, box.now_local())  # a print that never finished (paper out)
    box.mark_open_sent(1)
    yellow = [{"code": "RCPT031", "colour": "Yellow", "message": "Invoice is submitted with the future date"}]
    for global_no in range(1, 7):  # FDMS's answers: receipt IDs, its signatures, a finding
        box.record_delivery(
            global_no,
            1 + global_no % 2,
            receipt_id=7000 + global_no,
            server_date=box.now_local(),
            server_signature={"hash": "aGFzaA==", "signature": "c2ln", "certificateThumbprint": "ab" * 20},
            errors=yellow if global_no == 4 else [],
        )
    box.close_day()
    box.record_close(1, "FiscalDayClosed", closed_at=box.now_local(), server_signature="c2VydmVy")
    rig.clock.advance(600)
    box.open_day()
    for _ in range(4):
        rig.clock.advance(30)
        box.issue(sale())
    assert box.audit()["clean"]
    box.journal.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    rig.close()
    base = rig.root / "base.db"
    shutil.copyfile(rig.journal_path, base)
    return base


def detected(rig: Rig) -> str | None:
    """Which check noticed the change: 'open', 'boot' or 'audit'; None when all passed."""
    rig.clock = StepClock("2026-11-23T12:00:00")
    try:
        box = rig.box()
    except FiscalError:
        return "open"
    except apsw.Error:
        return "open"
    if not box.boot["clean"]:
        return "boot"
    if not box.audit()["clean"]:
        return "audit"
    return None


def cells(path: Path) -> list[tuple[str, str, int, Any]]:
    db = apsw.Connection(str(path))
    try:
        out = []
        for (table,) in list(db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")):
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            without_rowid = (
                "WITHOUT ROWID"
                in db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
            )
            key = "rowid" if not without_rowid else ", ".join(columns[:5])
            for row in db.execute(f"SELECT {key}, * FROM {table}"):
                ident = row[0] if not without_rowid else row[:5]
                values = row[1:] if not without_rowid else row[5:]
                for column, value in zip(columns, values, strict=True):
                    out.append((table, column, ident, value))
        return out
    finally:
        db.close()


def changed(value: Any, rng: random.Random) -> list[Any]:
    """Candidate replacements for a stored value, nearest first."""
    if value is None:
        return [1, "x"]
    if isinstance(value, int):
        return [value + 1, value - 1, value + 1000]
    if isinstance(value, bytes):
        i = rng.randrange(len(value))
        return [value[:i] + bytes([value[i] ^ (1 << rng.randrange(8))]) + value[i + 1 :]]
    i = rng.randrange(len(value)) if value else 0
    swap = "Y" if value[i : i + 1] != "Y" else "Z"
    return [value[:i] + swap + value[i + 1 :]]


def apply(path: Path, table: str, column: str, ident: Any, replacement: Any) -> bool:
    db = apsw.Connection(str(path))
    try:
        if isinstance(ident, tuple):
            where = " AND ".join(f"{c} IS ?" for c in ("day_no", "kind", "currency", "sub", "pct"))
            params: tuple[Any, ...] = (replacement, *ident)
        else:
            where, params = "rowid = ?", (replacement, ident)
        try:
            db.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", params)
        except apsw.ConstraintError:
            return False
        return db.changes() == 1
    finally:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tamper")
    rig = Rig(root)
    return root, build(rig)


def trial_rig(root: Path, base: Path) -> Rig:
    rig = Rig(root)
    for suffix in ("-wal", "-shm"):
        Path(str(rig.journal_path) + suffix).unlink(missing_ok=True)
    shutil.copyfile(base, rig.journal_path)
    return rig


def test_the_untouched_copy_passes_every_check(base: tuple[Path, Path]) -> None:
    root, path = base
    rig = trial_rig(root, path)
    assert detected(rig) is None  # so a detection below is caused by the change alone
    rig.close()


def test_changing_any_field_of_any_row_is_detected(base: tuple[Path, Path]) -> None:
    root, path = base
    rng = random.Random(20261122)
    every = cells(path)
    by_column: dict[tuple[str, str], list[Any]] = {}
    for cell in every:
        by_column.setdefault(cell[:2], []).append(cell)
    # Every column of every table at least once, then random cells.
    chosen = [rng.choice(group) for group in by_column.values()]
    chosen += rng.sample(every, min(FIELD_TRIALS - len(chosen), len(every)))
    missed = []
    tried = 0
    for table, column, ident, value in chosen:
        for replacement in changed(value, rng):
            rig = trial_rig(root, path)
            if not apply(rig.journal_path, table, column, ident, replacement):
                continue
            tried += 1
            if detected(rig) is None:
                missed.append((table, column, ident, value, replacement))
            rig.close()
            break
    assert tried >= len(by_column)
    assert missed == []


def dump(path: Path) -> Any:
    """Every stored value, table by table; None when SQLite cannot read the file."""
    try:
        db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            tables = [r[0] for r in db.execute("SELECT name, sql FROM sqlite_master ORDER BY name")]
            schema = list(db.execute("SELECT * FROM sqlite_master ORDER BY name"))
            return schema, {t: sorted(map(repr, db.execute(f"SELECT * FROM {t}"))) for t in tables if t}
        finally:
            db.close()
    except (apsw.Error, UnicodeDecodeError):
        return None


def test_flipping_any_byte_of_the_file_is_detected_or_changes_nothing(base: tuple[Path, Path]) -> None:
    root, path = base
    original = dump(path)
    size = path.stat().st_size
    rng = random.Random(7)
    outcomes: dict[str, int] = {}
    silent = []
    for _ in range(BYTE_TRIALS):
        offset = rng.randrange(size)
        rig = trial_rig(root, path)
        with open(rig.journal_path, "r+b") as handle:
            handle.seek(offset)
            byte = handle.read(1)[0]
            handle.seek(offset)
            handle.write(bytes([byte ^ rng.randrange(1, 256)]))
        after = dump(rig.journal_path)
        how = detected(rig)
        rig.close()
        if how is None:
            how = "harmless" if after == original else "SILENT"
            if how == "SILENT":
                silent.append(offset)
        outcomes[how] = outcomes.get(how, 0) + 1
    print("byte flips:", outcomes)
    assert silent == [], outcomes
    assert sum(n for how, n in outcomes.items() if how != "harmless") > BYTE_TRIALS // 4, outcomes
