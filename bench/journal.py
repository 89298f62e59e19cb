"""The journal on disk: durable issue rate, close-day cost, boot check and audit speed over big journals.

Four parts, each figure the median of several rounds, floors measured in the same run and on the same disk:
  issue:  Box.issue (validate, ECDSA P-256 sign with the file key store, commit with WAL + synchronous=FULL)
          against a bare apsw WAL FULL insert of one row of the same size, one transaction per row.
          Targets: >= 0.7x the floor's rate, p99 <= 5 ms.
  close:  Box.close_day on a 10-receipt day against a 100,000-receipt day, each run on a fresh copy of the
          built journal (close_day changes state). Target: ratio of medians <= 1.5.
  boot:   Box construction (verify.boot_check) with 1,000,000 receipts in the journal; boot_check alone and
          PRAGMA quick_check alone show where the time goes. Target: <= 1 s.
  audit:  verify.full_audit over the same journal without / with signatures. Targets: >= 50,000 and
          >= 5,000 receipts/s.
The big journals are built once through Box.issue (synchronous=OFF for the build only) and cached under
out/bench/, keyed by a build version. Writes bench/results/journal.json (--quick: out/bench/, a smoke run).
Run: .venv/bin/python bench/journal.py [--quick] [--json] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import apsw
from measure import ROOT, file_system, percentile, profile_lines, results_head, say

from firmware import verify
from firmware.box import Box
from firmware.core import fdms
from firmware.journal import MIGRATIONS, SCHEMA_VERSION, Head, Journal, NewReceipt
from hardware import ECDSA_P256
from hardware.keystores import FileKeyStore
from hardware.signatures import load_public_key

sys.path.insert(0, str(ROOT / "tests" / "firmware"))
from box_rig import SETTINGS, StepClock, sale  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "journal.json"
SCRATCH = ROOT / "out" / "bench"
# Bump when the way the cached journals are built changes. The key also holds the firmware's schema version
# and a digest of its DDL (the DDL has changed in place before, under the same version).
BUILD_VERSION = "2"  # 2: the days before the last are delivered
SCHEMA_HASH = hashlib.sha256(json.dumps(MIGRATIONS, sort_keys=True).encode()).hexdigest()[:8]
STALE = "; if the firmware changed how it writes receipts, bump BUILD_VERSION in bench/journal.py"
PASSPHRASE = b"bench-passphrase"
DAY_RECEIPTS = 80_000  # receipts per day in the multi-day journal: 80,000 s = 22.2 h, inside 24 h

FULL_PLAN = {
    "rounds": 5,
    "issue": 2000,
    "close_small": 10,
    "close_big": 100_000,
    "close_runs": 7,
    "big": 1_000_000,
    "day": DAY_RECEIPTS,
    "boot_runs": 5,
    "audit_runs": 3,
}
QUICK_PLAN = {
    "rounds": 3,
    "issue": 200,
    "close_small": 10,
    "close_big": 5_000,
    "close_runs": 3,
    "big": 20_000,
    "day": 8_000,
    "boot_runs": 3,
    "audit_runs": 2,
}


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def drop_from_cache(path: Path) -> None:
    """Evict a file's pages from the page cache (clean pages only, so sync first): the next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def sale_for(n: int) -> dict[str, Any]:
    """The rig's one-line cash sale, with its amount and invoice number varied per receipt."""
    whole, cents = divmod(100 + n * 37 % 9_900, 100)
    return sale(total=f"{whole}.{cents:02d}", invoice=f"B-{n}")


# Seconds spent building journals and profiling, kept out of each part's own time.
SPENT = {"build": 0.0, "profile": 0.0}


def profile_top(run: Callable[[], object], lines: int = 12) -> list[str]:
    """cProfile `run` once; the top functions by own time, then by cumulative time, as printed lines."""
    begin = time.perf_counter()
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    out = profile_lines(profiler, lines)
    SPENT["profile"] += time.perf_counter() - begin
    return out


