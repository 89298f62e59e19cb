"""Every Red rule is caught by the box before signing: over thousands of random invalid sales, the FDMS
simulator never receives a Red receipt from the box.

Valid sales from the simulated shop (invoices, credit and debit notes on earlier invoices, USD and ZWG,
exempt, 0 %, 15 % and 15.5 % lines, buyers, discounts, weighed goods, tax codes, tax-exclusive invoices) are
broken at random by one to three mutations from the table below, each aimed at one rule of the reference
(section 3.4) or at the JSON's shape.
Every sale goes to `box.issue`. A refusal must name a code and say why, and leave the journal as it was; what
the box accepts is signed, delivered over mutual TLS, and judged by the simulator, which must hold every one
of them and find none Red. A VAT payer's box and a non-VAT payer's box (for RCPT021) each take their share.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from fdms_site import Site

from firmware.core import fdms
from firmware.core.errors import FiscalError
from sim.fdms.scenario import Scenario
from sim.shop import Shop

SEED = 20261122
VAT_MUTANTS = 3000  # mutated sales for the VAT payer's box
NON_VAT_MUTANTS = 400  # and for the non-VAT payer's box
CLEAN_SHARE = 0.07  # of the rounds issue the shop's sale as it is: originals for the notes to refer to

# The Red rules the box judges alone (RCPT011/012/020/030 concern numbering, dates and signatures, which the
# box sets itself; RCPT033 needs a year-old invoice). RCPT038 (total = the tax table's sum) and RCPT040
# (total's sign) are never the FIRST code of a refusal: a receipt that breaks RCPT038 also breaks RCPT019,
# RCPT027 or RCPT037, and one that breaks RCPT040 also breaks RCPT018, RCPT028 or RCPT039, all lower codes.
# They are looked for among all the Red findings of the refused sales instead.
RED_RULES = {
    "RCPT010", "RCPT013", "RCPT015", "RCPT016", "RCPT017", "RCPT018", "RCPT019", "RCPT021", "RCPT022",
    "RCPT023", "RCPT024", "RCPT025", "RCPT026", "RCPT027", "RCPT028", "RCPT029", "RCPT032", "RCPT034",
    "RCPT035", "RCPT036", "RCPT037", "RCPT038", "RCPT039", "RCPT040", "RCPT042", "RCPT043", "RCPT047",
    "RCPT048",
}  # fmt: skip
NEVER_FIRST = {"RCPT038", "RCPT040"}

CENT = Decimal("0.01")
TAXES = {1: None, 2: "0", 3: "15", 517: "15.5"}  # the default scenario's tax IDs and percents
VAT_TAXES = (3, 517)
TAX_CODES = {1: "A", 2: "B", 3: "C", 517: "D"}
JUNK: tuple[Any, ...] = (
    None, True, 0, -1, 1.5, "", " ", "abc", "1e3", "0x10", "\u0661\u0662", "12.3456789", [], {}, [1],
    {"a": 1}, "9" * 30, 10**30, -(10**20), "x" * 600,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Exact money, for building valid sales and breaking them by a cent


def dec(value: Any) -> Decimal:
    return Decimal(str(value))


def text(value: Decimal) -> str:
    return f"{value.quantize(CENT, rounding=ROUND_HALF_UP):.2f}"


def cents_round(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def line_total(line: dict[str, Any]) -> Decimal:
    if "receiptLineTotal" in line:
        return dec(line["receiptLineTotal"])
    return cents_round(dec(line["receiptLinePrice"]) * dec(line["receiptLineQuantity"]))


def tax_table(sale: dict[str, Any]) -> list[dict[str, Any]]:
    """receiptTaxes as FDMS computes them (reference 3.3): per tax group, on the group's sum."""
    groups: dict[tuple[int, str], Decimal] = {}
    for line in sale.get("receiptLines") or []:
        key = (line["taxID"], line.get("taxCode") or "")
        groups[key] = groups.get(key, Decimal(0)) + line_total(line)
    inclusive = sale.get("receiptLinesTaxInclusive", True)
    taxes = []
    for (tax_id, code), total in sorted(groups.items()):
        percent = TAXES.get(tax_id)
        tax = Decimal(0)
        if percent:
            p = dec(percent)
            tax = cents_round(total * p / (100 + p)) if inclusive else cents_round(total * p / 100)
        item: dict[str, Any] = {"taxID": tax_id, "taxAmount": text(tax)}
        item["salesAmountWithTax"] = text(total if inclusive else total + tax)
        if percent is not None:
            item["taxPercent"] = percent
        if code:
            item["taxCode"] = code
        taxes.append(item)
    return taxes


