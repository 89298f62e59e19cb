"""Crash-safety harness for the journal: power cuts below SQLite, kill -9 of a real box process.

The promise under test: a receipt the box acknowledged (`Box.issue` returned) survives any crash with its
global number, day counter, hash and body; numbering stays gapless; and the box boots clean afterwards.

Two ways to crash, one set of checks (`lost_acks`, `numbering_problems`, the box's boot check and audit):

* `CrashVFS`: an apsw VFS shim that keeps every write in memory (the OS page cache) until xSync. At a chosen
  write/sync call the power is cut: per file, a random subset of the unsynced writes reaches the real file
  (a kept write may be torn at a 512-byte boundary), the rest is lost, and every later I/O fails, so the
  writer stops where it stood. `run_cut` drives a real box through it; `recover` reopens with the normal VFS.
* `run_kills`: a child process (this file run as a script: `python crash_harness.py child DIR LIFE SEED`)
  opens the box on a directory whatever state it is in and issues receipts as fast as it can, writing an
  ack line after each `issue()` returns; the parent SIGKILLs it at random instants, restarts it and checks
  every invariant after each kill.

The child imports only what a box needs (firmware, the key store, box_rig): a restart costs what a real one
does, about 0.2 s of imports on a 2-core machine.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import apsw

FIRMWARE_TESTS = Path(__file__).resolve().parents[1] / "firmware"
if str(FIRMWARE_TESTS) not in sys.path:
    sys.path.insert(0, str(FIRMWARE_TESTS))

from box_rig import SETTINGS, StepClock, sale  # noqa: E402

from firmware.box import Box  # noqa: E402
from firmware.core.errors import FiscalError  # noqa: E402
from firmware.journal import CLOSE_INITIATED, CLOSED, OPENED, Journal  # noqa: E402
from hardware import ECDSA_P256  # noqa: E402
from hardware.keystores import FileKeyStore  # noqa: E402

PASSPHRASE = b"crash-test-passphrase"
ZONE = "Africa/Harare"  # the Box's default zone
SECTOR = 512  # a torn write keeps a whole number of these


def open_keys(directory: Path) -> FileKeyStore:
    """The file key store the box signs with, generated on first use (plain Python I/O, not the VFS)."""
    keys = FileKeyStore(directory, PASSPHRASE)
    if keys.algorithm is None:
        keys.generate(ECDSA_P256)
    return keys


# -----------------------------------------------------------------------------------------------------------
# What the box acknowledged, and the checks every crash must pass


@dataclass(frozen=True)
class Ack:
    """One receipt the POS was told about: `issue()` returned these."""

    global_no: int
    day_no: int
    counter: int
    hash: str
    body: str | None = None  # read back on the box's own connection right after issue() returned


def lost_acks(journal: Journal, acks: Iterable[Ack]) -> list[str]:
    """Every acknowledged receipt must be in the journal with the same number, counter, hash (and body)."""
    acks = list(acks)
    if not acks:
        return []
    body = "body" if any(ack.body is not None for ack in acks) else "NULL"
    rows = {
        row[0]: {"day_no": row[1], "counter": row[2], "hash": row[3], "body": row[4]}
        for row in journal.db.execute(
            f"SELECT global_no, day_no, counter, hash, {body} FROM receipts WHERE global_no BETWEEN ? AND ?",
            (min(ack.global_no for ack in acks), max(ack.global_no for ack in acks)),
        )
    }
    lost = []
    for ack in acks:
        row = rows.get(ack.global_no)
        if row is None:
            lost.append(f"receipt {ack.global_no} (day {ack.day_no} #{ack.counter}) was acknowledged; gone")
            continue
        for name, want in (("day_no", ack.day_no), ("counter", ack.counter), ("hash", ack.hash)):
            if row[name] != want:
                lost.append(f"receipt {ack.global_no}: {name} is {row[name]!r}, {want!r} was acknowledged")
        if ack.body is not None and row["body"] != ack.body:
            lost.append(f"receipt {ack.global_no}: its body differs from the one acknowledged")
    return lost


def one_row(journal: Journal, sql: str, *params: Any) -> tuple[Any, ...]:
    """The single row of an aggregate query."""
    row = journal.db.execute(sql, params).fetchone()
    assert row is not None, sql
    return tuple(row)


def numbering_problems(journal: Journal, since: int = 0) -> list[str]:
    """Global numbers 1..n without gaps, day counters 1..k per day, days 1..d with all but the last closed,
    each receipt dated after the one before.

    The per-receipt checks start at global number `since` (0: all), so the check after each kill stays cheap.
    """
    db = journal.db
    problems = []
    count, low, high = one_row(
        journal, "SELECT count(*), coalesce(min(global_no), 0), coalesce(max(global_no), 0) FROM receipts"
    )
    if count != high or (count and low != 1):
        problems.append(f"global numbers are not 1..{count}: they run {low}..{high}")
    (from_day,) = one_row(
        journal, "SELECT coalesce(min(day_no), 0) FROM receipts WHERE global_no >= ?", since
    )
    for day_no, n, first, last in db.execute(
        "SELECT day_no, count(*), min(counter), max(counter) FROM receipts WHERE day_no >= ? GROUP BY day_no",
        (from_day,),
    ):
        if first != 1 or last != n:
            problems.append(f"day {day_no}: {n} receipts numbered {first}..{last}")
    for a, b, day_a, day_b, counter_a, counter_b, date_a, date_b in db.execute(
        "SELECT a.global_no, b.global_no, a.day_no, b.day_no, a.counter, b.counter, a.date, b.date "
        "FROM receipts a JOIN receipts b ON b.global_no = a.global_no + 1 WHERE a.global_no >= ? AND ("
        " NOT ((b.day_no = a.day_no AND b.counter = a.counter + 1)"
        "      OR (b.day_no > a.day_no AND b.counter = 1))"
        " OR b.date <= a.date)",
        (since,),
    ):
        problems.append(
            f"receipts {a} -> {b}: day {day_a} #{counter_a} ({date_a}), then day {day_b} #{counter_b} "
            f"({date_b})"
        )
    days = [row[0] for row in db.execute("SELECT day_no FROM days ORDER BY day_no")]
    if days != list(range(1, len(days) + 1)):
        problems.append(f"fiscal days are not 1..{len(days)}: {days[:8]}")
    unclosed = [
        row[0]
        for row in db.execute(
            "SELECT day_no FROM days WHERE day_no < (SELECT max(day_no) FROM days) AND status != ?", (CLOSED,)
        )
    ]
    if unclosed:
        problems.append(f"days {unclosed[:8]} were left behind without a close")
    return problems


def day_change_problems(journal: Journal, opened: Iterable[int], closed: Iterable[int]) -> list[str]:
    """Acknowledged day changes must stay: an opened day exists, a recorded close stays closed."""
    lost = [f"day {n} was opened (acknowledged) but is gone" for n in opened if journal.day(n) is None]
    for n in closed:
        day = journal.day(n)
        if day is None or day["status"] != CLOSED:
            lost.append(f"day {n}'s close was acknowledged but the day is not closed")
    return lost


def local_seconds(text: str) -> float:
    """The epoch time of a box's local `YYYY-MM-DDTHH:MM:SS` (the inverse of `Box.now_local`)."""
    return datetime.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(ZONE)).timestamp()


