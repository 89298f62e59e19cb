"""How the FDMS simulator judges receipts and day closes: a second, independent reading of FDMS's rules.

The box judges its own sales with `firmware.core.fdms` (integer cents, half-up rounding). This module
re-reads the same rules from the project's FDMS reference notes (sections 3.3, 3.4, 6, 7) with `Decimal`
arithmetic and judges whatever the box sends, so a bug in the box's rules shows up as a validation error
here. Only the builders that define bytes are shared with the box (`receipt_string`, `day_string`,
`hash_b64`, `b64`): those must agree byte for byte, and the reference's vectors test them.

Decisions where the reference is silent (keep the simulator's tests and README in step with these):

- Rounding. FDMS's rounding is uncertain (reference 3.3: Paynow documents banker's rounding, the box rounds
  half away from zero). Wherever FDMS rounds to cents (taxAmount, salesAmountWithTax, price x quantity) a
  value is accepted when it equals the half-up OR the half-even result. Inclusive tax is judged by the
  reference's formula, taxAmount = S - round(S / (1 + p/100), 2), on the tax group's sum S.
- Grey. A receipt that is not the day's first and whose predecessor (receiptGlobalNo - 1) is not held
  cannot have its counter, global number, date order (RCPT011, RCPT012, RCPT030) or its signature
  (RCPT020: the string ends with the previous hash) checked. They are reported as ONE finding, code
  `GREY_CODE` (RCPT012: the global numbers have a gap) with colour Grey; the server re-judges the receipt
  when the gap is filled. A receipt numbered 1 or lower that is not the day's first is Red RCPT012, never
  Grey: no predecessor can ever arrive.
- Counters on close are compared in order (type, currency, tax ID or money type, as reference 7.1 sorts
  them): the JSON must be sent in the signed, sorted order, and a zero counter must not be sent at all.
- A rule that compares against a list that is empty (no lines, taxes or payments) is skipped: the list's
  own code (RCPT016/017/018) says what is wrong. Each code is reported once per receipt.
- Tax groups are keyed by (taxID, taxPercent, taxCode). A group of lines with no tax line, a tax line no
  line belongs to, or a group listed twice is RCPT027. The reference's "taxCode on all lines or none" has no
  RCPT code and is not judged.
- Taxes are valid on whole days: from validFrom's date to validTill's date, both included.
- HS codes: RCPT047 (missing) is for VAT payers only; RCPT048 (4 or 8 digits) judges every HS code sent, and
  asks 8 digits on a VAT payer's exempt or zero-rated line (reference 3.3). A "VAT tax" (RCPT021) is one
  with a percent above zero whose name does not say "non-VAT" (GetConfig lists e.g. "Non-VAT Withholding
  Tax" at 5%).
- Structure (400): strings over their length, numbers with more decimals than their column (amounts 2,
  prices and quantities 6, percents 2), dates not exactly `YYYY-MM-DDTHH:mm:ss`, signatures not base64.
  Missing or short buyer name/TIN/VAT number are RCPT043, not structure.
- recompute_counters returns values and percents as `Decimal` (two decimals): write them as JSON numbers.
"""

from __future__ import annotations

import binascii
import datetime as dt
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, localcontext
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from firmware.core import fdms  # canonical string builders only, never the box's rules
from firmware.core.errors import FiscalError

RED = "Red"
YELLOW = "Yellow"
GREY = "Grey"

# Reference 3.4: code -> (colour, FDMS's text).
RULES: dict[str, tuple[str, str]] = {
    "RCPT010": (RED, "Wrong currency code is used"),
    "RCPT011": (RED, "Receipt counter is not sequential"),
    "RCPT012": (RED, "Receipt global number is not sequential"),
    "RCPT013": (RED, "Invoice number is not unique"),
    "RCPT014": (YELLOW, "Receipt date is earlier than fiscal day opening date"),
    "RCPT015": (RED, "Credited/debited invoice data is not provided"),
    "RCPT016": (RED, "No receipt lines provided"),
    "RCPT017": (RED, "Taxes information is not provided"),
    "RCPT018": (RED, "Payment information is not provided"),
    "RCPT019": (RED, "Invoice total amount is not equal to sum of all invoice lines"),
    "RCPT020": (RED, "Invoice signature is not valid"),
    "RCPT021": (RED, "VAT tax is used in invoice while taxpayer is not VAT taxpayer"),
    "RCPT022": (RED, "Sales line price must be >0 (<0 for credit note); discount line price <0 for invoice"),
    "RCPT023": (RED, "Invoice line quantity must be positive"),
    "RCPT024": (RED, "Invoice line total is not equal to unit price * quantity"),
    "RCPT025": (RED, "Invalid tax is used"),
    "RCPT026": (RED, "Incorrectly calculated tax amount"),
    "RCPT027": (RED, "Incorrectly calculated total sales amount (including tax)"),
    "RCPT028": (RED, "Payment amount must be >=0 (<=0 for credit note)"),
    "RCPT029": (RED, "Credited/debited invoice information provided for regular invoice"),
    "RCPT030": (RED, "Invoice date is earlier than previously submitted receipt date"),
    "RCPT031": (YELLOW, "Invoice is submitted with the future date"),
    "RCPT032": (RED, "Credit/debit note refers to non-existing invoice"),
    "RCPT033": (RED, "Credited/debited invoice is issued more than 12 months ago"),
    "RCPT034": (RED, "Note for credit/debit note is not provided"),
    "RCPT035": (RED, "Total credit note amount exceeds original invoice amount"),
    "RCPT036": (RED, "Credit/debit note uses other taxes than are used in the original invoice"),
    "RCPT037": (RED, "Invoice total amount is not equal to sum of all invoice lines and taxes applied"),
    "RCPT038": (RED, "Invoice total amount is not equal to sum of sales amount including tax in tax table"),
    "RCPT039": (RED, "Invoice total amount is not equal to sum of all payment amounts"),
    "RCPT040": (RED, "Invoice total amount must be >=0 (<=0 for credit note)"),
    "RCPT041": (YELLOW, "Invoice is issued after fiscal day end"),
    "RCPT042": (RED, "Credit/debit note uses other currency than is used in the original invoice"),
    "RCPT043": (RED, "Mandatory buyer data fields are not provided"),
    "RCPT047": (RED, "HS code must be sent if taxpayer is a VAT payer"),
    "RCPT048": (RED, "HS code must be 4 or 8 digits (8 for a VAT payer's zero-rated or exempt line)"),
}