class Rig:
    """A box on a journal file: key store, step clock, and the day bookkeeping the bench needs."""

    def __init__(self, directory: Path, synchronous: str = "FULL", clock_t: float | None = None) -> None:
        self.directory = directory
        self.path = directory / "journal.db"
        self.keys = FileKeyStore(directory / "keys", PASSPHRASE)
        if self.keys.algorithm is None:
            self.keys.generate(ECDSA_P256)
        self.clock = StepClock()
        if clock_t is not None:
            self.clock.t = clock_t
        self.synchronous = synchronous
        self.journal = Journal(self.path, synchronous=synchronous, create=True)
        self.box = Box(self.journal, self.keys, self.clock)
        self.day_started = self.clock.t
        self.day_receipts = 0

    def provision_and_open(self, day_max_hours: int = 24) -> None:
        self.box.provision({**SETTINGS, "day_max_hours": day_max_hours})
        self.open_day()

    def open_day(self) -> None:
        self.clock.advance(60)
        self.box.open_day()
        self.day_started = self.clock.t
        self.day_receipts = 0
        self.clock.advance(60)

    def roll_day(self) -> None:
        """Deliver the day's receipts and close it as FDMS would confirm them, and open the next day: a box
        delivers as it goes, so only the open day's receipts wait (the boot check walks what waits)."""
        while (waiting := self.box.next_pending()) is not None:
            self.box.record_delivery(waiting["global_no"], 1, receipt_id=waiting["global_no"], errors=[])
        day_no = self.box.close_day()["fiscalDayNo"]
        self.box.record_close(day_no, "FiscalDayClosed")
        self.open_day()

    def seconds_left(self, hours: int = 24) -> float:
        return self.day_started + hours * 3600 - self.clock.t

    def close(self) -> None:
        self.journal.close()


# ---------------------------------------------------------------------------------------------------------
# Cached journals


