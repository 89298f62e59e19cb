"""kill -9 of a real box process at random instants (crash_harness.run_kills): nothing acknowledged is lost.

A process crash keeps the OS page cache, so this cannot catch a missing fsync (test_power_cut.py does); it
catches what a crash between any two instructions of the box can break: a receipt acknowledged before its
commit, numbers taken twice or skipped, a day change half done, a boot check or checkpoint that a torn-off
transaction confuses, and a box that does not come back after a kill.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import apsw
from crash_harness import (
    SETTINGS,
    Ack,
    KillReport,
    Life,
    TickClock,
    check_after_kill,
    open_keys,
    resume_time,
    run_kills,
    sale,
)

from firmware.box import Box
from firmware.journal import Journal

KILLS = 100


def test_kill_9_never_loses_an_acknowledged_receipt(tmp_path: Path) -> None:
    """100 SIGKILLs while booting, provisioning, issuing and changing days; after each one the journal holds
    every acknowledged receipt unchanged, numbering is gapless and the boot check is clean; every 25th kill
    (and the last) the full audit is clean too."""
    report = run_kills(tmp_path / "box", KILLS, seed=20261122, audit_every=25)
    summary = report.summary()
    print(json.dumps(summary, indent=1))
    assert report.lost == [], summary
    assert report.failures == [], summary
    assert report.kills == KILLS
    assert report.audits == KILLS // 25
    assert report.acks >= 1_000 and report.receipts >= report.acks
    assert report.days >= 10  # numbering crossed many day boundaries
    for phase in ("boot check", "issuing", "day change"):
        assert report.kills_during.get(phase, 0) > 0, summary


def test_kill_checks_catch_a_lost_a_changed_and_a_renumbered_receipt(tmp_path: Path) -> None:
    """The checks run after each kill fail on a journal that lost, altered or renumbered a receipt."""
    directory = tmp_path / "box"
    keys = open_keys(directory / "keys")
    journal = Journal(directory / "journal.db", create=True)
    box = Box(journal, keys, TickClock(resume_time(journal)))
    box.provision(SETTINGS)
    box.open_day()
    issued = [box.issue(sale("1.15", invoice=f"C-{n}")) for n in range(6)]
    journal.close()
    acks = {r["global_no"]: Ack(r["global_no"], r["day_no"], r["counter"], r["hash"]) for r in issued}
    life = Life(acks=list(acks.values()), opened=[1])

    def check(tamper: str | None) -> KillReport:
        copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(directory, copy)
        if tamper is not None:
            db = apsw.Connection(str(copy / "journal.db"))
            db.execute(tamper)
            db.close()
        report = KillReport()
        check_after_kill(copy, 1, life, acks, 0, True, report)
        return report

    clean = check(None)
    assert clean.lost == [] and clean.failures == [] and clean.audits == 1
    gone = check("DELETE FROM receipts WHERE global_no = 6")
    assert any("receipt 6" in text for text in gone.lost) and gone.failures
    changed = check("UPDATE receipts SET hash = 'forged' WHERE global_no = 3")
    assert any("receipt 3: hash" in text for text in changed.lost) and changed.failures
    renumbered = check("UPDATE receipts SET global_no = 7 WHERE global_no = 6")
    assert any("receipt 6" in text for text in renumbered.lost)
    assert any("global numbers" in text for text in renumbered.failures)
    day_gone = check("UPDATE days SET day_no = 2 WHERE day_no = 1")
    assert any("day 1 was opened" in text for text in day_gone.lost)
