"""The box's issue path on a real journal file and key store: numbering, chaining, refusals, days."""

from __future__ import annotations

import json
from typing import Any

import pytest
from box_rig import DEVICE_ID, SETTINGS, Rig, sale

from firmware.box import Box
from firmware.core import fdms, localtime
from firmware.core.errors import FiscalError
from firmware.journal import SCHEMA_VERSION, Journal
from hardware.signatures import load_public_key, verify


def snapshot(journal: Journal) -> dict[str, Any]:
    """Every table's rows, to prove a refusal changed nothing."""
    tables = [row[0] for row in journal.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {name: list(journal.db.execute(f"SELECT * FROM {name}")) for name in sorted(tables)}


def stored(box: Box, global_no: int) -> dict[str, Any]:
    row = box.journal.receipt(global_no)
    assert row is not None
    return row


def test_issue_numbers_chains_signs_and_commits(rig: Rig, box: Box) -> None:
    first = box.issue(sale("1.15"))
    rig.clock.advance(5)
    second = box.issue(sale("2.30"))
    assert (first["global_no"], first["counter"], second["global_no"], second["counter"]) == (1, 1, 2, 2)
    public_key = load_public_key(rig.keys.public_key_pem())
    previous = None
    for result in (first, second):
        row = stored(box, result["global_no"])
        receipt = fdms.parse_receipt(json.loads(row["body"], parse_float=str))
        text = fdms.receipt_string(DEVICE_ID, receipt, previous)
        assert fdms.hash_b64(text) == row["hash"] == result["hash"]
        assert verify(public_key, text.encode(), fdms.unb64(row["signature"]))
        assert result["qr_url"].endswith(fdms.qr_data(fdms.unb64(row["signature"])))
        previous = row["hash"]
    # The second receipt's string carries the first one's hash: the chain.
    assert stored(box, 2)["hash"] != fdms.hash_b64(
        fdms.receipt_string(
            DEVICE_ID, fdms.parse_receipt(json.loads(stored(box, 2)["body"], parse_float=str))
        )
    )
    assert box.journal.outbox_counts() == {"pending": 2}
    assert box.status()["unprinted"] == [1, 2]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda s: s["receiptPayments"][0].update(paymentAmount="1.00"), "RCPT039"),
        (lambda s: s.update(receiptCurrency="EUR"), "RCPT010"),
        (lambda s: s.update(receiptGlobalNo=7), "BOX_SALE_FIELD"),
        (lambda s: s["receiptLines"][0].update(receiptLinePrice=1.15), "BOX_BAD_NUMBER"),
        (lambda s: s.update(receiptType="Invoice"), "RCPT02"),
        (lambda s: s["receiptLines"][0].update(taxID=99), "RCPT025"),
    ],
)
def test_a_refused_sale_changes_nothing(rig: Rig, box: Box, change: Any, code: str) -> None:
    box.issue(sale())
    before = snapshot(box.journal)
    bad = sale()
    change(bad)
    with pytest.raises(FiscalError) as refused:
        box.issue(bad)
    assert refused.value.code == code
    assert refused.value.message
    assert snapshot(box.journal) == before
    rig.clock.advance(1)
    assert box.issue(sale())["global_no"] == 2  # and the numbering goes on without a gap


def test_duplicate_invoice_number_is_refused(box: Box) -> None:
    box.issue(sale(invoice="INV-1"))
    with pytest.raises(FiscalError) as refused:
        box.issue(sale(invoice="INV-1"))
    assert refused.value.code == "RCPT013"


def test_receipts_within_one_second_get_strictly_later_dates(rig: Rig, box: Box) -> None:
    dates = [box.issue(sale())["date"] for _ in range(3)]
    assert dates == sorted(set(dates)) and len(set(dates)) == 3


def test_a_clock_far_behind_the_last_receipt_is_refused(rig: Rig, box: Box) -> None:
    box.issue(sale())
    rig.clock.advance(-3600)
    with pytest.raises(FiscalError) as refused:
        box.issue(sale())
    assert refused.value.code == "BOX_CLOCK"


def test_a_day_opened_in_the_second_of_the_last_receipt_opens_a_second_after_it(rig: Rig, box: Box) -> None:
    last = box.issue(sale())["date"]
    box.close_day()  # a fast POS: close and open again within the same second
    assert box.open_day()["opened"] == localtime.format_seconds(localtime.seconds(last) + 1)
    box.close_day()
    rig.clock.advance(-3600)  # a clock far behind is still refused
    with pytest.raises(FiscalError) as refused:
        box.open_day()
    assert refused.value.code == "BOX_CLOCK"


