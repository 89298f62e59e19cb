"""The FDMS simulator's judge: receipts the box makes are clean, and each rule of reference 3.4 fires alone.

Receipts are made the way the box makes them (`firmware.core.fdms.prepare`, `receipt_string`,
`receipt_wire`), signed with an ECDSA P-256 key whose self-signed certificate the judge verifies with, and
handed to the judge as the server would parse them (JSON numbers as Decimal, or as float).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from firmware.core import fdms, wire
from sim.fdms import judge, service, state
from sim.fdms.judge import Facts, Held

DEVICE = 321
DAY = 5
OPENED = "2026-03-02T08:00:00"

TAXES: list[dict[str, Any]] = [
    {"taxID": 1, "taxName": "Exempt", "validFrom": "2020-01-01T00:00:00"},
    {"taxID": 2, "taxPercent": 0, "taxName": "Zero rated 0%", "validFrom": "2020-01-01T00:00:00"},
    {"taxID": 3, "taxPercent": 15, "taxName": "Standard rated 15%", "validFrom": "2020-01-01T00:00:00"},
    {
        "taxID": 4,
        "taxPercent": 14.5,
        "taxName": "Standard rated 14.5%",
        "validFrom": "2020-01-01T00:00:00",
        "validTill": "2023-12-31T00:00:00",
    },
    {"taxID": 514, "taxPercent": 5, "taxName": "Non-VAT Withholding Tax", "validFrom": "2020-01-01T00:00:00"},
    {"taxID": 517, "taxPercent": 15.5, "taxName": "Standard rated 15.5%", "validFrom": "2025-12-15T00:00:00"},
]


def make_key_and_cert(key: Any) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ZIMRA-SN001-%010d" % DEVICE)])
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def as_json(value: Any, parse_float: Callable[[str], Any] = Decimal) -> Any:
    """What the server gets after the box's bytes went over the wire."""
    return json.loads(wire.dumps(value), parse_float=parse_float)


