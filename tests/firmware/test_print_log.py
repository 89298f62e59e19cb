"""The print log: a print's start and end are both recorded, replayed by the audit, and migrated from v1."""

from __future__ import annotations

import pytest
from box_rig import SETTINGS, Rig, sale

from firmware.box import Box
from firmware.journal import SCHEMA_VERSION, Journal


def test_started_and_completed_prints_are_counted_and_listed(box: Box) -> None:
    for _ in range(3):
        box.issue(sale())
    journal = box.journal
    assert journal.print_started(1, box.now_local()) == 0
    journal.print_completed(1, box.now_local())
    assert journal.print_started(2, box.now_local()) == 0  # paper ran out: never completed
    assert journal.prints(1) == (1, 1) and journal.prints(2) == (1, 0) and journal.prints(3) == (0, 0)
    assert journal.unprinted() == [2, 3]
    assert journal.print_started(2, box.now_local()) == 1  # the reprint knows it is a copy
    journal.print_completed(2, box.now_local())
    assert journal.unprinted() == [3]
    assert box.status()["unprinted"] == [3]
    assert box.audit()["clean"]


def test_a_changed_print_count_is_found_by_the_audit(box: Box) -> None:
    box.issue(sale())
    box.journal.print_started(1, box.now_local())
    with box.journal.transaction():
        box.journal.db.execute("UPDATE print_log SET started = 0")  # hide that a print ever began
    report = box.audit()
    assert not report["clean"]
    assert any(p["code"] == "BOX_TAMPER_PRINT" for p in report["problems"])


def test_version_1_print_rows_migrate_and_still_audit_clean(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from firmware import journal as journal_module

    monkeypatch.setattr(journal_module, "SCHEMA_VERSION", 1)
    monkeypatch.setattr(journal_module.Journal, "retired_keys", lambda self: [])  # no such table in v1
    monkeypatch.setattr(journal_module.Journal, "unfinished_days", lambda self: [])  # v1 lacks columns
    old = rig.box()
    old.provision(SETTINGS)
    old.open_day()
    rig.clock.advance(60)
    old.issue(sale())
    at = old.now_local()
    with old.journal.transaction():  # what version 1 wrote for two finished prints
        old.journal.db.execute("INSERT INTO print_log VALUES (1, 1, 2, ?)", (at,))
        old.journal.log(at, "receipt.printed", {"global_no": 1, "copy": False})
        old.journal.log(at, "receipt.printed", {"global_no": 1, "copy": True})
    rig.close()
    monkeypatch.undo()
    with Journal(rig.journal_path) as journal:
        assert journal.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = [row[1] for row in journal.db.execute("PRAGMA table_info(print_log)")]
        assert columns == ["global_no", "completed", "started", "last_at"]
        assert journal.prints(1) == (2, 2)
    box = rig.box()
    assert box.boot["clean"]
    assert box.audit()["clean"]