def total_of(sale: dict[str, Any]) -> Decimal:
    lines = sum((line_total(line) for line in sale.get("receiptLines") or []), Decimal(0))
    if sale.get("receiptLinesTaxInclusive", True):
        return lines
    return lines + sum((dec(t["taxAmount"]) for t in tax_table(sale)), Decimal(0))


def repay(sale: dict[str, Any]) -> None:
    """Payments equal to the total again, in parts a decimal(21,2) holds."""
    total = total_of(sale)
    kind = (sale.get("receiptPayments") or [{}])[0].get("moneyTypeCode", "Cash")
    part = Decimal("9" * 18)
    payments = []
    while abs(total) > part:
        step = part if total > 0 else -part
        payments.append({"moneyTypeCode": kind, "paymentAmount": text(step)})
        total -= step
    payments.append({"moneyTypeCode": kind, "paymentAmount": text(total)})
    sale["receiptPayments"] = payments


# ---------------------------------------------------------------------------------------------------------
# The till: one box, its shop, and the record of what happened


class Till:
    """One box on its FDMS, its shop, and what happened to each sale."""

    def __init__(self, site: Site, device_id: int, vat_payer: bool, rng: random.Random) -> None:
        self.site = site
        self.box, self.delivery = site.box(device_id)
        self.box.open_day()
        self.device_id = device_id
        self.vat_payer = vat_payer
        self.rng = rng
        self.shop = Shop(seed=rng.randrange(10**6), device_id=device_id)
        self.invoice_numbers: list[str] = []  # of the receipts the box issued
        self.notes: list[int] = []  # global numbers of the notes the box issued, all on day 1
        self.accepted: dict[int, list[str]] = {}  # global number -> the mutations it carries
        self.refusals: list[tuple[list[str], FiscalError]] = []
        self.findings: set[str] = set()  # every Red code the core finds in the refused sales
        settings = self.box.journal.settings()
        self.context = fdms.Context(
            taxes=fdms.parse_taxes(settings["taxes"]), vat_payer=vat_payer, currencies=("USD", "ZWG")
        )

    def base_sale(self) -> dict[str, Any]:
        """The shop's next sale, varied: VAT taxes off for a non-VAT payer, discounts, tax-exclusive, VAT
        numbers for buyers. Valid as it is."""
        sale = self.shop.next_sale()
        rng = self.rng
        if not self.vat_payer:
            for line in sale["receiptLines"]:
                if line["taxID"] in VAT_TAXES:
                    line["taxID"], line["taxPercent"] = rng.choice([(1, None), (2, "0")])
                    if line["taxPercent"] is None:
                        del line["taxPercent"]
                if rng.random() < 0.3:
                    line.pop("receiptLineHSCode", None)  # optional for a non-VAT payer
        if sale["receiptType"] == "FiscalInvoice":
            for line in sale["receiptLines"][1:]:  # weighed goods (line 1 is what notes credit)
                if rng.random() < 0.2:
                    line["receiptLineQuantity"] = rng.choice(["0.375", "1.5", "0.333333", "2.25"])
                    line["receiptLinePrice"] = rng.choice([line["receiptLinePrice"], "1.234567"])
            if rng.random() < 0.2:  # an extra line and a discount on it: the total still covers line 1
                extra = dict(sale["receiptLines"][-1], receiptLineQuantity="2")
                discount = dict(extra, receiptLineType="Discount", receiptLineQuantity="1")
                discount["receiptLinePrice"] = "-" + extra["receiptLinePrice"]
                discount["receiptLineName"] = "Discount"
                sale["receiptLines"] += [extra, discount]
            if rng.random() < 0.3:
                sale["receiptLinesTaxInclusive"] = False
            if "buyerData" in sale and rng.random() < 0.5:
                sale["buyerData"]["vatNumber"] = "220099887"
            if rng.random() < 0.15:  # tax codes, on every line or none (notes copy them from line 1)
                for line in sale["receiptLines"]:
                    line["taxCode"] = TAX_CODES[line["taxID"]]
            repay(sale)
        return sale

    def issue_clean(self) -> None:
        sale = self.base_sale()
        try:
            result = self.box.issue(sale)
        except FiscalError as error:
            raise AssertionError(f"the box refused a valid sale: {error}\n{sale}") from None
        self.shop.issued(sale, result)
        self.invoice_numbers.append(sale["invoiceNo"])
        if sale["receiptType"] != "FiscalInvoice":
            self.notes.append(result["global_no"])
        self.accepted[result["global_no"]] = []

    def issue_mutant(self) -> bool:
        """One mutated sale; True when the box refused it."""
        sale = copy.deepcopy(self.base_sale())
        chosen = choose(sale, self)
        for mutate in chosen:
            mutate(sale, self)
        names = [m.__name__ for m in chosen]
        before = self.box.journal.head()["last_global_no"]
        try:
            result = self.box.issue(copy.deepcopy(sale))
        except FiscalError as error:
            after = self.box.journal.head()["last_global_no"]
            assert after == before, f"refusal {error} by {names} moved the journal"
            assert isinstance(error.code, str) and error.code, (names, error)
            assert isinstance(error.message, str) and error.message.strip(), (names, error)
            self.refusals.append((names, error))
            self.findings |= red_findings(sale, self.context)
            return True
        except Exception as error:
            raise AssertionError(f"box.issue crashed on {names}: {error!r}\n{sale}") from error
        self.accepted[result["global_no"]] = names
        if isinstance(sale.get("invoiceNo"), str):
            self.invoice_numbers.append(sale["invoiceNo"])
        return False

    def original_taxes(self, sale: dict[str, Any]) -> set[int]:
        """The tax IDs on the invoice a note refers to, as the box issued it."""
        row = self.box.journal.receipt(sale["creditDebitNote"]["receiptGlobalNo"])
        if row is None:  # the note was pointed elsewhere already
            return set()
        return {t["taxID"] for t in json.loads(row["body"])["receipt"]["receiptTaxes"]}


