"""Random baskets always satisfy FDMS's arithmetic identities (RCPT019/024/026/027/037/038/039).

The expected values are recomputed here with Fraction, independently of the core's integer arithmetic.
"""

import json
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.core import fdms, money, wire

TAXES = [(1, None), (2, "0"), (3, "15"), (517, "15.5")]  # (taxID, percent): exempt, 0 %, 15 %, 15.5 %
CURRENCIES = ["USD", "ZWG", "ZAR"]


def half_up(value: Fraction) -> int:
    """Nearest integer, halves away from zero; the reference the core must match."""
    magnitude = abs(value)
    whole = int(magnitude)
    if magnitude - whole >= Fraction(1, 2):
        whole += 1
    return -whole if value < 0 else whole


def dec(units: int, places: int) -> str:
    return money.format_fixed(units, places)


@st.composite
def baskets(draw, receipt_type="FiscalInvoice"):
    inclusive = draw(st.booleans())
    currency = draw(st.sampled_from(CURRENCIES))
    sign = -1 if receipt_type == "CreditNote" else 1
    lines = []
    for tax_id, pct in draw(st.lists(st.sampled_from(TAXES), min_size=1, max_size=4, unique=True)):
        group_sales = 0
        for _ in range(draw(st.integers(1, 4))):
            qty = draw(st.integers(1, 50_000)) * 1000  # up to 50, three decimals
            price = draw(st.integers(1, 1_000_000))  # cents, up to 10,000.00
            lines.append((tax_id, pct, "Sale", sign * price * 10_000, qty))
            group_sales += money.line_total(price * 10_000, qty)
        if draw(st.booleans()) and group_sales > 1:
            discount = draw(st.integers(1, group_sales - 1))  # never more than the group's sales
            lines.append((tax_id, pct, "Discount", -sign * discount * 10_000, 1_000_000))
    raw_lines = []
    for i, (tax_id, pct, kind, price, qty) in enumerate(lines):
        line = {
            "receiptLineType": kind,
            "receiptLineName": "item %d" % i,
            "receiptLinePrice": dec(price, 6),
            "receiptLineQuantity": dec(qty, 6),
            "taxID": tax_id,
        }
        if pct is not None:
            line["taxPercent"] = pct
        raw_lines.append(line)
    raw = {
        "receiptType": receipt_type,
        "receiptCurrency": currency,
        "invoiceNo": "P-1",
        "receiptDate": "2026-09-08T10:00:00",
        "receiptLinesTaxInclusive": inclusive,
        "receiptLines": raw_lines,
        "receiptPayments": [],
    }
    if receipt_type != "FiscalInvoice":
        raw["creditDebitNote"] = {"receiptID": 1}
        raw["receiptNotes"] = "Note"
    split = draw(st.integers(0, 100))
    return raw, split


def pay(receipt, split):
    """Two payments adding up to the total: split % by card, the rest cash."""
    total = receipt["receiptTotal"]
    card = total * split // 100
    receipt["receiptPayments"] = [
        {"moneyTypeCode": "Card", "paymentAmount": card},
        {"moneyTypeCode": "Cash", "paymentAmount": total - card},
    ]


def expected(raw):
    """Line totals, tax groups and total by the reference's formulas, in Fraction arithmetic."""
    groups: dict[tuple[int, str], list[Fraction]] = {}
    line_totals = []
    for line in raw["receiptLines"]:
        amount = Fraction(line["receiptLinePrice"]) * Fraction(line["receiptLineQuantity"])
        cents = half_up(amount * 100)
        line_totals.append(cents)
        pct = Fraction(line.get("taxPercent", "0"))
        groups.setdefault((line["taxID"], ""), [Fraction(0), pct])[0] += cents
    taxes = {}
    for key, (total, pct) in groups.items():
        if raw["receiptLinesTaxInclusive"]:
            tax = half_up(total * pct / (100 + pct))
            taxes[key] = (tax, int(total))
        else:
            tax = half_up(total * pct / 100)
            taxes[key] = (tax, int(total) + tax)
    if raw["receiptLinesTaxInclusive"]:
        total = sum(line_totals)
    else:
        total = sum(line_totals) + sum(t for t, _ in taxes.values())
    return line_totals, taxes, total


