"""`make demo`: one fiscal day on a fresh key, from sales to the signed close, shown through `explain`.

Makes a device key in out/demo/ (encrypted file key store), its certificate request, then completes,
validates, chains and signs a few receipts of every type (two currencies; exempt, 0 %, 15.5 %; a buyer;
a credit and a debit note), refuses one bad sale the way the box will, and prepares the signed CloseDay
body. Every signed document is written as JSON and checked with `fiscalbox explain` against the public key.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from firmware.core import fdms, money, wire
from firmware.core.errors import FiscalError
from hardware import ECDSA_P256
from hardware.keystores import FileKeyStore

OUT = Path("out/demo")
DEVICE_ID = 1234
SERIAL = "FB-DEMO-0001"
QR_URL = "https://fdmstest.zimra.co.zw"
DAY_NO = 1
OPENED = "2026-11-22T08:00:00"
TAXES = fdms.parse_taxes(
    [
        {"taxID": 1, "taxName": "Exempt", "validFrom": "2023-01-01"},
        {"taxID": 2, "taxPercent": 0, "taxName": "Zero rated 0%", "validFrom": "2023-01-01"},
        {"taxID": 517, "taxPercent": "15.5", "taxName": "Standard rated 15.5%", "validFrom": "2025-12-15"},
    ]
)


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


class DemoDay:
    """The numbering, chaining and counters of one day, as the journal will keep them."""

    def __init__(self, store: FileKeyStore) -> None:
        self.store = store
        self.issued: list[dict[str, Any]] = []
        self.counters = fdms.new_counters()
        self.previous: dict[str, Any] | None = None

    def issue(self, sale: dict[str, Any], at: str) -> dict[str, Any]:
        receipt = fdms.complete(fdms.parse_receipt(sale))
        receipt["receiptDate"] = at
        receipt["receiptCounter"] = len(self.issued) + 1
        receipt["receiptGlobalNo"] = len(self.issued) + 1
        ctx = fdms.Context(
            taxes=TAXES,
            vat_payer=True,
            currencies=("USD", "ZWG"),
            day_opened=OPENED,
            day_max_hours=24,
            previous_in_day=self.previous,
            first_in_day=self.previous is None,
            last_global_no=0,
            now=at,
            invoice_seen=lambda no: any(r["invoiceNo"] == no for r in self.issued),
            original=self._original,
        )
        red = fdms.blocking(fdms.validate(receipt, ctx))
        if red:
            raise FiscalError(red[0]["code"], red[0]["message"], red[0]["field"])
        text = fdms.receipt_string(DEVICE_ID, receipt, self.previous and self.previous["hash"])
        signature = self.store.sign(text.encode())
        receipt["receiptDeviceSignature"] = {"hash": fdms.hash_b64(text), "signature": fdms.b64(signature)}
        fdms.update_counters(self.counters, receipt)
        self.issued.append(receipt)
        self.previous = {
            "receiptCounter": receipt["receiptCounter"],
            "receiptGlobalNo": receipt["receiptGlobalNo"],
            "receiptDate": at,
            "hash": receipt["receiptDeviceSignature"]["hash"],
        }
        return receipt

    def _original(self, note: dict[str, Any]) -> dict[str, Any] | None:
        for receipt in self.issued:
            if (
                receipt["receiptGlobalNo"] == note.get("receiptGlobalNo")
                and receipt["receiptType"] == "FiscalInvoice"
            ):
                notes = sum(r["receiptTotal"] for r in self.issued if r.get("creditDebitNote") == note)
                return {"receipt": receipt, "notes_total": notes}
        return None

    def close(self) -> dict[str, Any]:
        ordered = fdms.day_counters(self.counters)
        text = fdms.day_string(DEVICE_ID, DAY_NO, OPENED[:10], ordered)
        signature = self.store.sign(text.encode())
        return {
            "fiscalDayNo": DAY_NO,
            "fiscalDayCounters": fdms.counters_wire(ordered),
            "fiscalDayDeviceSignature": {"hash": fdms.hash_b64(text), "signature": fdms.b64(signature)},
            "receiptCounter": len(self.issued),
        }


def explain(*args: str) -> None:
    """Run the real `fiscalbox explain` on a file the demo wrote, as an integrator would."""
    command = [sys.executable, "-m", "host_tools.cli", "explain", *args]
    print("$ fiscalbox explain " + " ".join(args), flush=True)
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise SystemExit(f"explain found a problem (exit {result.returncode})")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    passphrase = os.environ.get("FISCALBOX_KEY_PASSPHRASE", "demo-passphrase").encode()
    store = FileKeyStore(OUT / "keys", passphrase)
    if store.algorithm is None:
        store.generate(ECDSA_P256)
    (OUT / "device.csr").write_bytes(store.certificate_request(fdms.csr_common_name(SERIAL, DEVICE_ID)))
    (OUT / "device-public.pem").write_bytes(store.public_key_pem())
    print(
        f"Device {DEVICE_ID} ({SERIAL}): {store.algorithm} key in {OUT / 'keys'}, CSR in {OUT / 'device.csr'}"
    )
    print(f"Fiscal day {DAY_NO} opened {OPENED}\n")

    day = DemoDay(store)
    receipts_dir = OUT / "receipts"
    receipts_dir.mkdir(exist_ok=True)
    for n, sale in enumerate(SALES):
        receipt = day.issue(sale, "2026-11-22T%02d:%02d:00" % (9 + n, 15 * n))
        body = wire.dumps({"receipt": fdms.receipt_wire(receipt)})
        path = receipts_dir / f"{receipt['receiptGlobalNo']:04d}.json"
        path.write_text(body + "\n")
        data = fdms.qr_data(fdms.unb64(receipt["receiptDeviceSignature"]["signature"]))
        total = money.format_fixed(receipt["receiptTotal"], 2)
        print(
            f"#{receipt['receiptGlobalNo']} {receipt['receiptType']:<13} "
            f"{receipt['receiptCurrency']} {total:>9}"
            f"  code {fdms.verification_code(data)}  -> {path}"
        )
    try:
        day.issue(BAD_SALE, "2026-11-22T14:00:00")
    except FiscalError as refusal:
        print(f"\nA sale paid 1.00 for a 1.15 total is refused, nothing signed: {refusal}\n")

    first, last = day.issued[0], day.issued[-1]
    explain(
        "receipt",
        str(receipts_dir / "0001.json"),
        "--device-id",
        str(DEVICE_ID),
        "--cert",
        str(OUT / "device-public.pem"),
        "--qr-url",
        QR_URL,
    )
    print()
    explain(
        "receipt",
        str(receipts_dir / f"{last['receiptGlobalNo']:04d}.json"),
        "--device-id",
        str(DEVICE_ID),
        "--previous-hash",
        day.issued[-2]["receiptDeviceSignature"]["hash"],
        "--cert",
        str(OUT / "device-public.pem"),
        "--qr-url",
        QR_URL,
    )
    close = day.close()
    close_path = OUT / "close-day.json"
    close_path.write_text(wire.dumps(close) + "\n")
    print(
        f"\nCloseDay body for day {DAY_NO} ({len(day.issued)} receipts, "
        f"first {first['invoiceNo']}) -> {close_path}"
    )
    explain(
        "day",
        str(close_path),
        "--device-id",
        str(DEVICE_ID),
        "--day-date",
        OPENED[:10],
        "--cert",
        str(OUT / "device-public.pem"),
    )


if __name__ == "__main__":
    main()