def build(count: int, day_receipts: int, day_max_hours: int, settle: bool) -> dict[str, Any]:
    """A journal of `count` receipts issued through Box.issue, cached under out/bench/ and reused.

    Built with synchronous=OFF (the only thing that differs from a box: no fsync per commit), then
    checkpointed into the main file. `settle`: one boot after the build (synchronous=FULL), so the last
    signed checkpoint sits at the head, as on a box restarted since; otherwise it is at the last day's open.
    """
    key = f"journal-v{BUILD_VERSION}-s{SCHEMA_VERSION}-{SCHEMA_HASH}-{count}-{day_receipts}-{day_max_hours}h"
    key += "-settled" if settle else ""
    directory = SCRATCH / key
    marker = directory / "built.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("count") == count and (directory / "journal.db").exists():
            return {**info, "directory": str(directory), "reused": True}
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    say(f"building {key}: {count:,} receipts through Box.issue (synchronous=OFF) ...")
    rig = Rig(directory, synchronous="OFF")
    rig.provision_and_open(day_max_hours)
    started = time.perf_counter()
    last_report = started
    for n in range(count):
        if rig.day_receipts == day_receipts:
            rig.roll_day()
        rig.clock.advance(1)
        rig.box.issue(sale_for(n))
        rig.day_receipts += 1
        if time.perf_counter() - last_report > 30:
            last_report = time.perf_counter()
            say(f"  {n + 1:,} receipts, {(n + 1) / (last_report - started):,.0f}/s")
    build_seconds = time.perf_counter() - started
    days = rig.journal.head()["day_no"]
    clock_t = rig.clock.t
    rig.journal.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    rig.close()
    drop_from_cache(rig.path)  # syncs the file first: the build wrote without fsync
    first_boot = None
    if settle:
        clock_t += 3600
        begin = time.perf_counter()
        rig = Rig(directory, clock_t=clock_t)
        first_boot = time.perf_counter() - begin
        if not rig.box.boot["clean"]:
            raise SystemExit(f"the built journal fails its boot check: {rig.box.boot['problems'][:3]}")
        rig.journal.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rig.close()
    info = {
        "count": count,
        "days": days,
        "day_receipts": day_receipts,
        "day_max_hours": day_max_hours,
        "settled": settle,
        "build_seconds": round(build_seconds, 1),
        "build_per_s": round(count / build_seconds),
        "settle_boot_seconds": None if first_boot is None else round(first_boot, 2),
        "file_bytes": (directory / "journal.db").stat().st_size,
        "clock_t": clock_t,
        "method": "Box.issue per receipt, synchronous=OFF, StepClock +1 s per receipt",
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    marker.write_text(json.dumps(info, indent=2) + "\n")
    SPENT["build"] += time.perf_counter() - started
    say(f"  built in {build_seconds:,.0f} s ({info['build_per_s']:,}/s), {info['file_bytes'] / 1e6:,.0f} MB")
    return {**info, "directory": str(directory), "reused": False}


def copy_journal(source: Path, dest: Path) -> float:
    """A fresh copy of a built journal and its key store (the cache itself is never written); seconds."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    begin = time.perf_counter()
    shutil.copyfile(source / "journal.db", dest / "journal.db")
    shutil.copytree(source / "keys", dest / "keys")
    # Flushed now, so the copy's write-back does not land on the fsyncs of whatever is timed next.
    fd = os.open(dest / "journal.db", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - begin


# ---------------------------------------------------------------------------------------------------------
# 1. Issue rate against the bare insert


class BareFloor:
    """apsw, WAL, synchronous=FULL, one row of `size` bytes per BEGIN IMMEDIATE ... COMMIT."""

    def __init__(self, path: Path, size: int) -> None:
        self.db = apsw.Connection(str(path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS floor (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        self.size = size
        self.n = 0

    def run(self, count: int) -> tuple[float, list[float]]:
        rows = [(f"{self.n + i:012d}" * (self.size // 12 + 1))[: self.size] for i in range(count)]
        self.n += count
        return timed_loop(rows, self._insert)

    def _insert(self, body: str) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT INTO floor (body) VALUES (?)", (body,))
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


class JournalFloor:
    """Journal.commit_receipt with receipts made beforehand: the journal's own transaction, nothing else."""

    def __init__(self, path: Path, templates: list[NewReceipt]) -> None:
        self.journal = Journal(path, create=True)
        self.journal.open_day(1, "2026-11-22T08:00:00", "2026-11-22T08:00:00")
        self.templates = templates
        self.n = 0

    def run(self, count: int) -> tuple[float, list[float]]:
        picks = [self.templates[(self.n + i) % len(self.templates)] for i in range(count)]
        self.n += count
        return timed_loop(picks, self._commit)

    def _commit(self, new: NewReceipt) -> None:
        self.journal.commit_receipt(lambda head: new, new.date)

    def close(self) -> None:
        self.journal.close()


def timed_loop(
    items: list[Any], step: Callable[[Any], object], tick: Callable[[], None] | None = None
) -> tuple[float, list[float]]:
    """Run `step` on each item; the loop's seconds and each step's latency. `tick` runs untimed per item.

    The prepared items are frozen out of the collector's view, so its full collections do not charge their
    scanning to the measured path (objects made while measuring are collected as usual).
    """
    latencies = []
    gc.collect()
    gc.freeze()
    clock = time.perf_counter
    begin = clock()
    for item in items:
        if tick is not None:
            tick()
        start = clock()
        step(item)
        latencies.append(clock() - start)
    seconds = clock() - begin
    gc.unfreeze()
    return seconds, latencies


def templates_from(journal: Journal, count: int) -> list[NewReceipt]:
    """NewReceipts rebuilt from real rows (counters recomputed by the core), for the journal-only floor."""
    out = []
    rows = journal.db.execute(
        "SELECT type, currency, date, total, invoice_no, note_of, body, hash, signature, qr_data "
        "FROM receipts ORDER BY global_no LIMIT ?",
        (count,),
    )
    for kind, currency, date, total, invoice, note_of, body, hsh, sig, qr in list(rows):
        counters = fdms.update_counters(fdms.new_counters(), verify.signed_view(body))
        out.append(NewReceipt(body, kind, currency, date, total, invoice, note_of, hsh, sig, qr, counters))
    return out


def row_bytes(journal: Journal) -> int:
    """The median stored size of a receipt row: every column's bytes (8 per integer)."""
    sizes = []
    for row in journal.db.execute("SELECT * FROM receipts"):
        sizes.append(
            sum(len(v.encode()) if isinstance(v, str) else len(v) if isinstance(v, bytes) else 8 for v in row)
        )
    return int(statistics.median(sizes))


def make_share(rig: Rig, batch: list[dict[str, Any]]) -> float:
    """Median seconds of Box.issue's `make` (validate, sign, serialize) over a batch: an untimed round."""
    inner = rig.journal.commit_receipt
    spent: list[float] = []

    def commit(make: Callable[[Head], NewReceipt], at: str) -> tuple[Head, NewReceipt]:
        def timed_make(head: Head) -> NewReceipt:
            begin = time.perf_counter()
            new = make(head)
            spent.append(time.perf_counter() - begin)
            return new

        return inner(timed_make, at)

    setattr(rig.journal, "commit_receipt", commit)  # noqa: B010 (shadows the method on this instance only)
    try:
        issue_batch(rig, batch)
    finally:
        delattr(rig.journal, "commit_receipt")
    return statistics.median(spent)


def issue_batch(rig: Rig, batch: list[dict[str, Any]]) -> tuple[float, list[float]]:
    """Issue each sale, the clock one second on before each (FDMS wants receipt dates 1 s apart)."""
    if rig.seconds_left() < len(batch) + 900:
        rig.roll_day()
    seconds, latencies = timed_loop(batch, rig.box.issue, lambda: rig.clock.advance(1))
    rig.day_receipts += len(batch)
    return seconds, latencies


def issue_part(plan: dict[str, int], run_dir: Path, profile: bool) -> dict[str, Any]:
    count, rounds = plan["issue"], plan["rounds"]
    rig = Rig(run_dir / "issue")
    rig.provision_and_open()
    serial = 0

    def batch(n: int) -> list[dict[str, Any]]:
        nonlocal serial
        serial += n
        return [sale_for(i) for i in range(serial - n, serial)]

    issue_batch(rig, batch(200))  # warm-up, and the rows the floors are sized and made from
    size = row_bytes(rig.journal)
    body = int(statistics.median(len(r[0]) for r in rig.journal.db.execute("SELECT body FROM receipts")))
    floor = BareFloor(run_dir / "floor.db", size)
    floor.run(200)
    (run_dir / "txn").mkdir()
    txn = JournalFloor(run_dir / "txn" / "journal.db", templates_from(rig.journal, 200))
    txn.run(200)
    days_before = rig.journal.head()["day_no"]
    measured: dict[str, list[tuple[float, list[float]]]] = {"issue": [], "floor": [], "txn": []}
    runs: dict[str, Callable[[], tuple[float, list[float]]]] = {
        "issue": lambda: issue_batch(rig, batch(count)),
        "floor": lambda: floor.run(count),
        "txn": lambda: txn.run(count),
    }
    order = list(runs)
    for r in range(rounds):
        for name in order[r % 3 :] + order[: r % 3]:  # rotate who goes first
            measured[name].append(runs[name]())
        say(
            f"  issue round {r + 1}/{rounds}: {count / measured['issue'][-1][0]:,.0f}/s, "
            f"floor {count / measured['floor'][-1][0]:,.0f}/s"
        )
    make_seconds = make_share(rig, batch(count))
    out: dict[str, Any] = {
        "receipts_per_round": count,
        "rounds": rounds,
        "row_bytes": size,
        "body_bytes": body,
        "days_rolled": rig.journal.head()["day_no"] - days_before,
    }
    for name, got in measured.items():
        rates = [count / seconds for seconds, _ in got]
        out[name] = {
            "per_s": round(statistics.median(rates)),
            "per_s_rounds": [round(x) for x in rates],
            "p50_ms": ms(statistics.median(statistics.median(lat) for _, lat in got)),
            "p99_ms": ms(statistics.median(percentile(lat, 99) for _, lat in got)),
            "p999_ms": ms(statistics.median(percentile(lat, 99.9) for _, lat in got)),
            "max_ms": ms(max(max(lat) for _, lat in got)),
        }
    out["ratio"] = round(out["issue"]["per_s"] / out["floor"]["per_s"], 3)
    out["ratio_rounds"] = [
        round(a / b, 3)
        for a, b in zip(out["issue"]["per_s_rounds"], out["floor"]["per_s_rounds"], strict=True)
    ]
    out["make_us"] = round(make_seconds * 1e6, 1)
    out["notes"] = (
        "issue: Box.issue incl. validate, sign, serialize and the durable commit; floor: bare apsw WAL FULL "
        "insert of one row of row_bytes, one transaction each; txn: Journal.commit_receipt with receipts "
        "made beforehand (the journal's own transaction: 7 rows in 6 B-trees). make_us: median time inside "
        "Box.issue's make callback (validate, sign, serialize), from one extra untimed round."
    )
    if profile:
        rig.roll_day()
        out["profile"] = profile_top(lambda: issue_batch(rig, batch(1000)))
    floor.close()
    txn.close()
    rig.close()
    return out


# ---------------------------------------------------------------------------------------------------------
# 2. Close-day preparation: 10 receipts against 100,000


def close_part(plan: dict[str, int], run_dir: Path) -> dict[str, Any]:
    built = {
        name: build(plan[key], plan[key], 48, settle=True)
        for name, key in (("small", "close_small"), ("big", "close_big"))
    }
    times: dict[str, list[float]] = {"small": [], "big": []}
    boots: dict[str, list[float]] = {"small": [], "big": []}
    copies: list[float] = []
    for r in range(plan["close_runs"]):
        for name in ("small", "big") if r % 2 == 0 else ("big", "small"):
            info = built[name]
            work = run_dir / f"close-{name}"
            copied = copy_journal(Path(info["directory"]), work)
            if name == "big":
                copies.append(copied)
            begin = time.perf_counter()
            rig = Rig(work, clock_t=info["clock_t"] + 60 + r)
            boots[name].append(time.perf_counter() - begin)
            if not rig.box.boot["clean"]:
                raise SystemExit(
                    f"copied journal fails its boot check: {rig.box.boot['problems'][:3]}{STALE}"
                )
            begin = time.perf_counter()
            request = rig.box.close_day()
            times[name].append(time.perf_counter() - begin)
            if request["receiptCounter"] != info["count"]:
                raise SystemExit(f"close_day counted {request['receiptCounter']}, not {info['count']}")
            rig.close()
            shutil.rmtree(work)
    small, big = statistics.median(times["small"]), statistics.median(times["big"])
    return {
        "receipts": {name: info["count"] for name, info in built.items()},
        "runs": plan["close_runs"],
        "small_ms": ms(small),
        "big_ms": ms(big),
        "small_ms_runs": [ms(x) for x in times["small"]],
        "big_ms_runs": [ms(x) for x in times["big"]],
        "ratio": round(big / small, 3),
        "boot_before_close_ms": {name: ms(statistics.median(v)) for name, v in boots.items()},
        "copy_big_s": round(statistics.median(copies), 2),
        "builds": {name: strip(info) for name, info in built.items()},
        "notes": (
            "Each run closes a fresh copy of the built journal (checkpointed, no -wal; its last checkpoint "
            "at the head); the copy and the boot (Box construction) are outside the timing, Box.close_day "
            "(counters, day string, sign, request_close commit, checkpoint commit) is timed whole. "
            "day_max_hours=48: at 1 s per receipt a 24 h day holds at most 86,400 receipts."
        ),
    }


def strip(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k not in ("clock_t", "directory")}


# ---------------------------------------------------------------------------------------------------------
# 3 and 4. Boot check and audit over the big journal


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    begin = time.perf_counter()
    result = run()
    return time.perf_counter() - begin, result


def boot_and_audit_parts(
    plan: dict[str, int], run_dir: Path, profile: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    info = build(plan["big"], plan["day"], 24, settle=False)
    work = run_dir / "big"
    copy_seconds = copy_journal(Path(info["directory"]), work)
    path = work / "journal.db"
    keys = FileKeyStore(work / "keys", PASSPHRASE)
    public_key = load_public_key(keys.public_key_pem())
    device_id = int(SETTINGS["device_id"])
    clock_t = info["clock_t"]
    runs = plan["boot_runs"]

    def boot() -> tuple[float, float, Box]:
        nonlocal clock_t
        clock_t += 60
        clock = StepClock()
        clock.t = clock_t
        opened, journal = timed(lambda: Journal(path))
        built, box = timed(lambda: Box(journal, keys, clock))
        return opened, built, box

    def verdict(result: dict[str, Any]) -> None:
        if not result["clean"]:
            raise SystemExit(f"the big journal fails its check: {result['problems'][:3]}{STALE}")

    # A restart in the middle of the last day: the walk covers every receipt since that day's open.
    journal = Journal(path)
    checkpoint = journal.last_checkpoint()
    since = journal.head()["last_global_no"] - (checkpoint.global_no if checkpoint else 0)
    mid = [timed(lambda: verify.boot_check(journal, public_key, device_id)) for _ in range(max(2, runs - 2))]
    for _, result in mid:
        verdict(result)
    journal.close()
    opened, first, box = boot()  # walks them once more and signs a checkpoint at the head
    verdict(box.boot)
    box.journal.close()
    # Restarts with the checkpoint at the head: what every later boot costs.
    boots, opens = [], []
    for _ in range(runs):
        opened, built, box = boot()
        verdict(box.boot)
        box.journal.close()
        boots.append(built)
        opens.append(opened)
    journal = Journal(path)
    checks = [timed(lambda: verify.boot_check(journal, public_key, device_id)) for _ in range(runs)]
    for _, result in checks:
        verdict(result)
    quick = [timed(journal.quick_check) for _ in range(runs)]
    if any(result != ["ok"] for _, result in quick):
        raise SystemExit("quick_check reports damage in the big journal")
    journal.close()
    # Cold: the file's pages evicted from the page cache first (the VM host may still cache the disk).
    drop_from_cache(path)
    cold_open, cold_boot, box = boot()
    box.journal.close()
    drop_from_cache(path)
    journal = Journal(path)
    cold_quick, _ = timed(journal.quick_check)
    boot_s = statistics.median(boots)
    quick_s = statistics.median(t for t, _ in quick)
    boot_out: dict[str, Any] = {
        "receipts": info["count"],
        "file_mb": round(path.stat().st_size / 1e6),
        "runs": runs,
        "box_boot_s": round(boot_s, 3),
        "box_boot_s_runs": [round(x, 3) for x in boots],
        "journal_open_ms": ms(statistics.median(opens)),
        "boot_check_s": round(statistics.median(t for t, _ in checks), 3),
        "quick_check_s": round(quick_s, 3),
        "quick_check_share": round(quick_s / boot_s, 3),
        "mid_day_restart": {
            "receipts_since_checkpoint": since,
            "boot_check_s": round(statistics.median(t for t, _ in mid), 3),
            "first_box_boot_s": round(first, 3),
        },
        "cold": {
            "journal_open_s": round(cold_open, 3),
            "box_boot_s": round(cold_boot, 3),
            "quick_check_s": round(cold_quick, 3),
        },
        "copy_s": round(copy_seconds, 1),
        "build": strip(info),
        "notes": (
            "Box construction on a copy of the cached journal, reopened each run, with the last checkpoint "
            "at the head (a restart after a clean boot); boot_check alone and quick_check alone on the same "
            "file. mid_day_restart: the cached journal as built, its last checkpoint at the last day's open. "
            "cold: one run each after posix_fadvise(DONTNEED) on the file."
        ),
    }
    if profile:
        boot_out["profile"] = profile_top(lambda: boot()[2].journal.close())
    # 4. The audit, over the same copy.
    count = journal.head()["last_global_no"]
    audits: dict[str, list[float]] = {"plain": [], "signatures": []}
    integrity = []
    for r in range(plan["audit_runs"]):
        for name in ("plain", "signatures") if r % 2 == 0 else ("signatures", "plain"):
            audit = partial(verify.full_audit, journal, public_key, device_id, signatures=name != "plain")
            seconds, report = timed(audit)
            verdict(report)
            if report["checked"]["receipts"] != count:
                raise SystemExit(f"the audit checked {report['checked']['receipts']} receipts, not {count}")
            audits[name].append(seconds)
            say(f"  audit round {r + 1} {name}: {count / seconds:,.0f} receipts/s")
        integrity.append(timed(journal.integrity_check)[0])
    journal.close()
    plain, signed = statistics.median(audits["plain"]), statistics.median(audits["signatures"])
    audit_out: dict[str, Any] = {
        "receipts": count,
        "runs": plan["audit_runs"],
        "plain_per_s": round(count / plain),
        "plain_s": round(plain, 2),
        "plain_s_runs": [round(x, 2) for x in audits["plain"]],
        "signatures_per_s": round(count / signed),
        "signatures_s": round(signed, 2),
        "signatures_s_runs": [round(x, 2) for x in audits["signatures"]],
        "integrity_check_s": round(statistics.median(integrity), 2),
        "notes": "verify.full_audit over the whole copy (integrity_check, every receipt, logs, checkpoints).",
    }
    if profile:  # over the close-day journal: the same work per receipt, a tenth of the receipts
        settled = build(plan["close_big"], plan["close_big"], 48, settle=True)
        profile_journal = Path(settled["directory"]) / "journal.db"
        key = public_key_of(profile_journal)
        with Journal(profile_journal) as small:
            total = small.head()["last_global_no"]
            for name in ("plain", "signatures"):
                audit = partial(verify.full_audit, small, key, device_id, signatures=name != "plain")
                audit_out[f"profile_{name}"] = [f"over {total:,} receipts"] + profile_top(audit)
    return boot_out, audit_out


def public_key_of(journal_path: Path) -> Any:
    return load_public_key(FileKeyStore(journal_path.parent / "keys", PASSPHRASE).public_key_pem())


# ---------------------------------------------------------------------------------------------------------
# Report


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[tuple[str, Any, str, bool]] = []
    if "issue" in results:
        issue = results["issue"]
        rows.append(("issue rate / floor rate", issue["ratio"], ">= 0.7", issue["ratio"] >= 0.7))
        p99 = issue["issue"]["p99_ms"]
        rows.append(("issue p99 latency (ms)", p99, "<= 5", p99 <= 5))
    if "close_day" in results:
        ratio = results["close_day"]["ratio"]
        rows.append(("close_day big / small", ratio, "<= 1.5", ratio <= 1.5))
    if "boot" in results:
        seconds = results["boot"]["box_boot_s"]
        rows.append((f"boot, {results['boot']['receipts']:,} receipts (s)", seconds, "<= 1", seconds <= 1))
    if "audit" in results:
        plain, signed = results["audit"]["plain_per_s"], results["audit"]["signatures_per_s"]
        rows.append(("audit, no signatures (receipts/s)", plain, ">= 50000", plain >= 50_000))
        rows.append(("audit, signatures (receipts/s)", signed, ">= 5000", signed >= 5_000))
    return [{"target": t, "figure": f, "goal": g, "met": m} for t, f, g, m in rows]


def table(results: dict[str, Any]) -> Iterator[str]:
    if "issue" in results:
        issue = results["issue"]
        yield (
            f"issue ({issue['rounds']} x {issue['receipts_per_round']} receipts, row {issue['row_bytes']} B, "
            f"body {issue['body_bytes']} B)"
        )
        yield f"  {'':<28} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8}"
        labels = {"issue": "Box.issue", "txn": "journal txn only", "floor": "bare 1-row insert (floor)"}
        for name, label in labels.items():
            row = issue[name]
            yield (
                f"  {label:<28} {row['per_s']:>8,} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['p999_ms']:>9} "
                f"{row['max_ms']:>8}"
            )
        yield f"  make (validate, sign, serialize) {issue['make_us']} us/receipt"
    if "close_day" in results:
        close = results["close_day"]
        n = close["receipts"]
        yield (
            f"close_day ({close['runs']} runs): {n['small']:,} receipts {close['small_ms']} ms, "
            f"{n['big']:,} receipts {close['big_ms']} ms, ratio {close['ratio']}"
        )
    if "boot" in results:
        boot = results["boot"]
        mid = boot["mid_day_restart"]
        yield (
            f"boot ({boot['receipts']:,} receipts, {boot['file_mb']:,} MB): Box() {boot['box_boot_s']} s, "
            f"boot_check {boot['boot_check_s']} s, quick_check {boot['quick_check_s']} s "
            f"({boot['quick_check_share']:.0%}); cold Box() {boot['cold']['box_boot_s']} s"
        )
        yield (
            f"  restart mid-day ({mid['receipts_since_checkpoint']:,} receipts since the checkpoint): "
            f"boot_check {mid['boot_check_s']} s"
        )
    if "audit" in results:
        audit = results["audit"]
        yield (
            f"audit ({audit['receipts']:,} receipts, {audit['runs']} runs): {audit['plain_per_s']:,}/s "
            f"({audit['plain_s']} s) without signatures, {audit['signatures_per_s']:,}/s "
            f"({audit['signatures_s']} s) with; integrity_check alone {audit['integrity_check_s']} s"
        )
    yield ""
    yield f"{'target':<38} {'figure':>10} {'goal':>10}  verdict"
    for row in results["targets"]:
        verdict = "met" if row["met"] else "MISSED"
        yield f"{row['target']:<38} {row['figure']:>10} {row['goal']:>10}  {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small journals and few rounds (a smoke run)")
    parser.add_argument(
        "--json", action="store_true", help="print the results JSON on stdout (table: stderr)"
    )
    parser.add_argument("--profile", action="store_true", help="also cProfile each part once (untimed)")
    parser.add_argument("--parts", default="issue,close,boot", help="comma-separated: issue, close, boot")
    args = parser.parse_args()
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    parts = set(args.parts.split(","))
    SCRATCH.mkdir(parents=True, exist_ok=True)
    fs = file_system(SCRATCH)
    if fs["type"] in ("tmpfs", "ramfs", "overlay"):
        say(f"warning: {SCRATCH} is on {fs['type']}, not a real disk: the durable figures mean little")
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=SCRATCH))
    results = results_head(
        "journal", args.quick, sqlite=apsw.sqlite_lib_version(), apsw=apsw.apsw_version(), file_system=fs
    )
    results["part_seconds"] = {}

    def boot_and_audit() -> None:
        results["boot"], results["audit"] = boot_and_audit_parts(plan, run_dir, args.profile)

    jobs: dict[str, Callable[[], None]] = {
        "issue": lambda: results.update(issue=issue_part(plan, run_dir, args.profile)),
        "close": lambda: results.update(close_day=close_part(plan, run_dir)),
        "boot_and_audit": boot_and_audit,
    }
    announce = {
        "issue": f"issue: {plan['rounds']} rounds of {plan['issue']} receipts ...",
        "close": f"close_day: {plan['close_small']} vs {plan['close_big']:,} receipts ...",
        "boot_and_audit": f"boot and audit: {plan['big']:,} receipts ...",
    }
    try:
        for name, job in jobs.items():
            if name.split("_")[0] not in parts:
                continue
            say(announce[name])
            before = dict(SPENT)
            seconds, _ = timed(job)
            extra = sum(SPENT[k] - before[k] for k in SPENT)
            results["part_seconds"][name] = round(seconds - extra, 1)
        results["part_seconds"].update({f"{k}_seconds": round(v, 1) for k, v in SPENT.items()})
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    results["targets"] = targets(results)
    lines = "\n".join(table(results))
    for part in ("issue", "boot", "audit"):
        for key, value in results.get(part, {}).items():
            if key.startswith("profile"):
                lines += f"\n\n{part} {key}:\n" + "\n".join(value)
    print(lines, file=sys.stderr if args.json else sys.stdout)
    text = json.dumps(results, indent=2) + "\n"
    if args.json:
        print(text, end="")
    out = SCRATCH / "journal-quick.json" if args.quick else RESULTS
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    say(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
