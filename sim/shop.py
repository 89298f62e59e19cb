"""A simulated point of sale: a shop's sales for the end-to-end tests, the benchmarks and the demo, every kind
FDMS knows (invoices, credit and debit notes, USD and ZWG, exempt, 0 %, 15 %, 15.5 %, buyers), from a seed."""

from __future__ import annotations

import random
from typing import Any

# Tax IDs as the simulator's default scenario lists them: 1 exempt, 2 zero-rated, 3 15 %, 517 15.5 %.
LINES = (
    ("Maize meal 10kg", "11.50", 517, "15.5", "11022000"),
    ("Cooking oil 2l", "4.99", 3, "15", "15179000"),
    ("Exercise books", "6.00", 1, None, "48202000"),
    ("Fresh milk 1l", "1.10", 2, "0", "04012000"),
    ("Bread white", "1.25", 2, "0", "19059000"),
    ("Soap bar", "0.85", 517, "15.5", "34011100"),
)
BUYER = {"buyerRegisterName": "Moyo Stores (Pvt) Ltd", "buyerTIN": "2000654321"}


def _line(rng: random.Random, sign: int, currency: str) -> dict[str, Any]:
    name, price, tax_id, percent, hs_code = rng.choice(LINES)
    if currency == "ZWG":  # the same goods priced in ZWG, still exact cents
        whole, cents = price.split(".")
        price = f"{int(whole) * 27 + int(cents) * 27 // 100}.{(int(cents) * 27) % 100:02d}"
    line: dict[str, Any] = {
        "receiptLineType": "Sale",
        "receiptLineName": name,
        "receiptLinePrice": ("-" if sign < 0 else "") + price,
        "receiptLineQuantity": str(rng.randint(1, 3)),
        "taxID": tax_id,
        "receiptLineHSCode": hs_code,
    }
    if percent is not None:
        line["taxPercent"] = percent
    return line


def _paid(lines: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Payments equal to the inclusive total, in cents, sometimes split across two money types."""
    cents = 0
    for line in lines:
        whole, _, frac = line["receiptLinePrice"].lstrip("-").partition(".")
        unit = int(whole) * 100 + int((frac + "00")[:2])
        cents += unit * int(line["receiptLineQuantity"])
    sign = "-" if lines[0]["receiptLinePrice"].startswith("-") else ""

    def text(value: int) -> str:
        return f"{sign}{value // 100}.{value % 100:02d}"

    if cents > 200 and rng.random() < 0.3:
        part = cents // 2
        return [
            {"moneyTypeCode": "Cash", "paymentAmount": text(part)},
            {"moneyTypeCode": rng.choice(["Card", "MobileWallet"]), "paymentAmount": text(cents - part)},
        ]
    return [
        {
            "moneyTypeCode": rng.choice(["Cash", "Card", "MobileWallet", "BankTransfer"]),
            "paymentAmount": text(cents),
        }
    ]


class Shop:
    """Sales to issue, each a dict for `box.issue`; notes refer to invoices issued earlier on the box."""

    def __init__(self, seed: int, device_id: int) -> None:
        self.rng = random.Random(seed)
        self.device_id = device_id
        self.invoices: list[tuple[int, int, str, dict[str, Any]]] = []  # (global_no, day_no, currency, sale)
        self.n = 0

    def next_sale(self) -> dict[str, Any]:
        self.n += 1
        roll = self.rng.random()
        if self.invoices and roll < 0.1:
            return self._note("CreditNote")
        if self.invoices and roll < 0.15:
            return self._note("DebitNote")
        currency = "ZWG" if self.rng.random() < 0.3 else "USD"
        lines = [_line(self.rng, 1, currency) for _ in range(self.rng.randint(1, 4))]
        sale: dict[str, Any] = {
            "receiptType": "FiscalInvoice",
            "receiptCurrency": currency,
            "invoiceNo": f"INV-{self.device_id}-{self.n}",
            "receiptLinesTaxInclusive": True,
            "receiptLines": lines,
            "receiptPayments": _paid(lines, self.rng),
        }
        if self.rng.random() < 0.2:
            sale["buyerData"] = dict(BUYER)
        return sale

    def issued(self, sale: dict[str, Any], result: dict[str, Any]) -> None:
        """Remember an invoice so later notes can refer to it."""
        if sale["receiptType"] == "FiscalInvoice":
            self.invoices.append((result["global_no"], result["day_no"], sale["receiptCurrency"], sale))

    def _note(self, kind: str) -> dict[str, Any]:
        global_no, day_no, currency, original = self.rng.choice(self.invoices)
        if kind == "CreditNote":
            self.invoices.remove((global_no, day_no, currency, original))  # credit each invoice once at most
        first = original["receiptLines"][0]
        sign = -1 if kind == "CreditNote" else 1
        line = dict(first, receiptLineQuantity="1")
        line["receiptLinePrice"] = ("-" if sign < 0 else "") + first["receiptLinePrice"].lstrip("-")
        lines = [line]
        return {
            "receiptType": kind,
            "receiptCurrency": currency,
            "invoiceNo": f"{'CN' if sign < 0 else 'DN'}-{self.device_id}-{self.n}",
            "receiptLinesTaxInclusive": True,
            "receiptLines": lines,
            "receiptPayments": _paid(lines, self.rng),
            "receiptNotes": "Returned goods" if sign < 0 else "Price corrected",
            "creditDebitNote": {
                "deviceID": self.device_id,
                "receiptGlobalNo": global_no,
                "fiscalDayNo": day_no,
            },
            **({"buyerData": dict(original["buyerData"])} if "buyerData" in original else {}),
        }
