"""Power cuts below SQLite (the apsw shim in crash_harness.py): what the box acknowledged must survive.

Every run first counts the write/sync calls of an uncut workload, then repeats it and cuts the power at one
call: unsynced writes reach the disk at random (some torn), the rest is lost. The journal is reopened with
the normal VFS, as the next boot would. With synchronous=FULL nothing acknowledged may be missing; with
NORMAL the same harness must see acknowledged receipts vanish, or it proves nothing.
"""

from __future__ import annotations

from collections import Counter
from contextlib import suppress
from pathlib import Path

import apsw
import pytest
from crash_harness import (
    SETTINGS,
    CrashVFS,
    CutResult,
    PowerCutError,
    StepClock,
    open_keys,
    quiet_power_cut_errors,
    run_cut,
)

from firmware.box import Box
from firmware.journal import Journal
from hardware.keystores import FileKeyStore


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> FileKeyStore:
    """One device key for all cuts, made before any of them (the key store does not go through the VFS)."""
    return open_keys(tmp_path_factory.mktemp("keys"))


def describe(results: list[CutResult]) -> str:
    return "\n".join(
        f"seed {r.seed}: cut at call {r.cut_at}/{r.total_calls} during {r.stage}, {r.acked} acked, "
        f"lost {r.lost[:2]}, problems {r.problems[:2]}"
        for r in results
    )


def test_shim_loses_unsynced_writes_and_keeps_synced_ones(tmp_path: Path) -> None:
    """The model itself: a write is only in memory until xSync, and a cut drops what was not synced."""
    for synchronous, survives in (("OFF", False), ("FULL", True)):
        path = tmp_path / f"{synchronous}.db"
        vfs = CrashVFS(f"shim-{synchronous}", seed=1, cut_at=None, keep=0.0)
        db = apsw.Connection(str(path), vfs=vfs.vfs_name)
        assert db.execute("PRAGMA journal_mode=WAL").fetchall() == [("wal",)]
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES ('acknowledged')")
        assert db.execute("SELECT x FROM t").fetchall() == [("acknowledged",)]  # the page cache has it
        on_disk = Path(f"{path}-wal").read_bytes()
        assert (b"acknowledged" in on_disk) is survives
        vfs.power_cut()
        with quiet_power_cut_errors(), suppress(PowerCutError):
            db.close(True)  # SQLite gives up on its files; the connection is closed all the same
        vfs.unregister()
        reopened = apsw.Connection(str(path))
        tables = reopened.execute("SELECT name FROM sqlite_schema WHERE name = 't'").fetchall()
        rows = reopened.execute("SELECT x FROM t").fetchall() if tables else []
        assert rows == ([("acknowledged",)] if survives else []), synchronous
        reopened.close()


def test_full_loses_nothing_acknowledged_wherever_the_power_goes(tmp_path: Path, keys: FileKeyStore) -> None:
    """150 cuts anywhere (journal creation, boot checks, provisioning, day changes, receipts, clean closes):
    every acknowledged receipt, day change and setting is back, numbering is gapless, boot and audit clean."""
    results = [run_cut(tmp_path, keys, seed) for seed in range(150)]
    bad = [r for r in results if r.lost or r.problems or r.unsynced_acks]
    assert not bad, describe(bad)
    stages = Counter(r.stage.split(" (")[0] for r in results)
    assert {"open journal", "boot", "provision", "issue"} <= set(stages), stages
    assert stages["close day"] + stages["record close"] + stages["open day"] > 0, stages
    assert sum(r.acked for r in results) > 500
    assert sum(r.torn for r in results) > 0 and sum(r.dropped for r in results) > 100


def test_full_loses_nothing_once_receipts_were_acknowledged(tmp_path: Path, keys: FileKeyStore) -> None:
    """60 cuts after the first acknowledgement; each unsynced write reaches the disk with even odds."""
    results = [run_cut(tmp_path, keys, seed, window="after first ack", keep=0.5) for seed in range(60)]
    bad = [r for r in results if r.lost or r.problems or r.unsynced_acks]
    assert not bad, describe(bad)
    assert all(r.acked > 0 for r in results)


def test_normal_is_caught_losing_acknowledged_receipts(tmp_path: Path, keys: FileKeyStore) -> None:
    """The harness has teeth: with synchronous=NORMAL a commit returns before the WAL is synced, and a cut
    while such a receipt is unsynced must show up as a lost acknowledgement in (nearly) every run."""
    results = [run_cut(tmp_path, keys, seed, "NORMAL", window="at risk", keep=0.5) for seed in range(40)]
    assert all(r.unsynced_acks > 0 for r in results)
    caught = [r for r in results if r.lost]
    assert len(caught) >= 36, describe([r for r in results if not r.lost])


def test_audit_is_clean_before_the_first_day(tmp_path: Path, keys: FileKeyStore) -> None:
    """A box provisioned but cut before opening its first day must audit clean: nothing is wrong with it."""
    journal = Journal(tmp_path / "journal.db", create=True)
    try:
        box = Box(journal, keys, StepClock())
        box.provision(SETTINGS)
        audit = box.audit()
        assert audit["clean"], audit["problems"]
    finally:
        journal.close()