def red_findings(sale: dict[str, Any], context: fdms.Context) -> set[str]:
    """The codes of every Red finding the core reports for a sale (state-free rules only)."""
    try:
        _, findings = fdms.prepare(copy.deepcopy(sale), context)
    except FiscalError:
        return set()
    return {f["code"] for f in fdms.blocking(findings)}


# ---------------------------------------------------------------------------------------------------------
# The mutations: each breaks one rule (or the JSON's shape), named in its docstring

Mutation = Callable[[dict[str, Any], Till], None]
MUTATIONS: list[tuple[Mutation, Callable[[dict[str, Any], Till], bool]]] = []


def is_note(sale: dict[str, Any], till: Till) -> bool:
    return sale["receiptType"] != "FiscalInvoice"


def mutation(applies: Callable[[dict[str, Any], Till], bool] = lambda sale, till: True):
    def register(function: Mutation) -> Mutation:
        MUTATIONS.append((function, applies))
        return function

    return register


def choose(sale: dict[str, Any], till: Till) -> list[Mutation]:
    """One to three mutations that apply to this sale, in table order."""
    usable = [m for m, applies in MUTATIONS if applies(sale, till)]
    count = till.rng.choices([1, 2, 3], weights=[55, 30, 15])[0]
    picked = set(till.rng.sample(usable, count))
    return [m for m in usable if m in picked]


def some_line(sale: dict[str, Any], till: Till) -> dict[str, Any]:
    return till.rng.choice(sale["receiptLines"])


@mutation()
def unknown_currency(sale: dict[str, Any], till: Till) -> None:
    """RCPT010: a currency code FDMS does not accept."""
    sale["receiptCurrency"] = till.rng.choice(["ZWL", "EUR", "ZAR", "XXX", "zar", "US", "U S"])


@mutation()
def repeated_invoice_no(sale: dict[str, Any], till: Till) -> None:
    """RCPT013: the invoice number of a receipt the box already issued."""
    sale["invoiceNo"] = till.rng.choice(till.invoice_numbers)


@mutation(lambda sale, till: not till.vat_payer)
def vat_tax_for_a_non_vat_payer(sale: dict[str, Any], till: Till) -> None:
    """RCPT021: a VAT tax on a line of a taxpayer that is not a VAT payer."""
    line = some_line(sale, till)
    line["taxID"] = till.rng.choice(VAT_TAXES)
    line["taxPercent"] = TAXES[line["taxID"]]
    repay(sale)


