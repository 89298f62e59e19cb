"""`make demo`: a box's fiscal day against the FDMS simulator, from registration to FDMS's close.

Starts the FDMS simulator (HTTPS with mutual TLS on loopback, its own test CA) and registers a box with it:
taxpayer check, a device key made inside the key store, the certificate request, the certificate FDMS
issues, and FDMS's configuration (taxes, taxpayer, limits). The day opens (GetConfig, then OpenDay), and a
few dozen receipts of every kind (invoices, credit and debit notes, USD and ZWG, exempt, 0 %, 15 % and
15.5 %, buyers) are issued, each committed before it is printed through the Epson TM-T20II driver into the
virtual printer: out/receipts/ gets a text dump and a PNG of every page. In the middle FDMS becomes
unreachable: the shop goes on issuing and printing, the receipts queue, and delivery catches up in order,
exactly once, when FDMS is back. The paper runs out in the middle of one receipt; it stays committed and its
reprint says COPY. A bad sale is refused with nothing written. The X report is printed; the day is closed,
FDMS confirms the close with counters equal to the box's, and the Z report is printed. Finally the journal is
audited, backed up and exported, and the export is checked offline by `fiscalbox journal verify`.
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
from firmware.core import wire
from firmware.core.errors import FiscalError
from firmware.delivery import Delivery
from firmware.fdms_client import FdmsClient
from firmware.journal import CLOSED, Journal
from hardware import printers
from hardware.keystores import FileKeyStore
from sim.fdms.scenario import Scenario
from sim.fdms.server import FdmsSimulator
from sim.printer import VirtualPrinter
from sim.shop import Shop

OUT = Path("out/demo")
PRINTED = Path("out/receipts")
PRINTER_MODEL = "epson-tm-t20ii"
DEVICE_ID = 10001  # as the simulator's scenario registers it, with its serial and activation key
SHOP_SALES = 30  # sales from the simulated shop, besides the hand-written SALES below
DAY_NO = 1


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
    """Starts at the real time and moves a couple of minutes per sale, so the day reads like a morning. The
    box and the simulator share it, so FDMS's time agrees with the box's."""

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


def save_pages(paper: VirtualPrinter, saved: int, stem: str) -> tuple[int, list[Path]]:
    """Write the pages the virtual printer finished since `saved` to out/receipts/ as text and PNG."""
    written = []
    for page in paper.pages[saved:]:
        text_path, _ = paper.save(page, PRINTED, stem)
        written.append(text_path)
    return len(paper.pages), written


class Demo:
    """The box, its printer and FDMS, with what the story needs to tell along the way."""

    def __init__(self, sim: FdmsSimulator, clock: DemoClock, passphrase: str) -> None:
        self.sim = sim
        self.clock = clock
        device = sim.scenario.device(DEVICE_ID)
        assert device is not None
        self.device = device
        self.store = FileKeyStore(OUT / "keys", passphrase.encode())
        self.journal = Journal(OUT / "journal.db", create=True)
        self.client = FdmsClient(
            sim.url, DEVICE_ID, "fiscalbox", "1.0", ca_file=str(sim.ca_cert_path), clock=clock
        )
        model = printers.PROFILES[PRINTER_MODEL]
        self.paper = VirtualPrinter(dots=model.dots)
        self.box = Box(
            self.journal,
            self.store,
            clock,
            anchor=Anchor(OUT / "anchor.json"),
            printer=printers.EscposPrinter(model, self.paper),
            fdms_client=self.client,
        )
        self.delivery = Delivery(self.box, self.client, clock, backoff_base=2, backoff_max=120)
        self.box.delivery = self.delivery
        self.saved = 0
        self.shop = Shop(seed=2026, device_id=DEVICE_ID)

    def deliver(self) -> int:
        """Let delivery work until nothing is left (its back-off waits pass on the demo's clock)."""
        return self.delivery.run_until_idle(advance=self.clock.advance)

    def pages(self, stem: str) -> list[Path]:
        self.saved, written = save_pages(self.paper, self.saved, stem)
        return written

    def issue(self, sale: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
        self.clock.advance(137)
        result = self.box.issue(sale)
        self.shop.issued(sale, result)
        row = self.journal.receipt(result["global_no"])
        assert row is not None
        (OUT / "receipts" / f"{result['global_no']:04d}.json").write_text(row["body"] + "\n")
        written = self.pages(f"{result['global_no']:04d}")
        if not quiet:
            print(
                f"#{result['global_no']:<3} {result['type']:<13} {result['currency']} {result['total']:>9}"
                f"  code {result['verification_code']}  committed"
                + (f", printed -> {written[0]}" if result["printed"] else ", NOT printed")
            )
            for warning in result["warnings"]:
                print(f"     {warning['code']}: {warning['message']}")
        return result


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def outbox_words(counts: dict[str, int]) -> str:
    """The outbox as a person says it, "19 delivered, 15 pending", not a Python dict."""
    order = ["delivered", "pending"] + sorted(set(counts) - {"delivered", "pending"})
    return ", ".join(f"{counts[state]} {state}" for state in order if state in counts) or "empty"


def checked_words(checked: dict[str, Any]) -> str:
    """What the audit covered, "34 receipts, 1 day, ... checked", as `fiscalbox-device audit` says it."""
    parts = [
        counted(checked["receipts"], "receipt"),
        counted(checked["days"], "day"),
        counted(checked["audit_entries"], "audit entry").replace("entrys", "entries"),
        counted(checked["checkpoints"], "checkpoint"),
    ]
    signatures = "" if checked.get("signatures", True) else " (signatures not checked)"
    return ", ".join(parts) + " checked" + signatures


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)  # a fresh box and a fresh FDMS each time
    shutil.rmtree(PRINTED, ignore_errors=True)
    (OUT / "receipts").mkdir(parents=True)
    PRINTED.mkdir(parents=True)
    passphrase = os.environ.get("FISCALBOX_KEY_PASSPHRASE", "demo-passphrase")
    os.environ["FISCALBOX_KEY_PASSPHRASE"] = passphrase
    clock = DemoClock()
    with FdmsSimulator(Scenario.default(), state_dir=OUT / "fdms", clock=clock) as sim:
        demo = Demo(sim, clock, passphrase)
        try:
            story(demo)
        finally:
            demo.journal.close()


def story(demo: Demo) -> None:
    box, sim, clock, paper = demo.box, demo.sim, demo.clock, demo.paper
    print(f"FDMS simulator on {sim.url} (mutual TLS; test CA {sim.ca_cert_path})")
    device = demo.device
    answer = box.register(DEVICE_ID, device.serial, device.activation_key, ["USD", "ZWG"])
    settings = answer["config"]
    print(
        f"Registered device {DEVICE_ID} ({device.serial}) for {answer['taxpayer']['taxPayerName']}: "
        f"{demo.store.algorithm} key made in {OUT / 'keys'}, certificate valid till "
        f"{settings['certificate_valid_till']}"
    )
    taxes = ", ".join(f"{t['taxID']} {t['taxName']}" for t in settings["taxes"])
    print(f"FDMS's configuration: taxes {taxes}; QR URL {settings['qr_url']}")
    (OUT / "device-public.pem").write_bytes(demo.store.public_key_pem())

    day = box.open_day()
    demo.deliver()
    print(
        f"\nJournal {OUT / 'journal.db'} (WAL, synchronous=FULL); fiscal day {day['day_no']} opened "
        f"{day['opened']}, OpenDay accepted by FDMS\n"
    )
    for n, sale in enumerate(SALES):
        if n == 2:
            paper.load_paper(lines=12)  # the roll runs out a dozen lines into the next receipt
        result = demo.issue(sale)
        if not result["printed"]:
            print(f"     unprinted now: {box.status()['unprinted']}; a new roll goes in")
            paper.load_paper()  # the stub printed before the paper ran out is torn off
            stem = f"{result['global_no']:04d}"
            print(f"     the torn-off stub -> {demo.pages(stem + '-torn')[0]}")
            reprint = box.reprint(result["global_no"])
            copy = "as COPY " if reprint["copy"] else ""
            print(f"     reprinted {copy}-> {demo.pages(stem + '-copy')[0]}")
    try:
        clock.advance(60)
        box.issue(BAD_SALE)
    except FiscalError as refusal:
        print(f"\nA sale paid 1.00 for a 1.15 total is refused, nothing written: {refusal}\n")

    half = SHOP_SALES // 2
    for _ in range(half):
        demo.issue(demo.shop.next_sale(), quiet=True)
    demo.deliver()
    print(f"{half} more sales from the shop; FDMS has {len(sim.held_receipts(DEVICE_ID))} receipts")

    sim.set_faults("*", rate=1.0, kinds=["reset", "500"], seed=7)
    print("\nFDMS becomes unreachable (connections reset, HTTP 500):")
    for _ in range(SHOP_SALES - half):
        demo.issue(demo.shop.next_sale(), quiet=True)
        demo.delivery.step()
    problem = demo.delivery.state()["problem"] or {}
    print(
        f"  the shop goes on: {SHOP_SALES - half} more receipts issued and printed, outbox "
        f"{outbox_words(box.journal.outbox_counts())}; "
        f"delivery backs off ({problem.get('code')}: {problem.get('message')})"
    )
    sim.clear_faults()
    steps = demo.deliver()
    held = [h["receiptGlobalNo"] for h in sim.held_receipts(DEVICE_ID)]
    in_order = held == list(range(1, box.journal.head()["last_global_no"] + 1))
    print(
        f"  FDMS is back: delivery caught up in {steps} steps; FDMS holds receipts 1..{held[-1]}, "
        f"{'each once, in order' if in_order else 'NOT in order'}\n"
    )

    report = box.x_report()
    print(f"X report, day {report['day_no']}: {report['receipts']} receipts")
    for document in report["documents"]:
        print(f"  {document['type']:<13} {document['currency']} x{document['count']} {document['total']:>10}")
    box.print_report()
    print(f"  printed -> {demo.pages('x-report-day-%d' % report['day_no'])[0]}\n")
    previous = box.journal.receipt(3)
    run(
        "host_tools.cli",
        "explain",
        "receipt",
        str(OUT / "receipts" / "0004.json"),
        "--device-id",
        str(DEVICE_ID),
        "--previous-hash",
        "" if previous is None else previous["hash"],
        "--cert",
        str(OUT / "device-public.pem"),
        "--qr-url",
        settings["qr_url"],
    )

    clock.advance(3600)
    close = box.close_day()
    close_path = OUT / "close-day.json"
    close_path.write_text(wire.dumps(close) + "\n")
    print(f"\nCloseDay for day {close['fiscalDayNo']} ({close['receiptCounter']} receipts) -> {close_path}")
    demo.deliver()
    closed = box.fiscal_day(DAY_NO)
    assert closed is not None
    theirs = sim.day(DEVICE_ID, DAY_NO) or {}
    signed = "verified" if closed["closing_error"] is None else f"NOT verified ({closed['closing_error']})"
    print(
        f"FDMS: day {DAY_NO} {theirs.get('fiscalDayStatus')} at {closed['closed_at']}, after recomputing the "
        f"counters from the {theirs.get('receipts')} receipts it holds and checking the day signature; "
        f"FDMS's own day signature {signed} by the box"
    )
    if closed["status"] != CLOSED:
        raise SystemExit("FDMS did not close the day")
    box.print_report(DAY_NO)
    print(f"Z report printed -> {demo.pages(f'z-report-day-{DAY_NO}')[0]}")
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
    verdict = "clean" if audit["clean"] else f"{len(audit['problems'])} problem(s)"
    print(f"\nAudit: {verdict}, {checked_words(audit['checked'])}")
    backup = box.backup(OUT / "backups", retain=3)
    anchor = box.anchor.value() if box.anchor is not None else None
    print(f"Backup: {backup['file']} with signed manifest; anchor at receipt {anchor}")
    export_path = OUT / "journal-export.json"
    box.export_journal(1, box.journal.head()["last_global_no"], export_path)
    print()
    run("host_tools.cli", "journal", "verify", str(export_path), "--cert", str(OUT / "device-public.pem"))


if __name__ == "__main__":
    main()
