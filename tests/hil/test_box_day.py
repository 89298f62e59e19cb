"""A fiscal day run on a box over its link only, in order: the same bodies against the virtual box (in
`make test`) and against a real box on a rig (`make hil`). The tests of this file build on each other (the day
opened by one is sold in by the next), as a shop's day does; pytest runs them in file order."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hil_target import Target

from firmware.core.errors import FiscalError
from sim.box import device_key_pem

OPENED = "FiscalDayOpened"


def line(name: str, price: str, qty: str, tax_id: int, hs: str) -> dict[str, Any]:
    item = {
        "receiptLineType": "Sale",
        "receiptLineName": name,
        "receiptLinePrice": price,
        "receiptLineQuantity": qty,
        "taxID": tax_id,
        "receiptLineHSCode": hs,
    }
    percent = {2: "0", 3: "15", 517: "15.5"}.get(tax_id)
    if percent is not None:
        item["taxPercent"] = percent
    return item


def invoice(no: str, currency: str = "USD", **extra: Any) -> dict[str, Any]:
    sale = {
        "receiptType": "FiscalInvoice",
        "receiptCurrency": currency,
        "invoiceNo": no,
        "receiptLinesTaxInclusive": True,
        "receiptLines": [
            line("Bread 700g", "1.15", "2", 517, "19059000"),
            line("Milk 1l", "1.20", "1", 2, "04011000"),
        ],
        "receiptPayments": [{"moneyTypeCode": "Cash", "paymentAmount": "3.50"}],
    }
    sale.update(extra)
    return sale


def note(kind: str, no: str, original: dict[str, Any], device_id: int, sign: str) -> dict[str, Any]:
    return {
        "receiptType": kind,
        "receiptCurrency": "USD",
        "invoiceNo": no,
        "receiptNotes": "One loaf returned" if sign == "-" else "Delivery charge omitted",
        "creditDebitNote": {
            "deviceID": device_id,
            "receiptGlobalNo": original["global_no"],
            "fiscalDayNo": original["day_no"],
        },
        "receiptLinesTaxInclusive": True,
        "receiptLines": [line("Bread 700g", f"{sign}1.15", "1", 517, "19059000")],
        "receiptPayments": [{"moneyTypeCode": "Cash", "paymentAmount": f"{sign}1.15"}],
    }


def unique(prefix: str) -> str:
    """An invoice number or request ID not used on this box before (a real box keeps them for ever)."""
    return f"{prefix}-{time.time_ns()}"


def wait_for(box: Target, done: Any, what: str, seconds: float = 120) -> dict[str, Any]:
    """Ask for the status until `done(status)`: delivery runs on the box at its own pace."""
    deadline = time.monotonic() + seconds
    while True:
        status = box.client("operator").status()
        if done(status):
            return status
        assert time.monotonic() < deadline, f"{what} did not happen in {seconds} s: {status}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def day(box: Target) -> dict[str, Any]:
    """The fiscal day the module sells in: the one open, or one opened now."""
    status = box.client("operator").status()
    if status["day"] is None or status["day"]["status"] != OPENED:
        box.client("operator").open_day()
        status = box.client("operator").status()
    assert status["day"]["status"] == OPENED
    return status


def test_status_says_which_box_and_that_it_is_registered(box: Target) -> None:
    status = box.client("pos").status()
    assert status["device_id"] > 0 and status["serial"]
    assert status["journal"]["clean"], status["journal"]["problems"]
    assert status["last_global_no"] >= 0


def test_the_operator_opens_the_day(box: Target, day: dict[str, Any]) -> None:
    assert day["day"]["status"] == OPENED and day["day"]["day_no"] >= 1


def test_sales_of_several_kinds_are_issued_in_sequence_and_printed(box: Target, day: dict[str, Any]) -> None:
    pos = box.client("pos")
    before = pos.status()["last_global_no"]
    first = pos.issue(invoice(unique("HIL-USD")))
    zwg = pos.issue(
        invoice(
            unique("HIL-ZWG"),
            "ZWG",
            receiptLinesTaxInclusive=False,
            buyerData={"buyerRegisterName": "Kopje Hardware (Pvt) Ltd", "buyerTIN": "2000123456"},
            receiptLines=[
                line("Cement 50kg", "245.00", "1", 517, "25232900"),
                line("Books", "6.00", "1", 1, "48202000"),
            ],
            receiptPayments=[{"moneyTypeCode": "Card", "paymentAmount": "288.98"}],
        )
    )
    credit = pos.issue(note("CreditNote", unique("HIL-CN"), first, day["device_id"], "-"))
    debit = pos.issue(note("DebitNote", unique("HIL-DN"), first, day["device_id"], ""))
    answers = [first, zwg, credit, debit]
    assert [a["global_no"] for a in answers] == list(range(before + 1, before + 5))
    assert [a["type"] for a in answers] == ["FiscalInvoice", "FiscalInvoice", "CreditNote", "DebitNote"]
    assert [a["currency"] for a in answers] == ["USD", "ZWG", "USD", "USD"]
    assert zwg["total"] == "288.98" and credit["total"] == "-1.15"
    for answer in answers:  # printed, or (a rig without a printer) committed and said so
        assert answer["printed"] or answer["warnings"][0]["code"].startswith("BOX_PRINTER"), answer
    if box.virtual is not None:  # the virtual printer's paper can be read: the receipt is really there
        assert all(a["printed"] for a in answers), [a["warnings"] for a in answers]
        written = box.virtual.save_pages("hil-sale")
        assert len(written) == 4 and "Cement" in "".join(written[1].read_text().split())


def test_a_retry_with_the_same_request_id_issues_nothing_new(box: Target, day: dict[str, Any]) -> None:
    pos = box.client("pos")
    sale, rid = invoice(unique("HIL-RETRY")), unique("hil-rid")
    issued = pos.issue(sale, request_id=rid)
    again = pos.issue(sale, request_id=rid)  # the POS lost the first answer and sends the sale again
    assert again["global_no"] == issued["global_no"] and again["repeated"] is True
    assert again["hash"] == issued["hash"]
    assert pos.status()["last_global_no"] == issued["global_no"]
    with pytest.raises(FiscalError) as refused:
        pos.issue(invoice(unique("HIL-OTHER")), request_id=rid)
    assert refused.value.code == "BOX_LINK_REQUEST_REUSED"
    assert pos.status()["last_global_no"] == issued["global_no"]


def test_a_bad_sale_is_refused_and_changes_nothing(box: Target, day: dict[str, Any]) -> None:
    pos = box.client("pos")
    before = pos.status()
    bad = invoice(unique("HIL-BAD"), receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "1.00"}])
    with pytest.raises(FiscalError) as refused:
        pos.issue(bad)
    assert refused.value.code.startswith("RCPT") and refused.value.message
    after = pos.status()
    assert after["last_global_no"] == before["last_global_no"]
    assert after["day"]["receipts"] == before["day"]["receipts"]


def test_a_pos_key_may_not_ask_an_operator_command(box: Target, day: dict[str, Any]) -> None:
    pos = box.client("pos")
    with pytest.raises(FiscalError) as refused:
        pos.close_day()
    assert refused.value.code == "BOX_LINK_ROLE"
    assert pos.status()["day"]["status"] == OPENED
    result = box.fiscalbox(
        "day", "close", role="pos", check=False
    )  # the host tool says the same, in one line
    assert result.returncode != 0 and "BOX_LINK_ROLE" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_reprint_says_copy(box: Target, day: dict[str, Any]) -> None:
    pos = box.client("pos")
    last = pos.status()["last_global_no"]
    if box.virtual is not None:
        box.virtual.save_pages("hil-earlier")  # what earlier tests printed, out of the way
    reprint = pos.reprint(last)
    assert reprint["global_no"] == last and reprint["copy"] is True
    if box.virtual is not None:
        [page] = box.virtual.save_pages("hil-reprint")
        assert "COPY" in "".join(page.read_text().split())


def test_the_x_report_counts_the_days_receipts(box: Target, day: dict[str, Any]) -> None:
    pos = box.client("pos")
    report = pos.x_report()
    status = pos.status()
    assert report["day_no"] == status["day"]["day_no"] and report["receipts"] == status["day"]["receipts"]
    types = {document["type"] for document in report["documents"]}
    assert {"FiscalInvoice", "CreditNote", "DebitNote"} <= types


def test_the_operator_closes_the_day_and_fdms_confirms_it(box: Target, day: dict[str, Any]) -> None:
    operator = box.client("operator")
    day_no = day["day"]["day_no"]
    operator.close_day()
    wait_for(box, lambda s: s["day"]["status"] == "FiscalDayClosed", f"FDMS closing day {day_no}")
    z = operator.z_report(day_no)
    assert z["day_no"] == day_no and z["status"] == "FiscalDayClosed"
    assert z["receipts"] == operator.status()["day"]["receipts"]


def test_the_journal_exported_over_the_link_verifies_offline(box: Target, tmp_path: Path) -> None:
    status = box.client("operator").status()
    last = status["last_global_no"]
    device_pem = tmp_path / "device.pem"
    device_pem.write_bytes(device_key_pem(box.client("operator")))
    export = tmp_path / "journal-export.json"
    box.fiscalbox("journal", "export", "1", str(last), str(export))
    checked = box.fiscalbox("journal", "verify", str(export), "--cert", str(device_pem))
    assert f"receipts 1..{last}" in checked.stdout and checked.stdout.startswith("clean")