def test_day_limit_warns_before_and_refuses_after(rig: Rig, box: Box) -> None:
    rig.clock.advance(23 * 3600 + 30 * 60)  # 23h31 after opening, 29 minutes left
    result = box.issue(sale())
    assert [w["code"] for w in result["warnings"]] == ["BOX_DAY_ENDING"]
    assert box.status()["warnings"][0]["code"] == "BOX_DAY_ENDING"
    rig.clock.advance(3600)
    before = snapshot(box.journal)
    with pytest.raises(FiscalError) as refused:
        box.issue(sale())
    assert refused.value.code == "BOX_DAY_EXPIRED"
    assert snapshot(box.journal) == before


def test_issue_needs_an_open_day_and_a_provisioned_box(rig: Rig) -> None:
    bare = rig.box()
    with pytest.raises(FiscalError) as refused:
        bare.issue(sale())
    assert refused.value.code == "BOX_NOT_PROVISIONED"
    bare.provision(SETTINGS)
    with pytest.raises(FiscalError) as refused:
        bare.issue(sale())
    assert refused.value.code == "BOX_DAY_NOT_OPEN"


def test_provisioning_refuses_bad_settings_and_a_new_device_id_once_receipts_exist(box: Box) -> None:
    with pytest.raises(FiscalError) as refused:
        box.provision({"day_max_hours": 0})
    assert refused.value.field == "day_max_hours"
    with pytest.raises(FiscalError) as refused:
        box.provision({"colour": "red"})
    assert refused.value.code == "BOX_SETTINGS"
    box.issue(sale())
    with pytest.raises(FiscalError) as refused:
        box.provision({"device_id": DEVICE_ID + 1})
    assert refused.value.field == "device_id"


def test_close_day_signs_the_incremental_counters_and_the_next_day_restarts_the_counter(
    rig: Rig, box: Box
) -> None:
    for total in ("1.15", "2.30", "10.00"):
        box.issue(sale(total))
        rig.clock.advance(2)
    request = box.close_day()
    counters = fdms.day_counters(fdms.parse_counters(request["fiscalDayCounters"]))
    day = box.journal.day(1)
    assert day is not None
    text = fdms.day_string(DEVICE_ID, 1, day["opened"][:10], counters)
    assert request["fiscalDayDeviceSignature"]["hash"] == fdms.hash_b64(text)
    public_key = load_public_key(rig.keys.public_key_pem())
    assert verify(public_key, text.encode(), fdms.unb64(request["fiscalDayDeviceSignature"]["signature"]))
    assert request["receiptCounter"] == 3
    sales = [c for c in request["fiscalDayCounters"] if c["fiscalCounterType"] == "SaleByTax"]
    assert sales[0]["fiscalCounterValue"] == "13.45"

    with pytest.raises(FiscalError) as refused:
        box.issue(sale())
    assert refused.value.code == "BOX_DAY_NOT_OPEN"
    box.record_close(1, "FiscalDayCloseFailed", closing_error="CountersMismatch")
    with pytest.raises(FiscalError) as refused:
        box.open_day()
    assert refused.value.code == "BOX_DAY_CLOSING"
    assert box.close_day()["fiscalDayNo"] == 1  # a failed close is signed and sent again
    box.record_close(1, "FiscalDayClosed", closed_at="2026-11-22T09:00:00")
    rig.clock.advance(60)
    assert box.open_day()["day_no"] == 2
    rig.clock.advance(1)
    result = box.issue(sale())
    assert (result["global_no"], result["counter"], result["day_no"]) == (4, 1, 2)
    # The first receipt of a day carries no previous hash.
    row = stored(box, 4)
    receipt = fdms.parse_receipt(json.loads(row["body"], parse_float=str))
    assert fdms.hash_b64(fdms.receipt_string(DEVICE_ID, receipt, None)) == row["hash"]
    assert box.audit()["clean"]