GREY_CODE = "RCPT012"
GREY_TEXT = (
    "The previous receipt (receiptGlobalNo - 1) has not been received: receipt counter, global number, "
    "date order and signature chain are checked when it arrives"
)

# Enums in the reference's order (3.1); the order is what counters sort by.
RECEIPT_TYPES = ("FiscalInvoice", "CreditNote", "DebitNote")
LINE_TYPES = ("Sale", "Discount")
MONEY_TYPES = ("Cash", "Card", "MobileWallet", "Coupon", "Credit", "BankTransfer", "Other")
PRINT_FORMS = ("Receipt48", "InvoiceA4")
COUNTER_TYPES = (
    "SaleByTax",
    "SaleTaxByTax",
    "CreditNoteByTax",
    "CreditNoteTaxByTax",
    "DebitNoteByTax",
    "DebitNoteTaxByTax",
    "BalanceByMoneyType",
)
BALANCE = "BalanceByMoneyType"

# Closing error codes, in the order FDMS checks them (reference 2.4).
BAD_SIGNATURE = "BadCertificateSignature"
MISSING_RECEIPTS = "MissingReceipts"
WITH_ERRORS = "ReceiptsWithValidationErrors"
COUNTERS_MISMATCH = "CountersMismatch"

CENT = Decimal("0.01")
ROUNDINGS = (ROUND_HALF_UP, ROUND_HALF_EVEN)  # FDMS's is uncertain: either result is accepted
PRECISION = 80  # enough for decimal(25,6) x decimal(25,6) without rounding
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
_DATE_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", re.ASCII)
_INT64 = 2**63


@dataclass
class Facts:
    device_id: int
    vat_payer: bool
    taxes: list[dict]  # applicableTaxes as GetConfig returns them
    currencies: tuple[str, ...]
    day_no: int
    day_opened: str  # "YYYY-MM-DDTHH:MM:SS", as the device sent in OpenDay
    day_max_hours: int
    now: str  # the simulator's local time now, same format
    allowed_skew_seconds: int
    certificate_pem: bytes  # the device certificate signatures are verified with


@dataclass
class Held:
    """A receipt the simulator already holds."""

    receipt: dict  # the submitted `receipt` JSON object as received
    receipt_id: int
    day_no: int
    colours: list[str]  # colours of its validation errors (may be empty)


# ---------------------------------------------------------------------------------------------------------
# Small readers. judge_* are called on structurally valid receipts (see check_structure), so these raise on
# anything else rather than guessing.


def dec(value: Any) -> Decimal:
    """A JSON number (int, float or Decimal, as the server's parser gave it) or a decimal string, exactly."""
    if isinstance(value, bool) or value is None:
        raise ValueError("not a number")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))  # the shortest text that reads back as this float: what the JSON said
    if isinstance(value, str):
        return Decimal(value)
    raise ValueError("not a number")


def _opt_dec(value: Any) -> Decimal | None:
    return None if value is None else dec(value)


def _cents(value: Decimal) -> int:
    """Exact integer cents; refuses a value with more than two decimals."""
    scaled = value.scaleb(2)
    if scaled != scaled.to_integral_value():
        raise ValueError("more than two decimals")
    return int(scaled)


def _canonical(value: Any, names: tuple[str, ...]) -> str | None:
    """The enum name `value` spells, compared case-insensitively; None if it is none of them."""
    if isinstance(value, str):
        for name in names:
            if name.lower() == value.lower():
                return name
    return None


def _when(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, DATE_FORMAT)


def _day_of(text: Any) -> dt.date | None:
    """The date part of a GetConfig validFrom/validTill ("YYYY-MM-DD" with or without a time)."""
    if not isinstance(text, str) or len(text) < 10:
        return None
    try:
        return dt.date.fromisoformat(text[:10])
    except ValueError:
        return None


def _year_before(moment: dt.datetime) -> dt.datetime:
    """The same local time twelve months earlier; 29 February becomes 28 February."""
    try:
        return moment.replace(year=moment.year - 1)
    except ValueError:
        return moment.replace(year=moment.year - 1, day=28)


def _rounded(value: Decimal) -> set[Decimal]:
    """`value` rounded to cents by each rounding FDMS might use."""
    return {value.quantize(CENT, rounding=mode) for mode in ROUNDINGS}


