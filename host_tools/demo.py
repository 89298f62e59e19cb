"""`make demo`: one fiscal day on a real box journal, from sales to the signed close, audit and export.

Makes a device key in out/demo/ (encrypted file key store) and its certificate request, provisions a box
on a fresh journal, and issues a few receipts of every type (two currencies; exempt, 0 %, 15.5 %; a buyer;
a credit and a debit note), each committed before it is shown and printed through the Epson TM-T20II
driver into the virtual printer: out/receipts/ gets a text dump and a PNG of every receipt. The paper runs
out in the middle of one receipt; it stays committed, and its reprint says COPY. One bad sale is refused
with nothing written. The X report is printed, the day's signed CloseDay request is prepared from the
journal's counters, the journal is audited, backed up and exported, and the export is checked offline by
`fiscalbox journal verify`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from firmware.backup import Anchor
from firmware.box import Box
from firmware.core import fdms, wire
from firmware.core.errors import FiscalError
from firmware.journal import Journal
from hardware import ECDSA_P256, printers
from hardware.keystores import FileKeyStore
from sim.printer import VirtualPrinter

OUT = Path("out/demo")
PRINTED = Path("out/receipts")
PRINTER_MODEL = "epson-tm-t20ii"
DEVICE_ID = 1234
SERIAL = "FB-DEMO-0001"
QR_URL = "https://fdmstest.zimra.co.zw"
DAY_NO = 1
RAW_TAXES = [
    {"taxID": 1, "taxName": "Exempt", "validFrom": "2023-01-01"},
    {"taxID": 2, "taxPercent": 0, "taxName": "Zero rated 0%", "validFrom": "2023-01-01"},
    {"taxID": 517, "taxPercent": "15.5", "taxName": "Standard rated 15.5%", "validFrom": "2025-12-15"},
]


def line(name: str, price: str, qty: str, tax_id: int, hs: str, kind: str = "Sale") -> dict[str, Any]:
    item = {
        "receiptLineType": kind,
        "receiptLineName": name,
        "receiptLinePrice": price,
        "receiptLineQuantity": qty,
        "taxID": tax_id,
        "receiptLineHSCode": hs,
    }
    percent = {2: "0", 517: "15.5"}.get(tax_id)
    if percent is not None:
        item["taxPercent"] = percent
    return item


SALES: list[dict[str, Any]] = [
    {
        "receiptType": "FiscalInvoice",
        "receiptCurrency": "USD",
        "invoiceNo": "POS-1001",
        "receiptLinesTaxInclusive": True,
        "receiptLines": [
            line("Bread 700g", "1.15", "2", 517, "19059000"),
            line("Milk 1l", "1.20", "1", 2, "04011000"),
            line("Maize meal 10kg", "7.50", "1", 1, "11022000"),
            line("Loyalty discount", "-0.30", "1", 517, "19059000", "Discount"),
        ],
        "receiptPayments": [{"moneyTypeCode": "Cash", "paymentAmount": "10.70"}],
    },
    {
        "receiptType": "FiscalInvoice",
        "receiptCurrency": "ZWG",
        "invoiceNo": "POS-1002",
        "receiptLinesTaxInclusive": False,
        "buyerData": {
            "buyerRegisterName": "Kopje Hardware (Pvt) Ltd",
            "buyerTIN": "2000123456",
            "vatNumber": "220012345",
        },
        "receiptLines": [
            line("Cement 50kg", "245.00", "4", 517, "25232900"),
            line("Wire nails 1kg", "38.125", "2.5", 517, "73170000"),
        ],
        "receiptPayments": [
            {"moneyTypeCode": "BankTransfer", "paymentAmount": "1000.00"},
            {"moneyTypeCode": "Card", "paymentAmount": "241.98"},
        ],
    },
    {
        "receiptType": "CreditNote",
        "receiptCurrency": "USD",
        "invoiceNo": "POS-1003",
        "receiptNotes": "One loaf returned, stale",
        "creditDebitNote": {"deviceID": DEVICE_ID, "receiptGlobalNo": 1, "fiscalDayNo": DAY_NO},
        "receiptLinesTaxInclusive": True,
        "receiptLines": [line("Bread 700g", "-1.15", "1", 517, "19059000")],
        "receiptPayments": [{"moneyTypeCode": "Cash", "paymentAmount": "-1.15"}],
    },
    {
        "receiptType": "DebitNote",
        "receiptCurrency": "USD",
        "invoiceNo": "POS-1004",
        "receiptNotes": "Delivery charge omitted",
        "creditDebitNote": {"deviceID": DEVICE_ID, "receiptGlobalNo": 1, "fiscalDayNo": DAY_NO},
        "receiptLinesTaxInclusive": True,
        "receiptLines": [line("Delivery", "2.00", "1", 517, "19059000")],
        "receiptPayments": [{"moneyTypeCode": "MobileWallet", "paymentAmount": "2.00"}],
    },
]

BAD_SALE = {
    "receiptType": "FiscalInvoice",
    "receiptCurrency": "USD",
    "invoiceNo": "POS-1005",
    "receiptLinesTaxInclusive": True,
    "receiptLines": [line("Bread 700g", "1.15", "1", 517, "19059000")],
    "receiptPayments": [{"moneyTypeCode": "Cash", "paymentAmount": "1.00"}],
}


class DemoClock:
    """Starts at the real time and moves a couple of minutes per sale, so the day reads like a morning."""

    def __init__(self) -> None:
        self.t = time.time()

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def run(*command: str) -> None:
    """Run one of the project's own commands, as a person would."""
    print("$ " + " ".join(command), flush=True)
    result = subprocess.run([sys.executable, "-m", *command], check=False)
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} reported a problem (exit {result.returncode})")