class Device:
    """The box's side: prepare, sign and put on the wire, as firmware/box.py does."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = make_key_and_cert(self.key)

    def sign(self, text: str) -> str:
        return str(fdms.b64(self.key.sign(text.encode(), ec.ECDSA(hashes.SHA256()))))

    def issue(
        self,
        sale: dict,
        counter: int,
        global_no: int,
        date: str,
        previous_hash: str | None,
        ctx: fdms.Context | None = None,
    ) -> tuple[dict, dict, list]:
        """(wire JSON, internal receipt, the box's own findings), signed whatever the box found."""
        raw = copy.deepcopy(sale)
        raw.update(receiptCounter=counter, receiptGlobalNo=global_no, receiptDate=date)
        receipt, findings = fdms.prepare(raw, ctx)
        text = fdms.receipt_string(DEVICE, receipt, previous_hash)
        receipt["receiptDeviceSignature"] = {"hash": fdms.hash_b64(text), "signature": self.sign(text)}
        return as_json(fdms.receipt_wire(receipt)), receipt, findings

    def resign(self, receipt: dict, previous_hash: str | None) -> dict:
        """Sign a (mutated) wire receipt again, the string built by the box's own code."""
        text_numbers = json.loads(json.dumps(receipt, default=str), parse_float=str)
        internal = fdms.parse_receipt(text_numbers)
        text = fdms.receipt_string(DEVICE, internal, previous_hash)
        receipt["receiptDeviceSignature"] = {"hash": fdms.hash_b64(text), "signature": self.sign(text)}
        return receipt

    def close(self, receipts: list[dict], day_no: int = DAY, date: str = OPENED[:10]) -> dict:
        counters = fdms.new_counters()
        for receipt in receipts:
            fdms.update_counters(counters, receipt)
        ordered = fdms.day_counters(counters)
        text = fdms.day_string(DEVICE, day_no, date, ordered)
        return {
            "fiscalDayNo": day_no,
            "fiscalDayCounters": as_json(fdms.counters_wire(ordered)),
            "fiscalDayDeviceSignature": {"hash": fdms.hash_b64(text), "signature": self.sign(text)},
            "receiptCounter": len(receipts),
        }


@pytest.fixture(scope="module")
def device() -> Device:
    return Device()


def facts_for(device: Device, **changes: Any) -> Facts:
    facts = Facts(
        device_id=DEVICE,
        vat_payer=True,
        taxes=TAXES,
        currencies=("USD", "ZWG"),
        day_no=DAY,
        day_opened=OPENED,
        day_max_hours=24,
        now="2026-03-02T12:00:00",
        allowed_skew_seconds=300,
        certificate_pem=device.cert,
    )
    return dataclasses.replace(facts, **changes)


def line(
    name: str, price: str, qty: str, tax_id: int, percent: str | None, hs: str | None = "19059000"
) -> dict:
    item: dict[str, Any] = {
        "receiptLineType": "Sale",
        "receiptLineName": name,
        "receiptLinePrice": price,
        "receiptLineQuantity": qty,
        "taxID": tax_id,
    }
    if percent is not None:
        item["taxPercent"] = percent
    if hs is not None:
        item["receiptLineHSCode"] = hs
    return item


def sale(**changes: Any) -> dict:
    """An inclusive USD invoice with a 15 %, a zero-rated and an exempt line: total 8.29."""
    base: dict[str, Any] = {
        "receiptType": "FiscalInvoice",
        "receiptCurrency": "USD",
        "invoiceNo": "INV-1",
        "receiptLinesTaxInclusive": True,
        "receiptLines": [
            line("Bread", "1.15", "2", 3, "15"),
            line("Milk", "0.99", "1", 2, "0", "04011000"),
            line("Medicine", "5.00", "1", 1, None, "30049000"),
        ],
        "receiptPayments": [{"moneyTypeCode": "Cash", "paymentAmount": "8.29"}],
    }
    base.update(changes)
    return base


def credit_sale(**changes: Any) -> dict:
    base: dict[str, Any] = {
        "receiptType": "CreditNote",
        "receiptCurrency": "USD",
        "invoiceNo": "CN-1",
        "receiptNotes": "Bread returned",
        "creditDebitNote": {"deviceID": DEVICE, "receiptGlobalNo": 41, "fiscalDayNo": DAY},
        "receiptLinesTaxInclusive": True,
        "receiptLines": [line("Bread", "-1.15", "1", 3, "15")],
        "receiptPayments": [{"moneyTypeCode": "Cash", "paymentAmount": "-1.15"}],
    }
    base.update(changes)
    return base


class Day:
    """Receipt 1 (global 41) of the day is held; receipt 2 (global 42) is what each test breaks."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.first, _, _ = device.issue(sale(), 1, 41, "2026-03-02T09:00:00", None)
        self.first_hash = self.first["receiptDeviceSignature"]["hash"]
        self.held = Held(self.first, 1001, DAY, [])
        self.second, _, _ = device.issue(
            sale(invoiceNo="INV-2"), 2, 42, "2026-03-02T09:05:00", self.first_hash
        )

    def issue(self, the_sale: dict, date: str = "2026-03-02T09:05:00") -> dict:
        return self.device.issue(the_sale, 2, 42, date, self.first_hash)[0]

    def resign(self, receipt: dict) -> dict:
        return self.device.resign(receipt, self.first_hash)

    def judge(self, receipt: dict, **kwargs: Any) -> list[tuple[str, str]]:
        args: dict[str, Any] = {
            "facts": facts_for(self.device),
            "previous": self.held,
            "first_in_day": False,
            "last_global_no_before_day": 40,
            "invoice_seen": lambda number: False,
            "original": lambda note: (self.held, 0),
        }
        args.update(kwargs)
        errors = judge.judge_receipt(receipt, **args)
        assert [e["validationErrorCode"] for e in errors] == sorted(e["validationErrorCode"] for e in errors)
        assert all(e["validationErrorDescription"] for e in errors)
        return [(e["validationErrorCode"], e["validationErrorColor"]) for e in errors]


@pytest.fixture
def day(device: Device) -> Day:
    return Day(device)


def red(*codes: str) -> list[tuple[str, str]]:
    return [(code, "Red") for code in codes]


# ---------------------------------------------------------------------------------------------------------
# Clean receipts


def test_the_boxs_receipts_are_clean(day: Day) -> None:
    assert day.judge(day.first, previous=None, first_in_day=True) == []
    assert day.judge(day.second) == []
    # as the server may parse them: floats instead of Decimals
    assert day.judge(json.loads(json.dumps(day.second, default=float))) == []


def test_the_server_reads_and_keeps_json_numbers_exactly(day: Day) -> None:
    # FDMS reads JSON numbers as System.Decimal; a float keeps about 15 significant digits, so this total
    # came back as 99999999999999.98 and its receipt was judged RCPT020 (found by tests/e2e/test_red_rules).
    the_sale = sale(
        receiptLines=[line("Harvester", "99999999999999.99", "1", 3, "15")],
        receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "99999999999999.99"}],
    )
    text = state.dumps({"receipt": day.issue(the_sale)})
    assert '"receiptTotal":99999999999999.99' in text
    body = service.parse_json(text.encode())
    assert judge.check_structure(body) == {} and day.judge(body["receipt"]) == []
    assert state.loads(state.dumps(body)) == body  # as held, and as judged again later
    assert service.exact(body)["receipt"]["receiptTotal"] == "99999999999999.99"
    assert "RCPT020" in [code for code, _ in day.judge(json.loads(text)["receipt"])]  # what floats did


def test_a_clean_credit_note_and_debit_note(day: Day) -> None:
    assert day.judge(day.issue(credit_sale())) == []
    debit = credit_sale(
        receiptType="DebitNote",
        receiptLines=[line("Bread", "1.15", "1", 3, "15")],
        receiptPayments=[{"moneyTypeCode": "Card", "paymentAmount": "1.15"}],
    )
    assert day.judge(day.issue(debit)) == []


def test_an_rsa_device_certificate_verifies_too(day: Day) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    receipt = copy.deepcopy(day.second)
    internal = fdms.parse_receipt(json.loads(json.dumps(receipt, default=str), parse_float=str))
    text = fdms.receipt_string(DEVICE, internal, day.first_hash)
    signature = key.sign(text.encode(), PKCS1v15(), hashes.SHA256())
    receipt["receiptDeviceSignature"]["signature"] = fdms.b64(signature)
    facts = facts_for(day.device, certificate_pem=make_key_and_cert(key))
    assert day.judge(receipt, facts=facts) == []
    assert day.judge(receipt) == red("RCPT020")  # the EC certificate does not verify an RSA signature


# ---------------------------------------------------------------------------------------------------------
# Each rule broken alone


def test_rcpt010_currency(day: Day) -> None:
    receipt = day.second
    receipt["receiptCurrency"] = "EUR"
    assert day.judge(day.resign(receipt)) == red("RCPT010")


def test_rcpt011_counter(day: Day) -> None:
    day.second["receiptCounter"] = 3  # not signed
    assert day.judge(day.second) == red("RCPT011")
    day.first["receiptCounter"] = 2
    assert day.judge(day.first, previous=None, first_in_day=True) == red("RCPT011")


def test_rcpt012_global_number_on_the_days_first_receipt(day: Day) -> None:
    receipt = day.first
    receipt["receiptGlobalNo"] = 45
    receipt = day.device.resign(receipt, None)
    assert day.judge(receipt, previous=None, first_in_day=True) == red("RCPT012")
    receipt["receiptGlobalNo"] = 1  # a restart is allowed on a day's first receipt
    receipt = day.device.resign(receipt, None)
    assert day.judge(receipt, previous=None, first_in_day=True) == []


def test_rcpt012_restart_in_the_middle_of_a_day_is_red_not_grey(day: Day) -> None:
    receipt = day.second
    receipt["receiptGlobalNo"] = 1
    receipt = day.device.resign(receipt, None)
    assert day.judge(receipt, previous=None) == red("RCPT012")


def test_rcpt012_predecessor_in_another_day(day: Day) -> None:
    yesterday = Held(day.first, 1001, DAY - 1, [])
    receipt = day.device.resign(day.second, None)
    assert day.judge(receipt, previous=yesterday) == red("RCPT012")


def test_rcpt013_invoice_number_seen(day: Day) -> None:
    assert day.judge(day.second, invoice_seen=lambda number: number == "INV-2") == red("RCPT013")


def test_rcpt014_before_the_day_opened_is_yellow(day: Day) -> None:
    receipt = day.first
    receipt["receiptDate"] = "2026-03-02T07:59:59"
    receipt = day.device.resign(receipt, None)
    assert day.judge(receipt, previous=None, first_in_day=True) == [("RCPT014", "Yellow")]


def test_rcpt015_note_without_its_original(day: Day) -> None:
    receipt = day.issue(credit_sale())
    del receipt["creditDebitNote"]
    assert day.judge(receipt) == red("RCPT015")
    receipt["creditDebitNote"] = {"deviceID": DEVICE, "receiptGlobalNo": 41}  # no fiscalDayNo
    assert day.judge(receipt) == red("RCPT015")
    receipt["creditDebitNote"] = {"receiptID": 1001}
    assert day.judge(receipt) == []


def test_rcpt016_017_018_empty_lists(day: Day) -> None:
    receipt = copy.deepcopy(day.second)
    receipt["receiptLines"] = []
    assert day.judge(receipt) == red("RCPT016")
    receipt = copy.deepcopy(day.second)
    del receipt["receiptPayments"]
    assert day.judge(receipt) == red("RCPT018")
    receipt = day.second
    receipt["receiptTaxes"] = []
    assert day.judge(day.resign(receipt)) == red("RCPT017")


def test_rcpt019_inclusive_total(day: Day) -> None:
    receipt = day.second
    receipt["receiptTotal"] = Decimal("8.30")
    receipt["receiptPayments"][0]["paymentAmount"] = Decimal("8.30")
    assert day.judge(day.resign(receipt)) == red("RCPT019", "RCPT038")


def test_rcpt020_signature(day: Day) -> None:
    receipt = day.second
    good = dict(receipt["receiptDeviceSignature"])
    receipt["receiptDeviceSignature"]["hash"] = day.first_hash
    assert day.judge(receipt) == red("RCPT020")
    receipt["receiptDeviceSignature"] = dict(good, signature=day.first["receiptDeviceSignature"]["signature"])
    assert day.judge(receipt) == red("RCPT020")
    # P1363 (r || s) instead of DER: FDMS refuses it
    internal = fdms.parse_receipt(json.loads(json.dumps(receipt, default=str), parse_float=str))
    text = fdms.receipt_string(DEVICE, internal, day.first_hash)
    r, s = decode_dss_signature(day.device.key.sign(text.encode(), ec.ECDSA(hashes.SHA256())))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    receipt["receiptDeviceSignature"] = dict(good, signature=fdms.b64(raw))
    assert day.judge(receipt) == red("RCPT020")
    # signed without the previous receipt's hash
    receipt = day.device.resign(receipt, None)
    assert day.judge(receipt) == red("RCPT020")
    # a signed field changed after signing
    receipt = day.resign(receipt)
    receipt["receiptGlobalNo"] = 42
    receipt["receiptDate"] = "2026-03-02T09:05:01"
    assert day.judge(receipt) == red("RCPT020")


def test_rcpt021_vat_tax_of_a_non_vat_payer(day: Day) -> None:
    facts = facts_for(day.device, vat_payer=False)
    assert day.judge(day.second, facts=facts) == red("RCPT021")
    withholding = sale(
        receiptLines=[
            line("Service", "10.00", "1", 514, "5", None),
            line("Water", "1.00", "1", 1, None, None),
        ],
        receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "11.00"}],
    )
    assert day.judge(day.issue(withholding), facts=facts) == []


def test_rcpt022_line_price_sign(day: Day) -> None:
    discount = dict(line("Promo", "0.50", "1", 3, "15"), receiptLineType="Discount")  # must be negative
    the_sale = sale(receiptLines=[*sale()["receiptLines"], discount])
    the_sale["receiptPayments"][0]["paymentAmount"] = "8.79"
    assert day.judge(day.issue(the_sale)) == red("RCPT022")
    free = sale(receiptLines=[*sale()["receiptLines"], line("Gift", "0", "1", 3, "15")])
    assert day.judge(day.issue(free)) == red("RCPT022")
    positive_credit = credit_sale(
        receiptLines=[line("Bread", "-1.15", "1", 3, "15"), line("Bag", "0.15", "1", 3, "15")],
        receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "-1.00"}],
    )
    assert day.judge(day.issue(positive_credit)) == red("RCPT022")


def test_rcpt023_quantity(day: Day) -> None:
    the_sale = sale(receiptLines=[*sale()["receiptLines"], line("Air", "1.00", "0", 3, "15")])
    assert day.judge(day.issue(the_sale)) == red("RCPT023")


def test_rcpt024_line_total(day: Day) -> None:
    lines = sale()["receiptLines"]
    lines[0]["receiptLineTotal"] = "2.31"
    the_sale = sale(receiptLines=lines, receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "8.30"}])
    assert day.judge(day.issue(the_sale)) == red("RCPT024")


def test_rcpt024_accepts_half_up_and_half_even(day: Day) -> None:
    for total, expect in (("0.13", []), ("0.12", []), ("0.11", red("RCPT024"))):
        item = dict(line("Sweet", "0.125", "1", 3, "15"), receiptLineTotal=total)
        the_sale = sale(
            receiptLines=[item], receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": total}]
        )
        assert day.judge(day.issue(the_sale)) == expect, total


def test_rcpt025_invalid_tax(day: Day) -> None:
    for tax_id, percent in ((3, "14.5"), (4, "14.5"), (99, "15"), (1, "0"), (2, None)):
        the_sale = sale(
            receiptLines=[line("Thing", "2.00", "1", tax_id, percent)],
            receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "2.00"}],
        )
        assert day.judge(day.issue(the_sale)) == red("RCPT025"), (tax_id, percent)
    # 15.5 % is valid from 2025-12-15 only
    the_sale = sale(
        receiptLines=[line("Thing", "2.00", "1", 517, "15.5")],
        receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "2.00"}],
    )
    assert day.judge(day.issue(the_sale)) == []
    facts = facts_for(day.device, day_opened="2025-12-14T08:00:00", now="2025-12-14T12:00:00")
    old = day.device.issue(the_sale, 1, 41, "2025-12-14T09:00:00", None)[0]
    assert day.judge(old, facts=facts, previous=None, first_in_day=True) == red("RCPT025")


def test_rcpt026_tax_amount(day: Day) -> None:
    receipt = day.second
    receipt["receiptTaxes"][2]["taxAmount"] += Decimal("0.01")  # the 15 % group (sorted by taxID)
    assert receipt["receiptTaxes"][2]["taxID"] == 3
    assert day.judge(day.resign(receipt)) == red("RCPT026")


def exclusive_sale(price: str) -> dict:
    return sale(
        receiptLinesTaxInclusive=False,
        receiptLines=[line("Sweet", price, "1", 3, "15")],
        receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "0"}],
    )


def test_rcpt026_exclusive_ties_accept_half_up_and_half_even(day: Day) -> None:
    # 0.30 at 15 % is 0.045: half-up 0.05 (the box), half-even 0.04; 0.03 or 0.06 are wrong
    for tax, expect in (("0.05", []), ("0.04", []), ("0.06", red("RCPT026")), ("0.03", red("RCPT026"))):
        receipt = day.issue(exclusive_sale("0.30"))
        receipt["receiptTaxes"][0]["taxAmount"] = Decimal(tax)
        receipt["receiptTaxes"][0]["salesAmountWithTax"] = Decimal("0.30") + Decimal(tax)
        receipt["receiptTotal"] = Decimal("0.30") + Decimal(tax)
        receipt["receiptPayments"][0]["paymentAmount"] = receipt["receiptTotal"]
        got = day.judge(day.resign(receipt))
        # the sales amount follows the tax, so a wrong tax is also a wrong sales amount
        assert got == (expect if not expect else red("RCPT026", "RCPT027")), tax


def test_inclusive_tax_is_computed_on_the_group_sum() -> None:
    # three lines of 1.01 at 15 %: per line 0.13 each (0.39), on the group's 3.03 it is 0.40
    assert judge.tax_amounts(Decimal("3.03"), Decimal("15"), True) == {Decimal("0.40")}
    assert judge.tax_amounts(Decimal("-3.03"), Decimal("15"), True) == {Decimal("-0.40")}
    assert judge.tax_amounts(Decimal("3.03"), None, True) == {Decimal(0)}
    # S - round(S / 1.2): 0.09 / 1.2 = 0.075 rounds to 0.08 either way, so the tax is 0.01. The box rounds
    # S * p / (100 + p) = 0.015 directly and gets 0.02: the two formulas part at exact ties, which only
    # percents with 10000 + hundredths divisible by 32 have (12, 20, 2.4, 15.2 %; not 5, 14.5, 15, 15.5 %).
    assert judge.tax_amounts(Decimal("0.09"), Decimal("20"), True) == {Decimal("0.01")}


def test_rcpt026_tax_summed_per_line(day: Day) -> None:
    the_sale = sale(
        receiptLines=[line("Egg", "1.01", "1", 3, "15") for _ in range(3)],
        receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "3.03"}],
    )
    receipt = day.issue(the_sale)
    assert receipt["receiptTaxes"][0]["taxAmount"] == Decimal("0.40")
    assert day.judge(receipt) == []
    receipt["receiptTaxes"][0]["taxAmount"] = Decimal("0.39")
    assert day.judge(day.resign(receipt)) == red("RCPT026")


def test_rcpt037_exclusive_total(day: Day) -> None:
    receipt = day.issue(exclusive_sale("10.00"))
    receipt["receiptPayments"][0]["paymentAmount"] = receipt["receiptTotal"] = Decimal("11.50")
    assert day.judge(receipt) == []
    receipt["receiptPayments"][0]["paymentAmount"] = receipt["receiptTotal"] = Decimal("11.49")
    assert day.judge(day.resign(receipt)) == red("RCPT037", "RCPT038")


def test_rcpt027_sales_amount_with_tax(day: Day) -> None:
    receipt = day.second
    receipt["receiptTaxes"][0]["salesAmountWithTax"] += Decimal("0.01")
    assert day.judge(day.resign(receipt)) == red("RCPT027", "RCPT038")
    receipt = copy.deepcopy(day.second)
    del receipt["receiptTaxes"][0]  # a group of lines with no tax line
    assert day.judge(day.resign(receipt)) == red("RCPT027", "RCPT038")


def test_rcpt038_tax_table_total_and_rcpt039_payments(day: Day) -> None:
    receipt = day.second
    receipt["receiptPayments"] = [
        {"moneyTypeCode": "Cash", "paymentAmount": Decimal("5")},
        {"moneyTypeCode": "Card", "paymentAmount": Decimal("3.28")},
    ]
    assert day.judge(receipt) == red("RCPT039")


def test_rcpt028_payment_sign(day: Day) -> None:
    receipt = day.second
    receipt["receiptPayments"] = [
        {"moneyTypeCode": "Cash", "paymentAmount": Decimal("10")},
        {"moneyTypeCode": "Card", "paymentAmount": Decimal("-1.71")},
    ]
    assert day.judge(receipt) == red("RCPT028")


def test_rcpt040_total_sign(day: Day) -> None:
    discount = dict(line("Promo", "-2.00", "1", 3, "15"), receiptLineType="Discount")
    the_sale = sale(
        receiptLines=[line("Bread", "1.00", "1", 3, "15"), discount],
        receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "-1.00"}],
    )
    # a negative total can only be paid with a negative payment
    assert day.judge(day.issue(the_sale)) == red("RCPT028", "RCPT040")


def test_rcpt029_note_data_on_an_invoice(day: Day) -> None:
    the_sale = sale(creditDebitNote={"receiptID": 1001})
    assert day.judge(day.issue(the_sale)) == red("RCPT029")


def test_rcpt030_not_after_the_previous_receipt(day: Day) -> None:
    for date in ("2026-03-02T09:00:00", "2026-03-02T08:59:59"):
        receipt = day.second
        receipt["receiptDate"] = date
        assert day.judge(day.resign(receipt)) == red("RCPT030"), date
    # also across days: the first receipt of a day after yesterday's (future-dated) last one
    yesterday = Held(dict(day.first, receiptDate="2026-03-02T10:00:00"), 1001, DAY - 1, [])
    receipt = day.device.resign(dict(day.first, receiptGlobalNo=42), None)
    assert day.judge(receipt, previous=yesterday, first_in_day=True, last_global_no_before_day=41) == red(
        "RCPT030"
    )


def test_rcpt031_future_date_beyond_the_skew_is_yellow(day: Day) -> None:
    assert day.judge(day.issue(sale(), "2026-03-02T12:05:00")) == []
    assert day.judge(day.issue(sale(), "2026-03-02T12:05:01")) == [("RCPT031", "Yellow")]


def test_rcpt032_original_missing(day: Day) -> None:
    receipt = day.issue(credit_sale())
    assert day.judge(receipt, original=lambda note: None) == red("RCPT032")
    note_held = Held(day.issue(credit_sale()), 1002, DAY, [])  # a note is not an invoice
    assert day.judge(receipt, original=lambda note: (note_held, 0)) == red("RCPT032")


def test_rcpt033_original_older_than_twelve_months(day: Day) -> None:
    receipt = day.issue(credit_sale())
    for date, expect in (("2025-03-02T09:05:00", []), ("2025-03-02T09:04:59", red("RCPT033"))):
        old = Held(dict(day.first, receiptDate=date), 1001, 1, [])
        assert day.judge(receipt, original=lambda note, old=old: (old, 0)) == expect, date


def test_rcpt034_note_without_its_text(day: Day) -> None:
    receipt = day.issue(credit_sale())
    receipt["receiptNotes"] = "  "
    assert day.judge(receipt) == red("RCPT034")


def test_rcpt035_credit_beyond_what_is_left(day: Day) -> None:
    receipt = day.issue(credit_sale())  # -1.15 against 8.29
    assert day.judge(receipt, original=lambda note: (day.held, -714)) == []
    assert day.judge(receipt, original=lambda note: (day.held, -715)) == red("RCPT035")


def test_rcpt036_tax_not_on_the_original(day: Day) -> None:
    the_sale = credit_sale(receiptLines=[line("Bread", "-1.15", "1", 517, "15.5")])
    assert day.judge(day.issue(the_sale)) == red("RCPT036")


def test_rcpt041_after_the_days_end_is_yellow(day: Day) -> None:
    facts = facts_for(day.device, now="2026-03-03T08:00:01")
    assert day.judge(day.issue(sale(), "2026-03-03T08:00:00"), facts=facts) == []
    assert day.judge(day.issue(sale(), "2026-03-03T08:00:01"), facts=facts) == [("RCPT041", "Yellow")]


def test_rcpt042_other_currency_than_the_original(day: Day) -> None:
    the_sale = credit_sale(receiptCurrency="ZWG")
    assert day.judge(day.issue(the_sale)) == red("RCPT042")


def test_rcpt043_buyer(day: Day) -> None:
    for buyer, expect in (
        ({"buyerRegisterName": "ACME", "buyerTIN": "2000123456", "vatNumber": "220012345"}, []),
        ({"buyerRegisterName": "ACME", "buyerTIN": "2000123456"}, []),
        ({"buyerRegisterName": "ACME"}, red("RCPT043")),
        ({"buyerTIN": "2000123456"}, red("RCPT043")),
        ({"buyerRegisterName": "ACME", "buyerTIN": "123"}, red("RCPT043")),
        ({"buyerRegisterName": "ACME", "buyerTIN": "2000123456", "VATNumber": "22001"}, red("RCPT043")),
    ):
        receipt = copy.deepcopy(day.second)
        receipt["buyerData"] = buyer
        assert day.judge(receipt) == expect, buyer


def test_rcpt047_048_hs_codes(day: Day) -> None:
    # A non-VAT payer may leave the HS code out, but one it sends is 4 or 8 digits all the same (reference
    # 3.3); only a VAT payer's exempt and zero-rated lines need all 8.
    for hs, tax_id, percent, expect, non_vat in (
        (None, 3, "15", red("RCPT047"), red("RCPT021")),
        ("1905", 3, "15", [], red("RCPT021")),
        ("190590", 3, "15", red("RCPT048"), red("RCPT021", "RCPT048")),
        ("1905900A", 3, "15", red("RCPT048"), red("RCPT021", "RCPT048")),
        ("0401", 2, "0", red("RCPT048"), []),
        ("3004", 1, None, red("RCPT048"), []),
        ("30049000", 1, None, [], []),
        ("300490", 1, None, red("RCPT048"), red("RCPT048")),
        (None, 1, None, red("RCPT047"), []),
    ):
        the_sale = sale(
            receiptLines=[line("Thing", "2.00", "1", tax_id, percent, hs)],
            receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "2.00"}],
        )
        assert day.judge(day.issue(the_sale)) == expect, hs
        assert day.judge(day.issue(the_sale), facts=facts_for(day.device, vat_payer=False)) == non_vat, hs


def test_grey_when_the_previous_receipt_is_missing(day: Day) -> None:
    third, _, _ = day.device.issue(sale(), 3, 43, "2026-03-02T09:10:00", "not-held-yet")
    assert day.judge(third, previous=None) == [(judge.GREY_CODE, "Grey")]
    third["receiptCurrency"] = "EUR"  # other rules are still judged
    assert day.judge(third, previous=None) == [("RCPT010", "Red"), (judge.GREY_CODE, "Grey")]
    # once the gap is filled, the re-judged receipt is only what it really is
    second = Held(day.second, 1002, DAY, [])
    third = day.device.resign(third, day.second["receiptDeviceSignature"]["hash"])
    assert day.judge(third, previous=second) == red("RCPT010")


# ---------------------------------------------------------------------------------------------------------
# Structure


def test_check_structure_accepts_the_boxs_receipts_in_any_number_form(day: Day) -> None:
    assert judge.check_structure({"receipt": day.second}) == {}
    assert judge.check_structure({"receipt": json.loads(json.dumps(day.second, default=float))}) == {}
    lower = dict(day.second, receiptType="fiscalinvoice", receiptPrintForm="receipt48")
    assert judge.check_structure({"receipt": lower}) == {}
    assert judge.check_structure({"receipt": dict(day.second, receiptLines=[], receiptTaxes=None)}) == {}


@pytest.mark.parametrize(
    "change, path",
    [
        (lambda r: r.pop("receiptType"), "receipt.receiptType"),
        (lambda r: r.update(receiptType="Refund"), "receipt.receiptType"),
        (lambda r: r.update(receiptCounter="2"), "receipt.receiptCounter"),
        (lambda r: r.update(receiptCounter=True), "receipt.receiptCounter"),
        (lambda r: r.update(invoiceNo="X" * 51), "receipt.invoiceNo"),
        (lambda r: r.update(invoiceNo=""), "receipt.invoiceNo"),
        (lambda r: r.update(receiptCurrency="USDX"), "receipt.receiptCurrency"),
        (lambda r: r.update(receiptDate="2026-03-02 09:05:00"), "receipt.receiptDate"),
        (lambda r: r.update(receiptDate="2026-02-30T09:05:00"), "receipt.receiptDate"),
        (lambda r: r.update(receiptTotal="8.29"), "receipt.receiptTotal"),
        (lambda r: r.update(receiptTotal=Decimal("8.291")), "receipt.receiptTotal"),
        (lambda r: r.pop("receiptLinesTaxInclusive"), "receipt.receiptLinesTaxInclusive"),
        (lambda r: r.update(receiptLines={}), "receipt.receiptLines"),
        (lambda r: r["receiptLines"][1].pop("receiptLineName"), "receipt.receiptLines[1].receiptLineName"),
        (
            lambda r: r["receiptLines"][0].update(receiptLineHSCode="123456789"),
            "receipt.receiptLines[0].receiptLineHSCode",
        ),
        (
            lambda r: r["receiptLines"][0].update(receiptLineQuantity=Decimal("1.0000001")),
            "receipt.receiptLines[0].receiptLineQuantity",
        ),
        (lambda r: r["receiptLines"][0].update(taxID=3.0), "receipt.receiptLines[0].taxID"),
        (lambda r: r["receiptTaxes"][0].pop("taxAmount"), "receipt.receiptTaxes[0].taxAmount"),
        (
            lambda r: r["receiptPayments"][0].update(moneyTypeCode="Cheque"),
            "receipt.receiptPayments[0].moneyTypeCode",
        ),
        (lambda r: r["receiptPayments"].append(5), "receipt.receiptPayments[1]"),
        (lambda r: r.pop("receiptDeviceSignature"), "receipt.receiptDeviceSignature"),
        (
            lambda r: r["receiptDeviceSignature"].update(hash="not base64!"),
            "receipt.receiptDeviceSignature.hash",
        ),
        (
            lambda r: r.update(buyerData={"buyerRegisterName": "A", "buyerTIN": "12345678901"}),
            "receipt.buyerData.buyerTIN",
        ),
        (lambda r: r.update(creditDebitNote={"receiptID": "7"}), "receipt.creditDebitNote.receiptID"),
        (lambda r: r.update(receiptNotes=5), "receipt.receiptNotes"),
    ],
)
def test_check_structure_names_the_bad_field(day: Day, change: Callable[[dict], Any], path: str) -> None:
    receipt = day.second
    change(receipt)
    errors = judge.check_structure({"receipt": receipt})
    assert list(errors) == [path]
    assert all(isinstance(message, str) and message for message in errors[path])


def test_check_structure_raises_nothing() -> None:
    assert judge.check_structure([]) == {"$": ["The request body must be a JSON object."]}  # type: ignore[arg-type]
    assert list(judge.check_structure({})) == ["receipt"]
    assert list(judge.check_structure({"receipt": "x"})) == ["receipt"]
    assert judge.check_structure({"receipt": {"receiptLines": [{"receiptLineQuantity": float("nan")}]}})


# ---------------------------------------------------------------------------------------------------------
# Closing the day


class ClosedDay:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.facts = facts_for(device)
        self.held: list[Held] = []
        internals = []
        previous_hash = None
        sales = [
            sale(),
            sale(invoiceNo="INV-2", receiptCurrency="ZWG"),
            credit_sale(),
            exclusive_sale("10.00") | {"invoiceNo": "INV-3", "receiptPayments": []},
        ]
        sales[3]["receiptPayments"] = [
            {"moneyTypeCode": "Card", "paymentAmount": "6.50"},
            {"moneyTypeCode": "MobileWallet", "paymentAmount": "5.00"},
        ]
        for n, the_sale in enumerate(sales, start=1):
            receipt, internal, findings = device.issue(
                the_sale, n, 40 + n, "2026-03-02T09:%02d:00" % n, previous_hash
            )
            assert findings == []
            previous_hash = receipt["receiptDeviceSignature"]["hash"]
            self.held.append(Held(receipt, 1000 + n, DAY, []))
            internals.append(internal)
        self.internals = internals
        self.request = device.close(internals)


def test_a_clean_day_closes(device: Device) -> None:
    closed = ClosedDay(device)
    assert judge.judge_close(closed.request, closed.facts, closed.held) is None
    recomputed = judge.recompute_counters(closed.held)
    assert recomputed == closed.request["fiscalDayCounters"]
    assert [c["fiscalCounterType"] for c in recomputed][:2] == ["SaleByTax", "SaleByTax"]
    assert all(c["fiscalCounterValue"] != 0 for c in recomputed)
    # receipts of other days are not the day's
    other = Held(closed.held[0].receipt, 9, DAY - 1, ["Red"])
    assert judge.judge_close(closed.request, closed.facts, [*closed.held, other]) is None


def test_an_empty_day_closes(device: Device) -> None:
    request = device.close([])
    assert request["fiscalDayCounters"] == [] and request["receiptCounter"] == 0
    assert judge.judge_close(request, facts_for(device), []) is None


def test_bad_certificate_signature(device: Device) -> None:
    closed = ClosedDay(device)
    facts = closed.facts
    for request in (
        device.close(closed.internals, date="2026-03-03"),  # the closing date instead of the opening date
        device.close(closed.internals, day_no=DAY + 1),
        dict(closed.request, fiscalDayCounters=closed.request["fiscalDayCounters"][::-1]),
    ):
        assert judge.judge_close(request, facts, closed.held) == "BadCertificateSignature"
    wrong_signature = copy.deepcopy(closed.request)
    wrong_signature["fiscalDayDeviceSignature"]["signature"] = closed.held[0].receipt[
        "receiptDeviceSignature"
    ]["signature"]
    assert judge.judge_close(wrong_signature, facts, closed.held) == "BadCertificateSignature"
    # checked first: a bad signature over a day with missing receipts is still BadCertificateSignature
    assert judge.judge_close(wrong_signature, facts, closed.held[1:]) == "BadCertificateSignature"


def test_missing_receipts(device: Device) -> None:
    closed = ClosedDay(device)
    assert judge.judge_close(closed.request, closed.facts, closed.held[:-1]) == "MissingReceipts"
    grey = [*closed.held[:-1], dataclasses.replace(closed.held[-1], colours=["Grey", "Red"])]
    assert judge.judge_close(closed.request, closed.facts, grey) == "MissingReceipts"


def test_receipts_with_validation_errors(device: Device) -> None:
    closed = ClosedDay(device)
    red_one = [*closed.held[:-1], dataclasses.replace(closed.held[-1], colours=["Yellow", "Red"])]
    assert judge.judge_close(closed.request, closed.facts, red_one) == "ReceiptsWithValidationErrors"
    yellow = [*closed.held[:-1], dataclasses.replace(closed.held[-1], colours=["Yellow"])]
    assert judge.judge_close(closed.request, closed.facts, yellow) is None


def sign_counters(device: Device, counters: list[dict], receipt_counter: int) -> dict:
    """A CloseDay request over `counters` as given (signed correctly, so only the counters are wrong)."""
    internal = fdms.day_counters(fdms.parse_counters(json.loads(json.dumps(counters, default=str))))
    text = fdms.day_string(DEVICE, DAY, OPENED[:10], internal)
    return {
        "fiscalDayNo": DAY,
        "fiscalDayCounters": as_json(fdms.counters_wire(internal)),
        "fiscalDayDeviceSignature": {"hash": fdms.hash_b64(text), "signature": device.sign(text)},
        "receiptCounter": receipt_counter,
    }


def test_counters_mismatch(device: Device) -> None:
    closed = ClosedDay(device)
    counters = copy.deepcopy(closed.request["fiscalDayCounters"])
    counters[0]["fiscalCounterValue"] += Decimal("0.01")
    request = sign_counters(device, counters, 4)
    assert judge.judge_close(request, closed.facts, closed.held) == "CountersMismatch"
    request = sign_counters(device, counters[1:], 4)
    assert judge.judge_close(request, closed.facts, closed.held) == "CountersMismatch"
    # a zero counter must not be sent, even when signed
    zero = dict(counters[0], fiscalCounterValue=Decimal("0.00"), fiscalCounterCurrency="ZAR")
    request = copy.deepcopy(closed.request)
    request["fiscalDayCounters"].append(zero)
    text = judge.day_text(closed.facts, request["fiscalDayCounters"])
    request["fiscalDayDeviceSignature"] = {"hash": fdms.hash_b64(text), "signature": device.sign(text)}
    assert judge.judge_close(request, closed.facts, closed.held) == "CountersMismatch"
    # counters in another order than reference 7.1's, signed in that order: the signature holds, the order not
    request = copy.deepcopy(closed.request)
    request["fiscalDayCounters"].reverse()
    text = judge.day_text(closed.facts, request["fiscalDayCounters"])
    request["fiscalDayDeviceSignature"] = {"hash": fdms.hash_b64(text), "signature": device.sign(text)}
    assert judge.judge_close(request, closed.facts, closed.held) == "CountersMismatch"


def test_day_text_reproduces_the_reference_vector() -> None:
    # reference 7.4, munashe vector: enum order of money types, zeros dropped, exempt shows as nothing
    counters = [
        {"fiscalCounterType": "SaleByTax", "fiscalCounterCurrency": "USD", "fiscalCounterTaxID": 1,
         "fiscalCounterValue": 6},
        {"fiscalCounterType": "BalanceByMoneyType", "fiscalCounterCurrency": "USD",
         "fiscalCounterMoneyType": "Cash", "fiscalCounterValue": 2},
        {"fiscalCounterType": "BalanceByMoneyType", "fiscalCounterCurrency": "USD",
         "fiscalCounterMoneyType": "Card", "fiscalCounterValue": 3},
        {"fiscalCounterType": "BalanceByMoneyType", "fiscalCounterCurrency": "USD",
         "fiscalCounterMoneyType": "Other", "fiscalCounterValue": 1},
    ]  # fmt: skip
    facts = Facts(37367, False, [], ("USD",), 20, "2026-09-07T08:00:00", 24, "", 0, b"")
    text = judge.day_text(facts, counters)
    assert fdms.hash_b64(text) == "AFH+wt7em555KkxN0MeE76rA0+uV3z+gHeOh3leXpKY="


# ---------------------------------------------------------------------------------------------------------
# Cross-check: random baskets the box accepts are clean here, and the counters agree


TAX_CHOICES = ((1, None), (2, "0"), (3, "15"), (517, "15.5"))
QUANTITIES = ("1", "1", "2", "3", "0.5", "1.25", "0.333", "7", "12")


def random_price(rng: random.Random) -> str:
    cents = rng.randint(1, 20000)
    if rng.random() < 0.2:  # a price with more decimals, rounded by price x quantity
        return "%d.%04d" % (cents // 100, rng.randint(0, 9999))
    return "%d.%02d" % (cents // 100, cents % 100)


def random_lines(rng: random.Random, sign: int, taxes: tuple = TAX_CHOICES) -> list[dict]:
    lines = []
    for _ in range(rng.randint(1, 5)):
        tax_id, percent = rng.choice(taxes)
        hs = "%08d" % rng.randint(1000000, 99999999)
        if percent not in (None, "0") and rng.random() < 0.3:
            hs = hs[:4]
        price = random_price(rng)
        lines.append(
            line("Item", ("-" if sign < 0 else "") + price, rng.choice(QUANTITIES), tax_id, percent, hs)
        )
    if rng.random() < 0.25:  # a discount on the first line's tax, smaller than that line
        first = lines[0]
        qty = Decimal(first["receiptLineQuantity"])
        off = (abs(Decimal(first["receiptLinePrice"])) * qty / 2).quantize(Decimal("0.01"))
        if off > 0:
            discount = dict(first, receiptLineType="Discount", receiptLineQuantity="1")
            discount["receiptLinePrice"] = str(off if sign < 0 else -off)
            lines.append(discount)
    return lines


def box_context(
    facts: Facts, previous: dict | None, last_global: int, seen: set, original: Callable
) -> fdms.Context:
    taxes = fdms.parse_taxes(
        [dict(t, taxPercent=str(t["taxPercent"])) if "taxPercent" in t else t for t in TAXES]
    )
    return fdms.Context(
        taxes=taxes,
        vat_payer=True,
        currencies=facts.currencies,
        day_opened=facts.day_opened,
        day_max_hours=facts.day_max_hours,
        previous_in_day=previous,
        first_in_day=previous is None,
        last_global_no=last_global,
        now=facts.now,
        future_skew_seconds=facts.allowed_skew_seconds,
        invoice_seen=lambda number: number in seen,
        original=original,
    )


def test_cross_check_random_days(device: Device) -> None:
    rng = random.Random(20260302)
    store: dict[int, Held] = {}  # global number -> held
    internals: dict[int, dict] = {}  # global number -> the box's receipt
    notes_total: dict[int, int] = {}  # original's global number -> cents of its notes
    seen: set[str] = set()

    def find(note: dict) -> tuple[Held, int] | None:
        held = store.get(note.get("receiptGlobalNo", 0))
        return None if held is None else (held, notes_total.get(note["receiptGlobalNo"], 0))

    def box_original(note: dict) -> dict | None:
        number = note.get("receiptGlobalNo", 0)
        if number not in internals:
            return None
        return {"receipt": internals[number], "notes_total": notes_total.get(number, 0)}

    global_no = 100
    for day_no, opened in ((7, "2026-03-02T08:00:00"), (8, "2026-03-03T08:00:00")):
        moment = dt.datetime.fromisoformat(opened)
        last_before_day = global_no
        day_internals: list[dict] = []
        while len(day_internals) < 160:
            moment += dt.timedelta(seconds=rng.randint(1, 90))
            date = moment.strftime("%Y-%m-%dT%H:%M:%S")
            facts = facts_for(device, day_no=day_no, day_opened=opened, now=date)
            counter, number = len(day_internals) + 1, global_no + 1
            invoices = [g for g, r in internals.items() if r["receiptType"] == "FiscalInvoice"]
            kind = rng.choices(("FiscalInvoice", "CreditNote", "DebitNote"), (75, 18, 7))[0]
            the_sale: dict[str, Any] = {
                "receiptType": "FiscalInvoice",
                "receiptCurrency": rng.choice(("USD", "ZWG")),
                "invoiceNo": "R-%d" % number,
                "receiptLinesTaxInclusive": rng.random() < 0.6,
                "receiptLines": random_lines(rng, 1),
                "receiptPayments": [],
            }
            origin = None
            if kind != "FiscalInvoice" and invoices:
                origin = rng.choice(invoices)
                first = internals[origin]
                taxes = tuple({(t["taxID"], _percent_text(t["taxPercent"])) for t in first["receiptTaxes"]})
                the_sale.update(
                    receiptType=kind,
                    receiptCurrency=first["receiptCurrency"],
                    receiptNotes="Adjustment",
                    creditDebitNote={
                        "deviceID": DEVICE,
                        "receiptGlobalNo": origin,
                        "fiscalDayNo": store[origin].day_no,
                    },
                    receiptLines=random_lines(rng, -1 if kind == "CreditNote" else 1, taxes),
                )
            previous = day_internals[-1] if day_internals else None
            state = None
            if previous is not None:
                state = {k: previous[k] for k in ("receiptCounter", "receiptGlobalNo", "receiptDate")}
            ctx = box_context(facts, state, number - 1, seen, box_original)
            raw = dict(the_sale, receiptCounter=counter, receiptGlobalNo=number, receiptDate=date)
            receipt, _ = fdms.prepare(raw, ctx)
            total = receipt["receiptTotal"]
            if total == 0:
                continue
            if origin is not None and kind == "CreditNote":
                if total + internals[origin]["receiptTotal"] + notes_total.get(origin, 0) < 0:
                    continue  # more than is left to credit
            split = rng.randint(0, abs(total)) * (1 if total > 0 else -1)
            kinds = rng.sample(fdms.MONEY_TYPES, 2)
            receipt["receiptPayments"] = [{"moneyTypeCode": kinds[0], "paymentAmount": total}]
            if split and rng.random() < 0.5:
                receipt["receiptPayments"] = [
                    {"moneyTypeCode": kinds[0], "paymentAmount": split},
                    {"moneyTypeCode": kinds[1], "paymentAmount": total - split},
                ]
            assert fdms.validate(receipt, ctx) == [], the_sale  # the box accepts it
            previous_hash = previous["receiptDeviceSignature"]["hash"] if previous else None
            text = fdms.receipt_string(DEVICE, receipt, previous_hash)
            receipt["receiptDeviceSignature"] = {"hash": fdms.hash_b64(text), "signature": device.sign(text)}
            sent = as_json(fdms.receipt_wire(receipt), Decimal if counter % 2 else float)

            assert judge.check_structure({"receipt": sent}) == {}
            errors = judge.judge_receipt(
                sent,
                facts,
                store.get(number - 1),
                counter == 1,
                last_before_day,
                lambda invoice_no: invoice_no in seen,
                find,
            )
            assert errors == [], (errors, the_sale, receipt)
            global_no = number
            store[number] = Held(sent, 5000 + number, day_no, [])
            internals[number] = receipt
            day_internals.append(receipt)
            seen.add(receipt["invoiceNo"])
            if origin is not None:
                notes_total[origin] = notes_total.get(origin, 0) + total
        facts = facts_for(device, day_no=day_no, day_opened=opened, now=moment.strftime("%Y-%m-%dT%H:%M:%S"))
        request = device.close(day_internals, day_no=day_no, date=opened[:10])
        day_held = [h for h in store.values() if h.day_no == day_no]
        assert judge.recompute_counters(day_held) == request["fiscalDayCounters"]
        assert judge.judge_close(request, facts, list(store.values())) is None
    kinds_issued = {r["receiptType"] for r in internals.values()}
    assert kinds_issued == {"FiscalInvoice", "CreditNote", "DebitNote"}


def _percent_text(hundredths: int | None) -> str | None:
    return None if hundredths is None else str(Decimal(hundredths) / 100)