FIRST_START = local_seconds("2026-11-22T08:00:00")  # where a fresh journal's time starts (taxes in force)


def resume_time(journal: Journal) -> float:
    """One second after the latest time the journal has recorded (audit entry, receipt or day)."""
    latest = max(
        (
            row[0]
            for row in journal.db.execute(  # each table's times rise with its key: its last row is its latest
                "SELECT * FROM (SELECT at FROM audit_log ORDER BY seq DESC LIMIT 1) UNION ALL "
                "SELECT * FROM (SELECT date FROM receipts ORDER BY global_no DESC LIMIT 1) UNION ALL "
                "SELECT * FROM (SELECT opened FROM days ORDER BY day_no DESC LIMIT 1)"
            )
        ),
        default=None,
    )
    return FIRST_START if latest is None else local_seconds(latest) + 1


class TickClock:
    """A clock that moves one second every time it is read.

    Receipt dates must rise strictly and the box refuses to date a receipt more than 300 s past its clock,
    so a box issuing ~1,000 receipts a second on real time would stop within a second. Each life therefore
    starts one second after the latest time in its journal (`resume_time`, so nothing is persisted beside
    the journal) and every reading is a new second: dates rise by one second per receipt across kills.
    """

    def __init__(self, start: float) -> None:
        self.t = start - 1

    def now(self) -> float:
        self.t += 1
        return self.t


# -----------------------------------------------------------------------------------------------------------
# Power cut: the VFS shim

Op = tuple[str, int, bytes]  # ("w", offset, data) or ("t", new size, b"")


class PowerCutError(Exception):
    """Raised in the shim at the cut, and by every I/O after it."""


@dataclass
class FileState:
    """One file as the OS shows it (`image`: the page cache) and the writes it has not synced to disk."""

    path: str
    image: bytearray
    pending: list[Op] = field(default_factory=list)
    acked: int = 0  # how many of `pending` were already there when the box last acknowledged something