@mutation()
def price_with_the_wrong_sign(sale: dict[str, Any], till: Till) -> None:
    """RCPT022: a sale line's price negated or zero, or the line turned into a discount (payments kept
    right)."""
    line = some_line(sale, till)
    how = till.rng.choice(["negate", "zero", "discount"])
    if how == "negate":
        price = line["receiptLinePrice"]
        line["receiptLinePrice"] = price[1:] if price.startswith("-") else "-" + price
    elif how == "zero":
        line["receiptLinePrice"] = "0.00"
    else:
        line["receiptLineType"] = "Discount" if line.get("receiptLineType") != "Discount" else "Sale"
    repay(sale)


@mutation()
def quantity_not_positive(sale: dict[str, Any], till: Till) -> None:
    """RCPT023: a line quantity of zero or below."""
    some_line(sale, till)["receiptLineQuantity"] = till.rng.choice(["0", "-1", "-0.5", 0, -2])
    repay(sale)


@mutation()
def line_total_not_price_times_quantity(sale: dict[str, Any], till: Till) -> None:
    """RCPT024: a line total a cent off price x quantity."""
    line = some_line(sale, till)
    line["receiptLineTotal"] = text(line_total(line) + till.rng.choice([CENT, -CENT]))
    repay(sale)


@mutation()
def unknown_tax(sale: dict[str, Any], till: Till) -> None:
    """RCPT025: a tax ID FDMS does not list, or a percent that is not the tax ID's."""
    line = some_line(sale, till)
    tax_id, percent = till.rng.choice(
        [(999, "15"), (4, None), (3, "14.5"), (3, None), (517, "15"), (1, "0"), (2, None), (1, "15")]
    )
    line["taxID"] = tax_id
    line.pop("taxPercent", None)
    if percent is not None:
        line["taxPercent"] = percent


@mutation()
def total_off_by_a_cent(sale: dict[str, Any], till: Till) -> None:
    """RCPT019 (inclusive) / RCPT037 (exclusive), with RCPT038: a receipt total a cent off its lines."""
    sale["receiptTotal"] = text(total_of(sale) + till.rng.choice([CENT, -CENT]))


@mutation(lambda sale, till: bool(sale.get("receiptPayments")))
def payment_off_by_a_cent(sale: dict[str, Any], till: Till) -> None:
    """RCPT039: payments that add up to a cent more or less than the total."""
    payment = till.rng.choice(sale["receiptPayments"])
    payment["paymentAmount"] = text(dec(payment["paymentAmount"]) + till.rng.choice([CENT, -CENT]))


@mutation(lambda sale, till: bool(sale.get("receiptPayments")))
def payment_with_the_wrong_sign(sale: dict[str, Any], till: Till) -> None:
    """RCPT028: a payment of the wrong sign, balanced by another so that the sum is still right."""
    one = Decimal(1) if sale["receiptType"] == "CreditNote" else Decimal(-1)
    first = sale["receiptPayments"][0]
    first["paymentAmount"] = text(dec(first["paymentAmount"]) - one)
    sale["receiptPayments"].append({"moneyTypeCode": "Card", "paymentAmount": text(one)})


@mutation(lambda sale, till: bool(sale.get("receiptLines")))
def tax_amount_wrong(sale: dict[str, Any], till: Till) -> None:
    """RCPT026: the sale brings its tax table, with one tax amount a cent off."""
    taxes = tax_table(sale)
    tax = till.rng.choice(taxes)
    tax["taxAmount"] = text(dec(tax["taxAmount"]) + till.rng.choice([CENT, -CENT]))
    sale["receiptTaxes"] = taxes


@mutation(lambda sale, till: bool(sale.get("receiptLines")))
def sales_amount_with_tax_wrong(sale: dict[str, Any], till: Till) -> None:
    """RCPT027: the sale brings its tax table with a group's sales amount a cent off, a group missing,
    or a group listed twice."""
    taxes = tax_table(sale)
    how = till.rng.choice(["cent", "missing", "twice"]) if len(taxes) > 1 else "cent"
    tax = till.rng.choice(taxes)
    if how == "cent":
        tax["salesAmountWithTax"] = text(dec(tax["salesAmountWithTax"]) + till.rng.choice([CENT, -CENT]))
    elif how == "missing":
        taxes.remove(tax)
    else:
        taxes.append(dict(tax))
    sale["receiptTaxes"] = taxes