def tax_amounts(group_sum: Decimal, percent: Decimal | None, inclusive: bool) -> set[Decimal]:
    """The taxAmounts accepted for a tax group whose lines add up to `group_sum` (reference 3.3).

    Inclusive: S - round(S / (1 + p/100), 2); exclusive: round(S * p/100, 2); exempt and 0 %: 0.
    """
    if percent is None or percent == 0:
        return {Decimal(0)}
    with localcontext(prec=PRECISION):
        if inclusive:
            net = group_sum * 100 / (100 + percent)
            return {group_sum - amount for amount in _rounded(net)}
        return _rounded(group_sum * percent / 100)


def _is_vat(tax: dict) -> bool:
    name = re.sub(r"[^a-z]", "", str(tax.get("taxName") or "").lower())
    return tax["percent"] is not None and tax["percent"] > 0 and "nonvat" not in name


def _tax_table(facts: Facts) -> list[dict]:
    table = []
    for tax in facts.taxes:
        table.append(
            {
                "taxID": tax.get("taxID"),
                "percent": _opt_dec(tax.get("taxPercent")),
                "taxName": tax.get("taxName"),
                "from": _day_of(tax.get("validFrom", tax.get("taxValidFrom"))),
                "till": _day_of(tax.get("validTill", tax.get("taxValidTill"))),
            }
        )
    return table


def _find_tax(table: list[dict], tax_id: Any, percent: Decimal | None, on: dt.date) -> dict | None:
    """The applicable tax with this ID and percent (both exempt, or equal) in force on `on`."""
    for tax in table:
        if tax["taxID"] != tax_id or isinstance(tax_id, bool):
            continue
        if (tax["percent"] is None) != (percent is None) or (
            percent is not None and tax["percent"] != percent
        ):
            continue
        if tax["from"] is not None and on < tax["from"]:
            continue
        if tax["till"] is not None and on > tax["till"]:
            continue
        return tax
    return None


# ---------------------------------------------------------------------------------------------------------
# Signatures


def verify_signature(certificate_pem: bytes, text: str, signature_b64: Any) -> bool:
    """True when `signature_b64` is the certificate key's signature over the UTF-8 `text`.

    ECDSA P-256 signatures must be ASN.1 DER (reference 4: FDMS refuses raw r||s); RSA is PKCS#1 v1.5.
    Both with SHA-256 over the string itself.
    """
    try:
        signature = binascii.a2b_base64(signature_b64.encode("ascii"), strict_mode=True)
        key = x509.load_pem_x509_certificate(certificate_pem).public_key()
        data = text.encode()
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, AttributeError, binascii.Error):
        return False
    return True


def _signed_taxes(taxes: Iterable[dict]) -> list[dict]:
    out = []
    for tax in taxes:
        percent = _opt_dec(tax.get("taxPercent"))
        out.append(
            {
                "taxCode": tax.get("taxCode") or None,
                "taxPercent": None if percent is None else _cents(percent),  # hundredths of a percent
                "taxID": tax["taxID"],
                "taxAmount": _cents(dec(tax["taxAmount"])),
                "salesAmountWithTax": _cents(dec(tax["salesAmountWithTax"])),
            }
        )
    return out


def receipt_text(receipt: dict, device_id: int, previous_hash: str | None) -> str:
    """The string the device signs for this receipt JSON (reference 5.1), built by the shared builder."""
    kind = _canonical(receipt.get("receiptType"), RECEIPT_TYPES) or str(receipt.get("receiptType"))
    signed = {
        "receiptType": kind,
        "receiptCurrency": str(receipt["receiptCurrency"]),
        "receiptGlobalNo": receipt["receiptGlobalNo"],
        "receiptDate": receipt["receiptDate"],
        "receiptTotal": _cents(dec(receipt["receiptTotal"])),
        "receiptTaxes": _signed_taxes(receipt.get("receiptTaxes") or []),
    }
    return str(fdms.receipt_string(device_id, signed, previous_hash))


def verify_receipt_signature(receipt: dict, facts: Facts, previous_hash: str | None) -> bool:
    """RCPT020 passes: the hash is SHA-256 of the rebuilt string and the signature verifies over it."""
    try:
        text = receipt_text(receipt, facts.device_id, previous_hash)
        signature = receipt["receiptDeviceSignature"]
        if signature["hash"] != fdms.hash_b64(text):
            return False
        return verify_signature(facts.certificate_pem, text, signature["signature"])
    except (KeyError, TypeError, ValueError, ArithmeticError, FiscalError):
        return False


# ---------------------------------------------------------------------------------------------------------
# Receipts


class _Findings:
    def __init__(self) -> None:
        self.colours: dict[str, str] = {}
        self.texts: dict[str, str] = {}

    def add(self, code: str) -> None:
        if code not in self.colours:
            self.colours[code], self.texts[code] = RULES[code]

    def grey(self) -> None:
        self.colours[GREY_CODE], self.texts[GREY_CODE] = GREY, GREY_TEXT

    def result(self) -> list[dict]:
        return [
            {
                "validationErrorCode": code,
                "validationErrorColor": self.colours[code],
                "validationErrorDescription": self.texts[code],
            }
            for code in sorted(self.colours)
        ]


def _list(receipt: dict, key: str) -> list[dict]:
    value = receipt.get(key)
    return value if isinstance(value, list) else []


def _sign_wrong(value: Decimal, credit: bool) -> bool:
    """Totals and payments: >= 0 on invoices and debit notes, <= 0 on credit notes."""
    return value > 0 if credit else value < 0