class CrashFile(apsw.VFSFile):
    """A file whose writes stay in memory until xSync; locks and WAL shared memory are the real VFS's."""

    def __init__(self, vfs: CrashVFS, name: Any, flags: list[int]) -> None:
        super().__init__("", name, flags)
        self.vfs = vfs
        self.state = vfs.state(name if isinstance(name, str) else name.filename(), self)

    def disk_content(self) -> bytes:
        size = int(super().xFileSize())
        return bytes(super().xRead(size, 0)) if size else b""

    def xRead(self, amount: int, offset: int) -> bytes:
        self.vfs.check()
        return bytes(self.state.image[offset : offset + amount])  # short at EOF: zero-filled, as the OS does

    def xWrite(self, data: bytes, offset: int) -> None:
        self.vfs.tick(self.state, ("w", offset, bytes(data)))
        image = self.state.image
        if offset > len(image):
            image.extend(bytes(offset - len(image)))
        image[offset : offset + len(data)] = data

    def xTruncate(self, newsize: int) -> None:
        self.vfs.tick(self.state, ("t", newsize, b""))
        image = self.state.image
        if newsize < len(image):
            del image[newsize:]
        else:
            image.extend(bytes(newsize - len(image)))

    def xSync(self, flags: int) -> None:
        self.vfs.tick(self.state, None)
        self.vfs.flush(self.state)

    def xFileSize(self) -> int:
        self.vfs.check()
        return len(self.state.image)

    def xFileControl(self, op: int, ptr: int) -> bool:
        if op == apsw.SQLITE_FCNTL_SIZE_HINT:
            return True  # the real VFS would grow the real file behind the shim's back
        return bool(super().xFileControl(op, ptr))