@mutation(lambda sale, till: sale["receiptType"] == "FiscalInvoice")
def note_data_on_an_invoice(sale: dict[str, Any], till: Till) -> None:
    """RCPT029: an invoice that says it corrects another invoice."""
    sale["creditDebitNote"] = {"deviceID": till.device_id, "receiptGlobalNo": 1, "fiscalDayNo": 1}


@mutation(is_note)
def original_does_not_exist(sale: dict[str, Any], till: Till) -> None:
    """RCPT032: a note naming an invoice FDMS does not hold: no such number, day, device or receipt ID, or a
    receipt that is not an invoice."""
    note = sale["creditDebitNote"]
    how = till.rng.choice(["number", "day", "device", "receipt ID", "not an invoice"])
    if how == "number":
        note["receiptGlobalNo"] += 100_000
    elif how == "day":
        note["fiscalDayNo"] += 1
    elif how == "device":
        note["deviceID"] = till.device_id + 1
    elif how == "receipt ID":  # an FDMS receipt ID besides the place: FDMS looks the original up by the ID
        note["receiptID"] = till.rng.randint(1, 10**6)
    elif till.notes:
        note["receiptGlobalNo"] = till.rng.choice(till.notes)


@mutation(is_note)
def note_without_its_text(sale: dict[str, Any], till: Till) -> None:
    """RCPT034: a credit or debit note without receiptNotes (missing, empty or blank)."""
    how = till.rng.choice(["missing", "empty", "blank"])
    if how == "missing":
        del sale["receiptNotes"]
    else:
        sale["receiptNotes"] = "" if how == "empty" else "   "


@mutation(lambda sale, till: sale["receiptType"] == "CreditNote")
def credit_beyond_the_invoice(sale: dict[str, Any], till: Till) -> None:
    """RCPT035: a credit note for far more than the invoice it credits."""
    sale["receiptLines"][0]["receiptLineQuantity"] = "1000"
    repay(sale)


@mutation(lambda sale, till: is_note(sale, till) and till.vat_payer)
def note_with_another_tax(sale: dict[str, Any], till: Till) -> None:
    """RCPT036: a note line with a tax the original invoice does not carry."""
    others = sorted(set(TAXES) - till.original_taxes(sale))
    if not others:  # the invoice carries every tax there is
        return
    line = sale["receiptLines"][0]
    line["taxID"] = till.rng.choice(others)
    line.pop("taxPercent", None)
    if TAXES[line["taxID"]] is not None:
        line["taxPercent"] = TAXES[line["taxID"]]


@mutation(is_note)
def note_in_another_currency(sale: dict[str, Any], till: Till) -> None:
    """RCPT042: a note in another currency than its invoice."""
    sale["receiptCurrency"] = "ZWG" if sale["receiptCurrency"] == "USD" else "USD"


@mutation()
def buyer_incomplete(sale: dict[str, Any], till: Till) -> None:
    """RCPT043: buyer data without a name or TIN, or with a TIN or VAT number of the wrong length."""
    buyer = {"buyerRegisterName": "Moyo Stores (Pvt) Ltd", "buyerTIN": "2000654321"}
    how = till.rng.choice(["no name", "no TIN", "empty name", "blank name", "short TIN", "long VAT"])
    if how == "no name":
        del buyer["buyerRegisterName"]
    elif how == "no TIN":
        del buyer["buyerTIN"]
    elif how == "empty name":
        buyer["buyerRegisterName"] = ""
    elif how == "blank name":
        buyer["buyerRegisterName"] = "   "
    elif how == "short TIN":
        buyer["buyerTIN"] = "200065432"
    else:
        buyer["vatNumber"] = "2200998877"[: till.rng.choice([8, 10])]
    sale["buyerData"] = buyer


@mutation(lambda sale, till: till.vat_payer)
def hs_code_missing(sale: dict[str, Any], till: Till) -> None:
    """RCPT047: a VAT payer's line without an HS code."""
    line = some_line(sale, till)
    if till.rng.random() < 0.5:
        line.pop("receiptLineHSCode", None)
    else:
        line["receiptLineHSCode"] = ""


@mutation()
def hs_code_of_the_wrong_length(sale: dict[str, Any], till: Till) -> None:
    """RCPT048: an HS code not of 4 or 8 digits (8 on a VAT payer's exempt or zero-rated line)."""
    line = some_line(sale, till)
    short = line.get("taxPercent") in (None, "0") and till.vat_payer
    choices = ["1", "123", "12345", "1234567", "1905900A", "19O5"] + (["1905"] if short else [])
    line["receiptLineHSCode"] = till.rng.choice(choices)