def test_credit_note_against_own_invoice_and_over_credit(rig: Rig, box: Box) -> None:
    box.issue(sale("10.00", invoice="INV-1"))
    note = {"deviceID": DEVICE_ID, "receiptGlobalNo": 1, "fiscalDayNo": 1}
    credit = sale("-4.00", kind="CreditNote", creditDebitNote=note, receiptNotes="Returned")
    assert box.issue(credit)["type"] == "CreditNote"
    with pytest.raises(FiscalError) as refused:
        box.issue(sale("-7.00", kind="CreditNote", creditDebitNote=note, receiptNotes="Returned"))
    assert refused.value.code == "RCPT035"
    missing = {"deviceID": DEVICE_ID, "receiptGlobalNo": 99, "fiscalDayNo": 1}
    with pytest.raises(FiscalError) as refused:
        box.issue(sale("-1.00", kind="CreditNote", creditDebitNote=missing, receiptNotes="Returned"))
    assert refused.value.code == "RCPT032"


def test_x_report_per_type_and_counters(rig: Rig, box: Box) -> None:
    box.issue(sale("1.15"))
    box.issue(sale("2.30", receiptCurrency="ZWG"))
    report = box.x_report()
    assert report["receipts"] == 2
    assert report["documents"] == [
        {"type": "FiscalInvoice", "currency": "USD", "count": 1, "total": "1.15"},
        {"type": "FiscalInvoice", "currency": "ZWG", "count": 1, "total": "2.30"},
    ]
    balances = [c for c in report["counters"] if c["fiscalCounterType"] == "BalanceByMoneyType"]
    assert [(c["fiscalCounterCurrency"], c["fiscalCounterValue"]) for c in balances] == [
        ("USD", "1.15"),
        ("ZWG", "2.30"),
    ]


def test_reopening_keeps_everything_and_the_boot_check_is_clean(rig: Rig, box: Box) -> None:
    for _ in range(5):
        box.issue(sale())
    reopened = rig.box()
    assert reopened.boot == {"clean": True, "problems": []}
    assert reopened.status()["last_global_no"] == 5
    assert reopened.issue(sale())["global_no"] == 6
    assert reopened.audit()["clean"]


def test_journal_runs_in_wal_with_synchronous_full(rig: Rig) -> None:
    journal = Journal(rig.journal_path, create=True)
    try:
        assert journal.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert journal.db.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert journal.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        journal.close()


def test_a_journal_from_newer_firmware_is_refused_untouched(rig: Rig) -> None:
    journal = Journal(rig.journal_path, create=True)
    journal.db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    journal.close()
    with pytest.raises(FiscalError) as refused:
        Journal(rig.journal_path)
    assert refused.value.code == "BOX_JOURNAL_VERSION"


def test_mismatch_at_boot_stops_issuing(rig: Rig, box: Box) -> None:
    box.issue(sale())
    box.issue(sale())
    box.journal.db.execute("UPDATE counters SET value = value + 1 WHERE kind = 0")
    reopened = rig.box()
    assert not reopened.boot["clean"]
    assert reopened.boot["problems"][0]["code"] == "BOX_COUNTERS"
    with pytest.raises(FiscalError) as refused:
        reopened.issue(sale())
    assert refused.value.code == "BOX_JOURNAL_MISMATCH"
    events = [row[0] for row in reopened.journal.db.execute("SELECT event FROM audit_log ORDER BY seq")]
    assert events[-1] == "boot"