def judge_receipt(
    receipt: dict,
    facts: Facts,
    previous: Held | None,
    first_in_day: bool,
    last_global_no_before_day: int | None,
    invoice_seen: Callable[[str], bool],
    original: Callable[[dict], tuple[Held, int] | None],
) -> list[dict]:
    """validationErrors for a structurally valid receipt: [{validationErrorCode, validationErrorColor,
    validationErrorDescription}], sorted by code.

    `previous` is the held receipt with receiptGlobalNo - 1 (None when not held). first_in_day: the server
    knows this is the first receipt of the day (receiptCounter == 1). last_global_no_before_day: the highest
    global number held before this day (None when unknown). `original(creditDebitNote)` returns (the
    original invoice, sum in cents of the totals of the notes already held against it: credit notes
    negative, debit notes positive), or None when the original does not exist.
    """
    out = _Findings()
    with localcontext(prec=PRECISION):
        kind = _canonical(receipt.get("receiptType"), RECEIPT_TYPES) or "FiscalInvoice"
        date = _when(receipt["receiptDate"])
        currency = str(receipt.get("receiptCurrency") or "").upper()
        if currency not in {c.upper() for c in facts.currencies}:
            out.add("RCPT010")
        if invoice_seen(receipt.get("invoiceNo") or ""):
            out.add("RCPT013")
        _judge_chain(receipt, facts, previous, first_in_day, last_global_no_before_day, date, out)
        _judge_dates(facts, date, out)
        _judge_note(receipt, kind, currency, date, original, out)
        table = _tax_table(facts)
        _judge_lines(receipt, kind, facts, table, date, out)
        _judge_taxes(receipt, table, date, out)
        _judge_totals(receipt, kind, out)
        _judge_buyer(receipt, out)
    return out.result()


def _judge_chain(
    receipt: dict,
    facts: Facts,
    previous: Held | None,
    first_in_day: bool,
    last_before_day: int | None,
    date: dt.datetime,
    out: _Findings,
) -> None:
    """RCPT011, RCPT012, RCPT030 and RCPT020: everything that needs the previous receipt."""
    counter = receipt["receiptCounter"]
    global_no = receipt["receiptGlobalNo"]
    same_day = previous is not None and previous.day_no == facts.day_no
    if previous is None and not first_in_day:
        if global_no <= 1:
            out.add("RCPT012")  # only a day's first receipt may restart at 1; nothing can fill this gap
        else:
            out.grey()
            return
    previous_hash = None
    if previous is not None and same_day:
        before = previous.receipt
        if counter != before["receiptCounter"] + 1:
            out.add("RCPT011")
        if global_no != before["receiptGlobalNo"] + 1:
            out.add("RCPT012")
        signature = before.get("receiptDeviceSignature")
        previous_hash = signature.get("hash") if isinstance(signature, dict) else None
    elif first_in_day:
        if counter != 1:
            out.add("RCPT011")
        if global_no != 1:
            if last_before_day is not None and global_no != last_before_day + 1:
                out.add("RCPT012")
            elif last_before_day is None and previous is not None:
                if global_no != previous.receipt["receiptGlobalNo"] + 1:
                    out.add("RCPT012")
    elif previous is not None:
        # Not the day's first, yet the receipt before it by global number belongs to another day: the day's
        # own earlier receipts cannot precede it, so the global numbering is broken.
        out.add("RCPT012")
    if previous is not None and date <= _when(previous.receipt["receiptDate"]):
        out.add("RCPT030")
    if not verify_receipt_signature(receipt, facts, previous_hash):
        out.add("RCPT020")


def _judge_dates(facts: Facts, date: dt.datetime, out: _Findings) -> None:
    opened = _when(facts.day_opened)
    if date < opened:
        out.add("RCPT014")
    if date > opened + dt.timedelta(hours=facts.day_max_hours):
        out.add("RCPT041")
    if date > _when(facts.now) + dt.timedelta(seconds=facts.allowed_skew_seconds):
        out.add("RCPT031")


def _note_names_original(note: Any) -> bool:
    """The original is named by its FDMS receiptID, or by deviceID + receiptGlobalNo + fiscalDayNo."""
    if not isinstance(note, dict):
        return False
    if note.get("receiptID") is not None:
        return True
    return all(note.get(key) is not None for key in ("deviceID", "receiptGlobalNo", "fiscalDayNo"))


def _tax_pairs(receipt: dict) -> set[tuple[Any, Decimal | None]]:
    pairs = set()
    for item in _list(receipt, "receiptTaxes") + _list(receipt, "receiptLines"):
        pairs.add((item.get("taxID"), _opt_dec(item.get("taxPercent"))))
    return pairs


def _judge_note(
    receipt: dict,
    kind: str,
    currency: str,
    date: dt.datetime,
    original: Callable[[dict], tuple[Held, int] | None],
    out: _Findings,
) -> None:
    note = receipt.get("creditDebitNote")
    if kind == "FiscalInvoice":
        if note is not None:
            out.add("RCPT029")
        return
    notes = receipt.get("receiptNotes")
    if not isinstance(notes, str) or not notes.strip():
        out.add("RCPT034")
    if not isinstance(note, dict) or not _note_names_original(note):
        out.add("RCPT015")
        return
    found = original(note)
    if found is None or _canonical(found[0].receipt.get("receiptType"), RECEIPT_TYPES) != "FiscalInvoice":
        out.add("RCPT032")
        return
    held, notes_cents = found
    first = held.receipt
    if _when(first["receiptDate"]) < _year_before(date):
        out.add("RCPT033")
    if str(first.get("receiptCurrency") or "").upper() != currency:
        out.add("RCPT042")
    if kind == "CreditNote":
        left = _cents(dec(first["receiptTotal"])) + notes_cents
        if left + _cents(dec(receipt["receiptTotal"])) < 0:
            out.add("RCPT035")
    used = {(tax.get("taxID"), _opt_dec(tax.get("taxPercent"))) for tax in _list(first, "receiptTaxes")}
    if not _tax_pairs(receipt) <= used:
        out.add("RCPT036")