@mutation(lambda sale, till: bool(sale.get("receiptLines")))
def huge_amounts(sale: dict[str, Any], till: Till) -> None:
    """BOX_BAD_NUMBER or nothing: quantities and prices near and past what the box's 64-bit cents and
    FDMS's decimals hold, paid in full."""
    line = some_line(sale, till)
    digits = till.rng.randint(12, 19)
    if till.rng.random() < 0.5:
        line["receiptLineQuantity"] = "9" * digits
    else:
        sign = "-" if line["receiptLinePrice"].startswith("-") else ""
        line["receiptLinePrice"] = sign + "9" * digits + ".99"
        line["receiptLineQuantity"] = till.rng.choice(["1", "2", "3"])
    repay(sale)


@mutation()
def spelled_differently(sale: dict[str, Any], till: Till) -> None:
    """No rule: the same sale in another spelling FDMS accepts (case, number forms, optional fields, the
    tax table and total given); the box may accept it, and FDMS must then find it clean."""
    rng = till.rng
    how = rng.choice(["case", "numbers", "print form", "taxes", "total", "line numbers", "cashier"])
    if how == "case":
        sale["receiptCurrency"] = sale["receiptCurrency"].lower()
        sale["receiptType"] = sale["receiptType"].upper()
    elif how == "numbers":
        for line in sale.get("receiptLines") or []:
            if str(line["receiptLineQuantity"]).isdigit():
                line["receiptLineQuantity"] = int(line["receiptLineQuantity"])
            if "." in line["receiptLinePrice"]:
                line["receiptLinePrice"] += "0000"
            line["taxID"] = str(line["taxID"])
    elif how == "print form":
        sale["receiptPrintForm"] = "InvoiceA4"
    elif how == "taxes" and sale.get("receiptLines"):
        sale["receiptTaxes"] = tax_table(sale)
    elif how == "total":
        sale["receiptTotal"] = text(total_of(sale))
    elif how == "line numbers":
        for i, line in enumerate(sale.get("receiptLines") or [], start=1):
            line["receiptLineNo"] = i
    else:
        sale["userInfo"] = {"username": "anna", "userFullName": "Anna Moyo"}


# Parts of the sale taken away: after the mutations that need them.


@mutation(is_note)
def note_without_its_invoice(sale: dict[str, Any], till: Till) -> None:
    """RCPT015: a credit or debit note that does not say which invoice it corrects."""
    if till.rng.random() < 0.4:
        del sale["creditDebitNote"]
    else:
        del sale["creditDebitNote"][till.rng.choice(["deviceID", "receiptGlobalNo", "fiscalDayNo"])]


@mutation()
def no_lines(sale: dict[str, Any], till: Till) -> None:
    """RCPT016: no receipt lines."""
    if till.rng.random() < 0.5:
        del sale["receiptLines"]
    else:
        sale["receiptLines"] = []


@mutation()
def no_taxes(sale: dict[str, Any], till: Till) -> None:
    """RCPT017: an empty tax table."""
    sale["receiptTaxes"] = []


@mutation()
def no_payments(sale: dict[str, Any], till: Till) -> None:
    """RCPT018: no payments."""
    if till.rng.random() < 0.5:
        del sale["receiptPayments"]
    else:
        sale["receiptPayments"] = []


# Type confusion and nonsense: the box refuses it with a code, or it is harmless and FDMS must agree.


