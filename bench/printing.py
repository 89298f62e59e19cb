"""Layout + encoding time per receipt and bytes per receipt, native QR (GS ( k) against a raster QR image.

For each printer profile the same receipt (six lines, a buyer, three taxes, two payments) is laid out and
encoded into the bytes that would go to the printer, many times; the figure is the median of several rounds.
ESC/POS profiles encode through python-escpos; the Adafruit profile through its library into a byte sink
(unpaced: the library's waits model the printer's speed, not the box's work).
Writes bench/results/printing.json. Run: make bench (or .venv/bin/python bench/printing.py [--quick]).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from firmware.core import fdms, layout
from hardware import printers

RESULTS = Path(__file__).resolve().parent / "results" / "printing.json"
SELLER: dict[str, Any] = {
    "taxpayer_name": "Kudu Traders (Pvt) Ltd",
    "taxpayer_tin": "2000123456",
    "vat_number": "220012345",
    "branch_name": "Avondale",
    "branch_address": "7 King George Rd, Harare",
    "serial": "KT-0001",
    "device_id": 321,
    "qr_url": "https://fdmstest.zimra.co.zw",
    "taxes": fdms.parse_taxes(
        [
            {"taxID": 1, "taxName": "Exempt"},
            {"taxID": 2, "taxPercent": "0", "taxName": "Zero rated"},
            {"taxID": 3, "taxPercent": "15", "taxName": "Standard"},
        ]
    ),
}
INFO = {"day_no": 84, "qr_data": "4C8BE27663330417", "original": None}


def receipt() -> dict[str, Any]:
    lines = [
        ("Maize meal 10kg", "11.50", "2", 3),
        ("Cooking oil 2l", "4.99", "1", 3),
        ("Bread white", "1.25", "3", 2),
        ("Sugar 2kg", "2.40", "1", 3),
        ("Exercise books x10", "6.00", "1", 1),
        ("Fresh milk 1l", "1.10", "2", 2),
    ]
    raw = {
        "receiptType": "FiscalInvoice",
        "receiptCurrency": "USD",
        "receiptCounter": 15,
        "receiptGlobalNo": 451,
        "receiptDate": "2026-11-22T10:15:42",
        "invoiceNo": "INV-0015",
        "receiptLinesTaxInclusive": True,
        "buyerData": {"buyerRegisterName": "Moyo Stores (Pvt) Ltd", "buyerTIN": "2000654321"},
        "receiptLines": [
            {
                "receiptLineName": name,
                "receiptLinePrice": price,
                "receiptLineQuantity": qty,
                "taxID": tax,
                **({"taxPercent": {2: "0", 3: "15"}[tax]} if tax != 1 else {}),
            }
            for name, price, qty, tax in lines
        ],
        "receiptPayments": [
            {"moneyTypeCode": "Cash", "paymentAmount": "40"},
            {"moneyTypeCode": "Card", "paymentAmount": "2.34"},
        ],
    }
    prepared, findings = fdms.prepare(raw)
    assert not fdms.blocking(findings), findings
    return prepared


class Sink:
    """A serial port that keeps what is written and answers nothing."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def read(self, size: int = 1) -> bytes:
        return b""


def encoder(name: str) -> tuple[Any, Any]:
    """(layout function's legible, encode(document) -> bytes) for a profile."""
    model = printers.PROFILES[name]
    if model.escpos_profile is not None:
        driver = printers.EscposPrinter(model, Sink())
        return driver.legible, driver.encode
    sink = Sink()
    adafruit = printers.AdafruitPrinter(sink, paced=False)
    adafruit.profile = printers.Profile(**{**model.__dict__, "reads_status": False})

    def encode(document: layout.Document) -> bytes:
        sink.data.clear()
        adafruit.print_document(document)
        return bytes(sink.data)

    return adafruit.legible, encode


def measure(name: str, count: int, rounds: int) -> dict[str, Any]:
    prepared = receipt()
    model = printers.PROFILES[name]
    legible, encode = encoder(name)
    size = len(encode(layout.receipt_document(prepared, SELLER, INFO, model.columns, False, legible)))
    layout_us, total_us = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(count):
            layout.receipt_document(prepared, SELLER, INFO, model.columns, False, legible)
        laid = time.perf_counter()
        for _ in range(count):
            encode(layout.receipt_document(prepared, SELLER, INFO, model.columns, False, legible))
        done = time.perf_counter()
        layout_us.append((laid - start) / count * 1e6)
        total_us.append((done - laid) / count * 1e6)
    return {
        "profile": name,
        "qr": "native" if model.native_qr else "raster",
        "columns": model.columns,
        "bytes": size,
        "layout_us_median": round(statistics.median(layout_us), 1),
        "layout_and_encode_us_median": round(statistics.median(total_us), 1),
        "receipts_per_second": round(1e6 / statistics.median(total_us)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="A smoke run: few receipts, nothing written.")
    args = parser.parse_args()
    count, rounds = (20, 3) if args.quick else (300, 7)
    rows = [measure(name, count, rounds) for name in printers.PROFILES]
    by_name = {row["profile"]: row for row in rows}
    native, raster = by_name["epson-tm-t20ii"], by_name["pos-5890"]
    result = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "count": count,
        "rounds": rounds,
        "profiles": rows,
        "raster_vs_native_bytes": round(raster["bytes"] / native["bytes"], 2),
        "raster_vs_native_time": round(
            raster["layout_and_encode_us_median"] / native["layout_and_encode_us_median"], 2
        ),
    }
    for row in rows:
        print(
            f"{row['profile']:16} {row['qr']:6} {row['columns']} col  {row['bytes']:6} bytes  "
            f"layout {row['layout_us_median']:7.1f} us  "
            f"layout+encode {row['layout_and_encode_us_median']:8.1f} us"
        )
    print(
        f"raster / native: {result['raster_vs_native_bytes']}x the bytes, "
        f"{result['raster_vs_native_time']}x the time"
    )
    if not args.quick:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS.relative_to(RESULTS.parents[2])}", file=sys.stderr)


if __name__ == "__main__":
    main()