def _hs_code_ok(code: str, eight_only: bool) -> bool:
    digits = code.isascii() and code.isdigit()
    return digits and (len(code) == 8 or (len(code) == 4 and not eight_only))


def _judge_lines(
    receipt: dict, kind: str, facts: Facts, table: list[dict], date: dt.datetime, out: _Findings
) -> None:
    credit = kind == "CreditNote"
    for line in _list(receipt, "receiptLines"):
        sale = _canonical(line.get("receiptLineType"), LINE_TYPES) != "Discount"
        price = _opt_dec(line.get("receiptLinePrice"))
        quantity = dec(line["receiptLineQuantity"])
        total = dec(line["receiptLineTotal"])
        # Sales are positive on invoices and debit notes, negative on credit notes; discounts the other way.
        basis = price if price is not None else total
        positive = sale != credit
        if basis == 0 or (basis < 0 if positive else basis > 0):
            out.add("RCPT022")
        if quantity <= 0:
            out.add("RCPT023")
        if price is not None and total not in _rounded(price * quantity):
            out.add("RCPT024")
        percent = _opt_dec(line.get("taxPercent"))
        tax = _find_tax(table, line.get("taxID"), percent, date.date())
        if tax is None:
            out.add("RCPT025")
        elif not facts.vat_payer and _is_vat(tax):
            out.add("RCPT021")
        code = line.get("receiptLineHSCode")
        if not code:
            if facts.vat_payer:
                out.add("RCPT047")
        elif not _hs_code_ok(str(code), facts.vat_payer and (percent is None or percent == 0)):
            out.add("RCPT048")


def _group_key(item: dict) -> tuple[Any, Decimal | None, str]:
    return (item.get("taxID"), _opt_dec(item.get("taxPercent")), item.get("taxCode") or "")


def _judge_taxes(receipt: dict, table: list[dict], date: dt.datetime, out: _Findings) -> None:
    """RCPT025 on the tax table, RCPT026/027 per tax group (taxID, taxPercent, taxCode) on the group's sum."""
    lines = _list(receipt, "receiptLines")
    taxes = _list(receipt, "receiptTaxes")
    for tax in taxes:
        if _find_tax(table, tax.get("taxID"), _opt_dec(tax.get("taxPercent")), date.date()) is None:
            out.add("RCPT025")
    if not lines or not taxes:
        return
    inclusive = receipt.get("receiptLinesTaxInclusive") is True
    sums: dict[tuple[Any, Decimal | None, str], Decimal] = {}
    for line in lines:
        key = _group_key(line)
        sums[key] = sums.get(key, Decimal(0)) + dec(line["receiptLineTotal"])
    given: dict[tuple[Any, Decimal | None, str], dict] = {}
    for tax in taxes:
        key = _group_key(tax)
        if key in given:
            out.add("RCPT027")  # one group listed twice
        given[key] = tax
    for key in sums.keys() | given.keys():
        if key not in given or key not in sums:
            # A group of lines with no tax line, or a tax line no line belongs to: its sales are wrong.
            out.add("RCPT027")
            if key in given and dec(given[key]["taxAmount"]) != 0:
                out.add("RCPT026")
            continue
        group_sum = sums[key]
        amount = dec(given[key]["taxAmount"])
        with_tax = dec(given[key]["salesAmountWithTax"])
        accepted = tax_amounts(group_sum, key[1], inclusive)
        if amount not in accepted:
            out.add("RCPT026")
        if inclusive:
            right = with_tax == group_sum
        elif amount in accepted:
            right = with_tax == group_sum + amount
        else:
            right = with_tax - group_sum in accepted
        if not right:
            out.add("RCPT027")


def _sum(items: list[dict], key: str) -> Decimal:
    return sum((dec(item[key]) for item in items), Decimal(0))


def _judge_totals(receipt: dict, kind: str, out: _Findings) -> None:
    credit = kind == "CreditNote"
    lines = _list(receipt, "receiptLines")
    taxes = _list(receipt, "receiptTaxes")
    payments = _list(receipt, "receiptPayments")
    if not lines:
        out.add("RCPT016")
    if not taxes:
        out.add("RCPT017")
    if not payments:
        out.add("RCPT018")
    total = dec(receipt["receiptTotal"])
    if lines:
        if receipt.get("receiptLinesTaxInclusive") is True:
            if total != _sum(lines, "receiptLineTotal"):
                out.add("RCPT019")
        elif taxes and total != _sum(lines, "receiptLineTotal") + _sum(taxes, "taxAmount"):
            out.add("RCPT037")
    if taxes and total != _sum(taxes, "salesAmountWithTax"):
        out.add("RCPT038")
    if payments and total != _sum(payments, "paymentAmount"):
        out.add("RCPT039")
    if any(_sign_wrong(dec(payment["paymentAmount"]), credit) for payment in payments):
        out.add("RCPT028")
    if _sign_wrong(total, credit):
        out.add("RCPT040")