def _objects(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Every JSON object inside a sale, with its path."""
    found = []
    if isinstance(value, dict):
        found.append((path, value))
        for key, item in value.items():
            found += _objects(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _objects(item, (*path, i))
    return found


@mutation()
def junk_value(sale: dict[str, Any], till: Till) -> None:
    """Any rule, or RCPT02: a field of the wrong JSON type, empty, blank, a float, or absurdly large."""
    _, obj = till.rng.choice([o for o in _objects(sale) if o[1]])
    obj[till.rng.choice(sorted(obj))] = till.rng.choice(JUNK)


@mutation()
def missing_field(sale: dict[str, Any], till: Till) -> None:
    """Any rule, or RCPT02: a field left out anywhere in the sale."""
    _, obj = till.rng.choice([o for o in _objects(sale) if o[1]])
    del obj[till.rng.choice(sorted(obj))]


@mutation()
def extra_field(sale: dict[str, Any], till: Till) -> None:
    """RCPT02, BOX_SALE_FIELD or nothing: a field FDMS does not know, an optional one of the wrong shape or
    length, or one the box sets itself."""
    rng = till.rng
    how = rng.choice(["unknown", "user", "buyer", "box"])
    if how == "unknown":
        _, obj = rng.choice(_objects(sale))
        obj[rng.choice(["foo", "receiptLineVAT", "taxName", "id"])] = rng.choice(JUNK)
    elif how == "user":
        key = rng.choice(["username", "userNameSurname", "userInfo"])
        sale[key] = rng.choice(
            ["cashier 1", "x" * 101, "y" * 251, 7, {"username": "anna"}, {"userFullName": 5}, []]
        )
    elif how == "buyer":
        buyer = sale.setdefault(
            "buyerData", {"buyerRegisterName": "Moyo Stores (Pvt) Ltd", "buyerTIN": "2000654321"}
        )
        key = rng.choice(["buyerTradeName", "buyerContacts", "buyerAddress", "VATNumber", "vatNumber"])
        buyer[key] = rng.choice(
            ["Moyo", "220012345", 12, {"phoneNo": 7}, {"city": "Harare"}, {"email": "z" * 300}, "n" * 251]
        )
    else:
        key = rng.choice(["receiptCounter", "receiptGlobalNo", "receiptDate", "receiptDeviceSignature"])
        sale[key] = rng.choice([1, "2026-11-22T08:00:00", {"hash": "x", "signature": "y"}])


# ---------------------------------------------------------------------------------------------------------


def run(till: Till, mutants: int) -> int:
    """Issue `mutants` mutated sales among clean ones; the number refused."""
    refused = 0
    done = 0
    till.issue_clean()  # an invoice number to repeat, an invoice for notes
    while done < mutants:
        till.site.clock.advance(till.rng.randint(1, 3))
        if till.rng.random() < CLEAN_SHARE:
            till.issue_clean()
            continue
        refused += till.issue_mutant()
        done += 1
    return refused


def check_delivered_and_clean(till: Till) -> None:
    """Everything the box signed reached FDMS and none of it is Red (nor Grey: the chain is whole)."""
    till.site.settle(till.delivery)
    counts = till.box.journal.outbox_counts()
    if counts != {"delivered": len(till.accepted)}:
        stuck = till.box.next_pending()
        names = till.accepted.get(stuck["global_no"]) if stuck else None
        raise AssertionError(f"not delivered: {counts}, {till.delivery.problem}, mutations {names}")
    held = till.site.sim.held_receipts(till.device_id)
    assert sorted(h["receiptGlobalNo"] for h in held) == sorted(till.accepted)
    bad = [
        (till.accepted[h["receiptGlobalNo"]], h["validationErrors"], h["receipt"])
        for h in held
        if "Red" in h["colours"] or "Grey" in h["colours"]
    ]
    assert not bad, f"{len(bad)} Red or Grey receipts reached FDMS; the first: {bad[0]}"


def test_no_red_receipt_reaches_fdms_from_thousands_of_broken_sales(site: Site, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    scenario = Scenario.default()
    scenario.taxpayer.vat_number = None
    (tmp_path / "non-vat").mkdir()
    non_vat_site = Site(tmp_path / "non-vat", scenario)
    try:
        vat = Till(site, 10001, vat_payer=True, rng=rng)
        non_vat = Till(non_vat_site, 10002, vat_payer=False, rng=rng)
        refused = run(vat, VAT_MUTANTS) + run(non_vat, NON_VAT_MUTANTS)
        check_delivered_and_clean(vat)
        check_delivered_and_clean(non_vat)
    finally:
        non_vat_site.close()

    mutants = VAT_MUTANTS + NON_VAT_MUTANTS
    assert refused >= 0.8 * mutants, f"only {refused} of {mutants} broken sales were refused"
    refusals = vat.refusals + non_vat.refusals
    codes = {error.code for _, error in refusals}
    missing = RED_RULES - NEVER_FIRST - codes
    assert not missing, f"no refusal with {sorted(missing)}; codes seen: {sorted(codes)}"
    findings = vat.findings | non_vat.findings
    assert NEVER_FIRST <= findings, f"never found: {sorted(NEVER_FIRST - findings)}"
    used = {name for names, _ in refusals for name in names}
    assert used == {m.__name__ for m, _ in MUTATIONS}, "a mutation never led to a refusal"
