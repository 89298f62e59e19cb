"""`make demo`: a shop's fiscal day on the virtual box, every step through the `fiscalbox` host tool.

Starts the FDMS simulator (HTTPS with mutual TLS on loopback, its own test CA) and the virtual box
(sim/box.py: the real `fiscalbox-device run` on a pseudo-terminal, an Epson TM-T20II driver printing into the
virtual printer). Then, as a shop would, each step is a `fiscalbox` command over the box's USB link, printed
before it runs: the operator's key enrolled (the first operator key enrolls itself), the till's POS key
enrolled, the identity provisioned, the box registered with FDMS (the activation key read from a file, sent in
the register request), the day opened, and a few dozen sales of every kind (invoices, credit and debit notes,
USD and ZWG, exempt, 0 %, 15 % and 15.5 %, buyers), each committed before it is printed: out/receipts/ gets a
text dump and a PNG of every page. The paper runs out in the middle of one receipt; it stays committed and its
reprint says COPY. A bad sale is refused with nothing written. In the middle FDMS becomes unreachable: the
shop goes on issuing and printing, the receipts queue, and delivery catches up in order, exactly once, when
FDMS is back. The answer to one sale is lost on the line: the tool sends it again under the same request ID
and the box answers with the receipt already issued, as it does when the POS retries by hand. The X report is
printed, the day closed, FDMS confirms the close with counters equal to the box's, and the Z report is
printed. Finally the journal is audited, backed up, exported over the link and checked offline by `fiscalbox
journal verify`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sim.box import VirtualBox, device_key_pem
from sim.fdms.scenario import Scenario
from sim.fdms.server import FdmsSimulator
from sim.shop import Shop

OUT = Path("out/demo")
PRINTED = Path("out/receipts")
DEVICE_ID = 10001  # as the simulator's scenario registers it, with its serial and activation key
SHOP_SALES = 30  # sales from the simulated shop, besides the hand-written SALES below
OUTAGE_SALES = 8  # of those, sold while FDMS is unreachable
DAY_NO = 1
DELIVERY_WAIT = 90.0  # seconds delivery may take to catch up (its back-off pauses are 10 s at most)


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

RETRIED_SALE = {
    "receiptType": "FiscalInvoice",
    "receiptCurrency": "USD",
    "invoiceNo": "POS-2001",
    "receiptLinesTaxInclusive": True,
    "receiptLines": [line("Maize meal 10kg", "7.50", "2", 1, "11022000")],
    "receiptPayments": [{"moneyTypeCode": "Card", "paymentAmount": "15.00"}],
}


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def outbox_words(counts: dict[str, int]) -> str:
    """The outbox as a person says it, "19 delivered, 15 pending", not a Python dict."""
    order = ["delivered", "pending"] + sorted(set(counts) - {"delivered", "pending"})
    return ", ".join(f"{counts[state]} {state}" for state in order if state in counts) or "empty"


def shown(path: Path) -> str:
    """A path as a person in the project folder would type it."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class Till:
    """The shop's side: the host tool run as commands, the virtual box's paper and FDMS's view."""

    def __init__(self, sim: FdmsSimulator, vbox: VirtualBox) -> None:
        self.sim = sim
        self.vbox = vbox
        self.pos = Shop(seed=2026, device_id=DEVICE_ID)
        self.sales = OUT / "sales"
        self.sales.mkdir(parents=True, exist_ok=True)

    def fiscalbox(
        self,
        *args: str,
        role: str = "operator",
        check: bool = True,
        show: bool = True,
        timeout: str = "",
        link: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run `fiscalbox --port PORT --key KEY ARGS` (without the two for an offline command), saying it
        first, as a person at the till would."""
        port, key = shown(Path(self.vbox.port)), shown(self.vbox.keys[role])  # out/demo/box/link: one path
        options = ["--port", port, "--key", key] if link else []
        if timeout:
            options += ["--timeout", timeout]
        print("$ " + shlex.join(["fiscalbox", *options, *args]), flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "host_tools.cli", *options, *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if show and result.stdout.strip():
            print("  " + result.stdout.strip().replace("\n", "\n  "))
        if result.stderr.strip():
            print("  " + result.stderr.strip().replace("\n", "\n  "))
        if check and result.returncode != 0:
            raise SystemExit(f"fiscalbox {args[0]} reported a problem (exit {result.returncode})")
        return result

    def fiscalbox_json(self, *args: str, role: str = "operator", timeout: str = "") -> Any:
        return json.loads(self.fiscalbox(*args, "--json", role=role, show=False, timeout=timeout).stdout)

    def status(self) -> dict[str, Any]:
        """The box's status asked quietly (not a step of the story, the narrator looking)."""
        with self.vbox.client("operator") as box:
            return box.status()  # type: ignore[no-any-return]

    def sale_file(self, sale: dict[str, Any]) -> Path:
        path = self.sales / f"{sale['invoiceNo']}.json"
        path.write_text(json.dumps(sale, indent=2) + "\n")
        return path

    def sell(self, sale: dict[str, Any], quiet: bool = False, timeout: str = "") -> dict[str, Any]:
        """The POS hands the box one sale; its receipt printed, the pages saved as NNNN.txt/png."""
        path = self.sale_file(sale)
        result = self.fiscalbox_json(
            "sale", shown(path), "--request-id", sale["invoiceNo"], role="pos", timeout=timeout
        )
        self.pos.issued(sale, result)
        written = self.vbox.save_pages(f"{result['global_no']:04d}")
        if not quiet:
            if result.get("repeated"):
                said = "issued before under this request ID: the same receipt, nothing new issued"
                if written:
                    said += ", printed -> " + shown(written[0])
            else:
                printed = "printed -> " + shown(written[0]) if result["printed"] else "NOT printed"
                said = "committed, " + printed
            print(
                f"  #{result['global_no']:<3} {result['type']:<13} {result['currency']} {result['total']:>9}"
                f"  code {result['verification_code']}  {said}"
            )
            for warning in result["warnings"]:
                print(f"       {warning['code']}: {warning['message']}")
        return result

    def wait(self, done: Any, what: str) -> dict[str, Any]:
        """Ask the box's status until `done(status)`; delivery works on its own time on the box."""
        deadline = time.monotonic() + DELIVERY_WAIT
        while True:
            status = self.status()
            if done(status):
                return status
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} did not happen within {DELIVERY_WAIT:.0f} s: {status}")
            time.sleep(0.25)

    def delivered(self) -> dict[str, Any]:
        return self.wait(lambda s: set(s["outbox"]) <= {"delivered"}, "delivery")


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)  # a fresh box and a fresh FDMS each time
    shutil.rmtree(PRINTED, ignore_errors=True)
    OUT.mkdir(parents=True)
    with FdmsSimulator(Scenario.default(), state_dir=OUT / "fdms") as sim:
        print(f"FDMS simulator on {sim.url} (mutual TLS; test CA {shown(Path(sim.ca_cert_path))})")
        vbox = VirtualBox(OUT / "box", fdms_url=sim.url, fdms_ca=sim.ca_cert_path, setup=False, pages=PRINTED)
        with vbox:
            assert vbox.process is not None and vbox.printer_port is not None
            print(
                f"Virtual box: `fiscalbox-device run` (pid {vbox.process.pid}, log {shown(vbox.log_path)}), "
                f"its USB link on {vbox.port}, an Epson TM-T20II on {vbox.printer_port.path} printing to "
                f"{shown(PRINTED)}/\n"
            )
            story(Till(sim, vbox))