def check_identities(raw, split):
    receipt = fdms.complete(fdms.parse_receipt(raw))
    pay(receipt, split)
    line_totals, taxes, total = expected(raw)
    assert [line["receiptLineTotal"] for line in receipt["receiptLines"]] == line_totals  # RCPT024
    got = {
        (t["taxID"], t["taxCode"] or ""): (t["taxAmount"], t["salesAmountWithTax"])
        for t in receipt["receiptTaxes"]
    }
    assert got == taxes  # RCPT026, RCPT027
    assert receipt["receiptTotal"] == total  # RCPT019 / RCPT037
    assert total == sum(t["salesAmountWithTax"] for t in receipt["receiptTaxes"])  # RCPT038
    assert total == sum(p["paymentAmount"] for p in receipt["receiptPayments"])  # RCPT039
    assert fdms.validate(receipt) == []
    return receipt


@settings(max_examples=10_000, deadline=None)
@given(baskets())
def test_invoices_satisfy_every_identity(case):
    receipt = check_identities(*case)
    assert receipt["receiptTotal"] >= 0
    assert all(t["salesAmountWithTax"] >= 0 and t["taxAmount"] >= 0 for t in receipt["receiptTaxes"])


@settings(max_examples=2_000, deadline=None)
@given(baskets("CreditNote"))
def test_credit_notes_keep_their_signs(case):
    receipt = check_identities(*case)
    assert receipt["receiptTotal"] <= 0
    assert all(t["salesAmountWithTax"] <= 0 and t["taxAmount"] <= 0 for t in receipt["receiptTaxes"])
    assert all(p["paymentAmount"] <= 0 for p in receipt["receiptPayments"])


@settings(max_examples=1_000, deadline=None)
@given(baskets())
def test_credit_note_mirrors_its_invoice_exactly(case):
    raw, _ = case
    credit = json.loads(json.dumps(raw))
    credit.update(receiptType="CreditNote", creditDebitNote={"receiptID": 1}, receiptNotes="Refund")
    for line in credit["receiptLines"]:
        line["receiptLinePrice"] = dec(-money.price(line["receiptLinePrice"]), 6)
    invoice = fdms.complete(fdms.parse_receipt(raw))
    note = fdms.complete(fdms.parse_receipt(credit))
    assert note["receiptTotal"] == -invoice["receiptTotal"]
    assert [(-t["taxAmount"], -t["salesAmountWithTax"]) for t in note["receiptTaxes"]] == [
        (t["taxAmount"], t["salesAmountWithTax"]) for t in invoice["receiptTaxes"]
    ]


@settings(max_examples=1_000, deadline=None)
@given(baskets(), st.integers(1, 10**9))
def test_wire_json_round_trips_to_the_same_signature_string(case, global_no):
    raw, split = case
    receipt = fdms.complete(fdms.parse_receipt(raw))
    pay(receipt, split)
    receipt["receiptGlobalNo"] = global_no
    text = wire.dumps({"receipt": fdms.receipt_wire(receipt)})
    again = fdms.complete(fdms.parse_receipt(json.loads(text, parse_float=str)))
    assert fdms.receipt_string(42, again, "prev") == fdms.receipt_string(42, receipt, "prev")
    assert fdms.validate(again) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(baskets(), min_size=1, max_size=8))
def test_counters_equal_a_recomputation(cases):
    counters = fdms.new_counters()
    receipts = []
    for raw, split in cases:
        receipt = fdms.complete(fdms.parse_receipt(raw))
        pay(receipt, split)
        fdms.update_counters(counters, receipt)
        receipts.append(receipt)
    ordered = fdms.day_counters(counters)
    for currency in CURRENCIES:
        mine = [r for r in receipts if r["receiptCurrency"] == currency]
        sales = sum(
            c["fiscalCounterValue"]
            for c in ordered
            if c["fiscalCounterType"] == "SaleByTax" and c["fiscalCounterCurrency"] == currency
        )
        balance = sum(
            c["fiscalCounterValue"]
            for c in ordered
            if c["fiscalCounterType"] == "BalanceByMoneyType" and c["fiscalCounterCurrency"] == currency
        )
        assert sales == sum(r["receiptTotal"] for r in mine)
        assert balance == sum(r["receiptTotal"] for r in mine)
    assert all(c["fiscalCounterValue"] != 0 for c in ordered)
    keys = [
        (
            fdms.COUNTER_TYPES.index(c["fiscalCounterType"]),
            c["fiscalCounterCurrency"],
            c.get("fiscalCounterTaxID", fdms.MONEY_TYPES.index(c.get("fiscalCounterMoneyType", "Cash"))),
        )
        for c in ordered
    ]
    assert keys == sorted(keys)