class CrashVFS(apsw.VFS):
    """A VFS that loses what was not synced once `cut_at` write/sync calls have been made (None: never).

    Deterministic for a seed. `keep` is each unsynced write's chance to reach the disk at the cut; `tear` the
    chance that a kept write longer than a sector keeps only a sector-aligned prefix. `ops` counts the calls.
    Directory entries are not modelled: a created file exists, a deleted one is gone, at once.
    """

    def __init__(
        self, name: str, seed: int, cut_at: int | None, keep: float = 0.5, tear: float = 0.1
    ) -> None:
        super().__init__(name, "")
        self.vfs_name = name
        self.rng = random.Random(seed)
        self.cut_at = cut_at
        self.keep = keep
        self.tear = tear
        self.ops = 0
        self.cut = False
        self.states: dict[str, FileState] = {}
        self.risky_calls: list[int] = []  # calls made while a write older than an ack was unsynced
        self.dropped = 0  # unsynced writes lost at the cut
        self.torn = 0

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        self.check()
        if name is None:  # SQLite's temporary files: never durable, nothing to model
            return apsw.VFSFile("", name, flags)
        return CrashFile(self, name, flags)

    def state(self, path: str, file: CrashFile) -> FileState:
        """The page cache outlives a close: a reopened file sees its unsynced writes, as on a real OS."""
        if path not in self.states:
            self.states[path] = FileState(path, bytearray(file.disk_content()))
        return self.states[path]

    def xDelete(self, filename: str, syncdir: bool) -> None:
        if self.cut:
            return  # a dead machine deletes nothing (SQLite tries, closing the WAL after the cut)
        self.states.pop(filename, None)
        super().xDelete(filename, syncdir)

    def xAccess(self, pathname: str, flags: int) -> bool:
        self.check()
        state = self.states.get(pathname)
        if state is not None and flags == apsw.SQLITE_ACCESS_EXISTS:
            return len(state.image) > 0  # as the unix VFS answers: an empty file does not count
        return bool(super().xAccess(pathname, flags))

    def check(self) -> None:
        if self.cut:
            raise PowerCutError("the power is off")

    def tick(self, state: FileState, op: Op | None) -> None:
        """Count one write/sync call; at `cut_at` the call in flight is pending too, then the power goes."""
        self.check()
        self.ops += 1
        if any(other.acked for other in self.states.values()):
            self.risky_calls.append(self.ops)
        if op is not None:
            state.pending.append(op)
        if self.cut_at is not None and self.ops >= self.cut_at:
            self.power_cut()
            raise PowerCutError(f"power cut at call {self.ops}")

    def flush(self, state: FileState) -> None:
        """xSync: everything pending reaches the real file, in order."""
        for op in state.pending:
            apply_op(state.path, op)
        state.pending.clear()
        state.acked = 0

    def acknowledge(self) -> bool:
        """The box just acknowledged something; True if a write made before it is not yet synced."""
        for state in self.states.values():
            state.acked = len(state.pending)
        return any(state.acked for state in self.states.values())

    def power_cut(self) -> None:
        """Per file, a random subset of the unsynced writes reaches the disk, in order; the rest is lost."""
        self.cut = True
        for state in self.states.values():
            for kind, where, data in state.pending:
                if self.rng.random() >= self.keep:
                    self.dropped += 1
                    continue
                if kind == "w" and len(data) > SECTOR and self.rng.random() < self.tear:
                    data = data[: SECTOR * self.rng.randrange(1, (len(data) + SECTOR - 1) // SECTOR)]
                    self.torn += 1
                apply_op(state.path, (kind, where, data))
            state.pending.clear()
        self.states.clear()  # the page cache went with the power


def apply_op(path: str, op: Op) -> None:
    """Put one write or truncate on the real file with plain OS calls."""
    kind, where, data = op
    if kind == "t":
        os.truncate(path, where)
        return
    with open(path, "r+b") as handle:
        handle.seek(where)
        handle.write(data)


@contextmanager
def quiet_power_cut_errors() -> Iterator[None]:
    """apsw reports a VFS error raised while another is pending as "unraisable"; after a cut that is every
    read SQLite tries while giving up. Those are expected; anything else still reaches the usual hook."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, PowerCutError):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def close_leftovers(directory: Path) -> None:
    """Close any connection a failed open left behind: one still open in this process would share the unix
    VFS's in-memory WAL index with the recovery's connection, and recovery must start from the disk alone."""
    for connection in apsw.connections():
        if connection.filename and Path(connection.filename).parent == directory.resolve():
            with suppress(Exception):  # after a cut, close reports the VFS's errors, but it does close
                connection.close(True)


# -----------------------------------------------------------------------------------------------------------
# Power cut: a box at work, and what its journal holds afterwards


@dataclass
class Ledger:
    """What the box acknowledged before the cut, and what it was doing when the power went."""

    receipts: list[Ack] = field(default_factory=list)
    days_opened: list[int] = field(default_factory=list)  # open_day() returned
    days_closed: list[int] = field(default_factory=list)  # record_close(Closed) returned
    provisioned: bool = False
    stage: str = "start"
    ack_calls: list[int] = field(default_factory=list)  # the shim's call count as each receipt was acked
    unsynced_acks: int = 0  # receipts acknowledged while a write made before them was not yet synced


@dataclass
class CutResult:
    seed: int
    synchronous: str
    window: str
    keep: float
    cut_at: int
    total_calls: int
    stage: str  # what the box was doing when the power went
    acked: int  # receipts acknowledged before the cut
    unsynced_acks: int  # in the uncut run: receipts acknowledged before their writes were synced
    dropped: int
    torn: int
    lost: list[str]
    problems: list[str]


class CutWorkload:
    """Two lives of a box on one journal, every step through the shim, until the cut.

    Life 1 creates the journal, boots, provisions, opens day 1 and issues receipts, then closes the journal
    (checkpoint, WAL deleted). Life 2 reopens it (the boot check writes), issues, closes the day, records its
    close, opens the next day and issues more. Half the seeds checkpoint the WAL every 16 pages so checkpoints
    and WAL restarts fall inside the window (production keeps SQLite's 1000; the knob is per connection).
    """

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.autocheckpoint = rng.choice((1000, 16))
        self.first = rng.randint(3, 12)
        self.second = rng.randint(4, 14)
        self.day_change = rng.randint(1, self.second - 1)
        self.totals = [f"{rng.randint(1, 99_999) / 100:.2f}" for _ in range(self.first + self.second)]

    def run(
        self, path: Path, keys: FileKeyStore, clock: StepClock, vfs: CrashVFS, sync: str, ledger: Ledger
    ) -> None:
        step = 0

        def issue(box: Box) -> None:
            nonlocal step
            ledger.stage = "issue"
            result = box.issue(sale(self.totals[step], invoice=f"CUT-{step}"))
            ack = Ack(result["global_no"], result["day_no"], result["counter"], result["hash"])
            ledger.receipts.append(ack)
            ledger.ack_calls.append(vfs.ops)
            ledger.unsynced_acks += vfs.acknowledge()
            step += 1
            clock.advance(1)
            row = box.journal.receipt(ack.global_no)  # the exact JSON, read back before anything else runs
            if row is not None:
                ledger.receipts[-1] = Ack(ack.global_no, ack.day_no, ack.counter, ack.hash, row["body"])

        for life in (1, 2):
            ledger.stage = f"open journal (life {life})"
            journal = Journal(path, vfs=vfs.vfs_name, synchronous=sync, create=True)
            try:
                journal.db.wal_autocheckpoint(self.autocheckpoint)
                ledger.stage = f"boot (life {life})"
                box = Box(journal, keys, clock)
                clock.advance(1)
                if life == 1:
                    ledger.stage = "provision"
                    box.provision(SETTINGS)
                    ledger.provisioned = True
                    ledger.stage = "open day"
                    ledger.days_opened.append(box.open_day()["day_no"])
                    clock.advance(60)
                    for _ in range(self.first):
                        issue(box)
                    ledger.stage = "close journal (life 1)"
                    journal.close()
                    continue
                for n in range(self.second):
                    if n == self.day_change:
                        day_no = box.journal.current_day()["day_no"]  # type: ignore[index]
                        ledger.stage = "close day"
                        box.close_day()
                        clock.advance(1)
                        ledger.stage = "record close"
                        box.record_close(day_no, CLOSED, closed_at=box.now_local())
                        ledger.days_closed.append(day_no)
                        clock.advance(1)
                        ledger.stage = "open day"
                        ledger.days_opened.append(box.open_day()["day_no"])
                        clock.advance(60)
                    issue(box)
                ledger.stage = "close journal (life 2)"
                journal.close()
            finally:
                with suppress(Exception):  # the power is gone: the process's lock on the journal goes too
                    journal.close()
                close_leftovers(path.parent)
        ledger.stage = "done"


_vfs_serial = 0


def run_cut(
    root: Path,
    keys: FileKeyStore,
    seed: int,
    synchronous: str = "FULL",
    window: str = "anywhere",
    keep: float | None = None,
) -> CutResult:
    """Count the workload's write/sync calls in an uncut run, cut the power at a random call in `window`,
    recover with the normal VFS and check.

    Windows: "anywhere"; "after first ack" (any call once a receipt was acknowledged); "at risk" (a call
    while a write made before an acknowledgement is still unsynced: with synchronous=FULL there is none).
    `keep` (each unsynced write's chance to reach the disk) is drawn per seed unless given.
    """
    workload = CutWorkload(seed)
    rng = random.Random(seed * 7919 + 1)
    chance = rng.choice((0.1, 0.5, 0.5, 0.9)) if keep is None else keep

    def attempt(directory: Path, cut_at: int | None) -> tuple[CrashVFS, Ledger, StepClock]:
        global _vfs_serial
        _vfs_serial += 1
        directory.mkdir(parents=True)
        vfs = CrashVFS(f"crash{_vfs_serial}", rng.randrange(2**32), cut_at, keep=chance)
        ledger = Ledger()
        clock = StepClock()
        # The hook stays in place until the failed run's traceback is dropped: the connection it holds
        # is closed then, and its last sync meets the cut too.
        with quiet_power_cut_errors():
            try:
                workload.run(directory / "journal.db", keys, clock, vfs, synchronous, ledger)
            except Exception:
                if not vfs.cut:
                    raise  # an error the cut did not cause is a finding of its own
            finally:
                vfs.unregister()
        return vfs, ledger, clock

    dry, dry_ledger, _ = attempt(root / f"uncut-{seed}", None)
    if window == "anywhere":
        cut_at = rng.randint(1, dry.ops)
    elif window == "after first ack":
        cut_at = rng.randint(dry_ledger.ack_calls[0] + 1, dry.ops)
    elif window == "at risk":
        if not dry.risky_calls:
            raise ValueError(f"seed {seed}: no ack is ever at risk with synchronous={synchronous}")
        cut_at = rng.choice(dry.risky_calls)
    else:
        raise ValueError(f"unknown window {window!r}")
    vfs, ledger, clock = attempt(root / f"cut-{seed}", cut_at)
    clock.advance(3600)
    lost, problems = recover(root / f"cut-{seed}" / "journal.db", keys, clock, ledger)
    return CutResult(
        seed=seed,
        synchronous=synchronous,
        window=window,
        keep=chance,
        cut_at=cut_at,
        total_calls=dry.ops,
        stage=ledger.stage,
        acked=len(ledger.receipts),
        unsynced_acks=dry_ledger.unsynced_acks,
        dropped=vfs.dropped,
        torn=vfs.torn,
        lost=lost,
        problems=problems,
    )


def recover(path: Path, keys: FileKeyStore, clock: StepClock, ledger: Ledger) -> tuple[list[str], list[str]]:
    """Reopen with the normal VFS as the next boot would; returns (lost acknowledgements, other problems).

    After the checks the box must carry on: a receipt issued after recovery takes the next global number.
    """
    try:
        # Cut before provisioning finished: the box's next step is registering again, which may lay the
        # schema into what the cut left (an empty file, or an empty database).
        journal = Journal(path, create=not ledger.provisioned)
    except FiscalError as error:
        if error.code == "BOX_JOURNAL" and ledger.provisioned and "no journal schema" in error.message:
            # The box refuses a journal whose schema is gone; what was acknowledged in it is lost.
            return [
                f"receipt {a.global_no} was acknowledged; the whole journal is gone" for a in ledger.receipts
            ] or ["provisioning was acknowledged but the journal's schema is gone"], []
        return [], [f"the journal does not open after the cut: {error}"]
    except Exception as error:  # noqa: BLE001 - a journal that no longer opens is a finding
        return [], [f"the journal does not open after the cut: {error}"]
    problems: list[str] = []
    lost: list[str] = []
    try:
        box = Box(journal, keys, clock)
        if not box.boot["clean"]:
            problems.append(f"boot check: {box.boot['problems'][:3]}")
        lost += lost_acks(journal, ledger.receipts)
        lost += day_change_problems(journal, ledger.days_opened, ledger.days_closed)
        provisioned = "device_id" in journal.settings()
        if ledger.provisioned and not provisioned:
            lost.append("provisioning was acknowledged but the settings are gone")
        problems += numbering_problems(journal)
        if provisioned and box.boot["clean"]:
            problems += audit_problems(box)
            problems += carry_on(box, clock)
    except Exception:  # noqa: BLE001 - whatever breaks in recovery is reported with the seed
        problems.append("recovery raised: " + traceback.format_exc(limit=4))
    finally:
        journal.close()
    return lost, problems


def audit_problems(box: Box) -> list[str]:
    audit = box.audit()
    return [] if audit["clean"] else [f"audit: {audit['problems'][:3]}"]


def carry_on(box: Box, clock: StepClock) -> list[str]:
    """Finish a day change the cut interrupted, then issue one receipt: it must take the next number."""
    day = box.journal.current_day()
    if day is not None and day["status"] == CLOSE_INITIATED:
        box.record_close(day["day_no"], CLOSED, closed_at=box.now_local())
        day = box.journal.current_day()
    if day is None or day["status"] == CLOSED:
        clock.advance(1)
        box.open_day()
    clock.advance(60)
    last = box.journal.head()["last_global_no"]
    result = box.issue(sale("2.30", invoice=f"AFTER-{last}"))
    if result["global_no"] != last + 1:
        return [f"after recovery the box issued receipt {result['global_no']}, not {last + 1}"]
    return []


# -----------------------------------------------------------------------------------------------------------
# kill -9: the child, a box process that issues receipts until it is killed


def day_quota(day_no: int, seed: int) -> int:
    """How many receipts day `day_no` takes before the child closes it: 5..120, the same after a restart."""
    return 5 + (day_no * 7919 + seed * 104_729) % 116


def child_main(directory: Path, life: int, seed: int) -> int:
    """Open the box on `directory` in whatever state the last kill left it, then issue receipts until killed.

    Protocol on stdout, one os.write per line (atomic on a pipe), each written only after the call it
    reports returned: `booting`, `boot clean <last>` or `boot dirty <json>`, `provisioning`, `provisioned`,
    `opening <day>`, `opened <day>`, `closing <day>`, `closed <day>`, `ack <global> <day> <counter> <hash>`.
    """

    def say(*words: object) -> None:
        os.write(1, (" ".join(str(word) for word in words) + "\n").encode())

    keys = FileKeyStore(directory / "keys", PASSPHRASE)
    journal = Journal(directory / "journal.db", create=True)
    clock = TickClock(resume_time(journal))
    say("booting")
    box = Box(journal, keys, clock)
    if not box.boot["clean"]:
        say("boot", "dirty", json.dumps(box.boot["problems"][:3]))
        return 3
    say("boot", "clean", journal.head()["last_global_no"])
    if "device_id" not in journal.settings():
        say("provisioning")
        box.provision(SETTINGS)
        say("provisioned")
    n = 0
    while n < 100_000:  # a child nobody kills stops by itself, which the parent reports as a failure
        day = journal.current_day()
        if day is None or day["status"] == CLOSED:
            say("opening", 1 if day is None else day["day_no"] + 1)
            say("opened", box.open_day()["day_no"])
            continue
        day_no = day["day_no"]
        if day["status"] == CLOSE_INITIATED:  # killed between close_day and record_close
            say("closing", day_no)
            box.record_close(day_no, CLOSED, closed_at=box.now_local())
            say("closed", day_no)
            continue
        if day["status"] != OPENED:
            say("strange", day_no, day["status"])
            return 4
        if journal.last_counter(day_no) >= day_quota(day_no, seed):
            say("closing", day_no)
            box.close_day()
            box.record_close(day_no, CLOSED, closed_at=box.now_local())
            say("closed", day_no)
            continue
        n += 1
        total = f"{(life * 7 + n * 13) % 9_999 / 100 + 0.01:.2f}"
        result = box.issue(sale(total, invoice=f"L{life}-{n}"))
        say("ack", result["global_no"], result["day_no"], result["counter"], result["hash"])
    return 0


# -----------------------------------------------------------------------------------------------------------
# kill -9: the parent

# The child's phase after each protocol line: a kill lands in the phase of the last line the child wrote.
PHASES = {
    "booting": "boot check",
    "boot": "issuing",
    "provisioning": "provisioning",
    "provisioned": "issuing",
    "opening": "day change",
    "opened": "issuing",
    "closing": "day change",
    "closed": "day change",
    "ack": "issuing",
}
# How a kill instant is chosen (see run_kills), and how often each way is drawn.
MODES = ("time", "acks", "day", "boot")
MODE_WEIGHTS = (3, 4, 2, 1)


@dataclass
class Life:
    """What one child said before it died."""

    acks: list[Ack] = field(default_factory=list)
    opened: list[int] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    phase: str = "start-up"
    dirty: str | None = None


@dataclass
class KillReport:
    kills: int = 0
    acks: int = 0
    lost: list[str] = field(default_factory=list)  # acknowledged receipts or day changes missing or changed
    failures: list[str] = field(default_factory=list)  # any other broken invariant, or a child that died
    audits: int = 0
    receipts_per_life: list[int] = field(default_factory=list)
    kills_by_mode: dict[str, int] = field(default_factory=dict)
    kills_during: dict[str, int] = field(default_factory=dict)  # the child's phase when it was killed
    receipts: int = 0
    days: int = 0
    seconds: float = 0.0
    startup_seconds: list[float] = field(default_factory=list)  # spawn to the child's first line

    def summary(self) -> dict[str, Any]:
        per_life = self.receipts_per_life
        startup = self.startup_seconds
        return {
            "kills": self.kills,
            "receipts_acknowledged": self.acks,
            "acknowledged_lost": len(self.lost),
            "integrity_failures": len(self.failures),
            "median_receipts_per_life": statistics.median(per_life) if per_life else 0,
            "seconds": round(self.seconds, 1),
            "full_audits": self.audits,
            "receipts_in_journal": self.receipts,
            "fiscal_days": self.days,
            "kills_by_mode": dict(sorted(self.kills_by_mode.items())),
            "kills_during": dict(sorted(self.kills_during.items())),
            "median_child_startup_seconds": round(statistics.median(startup), 3) if startup else None,
            "lost": self.lost[:10],
            "failures": self.failures[:10],
        }


def run_kills(
    directory: Path,
    kills: int,
    seed: int = 1,
    audit_every: int = 25,
    progress: Callable[[int, KillReport], None] | None = None,
) -> KillReport:
    """Start, SIGKILL and restart a box process `kills` times; check every invariant after each kill.

    Kill instants by mode: `time`, 0.1-0.6 s after spawn (imports, boot, provisioning or issuing); `acks`,
    as soon as the k-th ack (k in 0..250) is read, so the child is inside a later issue; `day`, 0-3 ms after
    the child says it is closing or opening a day; `boot`, 0-3 ms after it starts its (writing) boot check.
    Stops at the first broken invariant: after that the journal proves nothing more.
    """
    directory.mkdir(parents=True, exist_ok=True)
    open_keys(directory / "keys")  # generated once, before any kill
    rng = random.Random(seed)
    report = KillReport()
    began = time.perf_counter()
    every_ack: dict[int, Ack] = {}
    checked_to = 0
    for life_no in range(1, kills + 1):
        mode = rng.choices(MODES, MODE_WEIGHTS)[0]
        life = run_life(directory, life_no, seed, mode, rng, report)
        report.receipts_per_life.append(len(life.acks))
        report.acks += len(life.acks)
        report.kills_during[life.phase] = report.kills_during.get(life.phase, 0) + 1
        for ack in life.acks:
            if ack.global_no in every_ack:
                report.failures.append(f"life {life_no}: receipt {ack.global_no} was acknowledged twice")
            every_ack[ack.global_no] = ack
        full = life_no % audit_every == 0 or life_no == kills
        checked_to = check_after_kill(directory, life_no, life, every_ack, checked_to, full, report)
        if progress is not None:
            progress(life_no, report)
        if report.lost or report.failures:
            break
    report.seconds = time.perf_counter() - began
    return report


def run_life(
    directory: Path, life_no: int, seed: int, mode: str, rng: random.Random, report: KillReport
) -> Life:
    """Spawn a child, SIGKILL it when `mode` says, and collect every line it wrote before it died."""
    here = str(Path(__file__).resolve())
    command = [sys.executable, here, "child", str(directory), str(life_no), str(seed)]
    errors = directory / "child-stderr.txt"
    with open(errors, "wb") as stderr:
        spawned = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL)
    assert child.stdout is not None
    fd = child.stdout.fileno()
    life = Life()
    buffer = b""
    deadline = spawned + (rng.uniform(0.1, 0.6) if mode == "time" else 3.0)  # 3 s: if the mode never fires
    want_acks = rng.randint(0, 250)
    fired = False
    while not fired:
        wait = deadline - time.perf_counter()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break  # the child ended by itself
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            event = take_line(life, line.decode())
            if event == "booting":
                report.startup_seconds.append(time.perf_counter() - spawned)
            if (
                (mode == "acks" and len(life.acks) >= want_acks)
                or (mode == "day" and event in ("closing", "opening"))
                or (mode == "boot" and event == "booting")
            ):
                if mode in ("day", "boot"):
                    time.sleep(rng.uniform(0.0, 0.003))
                fired = True
                break
    alive = child.poll() is None
    if alive:
        os.kill(child.pid, signal.SIGKILL)
        report.kills += 1
        report.kills_by_mode[mode] = report.kills_by_mode.get(mode, 0) + 1
    code = child.wait()
    rest = buffer + child.stdout.read()  # lines already in the pipe were acknowledged before the kill
    child.stdout.close()
    *lines, partial = rest.split(b"\n")
    for line in lines:
        take_line(life, line.decode())
    if partial:
        report.failures.append(f"life {life_no}: a torn line on the pipe: {partial!r}")
    if life.dirty is not None:
        report.failures.append(f"life {life_no}: the child's boot check failed: {life.dirty}")
    elif not alive or code != -signal.SIGKILL:
        tail = errors.read_text(errors="replace")[-2000:]
        report.failures.append(f"life {life_no}: the child exited by itself (code {code}): {tail}")
    return life


def take_line(life: Life, line: str) -> str:
    """Record one protocol line; returns its event word."""
    words = line.split(" ")
    event = words[0]
    if event == "ack":
        life.acks.append(Ack(int(words[1]), int(words[2]), int(words[3]), words[4]))
    elif event == "opened":
        life.opened.append(int(words[1]))
    elif event == "closed":
        life.closed.append(int(words[1]))
    elif event == "boot" and words[1] == "dirty":
        life.dirty = line
    life.phase = PHASES.get(event, life.phase)
    return event


def check_after_kill(
    directory: Path,
    life_no: int,
    life: Life,
    every_ack: dict[int, Ack],
    checked_to: int,
    full: bool,
    report: KillReport,
) -> int:
    """Reopen the journal as the next boot would and check it; returns the global number checked up to.

    Each kill: a clean boot check (structure, chain and counters since the last checkpoint), this life's
    acknowledgements and day changes, numbering since the last check. `full`: every acknowledgement ever,
    all numbering, and the full audit (every hash, signature, counter and log entry from the start).
    """
    where = f"after kill {life_no}"
    keys = FileKeyStore(directory / "keys", PASSPHRASE)
    try:
        journal = Journal(directory / "journal.db")
    except Exception as error:  # noqa: BLE001 - a journal that no longer opens is a finding
        report.failures.append(f"{where}: the journal does not open: {error}")
        return checked_to
    try:
        box = Box(journal, keys, TickClock(resume_time(journal)))
        if not box.boot["clean"]:
            report.failures.append(f"{where}: boot check: {box.boot['problems'][:3]}")
        acks = every_ack.values() if full else life.acks
        report.lost += [f"{where}: {text}" for text in lost_acks(journal, acks)]
        report.lost += [f"{where}: {text}" for text in day_change_problems(journal, life.opened, life.closed)]
        since = 0 if full else checked_to
        report.failures += [f"{where}: {text}" for text in numbering_problems(journal, since)]
        if full:
            audit = box.audit()
            report.audits += 1
            if not audit["clean"]:
                report.failures.append(f"{where}: full audit: {audit['problems'][:3]}")
        head = journal.head()
        report.receipts, report.days = head["last_global_no"], head["day_no"]
        return max(report.receipts - 1, 0)
    except Exception:  # noqa: BLE001 - whatever breaks while checking is reported with the kill
        report.failures.append(f"{where}: checking raised: " + traceback.format_exc(limit=4))
        return checked_to
    finally:
        journal.close()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "child":
        sys.exit(child_main(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
    sys.exit("usage: crash_harness.py child DIRECTORY LIFE SEED  (the kill -9 child; see run_kills)")