def story(shop: Till) -> None:
    sim, vbox = shop.sim, shop.vbox
    device = sim.scenario.device(DEVICE_ID)
    assert device is not None
    print("The operator's key enrolls itself (a new box takes its first operator key so), then the till's:")
    shop.fiscalbox("keys", "enroll", "--role", "operator", "--label", "back office")
    shop.fiscalbox("keys", "enroll", shown(vbox.keys["pos"]), "--role", "pos", "--label", "till 1")

    identity = OUT / "identity.toml"
    identity.write_text(
        f"[device]\nid = {DEVICE_ID}\nserial = {json.dumps(device.serial)}\n"
        'model_name = "fiscalbox"\nmodel_version = "1.0"\n\n'
        f"[fdms]\nurl = {json.dumps(sim.url)}\n"
        f"ca_file = {json.dumps(str(Path(sim.ca_cert_path).absolute()))}\n"
        'currencies = "USD,ZWG"\n'
    )
    activation = OUT / "activation-key"
    fd = os.open(activation, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(device.activation_key + "\n")
    print(f"\nThe box's identity ({shown(identity)}), then registration with FDMS's activation key:")
    shop.fiscalbox("provision", shown(identity))
    shop.fiscalbox("register", "--activation-key-file", shown(activation))
    shop.fiscalbox("status")
    device_pem = OUT / "device-public.pem"
    with vbox.client("operator") as operator:
        device_pem.write_bytes(device_key_pem(operator))
    print(
        f"  (the device key's public half, from its certificate request over the link -> {shown(device_pem)})"
    )

    print("\nThe shop opens:")
    shop.fiscalbox("day", "open")
    print("\nThe POS sells (its invoice number as the request ID):")
    for n, sale in enumerate(SALES):
        if n == 2:
            vbox.printer.load_paper(lines=12)  # the roll runs out a dozen lines into the next receipt
        result = shop.sell(sale)
        if not result["printed"]:
            stem = f"{result['global_no']:04d}"
            vbox.printer.load_paper()  # a new roll; the stub printed before the paper ran out is torn off
            print(f"  a new roll goes in; the torn-off stub -> {shown(vbox.save_pages(stem + '-torn')[0])}")
            shop.fiscalbox("reprint", str(result["global_no"]), role="pos")
            print(f"  -> {shown(vbox.save_pages(stem + '-copy')[0])}")
    before = shop.status()["last_global_no"]
    print("\nA sale paid 1.00 for a 1.15 total:")
    refused = shop.fiscalbox("sale", shown(shop.sale_file(BAD_SALE)), role="pos", check=False)
    after = shop.status()["last_global_no"]
    print(
        f"  refused (exit {refused.returncode}); last receipt still {after}, nothing written"
        if after == before
        else f"  NOT refused: receipt {after} was issued"
    )

    first = SHOP_SALES - OUTAGE_SALES
    print(f"\n{first} more sales from the shop:")
    for _ in range(first):
        shop.sell(shop.pos.next_sale(), quiet=True)
    shop.delivered()
    print(f"  FDMS has {len(sim.held_receipts(DEVICE_ID))} receipts")

    sim.set_faults("*", rate=1.0, kinds=["reset", "500"], seed=7)
    print("\nFDMS becomes unreachable (connections reset, HTTP 500); the shop goes on:")
    for _ in range(OUTAGE_SALES):
        shop.sell(shop.pos.next_sale(), quiet=True)
    status = shop.wait(lambda s: (s["fdms"]["delivery"] or {}).get("problem"), "a delivery failure")
    problem = status["fdms"]["delivery"]["problem"]
    print(
        f"  {OUTAGE_SALES} more receipts issued and printed, outbox {outbox_words(status['outbox'])}; "
        f"delivery backs off ({problem['code']}: {problem['message']})"
    )
    shop.fiscalbox("outbox", "--limit", "3")
    sim.clear_faults()
    began = time.monotonic()
    status = shop.delivered()
    held = [h["receiptGlobalNo"] for h in sim.held_receipts(DEVICE_ID)]
    in_order = held == list(range(1, status["last_global_no"] + 1))
    print(
        f"  FDMS is back: delivery caught up in {time.monotonic() - began:.1f} s; FDMS holds receipts "
        f"1..{held[-1]}, {'each once, in order' if in_order else 'NOT in order'}"
    )

    print("\nThe answer to the next sale is lost on the line (the box issues it; the POS never hears):")
    vbox.modem.lose_answers(1, group=64, command=6)  # type: ignore[union-attr]
    first_try = shop.sell(RETRIED_SALE, timeout="3")
    print(
        "  the tool waited 3 s, then sent the sale again under the same request ID: "
        + ("the box answered with the receipt it had issued" if first_try.get("repeated") else "NOT repeated")
    )
    print("The POS, unsure, sends it once more:")
    again = shop.sell(RETRIED_SALE)
    last = shop.status()["last_global_no"]
    same = again["global_no"] == first_try["global_no"] == last and again.get("repeated")
    print(f"  {'one receipt, ' + str(last) + ', for the three sends' if same else 'DOUBLE ISSUE'}")

    print("\nThe X report:")
    shop.fiscalbox("report", "x")
    shop.fiscalbox("report", "x", "--print")
    print(f"  -> {shown(vbox.save_pages(f'x-report-day-{DAY_NO}')[0])}")

    print("\nThe shop closes:")
    close = shop.fiscalbox_json("day", "close")
    close_path = OUT / "close-day.json"
    close_path.write_text(json.dumps(close, indent=2) + "\n")
    print(
        f"  CloseDay for day {close['fiscalDayNo']} ({close['receiptCounter']} receipts)"
        f" -> {shown(close_path)}"
    )
    status = shop.wait(
        lambda s: s["day"]["status"] == "FiscalDayClosed" or s["days_waiting"], "FDMS's close of the day"
    )
    theirs = sim.day(DEVICE_ID, DAY_NO) or {}
    held = [h["receiptGlobalNo"] for h in sim.held_receipts(DEVICE_ID)]
    in_order = held == list(range(1, status["last_global_no"] + 1))
    print(
        f"  FDMS: day {DAY_NO} {theirs.get('fiscalDayStatus')}, after recomputing the counters from the "
        f"{theirs.get('receipts')} receipts it holds (receipts 1..{held[-1]}, "
        f"{'each once, in order' if in_order else 'NOT in order'}) and checking the day signature; "
        f"the box: {status['day']['status']}"
    )
    if status["day"]["status"] != "FiscalDayClosed":
        raise SystemExit("FDMS did not close the day")
    shop.fiscalbox("report", "z", str(DAY_NO), "--print")
    print(f"  -> {shown(vbox.save_pages(f'z-report-day-{DAY_NO}')[0])}")
    print("How FDMS reads the close (the integrator's debugger, offline):")
    shop.fiscalbox(
        "explain",
        "day",
        shown(close_path),
        "--device-id",
        str(DEVICE_ID),
        "--day-date",
        status["day"]["opened"][:10],
        "--cert",
        shown(device_pem),
        link=False,
    )

    print("\nThe journal: audited, backed up, exported over the link and checked offline:")
    shop.fiscalbox("audit")
    shop.fiscalbox("backup", "--retain", "3")
    info = shop.status()
    export = OUT / "journal-export.json"
    shop.fiscalbox("journal", "export", "1", str(info["last_global_no"]), shown(export))
    shop.fiscalbox("journal", "verify", shown(export), "--cert", shown(device_pem))


if __name__ == "__main__":
    main()