def test_a_failed_migration_leaves_the_journal_as_it_was(
    rig: Rig, box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    from firmware import journal as journal_module

    box.issue(sale())
    rig.close()
    monkeypatch.setattr(journal_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    broken = ["ALTER TABLE receipts ADD COLUMN printed_at TEXT", "THIS IS NOT SQL"]
    monkeypatch.setitem(journal_module.MIGRATIONS, SCHEMA_VERSION + 1, broken)
    with pytest.raises(FiscalError) as refused:
        Journal(rig.journal_path)
    assert refused.value.code == "BOX_JOURNAL"
    monkeypatch.undo()
    reopened = rig.box()
    columns = [row[1] for row in reopened.journal.db.execute("PRAGMA table_info(receipts)")]
    assert "printed_at" not in columns
    assert reopened.journal.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert reopened.boot["clean"] and reopened.status()["last_global_no"] == 1


def test_periodic_checkpoints_bound_what_a_restart_rewalks(rig: Rig) -> None:
    box = rig.box(checkpoint_every=3)
    box.provision(SETTINGS)
    box.open_day()
    for _ in range(7):
        rig.clock.advance(2)
        box.issue(sale())
    checkpoint = box.journal.last_checkpoint()
    assert checkpoint is not None and checkpoint.global_no == 6
    assert [c.global_no for c in box.journal.checkpoints()].count(3) == 1
    reopened = rig.box(checkpoint_every=3)
    assert reopened.boot["clean"] and reopened.audit()["clean"]


def test_a_day_fdms_failed_to_close_after_the_next_opened_is_closed_again_first(rig: Rig, box: Box) -> None:
    box.issue(sale("5.00"))
    rig.clock.advance(60)
    box.close_day()
    rig.clock.advance(60)
    assert box.open_day()["day_no"] == 2  # day 1's close is signed; FDMS's answer has not come yet
    rig.clock.advance(1)
    box.issue(sale("7.00"))
    box.record_close(1, "FiscalDayCloseFailed", closing_error="BadCertificateSignature")
    assert box.status()["days_waiting"] == [
        {"day_no": 1, "status": "FiscalDayCloseFailed", "closing_error": "BadCertificateSignature"}
    ]
    first = box.close_day()
    assert first["fiscalDayNo"] == 1 and first["receiptCounter"] == 1
    assert box.journal.day(2)["status"] == "FiscalDayOpened"  # type: ignore[index]
    second = box.close_day()
    assert second["fiscalDayNo"] == 2 and second["receiptCounter"] == 1
    with pytest.raises(FiscalError) as refused:
        box.close_day()
    assert refused.value.code == "BOX_DAY_NOT_OPEN"
    assert box.audit()["clean"]


def test_status_says_what_stands_between_a_day_and_its_close(rig: Rig, box: Box) -> None:
    box.issue(sale("5.00"))
    rig.clock.advance(2)
    box.issue(sale("6.00"))
    assert not [w for w in box.status()["warnings"] if w["code"].startswith("BOX_CLOSE")]
    red = {"code": "RCPT025", "colour": "Red", "message": "Invalid tax is used"}
    box.record_delivery(
        2, 1, receipt_id=77, server_date="2026-11-22T08:00:05", server_signature={}, errors=[red]
    )
    codes = [w["code"] for w in box.status()["warnings"]]
    assert codes.count("BOX_CLOSE_BLOCKED") == 1
    box.close_day()
    box.record_close(1, "FiscalDayCloseFailed", closing_error="ReceiptsWithValidationErrors")
    rig.clock.advance(60)
    info = box.status()
    assert info["days_waiting"] == []  # day 1 is still the current day
    assert {"BOX_CLOSE_FAILED", "BOX_CLOSE_BLOCKED"} <= {w["code"] for w in info["warnings"]}
    failed = next(w for w in info["warnings"] if w["code"] == "BOX_CLOSE_FAILED")
    assert "day 1" in failed["message"] and "ReceiptsWithValidationErrors" in failed["message"]
    box.close_day()
    box.record_close(1, "FiscalDayClosed", closed_at="2026-11-22T09:00:00")  # closed by ZIMRA, say
    rig.clock.advance(60)
    box.open_day()
    assert not [w for w in box.status()["warnings"] if w["code"].startswith("BOX_CLOSE")]


def test_a_flag_in_the_open_day_is_seen_however_many_closed_days_were_flagged(rig: Rig, box: Box) -> None:
    red = [{"code": "RCPT025", "colour": "Red", "message": "Invalid tax is used"}]
    for n in range(1, 121):  # a long history of flagged receipts, in a day ZIMRA closed by hand
        rig.clock.advance(2)
        box.issue(sale())
        box.record_delivery(n, 1, receipt_id=n, server_date=box.now_local(), server_signature={}, errors=red)
    box.close_day()
    box.record_close(1, "FiscalDayClosed", closed_at=box.now_local())
    rig.clock.advance(60)
    box.open_day()
    assert not [w for w in box.status()["warnings"] if w["code"] == "BOX_CLOSE_BLOCKED"]
    rig.clock.advance(2)
    box.issue(sale())
    box.record_delivery(121, 1, receipt_id=121, server_date=box.now_local(), server_signature={}, errors=red)
    blocked = [w for w in box.status()["warnings"] if w["code"] == "BOX_CLOSE_BLOCKED"]
    assert len(blocked) == 1 and "receipt 121" in blocked[0]["message"]
    assert [f["global_no"] for f in box.delivery_findings(2)] == [121]
    assert [f["global_no"] for f in box.outbox()["flagged"]] == [121]