def _judge_buyer(receipt: dict, out: _Findings) -> None:
    buyer = receipt.get("buyerData")
    if buyer is None:
        return
    if not isinstance(buyer, dict):
        out.add("RCPT043")
        return
    name = buyer.get("buyerRegisterName")
    tin = buyer.get("buyerTIN")
    vat = buyer.get("vatNumber", buyer.get("VATNumber"))
    if not isinstance(name, str) or not name.strip():
        out.add("RCPT043")
    elif not isinstance(tin, str) or len(tin) != 10:
        out.add("RCPT043")
    elif vat not in (None, "") and (not isinstance(vat, str) or len(vat) != 9):
        out.add("RCPT043")


# ---------------------------------------------------------------------------------------------------------
# Structure: what FDMS answers 400 to


class _Structure:
    """Collects RFC 7807 `errors`: field path -> messages."""

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}

    def error(self, path: str, message: str) -> None:
        self.errors.setdefault(path, []).append(message)

    def present(self, obj: dict, key: str, path: str, required: bool) -> bool:
        """True when there is a value to check; reports a missing required one."""
        if obj.get(key) is None:
            if required:
                self.error(path, "The " + key + " field is required.")
            return False
        return True

    def text(self, obj: dict, key: str, where: str, limit: int, required: bool = False) -> None:
        path = where + key
        if not self.present(obj, key, path, required):
            return
        value = obj[key]
        if not isinstance(value, str):
            self.error(path, "The JSON value could not be converted to System.String.")
        elif required and not value.strip():
            self.error(path, "The " + key + " field is required.")
        elif len(value) > limit:
            self.error(
                path, "The field " + key + " must be a string with a maximum length of " + str(limit) + "."
            )

    def integer(self, obj: dict, key: str, where: str, required: bool = False) -> None:
        path = where + key
        if not self.present(obj, key, path, required):
            return
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, int) or not -_INT64 <= value < _INT64:
            self.error(path, "The JSON value could not be converted to a whole number.")

    def number(self, obj: dict, key: str, where: str, places: int, required: bool = False) -> None:
        path = where + key
        if not self.present(obj, key, path, required):
            return
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            self.error(path, "The JSON value could not be converted to System.Decimal.")
            return
        if isinstance(value, float) and not math.isfinite(value):
            self.error(path, "The JSON value could not be converted to System.Decimal.")
            return
        number = dec(value)
        if not number.is_finite():
            self.error(path, "The JSON value could not be converted to System.Decimal.")
            return
        exponent = number.normalize().as_tuple().exponent
        if isinstance(exponent, int) and exponent < -places:
            self.error(path, "The field " + key + " allows at most " + str(places) + " decimal places.")
        elif abs(number) >= Decimal(10) ** 19:
            self.error(path, "The field " + key + " is too large.")

    def boolean(self, obj: dict, key: str, where: str, required: bool = False) -> None:
        path = where + key
        if self.present(obj, key, path, required) and not isinstance(obj[key], bool):
            self.error(path, "The JSON value could not be converted to System.Boolean.")

    def enum(self, obj: dict, key: str, where: str, names: tuple[str, ...], required: bool = False) -> None:
        path = where + key
        if self.present(obj, key, path, required) and _canonical(obj[key], names) is None:
            self.error(path, "The value must be one of " + ", ".join(names) + ".")

    def date(self, obj: dict, key: str, where: str, required: bool = False) -> None:
        path = where + key
        if not self.present(obj, key, path, required):
            return
        value = obj[key]
        try:
            if not isinstance(value, str) or not _DATE_SHAPE.fullmatch(value):
                raise ValueError(value)
            _when(value)
        except ValueError:
            self.error(path, "The value must be a local date and time as YYYY-MM-DDTHH:mm:ss.")

    def base64(self, obj: dict, key: str, where: str, required: bool = False) -> None:
        path = where + key
        if not self.present(obj, key, path, required):
            return
        value = obj[key]
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
        except (ValueError, binascii.Error):
            self.error(path, "The value must be base64.")

    def obj(self, parent: dict, key: str, where: str, required: bool = False) -> dict | None:
        path = where + key
        if not self.present(parent, key, path, required):
            return None
        value = parent[key]
        if not isinstance(value, dict):
            self.error(path, "The value must be a JSON object.")
            return None
        return value

    def objects(self, parent: dict, key: str, where: str) -> list[tuple[str, dict]]:
        """A list of objects (missing or empty is for RCPT016-018): [(path prefix, object)]."""
        path = where + key
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, "The value must be a JSON array.")
            return []
        items = []
        for i, item in enumerate(value):
            at = path + "[" + str(i) + "]"
            if isinstance(item, dict):
                items.append((at + ".", item))
            else:
                self.error(at, "The value must be a JSON object.")
        return items


def check_structure(body: dict) -> dict[str, list[str]]:
    """RFC 7807 `errors` (field path -> messages) for a SubmitReceipt body {receipt: {...}} that is
    malformed (missing mandatory fields, wrong JSON types, strings over their length, unknown enum values;
    enums compared case-insensitively): the server answers 400 with these. {} when the structure is fine.
    Raises nothing.
    """
    check = _Structure()
    try:
        if not isinstance(body, dict):
            return {"$": ["The request body must be a JSON object."]}
        receipt = check.obj(body, "receipt", "", required=True)
        if receipt is not None:
            _check_receipt(check, receipt)
    except Exception as error:  # a shape nobody foresaw is still the sender's fault, never a crash
        check.error("receipt", "The receipt could not be read: " + type(error).__name__ + ".")
    return check.errors


