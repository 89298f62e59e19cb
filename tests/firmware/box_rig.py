"""A real box for tests (fixtures in conftest.py): a journal on disk, a file key store, a settable clock."""

from __future__ import annotations

import calendar
import time
from pathlib import Path
from typing import Any

from firmware.box import Box
from firmware.journal import Journal
from hardware import ECDSA_P256
from hardware.keystores import FileKeyStore

DEVICE_ID = 4321
TAXES = [
    {"taxID": 1, "taxName": "Exempt", "validFrom": "2023-01-01"},
    {"taxID": 2, "taxPercent": 0, "taxName": "Zero rated 0%", "validFrom": "2023-01-01"},
    {"taxID": 517, "taxPercent": "15.5", "taxName": "Standard rated 15.5%", "validFrom": "2025-12-15"},
]
SETTINGS: dict[str, Any] = {
    "device_id": DEVICE_ID,
    "serial": "FB-TEST-0001",
    "taxpayer_name": "Test Traders (Pvt) Ltd",
    "taxpayer_tin": "2000999999",
    "vat_number": "220099999",
    "taxes": TAXES,
    "currencies": ["USD", "ZWG"],
    "qr_url": "https://fdmstest.zimra.co.zw",
}


class StepClock:
    """Wall time the test sets and moves: day limits are tested without waiting."""

    def __init__(self, local: str = "2026-11-22T08:00:00", zone_offset_hours: int = 2) -> None:
        utc = calendar.timegm(time.strptime(local, "%Y-%m-%dT%H:%M:%S")) - zone_offset_hours * 3600
        self.t = float(utc)

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def sale(
    total: str = "1.15", kind: str = "FiscalInvoice", invoice: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A one-line 15.5 % inclusive sale paid in cash (negative for a credit note)."""
    sale.n = getattr(sale, "n", 0) + 1  # type: ignore[attr-defined]
    body: dict[str, Any] = {
        "receiptType": kind,
        "receiptCurrency": "USD",
        "invoiceNo": invoice or f"T-{sale.n}",  # type: ignore[attr-defined]
        "receiptLinesTaxInclusive": True,
        "receiptLines": [
            {
                "receiptLineType": "Sale",
                "receiptLineName": "Bread",
                "receiptLinePrice": total,
                "receiptLineQuantity": "1",
                "taxID": 517,
                "taxPercent": "15.5",
                "receiptLineHSCode": "19059000",
            }
        ],
        "receiptPayments": [{"moneyTypeCode": "Cash", "paymentAmount": total}],
    }
    body.update(extra)
    return body


class Rig:
    """Everything a box is made of, so a test can reopen the box on the same files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.journal_path = root / "journal.db"
        self.keys = FileKeyStore(root / "keys", b"test-passphrase")
        if self.keys.algorithm is None:
            self.keys.generate(ECDSA_P256)
        self.clock = StepClock()
        self.journal: Journal | None = None

    def box(self, **options: Any) -> Box:
        if self.journal is not None:
            self.journal.close()
        self.journal = Journal(self.journal_path, create=True)
        return Box(self.journal, self.keys, self.clock, **options)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None