def fresh_journal() -> None:
    for name in ("journal.db", "journal.db-wal", "journal.db-shm", "anchor.json"):
        (OUT / name).unlink(missing_ok=True)
    shutil.rmtree(OUT / "backups", ignore_errors=True)


def save_pages(paper: VirtualPrinter, saved: int, stem: str) -> tuple[int, list[Path]]:
    """Write the pages the virtual printer finished since `saved` to out/receipts/ as text and PNG."""
    written = []
    for page in paper.pages[saved:]:
        text_path, _ = paper.save(page, PRINTED, stem)
        written.append(text_path)
    return len(paper.pages), written


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    passphrase = os.environ.get("FISCALBOX_KEY_PASSPHRASE", "demo-passphrase")
    os.environ["FISCALBOX_KEY_PASSPHRASE"] = passphrase
    store = FileKeyStore(OUT / "keys", passphrase.encode())
    if store.algorithm is None:
        store.generate(ECDSA_P256)
    (OUT / "device.csr").write_bytes(store.certificate_request(fdms.csr_common_name(SERIAL, DEVICE_ID)))
    (OUT / "device-public.pem").write_bytes(store.public_key_pem())
    print(
        f"Device {DEVICE_ID} ({SERIAL}): {store.algorithm} key in {OUT / 'keys'}, CSR in {OUT / 'device.csr'}"
    )

    fresh_journal()
    clock = DemoClock()
    journal = Journal(OUT / "journal.db")
    model = printers.PROFILES[PRINTER_MODEL]
    paper = VirtualPrinter(dots=model.dots)
    shutil.rmtree(PRINTED, ignore_errors=True)
    PRINTED.mkdir(parents=True)
    box = Box(
        journal,
        store,
        clock,
        anchor=Anchor(OUT / "anchor.json"),
        printer=printers.EscposPrinter(model, paper),
    )
    saved = 0
    box.provision(
        {
            "device_id": DEVICE_ID,
            "serial": SERIAL,
            "taxpayer_name": "Demo Traders (Pvt) Ltd",
            "taxpayer_tin": "2000000001",
            "vat_number": "220000001",
            "taxes": RAW_TAXES,
            "currencies": ["USD", "ZWG"],
            "qr_url": QR_URL,
        }
    )
    day = box.open_day()
    print(
        f"Journal {OUT / 'journal.db'} (WAL, synchronous=FULL); "
        f"fiscal day {day['day_no']} opened {day['opened']}\n"
    )

    receipts_dir = OUT / "receipts"
    shutil.rmtree(receipts_dir, ignore_errors=True)
    receipts_dir.mkdir()
    for n, sale in enumerate(SALES):
        clock.advance(137)
        if n == 2:
            paper.load_paper(lines=12)  # the roll runs out a dozen lines into the next receipt
        result = box.issue(sale)
        row = journal.receipt(result["global_no"])
        assert row is not None
        path = receipts_dir / f"{result['global_no']:04d}.json"
        path.write_text(row["body"] + "\n")
        saved, pages = save_pages(paper, saved, f"{result['global_no']:04d}")
        print(
            f"#{result['global_no']} {result['type']:<13} {result['currency']} {result['total']:>9}"
            f"  code {result['verification_code']}  committed, -> {path}"
            + (f", printed -> {pages[0]} (+ .png)" if result["printed"] else "")
        )
        for warning in result["warnings"]:
            print(f"   {warning['code']}: {warning['message']}")
        if not result["printed"]:
            print(f"   unprinted now: {box.status()['unprinted']}; a new roll goes in")
            paper.load_paper()  # the stub printed before the paper ran out is torn off
            saved, pages = save_pages(paper, saved, f"{result['global_no']:04d}-torn")
            print(f"   the torn-off stub -> {pages[0]} (+ .png)")
            reprint = box.reprint(result["global_no"])
            saved, pages = save_pages(paper, saved, f"{result['global_no']:04d}-copy")
            print(f"   reprinted {'as COPY' if reprint['copy'] else ''} -> {pages[0]} (+ .png)")
    try:
        clock.advance(60)
        box.issue(BAD_SALE)
    except FiscalError as refusal:
        print(f"\nA sale paid 1.00 for a 1.15 total is refused, nothing written: {refusal}\n")

    report = box.x_report()
    print(f"X report, day {report['day_no']}: {report['receipts']} receipts")
    for document in report["documents"]:
        print(f"  {document['type']:<13} {document['currency']} x{document['count']} {document['total']:>10}")
    box.print_report()
    saved, pages = save_pages(paper, saved, f"x-report-day-{report['day_no']}")
    print(f"  printed -> {pages[0]} (+ .png)\n")
    previous = journal.receipt(3)
    previous_hash = "" if previous is None else previous["hash"]
    run(
        "host_tools.cli",
        "explain",
        "receipt",
        str(receipts_dir / "0004.json"),
        "--device-id",
        str(DEVICE_ID),
        "--previous-hash",
        previous_hash,
        "--cert",
        str(OUT / "device-public.pem"),
        "--qr-url",
        QR_URL,
    )

    clock.advance(3600)
    close = box.close_day()
    close_path = OUT / "close-day.json"
    close_path.write_text(wire.dumps(close) + "\n")
    print(
        f"\nCloseDay request for day {close['fiscalDayNo']} ({close['receiptCounter']} receipts)"
        f" -> {close_path}"
    )
    run(
        "host_tools.cli",
        "explain",
        "day",
        str(close_path),
        "--device-id",
        str(DEVICE_ID),
        "--day-date",
        day["opened"][:10],
        "--cert",
        str(OUT / "device-public.pem"),
    )

    audit = box.audit()
    print(f"\nAudit: {'clean' if audit['clean'] else audit['problems']}, {audit['checked']}")
    backup = box.backup(OUT / "backups", retain=3)
    print(f"Backup: {backup['file']} with signed manifest; anchor at receipt {box.anchor.value()}")  # type: ignore[union-attr]
    export_path = OUT / "journal-export.json"
    box.export_journal(1, journal.head()["last_global_no"], export_path)
    journal.close()
    print()
    run("host_tools.cli", "journal", "verify", str(export_path), "--cert", str(OUT / "device-public.pem"))


if __name__ == "__main__":
    main()