def _check_receipt(check: _Structure, receipt: dict) -> None:
    at = "receipt."
    check.enum(receipt, "receiptType", at, RECEIPT_TYPES, required=True)
    check.text(receipt, "receiptCurrency", at, 3, required=True)
    check.integer(receipt, "receiptCounter", at, required=True)
    check.integer(receipt, "receiptGlobalNo", at, required=True)
    check.text(receipt, "invoiceNo", at, 50, required=True)
    check.text(receipt, "receiptNotes", at, 500)
    check.date(receipt, "receiptDate", at, required=True)
    check.boolean(receipt, "receiptLinesTaxInclusive", at, required=True)
    check.number(receipt, "receiptTotal", at, 2, required=True)
    check.enum(receipt, "receiptPrintForm", at, PRINT_FORMS)
    check.text(receipt, "username", at, 100)
    check.text(receipt, "userNameSurname", at, 250)
    user = check.obj(receipt, "userInfo", at)
    if user is not None:
        check.text(user, "username", at + "userInfo.", 100)
        check.text(user, "userFullName", at + "userInfo.", 250)
    signature = check.obj(receipt, "receiptDeviceSignature", at, required=True)
    if signature is not None:
        check.base64(signature, "hash", at + "receiptDeviceSignature.", required=True)
        check.base64(signature, "signature", at + "receiptDeviceSignature.", required=True)
    buyer = check.obj(receipt, "buyerData", at)
    if buyer is not None:
        where = at + "buyerData."
        check.text(buyer, "buyerRegisterName", where, 250)
        check.text(buyer, "buyerTradeName", where, 250)
        check.text(buyer, "buyerTIN", where, 10)
        check.text(buyer, "vatNumber", where, 9)
        check.text(buyer, "VATNumber", where, 9)
        for part, fields in (
            ("buyerContacts", ("phoneNo", "email")),
            ("buyerAddress", ("province", "city", "street", "houseNo", "district")),
        ):
            inner = check.obj(buyer, part, where)
            for name in fields if inner is not None else ():
                check.text(inner or {}, name, where + part + ".", 250)
    note = check.obj(receipt, "creditDebitNote", at)
    if note is not None:
        for key in ("receiptID", "deviceID", "receiptGlobalNo", "fiscalDayNo"):
            check.integer(note, key, at + "creditDebitNote.")
    for where, line in check.objects(receipt, "receiptLines", at):
        check.enum(line, "receiptLineType", where, LINE_TYPES, required=True)
        check.integer(line, "receiptLineNo", where, required=True)
        check.text(line, "receiptLineHSCode", where, 8)
        check.text(line, "receiptLineName", where, 200, required=True)
        check.number(line, "receiptLinePrice", where, 6)
        check.number(line, "receiptLineQuantity", where, 6, required=True)
        check.number(line, "receiptLineTotal", where, 2, required=True)
        check.text(line, "taxCode", where, 3)
        check.number(line, "taxPercent", where, 2)
        check.integer(line, "taxID", where, required=True)
    for where, tax in check.objects(receipt, "receiptTaxes", at):
        check.text(tax, "taxCode", where, 3)
        check.number(tax, "taxPercent", where, 2)
        check.integer(tax, "taxID", where, required=True)
        check.number(tax, "taxAmount", where, 2, required=True)
        check.number(tax, "salesAmountWithTax", where, 2, required=True)
    for where, payment in check.objects(receipt, "receiptPayments", at):
        check.enum(payment, "moneyTypeCode", where, MONEY_TYPES, required=True)
        check.number(payment, "paymentAmount", where, 2, required=True)


# ---------------------------------------------------------------------------------------------------------
# Counters and the day close

CounterKey = tuple[str, str, Any, Decimal | None, str | None, Decimal]


def _counter_sort(counter: dict) -> tuple[int, str, int, Decimal]:
    """Reference 7.1: type (enum order), currency, then tax ID (exempt before a percent) or money type."""
    kind = counter["fiscalCounterType"]
    if kind == BALANCE:
        sub = MONEY_TYPES.index(counter["fiscalCounterMoneyType"])
        return (COUNTER_TYPES.index(kind), counter["fiscalCounterCurrency"], sub, Decimal(-1))
    percent = counter.get("fiscalCounterTaxPercent")
    return (
        COUNTER_TYPES.index(kind),
        counter["fiscalCounterCurrency"],
        counter["fiscalCounterTaxID"],
        Decimal(-1) if percent is None else percent,
    )


def recompute_counters(held: list[Held]) -> list[dict]:
    """The day's fiscalDayCounters recomputed from held receipts, FiscalDayCounter JSON, sorted as
    reference 7.1.

    Values and percents are `Decimal` with two decimals (write them as JSON numbers); zero counters are left
    out, and so is the percent of an exempt tax.
    """
    sums: dict[tuple[str, str, Any, Decimal | None, str | None], Decimal] = {}

    def add(key: tuple[str, str, Any, Decimal | None, str | None], value: Any) -> None:
        sums[key] = sums.get(key, Decimal(0)) + dec(value)

    for item in held:
        receipt = item.receipt
        kind = _canonical(receipt.get("receiptType"), RECEIPT_TYPES) or "FiscalInvoice"
        sales = {
            "FiscalInvoice": "SaleByTax",
            "CreditNote": "CreditNoteByTax",
            "DebitNote": "DebitNoteByTax",
        }[kind]
        tax_type = sales.replace("ByTax", "TaxByTax")
        currency = str(receipt.get("receiptCurrency") or "").upper()
        for tax in _list(receipt, "receiptTaxes"):
            percent = _opt_dec(tax.get("taxPercent"))
            add((sales, currency, tax["taxID"], percent, None), tax["salesAmountWithTax"])
            add((tax_type, currency, tax["taxID"], percent, None), tax["taxAmount"])
        for payment in _list(receipt, "receiptPayments"):
            paid_as = _canonical(payment.get("moneyTypeCode"), MONEY_TYPES) or "Other"
            add((BALANCE, currency, None, None, paid_as), payment["paymentAmount"])
    counters = []
    for (kind, currency, tax_id, percent, money_type), value in sums.items():
        if value == 0:
            continue
        counter: dict[str, Any] = {"fiscalCounterType": kind, "fiscalCounterCurrency": currency}
        if kind == BALANCE:
            counter["fiscalCounterMoneyType"] = money_type
        else:
            counter["fiscalCounterTaxID"] = tax_id
            if percent is not None:
                counter["fiscalCounterTaxPercent"] = percent.quantize(CENT)
        counter["fiscalCounterValue"] = value.quantize(CENT)
        counters.append(counter)
    counters.sort(key=_counter_sort)
    return counters


def _counter_key(counter: dict) -> CounterKey:
    """A submitted or recomputed counter, normalised for comparison (names canonical, numbers exact)."""
    kind = _canonical(counter.get("fiscalCounterType"), COUNTER_TYPES)
    if kind is None:
        raise ValueError("unknown counter type")
    currency = str(counter["fiscalCounterCurrency"]).upper()
    value = dec(counter["fiscalCounterValue"])
    if kind == BALANCE:
        money_type = _canonical(counter.get("fiscalCounterMoneyType"), MONEY_TYPES)
        if money_type is None:
            raise ValueError("unknown money type")
        return (kind, currency, None, None, money_type, value)
    tax_id = counter["fiscalCounterTaxID"]
    if isinstance(tax_id, bool) or not isinstance(tax_id, int):
        raise ValueError("bad tax ID")
    return (kind, currency, tax_id, _opt_dec(counter.get("fiscalCounterTaxPercent")), None, value)


def _signed_counter(key: CounterKey) -> dict:
    """The shared day-string builder's form of a counter: cents and hundredths as integers."""
    kind, currency, tax_id, percent, money_type, value = key
    counter: dict[str, Any] = {
        "fiscalCounterType": kind,
        "fiscalCounterCurrency": currency,
        "fiscalCounterValue": _cents(value),
    }
    if kind == BALANCE:
        counter["fiscalCounterMoneyType"] = money_type
    else:
        counter["fiscalCounterTaxID"] = tax_id
        counter["fiscalCounterTaxPercent"] = None if percent is None else _cents(percent)
    return counter


def day_text(facts: Facts, counters: list[dict]) -> str:
    """The day string (reference 7.1) over `counters` in the order given, with the day's OPENING date."""
    signed = [_signed_counter(_counter_key(counter)) for counter in counters]
    return str(fdms.day_string(facts.device_id, facts.day_no, facts.day_opened[:10], signed))


def judge_close(request: dict, facts: Facts, held: list[Held]) -> str | None:
    """For a CloseDay request {fiscalDayNo, fiscalDayCounters, fiscalDayDeviceSignature:{hash,signature},
    receiptCounter} and the day's held receipts: None when the day closes, else the
    fiscalDayClosingErrorCode, checked in FDMS's order:

    - BadCertificateSignature: the day string rebuilt from the SUBMITTED counters in the submitted order,
      with the day's number and OPENING date, must hash to the submitted hash, and the signature must
      verify with the device certificate;
    - MissingReceipts: receipts 1..receiptCounter are not all held, or one of the day's is Grey;
    - ReceiptsWithValidationErrors: one of the day's receipts is Red;
    - CountersMismatch: the counters recomputed from the held receipts (reference section 6, zero counters
      dropped, sorted as 7.1) differ from the submitted ones, in value or in order.
    """
    submitted = request.get("fiscalDayCounters")
    try:
        if not isinstance(submitted, list):
            return BAD_SIGNATURE
        with localcontext(prec=PRECISION):
            text = day_text(facts, submitted)
        signature = request["fiscalDayDeviceSignature"]
        if signature["hash"] != fdms.hash_b64(text):
            return BAD_SIGNATURE
        if not verify_signature(facts.certificate_pem, text, signature["signature"]):
            return BAD_SIGNATURE
    except (KeyError, TypeError, ValueError, ArithmeticError, FiscalError):
        return BAD_SIGNATURE
    day = [item for item in held if item.day_no == facts.day_no]
    last = request.get("receiptCounter")
    last = last if isinstance(last, int) and not isinstance(last, bool) else 0
    numbers = {item.receipt.get("receiptCounter") for item in day}
    if any(n not in numbers for n in range(1, last + 1)) or any(GREY in item.colours for item in day):
        return MISSING_RECEIPTS
    if any(RED in item.colours for item in day):
        return WITH_ERRORS
    with localcontext(prec=PRECISION):
        want = [_counter_key(counter) for counter in recompute_counters(day)]
        got = [_counter_key(counter) for counter in submitted]
    if want != got:
        return COUNTERS_MISMATCH
    return None
