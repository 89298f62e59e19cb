"""ZIMRA FDMS: receipts, their rules, and the exact strings that get hashed and signed.

A receipt is handled as a plain dict with FDMS's field names, but with exact integers inside: amounts in
cents, quantities and prices in micro-units, percents in hundredths (None for exempt). `parse_receipt` turns
FDMS JSON (or a POS sale in the same shape) into that form, `complete` fills what the box computes,
`validate` judges it as FDMS would, `receipt_string` builds the bytes to sign, and `receipt_wire` turns it
back into the JSON FDMS receives. Section numbers refer to the project's FDMS reference notes.
"""

import binascii
import hashlib

from firmware.core import localtime, money
from firmware.core.errors import FiscalError

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
BALANCE = 6  # index of BalanceByMoneyType in COUNTER_TYPES

INT64 = 2**63
# The box keeps every amount, and a day's sums of them in the counters, as 64-bit integer cents; FDMS's
# decimal(21,2) would hold more. Amounts are refused beyond 15 digits before the point (below 10**17 cents),
# which leaves a day's counters room for 90 receipts of the largest amount.
AMOUNT_LIMIT = 10**17

RED = "Red"
YELLOW = "Yellow"
GREY = "Grey"

# Every receipt rule of reference section 3.4: code -> (colour, FDMS's text).
RULES = {
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
    "RCPT022": (RED, "Invoice line price has the wrong sign"),
    "RCPT023": (RED, "Invoice line quantity must be positive"),
    "RCPT024": (RED, "Invoice line total is not equal to unit price * quantity"),
    "RCPT025": (RED, "Invalid tax is used"),
    "RCPT026": (RED, "Incorrectly calculated tax amount"),
    "RCPT027": (RED, "Incorrectly calculated total sales amount (including tax)"),
    "RCPT028": (RED, "Payment amount has the wrong sign"),
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
    "RCPT040": (RED, "Invoice total amount has the wrong sign"),
    "RCPT041": (YELLOW, "Invoice is issued after fiscal day end"),
    "RCPT042": (RED, "Credit/debit note uses other currency than is used in the original invoice"),
    "RCPT043": (RED, "Mandatory buyer data fields are not provided"),
    "RCPT047": (RED, "HS code must be sent if taxpayer is a VAT payer"),
    "RCPT048": (RED, "HS code length is wrong"),
}


# ---------------------------------------------------------------------------------------------------------
# Parsing: FDMS JSON (or a POS sale in the same shape) -> the exact internal form

# The fields the box knows, at every level of a receipt (reference 3.3). Anything else is refused: a misspelt
# key silently dropped once issued `receiptLinesTaxInclusiv: false` as tax-inclusive, with the wrong tax.
RECEIPT_FIELDS = set(
    (
        "receiptType",
        "receiptCurrency",
        "receiptCounter",
        "receiptGlobalNo",
        "invoiceNo",
        "buyerData",
        "receiptNotes",
        "receiptDate",
        "creditDebitNote",
        "receiptLinesTaxInclusive",
        "receiptLines",
        "receiptTaxes",
        "receiptPayments",
        "receiptTotal",
        "receiptPrintForm",
        "receiptDeviceSignature",
        "username",
        "userNameSurname",
        "userInfo",
    )
)
LINE_FIELDS = set(
    (
        "receiptLineType",
        "receiptLineNo",
        "receiptLineHSCode",
        "receiptLineName",
        "receiptLinePrice",
        "receiptLineQuantity",
        "receiptLineTotal",
        "taxCode",
        "taxPercent",
        "taxID",
    )
)
TAX_FIELDS = set(("taxCode", "taxPercent", "taxID", "taxAmount", "salesAmountWithTax"))
PAYMENT_FIELDS = set(("moneyTypeCode", "paymentAmount"))
NOTE_FIELDS = set(("receiptID", "deviceID", "receiptGlobalNo", "fiscalDayNo"))
SIGNATURE_FIELDS = set(("hash", "signature"))
USER_FIELDS = set(("username", "userFullName"))
BUYER_FIELDS = set(
    (
        "buyerRegisterName",
        "buyerTradeName",
        "buyerTIN",
        "vatNumber",
        "VATNumber",
        "buyerContacts",
        "buyerAddress",
    )
)

try:
    _PRINTABLE = str.isprintable  # CPython: True means no control, format or surrogate character at all
except AttributeError:
    _PRINTABLE = None  # type: ignore[assignment]  # MicroPython: every character is looked at


def _bad_character(text):
    """The code point of the first character no receipt text may hold, or -1.

    C0 controls, DEL and C1 controls (ESC, NUL, CR/LF...) would reach FDMS, the journal and a terminal raw;
    bidirectional overrides and isolates make a text read otherwise than it is stored; a lone surrogate (what
    JSON's "\\ud800" decodes to) cannot be written as UTF-8 at all.
    """
    if _PRINTABLE is not None and _PRINTABLE(text):
        return -1
    for ch in text:
        code = ord(ch)
        if (
            code < 0x20
            or 0x7F <= code <= 0x9F
            or 0x202A <= code <= 0x202E
            or 0x2066 <= code <= 0x2069
            or 0xD800 <= code <= 0xDFFF
        ):
            return code
    return -1


def _shown(text, limit=60):
    """`text` safe to show in a message: the characters `_bad_character` finds written as \\uXXXX."""
    if _bad_character(text) < 0:
        return text[:limit]
    out = []
    for ch in text[:limit]:
        out.append("\\u%04x" % ord(ch) if _bad_character(ch) >= 0 else ch)
    return "".join(out)


def visible(text):
    """`text` whole, with every character a receipt text may not hold written as \\uXXXX: what a terminal
    is given of stored text, so a receipt stored before these checks cannot drive it."""
    return _shown(text, len(text))


def _clean(value, field):
    """Refuse a text holding a character the box must not store, send or print (BOX_SALE_TEXT)."""
    code = _bad_character(value)
    if code < 0:
        return value
    if 0xD800 <= code <= 0xDFFF:
        kind = "a lone surrogate (broken text encoding)"
    elif code >= 0x2000:
        kind = "a bidirectional override"
    else:
        kind = "a control character"
    raise FiscalError(
        "BOX_SALE_TEXT",
        "This text holds U+%04X, %s, which a receipt cannot carry: remove it." % (code, kind),
        field,
    )


def _known(obj, names, where=""):
    """Refuse a key the box does not know (BOX_SALE_FIELD), naming it, and a close known one if any."""
    for key in obj:
        if key in names:
            continue
        text = key if isinstance(key, str) else str(key)
        hint = ""
        low = text.lower()
        best = None
        for name in sorted(names):  # a known name that differs in case or by a cut or added ending
            other = name.lower()
            if len(low) >= 4 and (other.startswith(low) or low.startswith(other)):
                if best is None or abs(len(name) - len(text)) < abs(len(best) - len(text)):
                    best = name
        if best is not None:
            hint = " (did you mean " + best + "?)"
        raise FiscalError(
            "BOX_SALE_FIELD",
            "The box does not know the field '" + _shown(text) + "'" + hint + ": check its spelling.",
            where + _shown(text),
        )


def _enum(obj, key, names, where="", default=None):
    value = obj.get(key, default)
    if value in names:
        return value
    if isinstance(value, str):
        for name in names:
            if name.lower() == value.lower():
                return name
    raise FiscalError("RCPT02", "Must be one of " + ", ".join(names) + ".", where + key)


def _missing(where, key):
    raise FiscalError("RCPT02", "This field is required.", where + key)


def _text(obj, key, limit, where="", required=True):
    value = obj.get(key)
    if value is None or value == "":
        if required:
            _missing(where, key)
        return None
    if not isinstance(value, str):
        raise FiscalError("RCPT02", "Must be text.", where + key)
    _clean(value, where + key)
    if required and not value.strip():  # FDMS takes a blank required text as missing
        _missing(where, key)
    if len(value) > limit:
        raise FiscalError("RCPT02", "Must be at most " + str(limit) + " characters.", where + key)
    return value


def _int(obj, key, where="", required=True):
    value = obj.get(key)
    if value is None:
        if required:
            _missing(where, key)
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, str) and money.is_digits(value) and len(value) <= 19):
            raise FiscalError("RCPT02", "Must be a whole number.", where + key)
        value = int(value)
    if not -INT64 <= value < INT64:  # FDMS's integers are 64-bit (int64 in the Swagger)
        raise FiscalError("RCPT02", "This number is too large.", where + key)
    return value


def _obj(obj, key, where=""):
    """An optional nested object."""
    value = obj.get(key)
    if value is not None and not isinstance(value, dict):
        raise FiscalError("RCPT02", "Must be an object.", where + key)
    return value


def _list(obj, key):
    """A list of objects; missing is empty, for the rules (RCPT016-018) to report."""
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise FiscalError("RCPT02", "Must be a list.", key)
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise FiscalError("RCPT02", "Must be an object.", key + "[" + str(i) + "]")
    return value


def _number(obj, key, places, where="", required=True):
    """An exact number with `places` decimals; the field is named only when something is wrong."""
    value = obj.get(key)
    if value is None:
        if required:
            _missing(where, key)
        return None
    try:
        return money.parse_fixed(value, places)
    except FiscalError as error:
        error.field = where + key
        raise _safe(error) from None


def _safe(error):
    """`error` with the input it quotes shown safely: a refusal never carries ESC or a lone surrogate out."""
    if _bad_character(error.message) >= 0:
        error.message = _shown(error.message, 200)
        error.args = (error.message,)
    return error


# Buyer parts and their texts. The reference (3.3) gives lengths for the names only (at most 250); the
# simulator holds these texts to 250 as well, and so does the box: FDMS answers 400 to a longer one.
BUYER_PARTS = (
    ("buyerContacts", ("phoneNo", "email")),
    ("buyerAddress", ("province", "city", "street", "houseNo", "district")),
)


def _buyer(raw):
    """The buyer as sent, its shape checked; a missing or short name, TIN or VAT number is RCPT043."""
    if raw is None:
        return None
    where = "buyerData."
    _known(raw, BUYER_FIELDS, where)
    _text(raw, "buyerTradeName", 250, where, False)
    if "vatNumber" in raw:  # both spellings: the one that is not judged by RCPT043 still goes to FDMS
        _text(raw, "VATNumber", 9, where, False)
    for key in ("buyerRegisterName", "buyerTIN", "vatNumber", "VATNumber"):  # their shape is RCPT043's
        if isinstance(raw.get(key), str):
            _clean(raw[key], where + key)
    for part, names in BUYER_PARTS:
        inner = _obj(raw, part, where)
        if inner is not None:
            _known(inner, names, where + part + ".")
        for name in names if inner is not None else ():
            _text(inner, name, 250, where + part + ".", False)
    buyer = {}
    for key in raw:
        buyer[key] = raw[key]
    # The spec text says VATNumber, the Swagger vatNumber; keep one spelling.
    if "VATNumber" in buyer and "vatNumber" not in buyer:
        buyer["vatNumber"] = buyer.pop("VATNumber")
    return buyer


def _credit_debit_note(raw):
    if raw is None:
        return None
    where = "creditDebitNote."
    _known(raw, NOTE_FIELDS, where)
    return {
        "receiptID": _int(raw, "receiptID", where, False),
        "deviceID": _int(raw, "deviceID", where, False),
        "receiptGlobalNo": _int(raw, "receiptGlobalNo", where, False),
        "fiscalDayNo": _int(raw, "fiscalDayNo", where, False),
    }


def _line(raw, i):
    where = "receiptLines[" + str(i) + "]."
    _known(raw, LINE_FIELDS, where)
    return {
        "receiptLineType": _enum(raw, "receiptLineType", LINE_TYPES, where, "Sale"),
        "receiptLineNo": _int(raw, "receiptLineNo", where, False),
        "receiptLineHSCode": _text(raw, "receiptLineHSCode", 8, where, False),
        "receiptLineName": _text(raw, "receiptLineName", 200, where),
        "receiptLinePrice": _number(raw, "receiptLinePrice", money.PRICE_PLACES, where, False),
        "receiptLineQuantity": _number(raw, "receiptLineQuantity", money.QUANTITY_PLACES, where),
        "receiptLineTotal": _number(raw, "receiptLineTotal", money.AMOUNT_PLACES, where, False),
        "taxCode": _text(raw, "taxCode", 3, where, False),
        # Absent taxPercent means exempt (None); 0 is zero-rated.
        "taxPercent": _number(raw, "taxPercent", money.PERCENT_PLACES, where, False),
        "taxID": _int(raw, "taxID", where),
    }


def _tax(raw, i):
    where = "receiptTaxes[" + str(i) + "]."
    _known(raw, TAX_FIELDS, where)
    return {
        "taxCode": _text(raw, "taxCode", 3, where, False),
        "taxPercent": _number(raw, "taxPercent", money.PERCENT_PLACES, where, False),
        "taxID": _int(raw, "taxID", where),
        "taxAmount": _number(raw, "taxAmount", money.AMOUNT_PLACES, where),
        "salesAmountWithTax": _number(raw, "salesAmountWithTax", money.AMOUNT_PLACES, where),
    }


def _payment(raw, i):
    where = "receiptPayments[" + str(i) + "]."
    _known(raw, PAYMENT_FIELDS, where)
    return {
        "moneyTypeCode": _enum(raw, "moneyTypeCode", MONEY_TYPES, where),
        "paymentAmount": _number(raw, "paymentAmount", money.AMOUNT_PLACES, where),
    }


def _signature(raw):
    if raw is None:
        return None
    where = "receiptDeviceSignature."
    _known(raw, SIGNATURE_FIELDS, where)
    return {"hash": _text(raw, "hash", 100, where), "signature": _text(raw, "signature", 1000, where)}


def unwrap_receipt(body):
    """The receipt of a SubmitReceipt body `{"receipt": {...}}`, or the body itself when it is bare."""
    if not isinstance(body, dict):
        raise FiscalError("RCPT02", "A receipt must be a JSON object.", "receipt")
    inner = body.get("receipt")
    if not isinstance(inner, dict):
        return body
    _known(body, ("receipt",))
    return inner


def parse_receipt(raw):
    """The exact internal form of a receipt or sale; raises FiscalError RCPT02 naming the first bad field.

    Missing lists are kept empty (the rules RCPT016-018 report them); totals, taxes, line numbers and line
    totals may be missing, for `complete` to fill.
    """
    raw = unwrap_receipt(raw)
    _known(raw, RECEIPT_FIELDS)
    inclusive = raw.get("receiptLinesTaxInclusive", True)
    if inclusive is not True and inclusive is not False:
        raise FiscalError("RCPT02", "Must be true or false.", "receiptLinesTaxInclusive")
    taxes = raw.get("receiptTaxes")
    receipt = {
        "receiptType": _enum(raw, "receiptType", RECEIPT_TYPES),
        "receiptCurrency": _text(raw, "receiptCurrency", 3).upper(),
        "receiptCounter": _int(raw, "receiptCounter", "", False),
        "receiptGlobalNo": _int(raw, "receiptGlobalNo", "", False),
        "invoiceNo": _text(raw, "invoiceNo", 50),
        "buyerData": _buyer(_obj(raw, "buyerData")),
        "receiptNotes": _text(raw, "receiptNotes", 500, "", False),
        "receiptDate": _text(raw, "receiptDate", 19, "", False),
        "creditDebitNote": _credit_debit_note(_obj(raw, "creditDebitNote")),
        "receiptLinesTaxInclusive": inclusive,
        "receiptLines": [_line(item, i) for i, item in enumerate(_list(raw, "receiptLines"))],
        "receiptTaxes": None
        if taxes is None
        else [_tax(item, i) for i, item in enumerate(_list(raw, "receiptTaxes"))],
        "receiptPayments": [_payment(item, i) for i, item in enumerate(_list(raw, "receiptPayments"))],
        "receiptTotal": _number(raw, "receiptTotal", money.AMOUNT_PLACES, "", False),
        "receiptPrintForm": _enum(raw, "receiptPrintForm", PRINT_FORMS, "", "Receipt48"),
        "receiptDeviceSignature": _signature(_obj(raw, "receiptDeviceSignature")),
    }
    if receipt["receiptDate"] is not None:
        localtime.parse(receipt["receiptDate"], "receiptDate")
    # The cashier, optional: spec v7.2 fields or the newer Swagger's userInfo (reference 3.3).
    for key, limit in (("username", 100), ("userNameSurname", 250)):
        if _text(raw, key, limit, "", False) is not None:
            receipt[key] = raw[key]
    user = _obj(raw, "userInfo")
    if user is not None:
        _known(user, USER_FIELDS, "userInfo.")
        _text(user, "username", 100, "userInfo.", False)
        _text(user, "userFullName", 250, "userInfo.", False)
        receipt["userInfo"] = user
    return receipt


def _exact_text(value):
    """A JSON number as decimal text without an exponent: '1.55E1' -> '15.5', '1e-05' -> '0.00001'.

    json.loads(parse_float=str) keeps a number's own text, exponent and all; the shifted digits are exact.
    Anything that is not such a number is returned as it is, for `money.parse_fixed` to refuse.
    """
    cut = max(value.find("e"), value.find("E"))
    if cut < 0:
        return value
    mantissa, exponent = value[:cut], value[cut + 1 :]
    sign = mantissa[:1] if mantissa[:1] in ("+", "-") else ""
    whole, _, frac = mantissa[len(sign) :].partition(".")
    power = exponent[1:] if exponent[:1] in ("+", "-") else exponent
    if not (money.is_digits(whole) and (not frac or money.is_digits(frac))):
        return value
    if not money.is_digits(power) or len(power) > 2:  # beyond 10**99 is no percent: keep it refused
        return value
    digits = whole + frac
    point = len(whole) + (-int(power) if exponent[:1] == "-" else int(power))
    if point <= 0:
        return sign + "0." + "0" * -point + digits
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return sign + digits[:point] + "." + digits[point:]


def config_percent(value, field="taxPercent"):
    """GetConfig's taxPercent, exactly, in hundredths: 15.5 -> 1550, 15 -> 1500, '15.5' -> 1550.

    FDMS sends a JSON number. json.loads gives an int or a float, json.loads(parse_float=str) the number's
    text; a float is read through its shortest repr (never through float arithmetic), which is the JSON
    text it came from. More than 2 decimals, a negative percent, NaN, infinity and true/false are refused.
    (MicroPython's repr is not always the shortest: there such a float is refused, never misread.)
    """
    if isinstance(value, float):
        value = repr(value)
    if isinstance(value, str):
        value = _exact_text(value)
    try:
        units = money.parse_fixed(value, money.PERCENT_PLACES, field)
    except FiscalError as error:
        raise _safe(error) from None
    if units < 0:
        raise FiscalError("BOX_BAD_NUMBER", "A tax percent cannot be negative.", field)
    return units


def parse_taxes(applicable_taxes):
    """GetConfig's applicableTaxes -> [{taxID, taxPercent (hundredths|None), taxName, validFrom/Till}].

    Fields FDMS may add to a tax are ignored here: the tax table is FDMS's, not the POS's.
    """
    if not isinstance(applicable_taxes, list):
        raise FiscalError("RCPT02", "Must be a list.", "applicableTaxes")
    taxes = []
    for i, raw in enumerate(applicable_taxes):
        where = "applicableTaxes[" + str(i) + "]."
        if not isinstance(raw, dict):
            raise FiscalError("RCPT02", "Must be an object.", where[:-1])
        percent = raw.get("taxPercent")
        name = raw.get("taxName") or ""
        if not isinstance(name, str):
            raise FiscalError("RCPT02", "Must be text.", where + "taxName")
        taxes.append(
            {
                "taxID": _int(raw, "taxID", where),
                # Absent taxPercent means exempt (None), as in a receipt line.
                "taxPercent": None if percent is None else config_percent(percent, where + "taxPercent"),
                "taxName": _clean(name, where + "taxName"),
                "validFrom": raw.get("validFrom") or raw.get("taxValidFrom"),
                "validTill": raw.get("validTill") or raw.get("taxValidTill"),
            }
        )
    return taxes


# ---------------------------------------------------------------------------------------------------------
# Completion: what the box computes from the lines


def _tax_order(tax):
    """FDMS's tax-line order: taxID ascending, then taxCode alphabetically, no code before 'A'."""
    return (tax["taxID"], tax["taxCode"] or "")


def tax_groups(receipt):
    """receiptTaxes computed from the lines: one per (taxID, taxCode), tax on the group's sum (section 3.3).

    Inclusive: salesAmountWithTax = S, taxAmount = S * p / (100 + p); exclusive: taxAmount = S * p / 100,
    salesAmountWithTax = S + taxAmount; exempt: no tax. Rounded half away from zero, once per group.
    Lines must already have totals (see `complete`).
    """
    groups = {}
    for line in receipt["receiptLines"]:
        key = (line["taxID"], line["taxCode"] or "")
        group = groups.get(key)
        if group is None:
            group = {
                "taxCode": line["taxCode"],
                "taxPercent": line["taxPercent"],
                "taxID": line["taxID"],
                "sum": 0,
            }
            groups[key] = group
        group["sum"] += line["receiptLineTotal"]
    taxes = []
    for key in sorted(groups.keys()):
        group = groups[key]
        total = group["sum"]
        pct = group["taxPercent"]
        if not pct:
            tax = 0
        elif receipt["receiptLinesTaxInclusive"]:
            tax = money.div_half_up(total * pct, 10000 + pct)
        else:
            tax = money.div_half_up(total * pct, 10000)
        with_tax = total if receipt["receiptLinesTaxInclusive"] else total + tax
        taxes.append(
            {
                "taxCode": group["taxCode"],
                "taxPercent": pct,
                "taxID": group["taxID"],
                "taxAmount": tax,
                "salesAmountWithTax": with_tax,
            }
        )
    return taxes


def expected_total(receipt, taxes):
    """The receipt total the lines and taxes imply (RCPT019 inclusive, RCPT037 exclusive)."""
    lines = _sum(receipt["receiptLines"], "receiptLineTotal")
    return lines if receipt["receiptLinesTaxInclusive"] else lines + _sum(taxes, "taxAmount")


def complete(receipt):
    """Fill what is missing and can be computed: line numbers, line totals, receiptTaxes, receiptTotal.

    Values the sender gave are kept as given, so that `validate` can tell the sender when they are wrong.
    """
    _complete(receipt)
    return receipt


def prepare(raw, ctx=None):
    """parse + complete + validate, computing the tax groups once: the box's path for each sale.

    Returns (receipt, findings).
    """
    receipt = parse_receipt(raw)
    groups = _complete(receipt)
    return receipt, validate(receipt, ctx, groups)


def _complete(receipt):
    """`complete`, returning the tax groups the lines imply (whether or not the sender gave taxes)."""
    for i, line in enumerate(receipt["receiptLines"]):
        if line["receiptLineNo"] is None:
            line["receiptLineNo"] = i + 1
        if line["receiptLineTotal"] is None:
            if line["receiptLinePrice"] is None:
                raise FiscalError("RCPT02", "A line needs a price or a total.", _at(i, "receiptLinePrice"))
            line["receiptLineTotal"] = money.line_total(line["receiptLinePrice"], line["receiptLineQuantity"])
    groups = tax_groups(receipt)
    if receipt["receiptTaxes"] is None:
        receipt["receiptTaxes"] = groups
    else:
        receipt["receiptTaxes"] = sorted(receipt["receiptTaxes"], key=_tax_order)
    if receipt["receiptTotal"] is None:
        receipt["receiptTotal"] = expected_total(receipt, receipt["receiptTaxes"])
    _amounts_fit(receipt)
    return groups


def _amounts_fit(receipt):
    """Refuse an amount the box cannot keep (see AMOUNT_LIMIT), naming its field."""
    amounts = []
    for i, line in enumerate(receipt["receiptLines"]):
        amounts.append((line["receiptLineTotal"], _at(i, "receiptLineTotal")))
    for i, tax in enumerate(receipt["receiptTaxes"]):
        where = "receiptTaxes[" + str(i) + "]."
        amounts.append((tax["taxAmount"], where + "taxAmount"))
        amounts.append((tax["salesAmountWithTax"], where + "salesAmountWithTax"))
    amounts.append((receipt["receiptTotal"], "receiptTotal"))
    for i, payment in enumerate(receipt["receiptPayments"]):
        amounts.append((payment["paymentAmount"], "receiptPayments[" + str(i) + "].paymentAmount"))
    for value, field in amounts:
        if not -AMOUNT_LIMIT < value < AMOUNT_LIMIT:
            raise FiscalError(
                "BOX_BAD_NUMBER",
                "This amount is too large: the box keeps amounts up to "
                + money.format_fixed(AMOUNT_LIMIT - 1, 2)
                + ".",
                field,
            )


# ---------------------------------------------------------------------------------------------------------
# Validation: the rules of section 3.4 the box can judge alone


class Context:
    """What the rules need beyond the receipt. Unknown parts (None) switch their rules off.

    taxes: parsed applicable taxes; vat_payer: the taxpayer has a VAT number; currencies: accepted codes;
    day_opened: the fiscal day's opening local time; day_max_hours: taxPayerDayMaxHrs;
    previous_in_day: {receiptCounter, receiptGlobalNo, receiptDate} of the day's last receipt;
    first_in_day: True when the receipt is the day's first (then previous_in_day is None);
    last_global_no: the highest global number issued before this day's first receipt;
    last_receipt_date: the date of the previous receipt, across days;
    now: the local time now; future_skew_seconds: how far in the future a date may be;
    invoice_seen(invoiceNo) -> bool; original(creditDebitNote) -> {"receipt": parsed original,
    "notes_total": sum of the totals of notes already issued against it} or None when it does not exist.
    """

    def __init__(
        self,
        taxes=None,
        vat_payer=None,
        currencies=None,
        day_opened=None,
        day_max_hours=None,
        previous_in_day=None,
        first_in_day=False,
        last_global_no=None,
        last_receipt_date=None,
        now=None,
        future_skew_seconds=300,
        invoice_seen=None,
        original=None,
    ):
        self.taxes = taxes
        self.vat_payer = vat_payer
        self.currencies = currencies
        self.day_opened = day_opened
        self.day_max_hours = day_max_hours
        self.previous_in_day = previous_in_day
        self.first_in_day = first_in_day
        self.last_global_no = last_global_no
        self.last_receipt_date = last_receipt_date
        self.now = now
        self.future_skew_seconds = future_skew_seconds
        self.invoice_seen = invoice_seen
        self.original = original
        self.tax_index = {} if taxes is None else {(t["taxID"], t["taxPercent"]): t for t in taxes}
        # The day's end once per day; the box keeps one Context a day and moves previous_in_day,
        # first_in_day and now along with each receipt.
        opened_known = day_opened is not None and day_max_hours is not None
        self.day_end = localtime.add_hours(day_opened, day_max_hours) if opened_known else None


def finding(code, field=None, detail=None):
    """One validation result: FDMS's code and colour, its text, and what exactly is wrong."""
    colour, text = RULES[code]
    return {"code": code, "colour": colour, "message": detail or text, "field": field}


def is_vat_tax(tax):
    """A VAT tax has a positive percent; FDMS also lists non-VAT taxes (e.g. 'Non-VAT Withholding Tax')."""
    return bool(tax["taxPercent"]) and "non-vat" not in tax["taxName"].lower()


def _valid_on(tax, date):
    if date is None:
        return True
    day = date[:10]
    if tax["validFrom"] and day < tax["validFrom"][:10]:
        return False
    return not (tax["validTill"] and day > tax["validTill"][:10])


def _sign_ok(value, receipt_type, positive_for_sale=True):
    """Invoices and debit notes carry positive amounts, credit notes negative ones (zero allowed)."""
    if receipt_type == "CreditNote":
        return value <= 0 if positive_for_sale else value >= 0
    return value >= 0 if positive_for_sale else value <= 0


def _at(i, key):
    """The name of a line's field, built only when a finding needs it."""
    return "receiptLines[" + str(i) + "]." + key


def _rule_lines(receipt, ctx, out):
    kind = receipt["receiptType"]
    for i, line in enumerate(receipt["receiptLines"]):
        price = line["receiptLinePrice"]
        amount = price if price is not None else line["receiptLineTotal"]
        if amount is not None:
            if amount == 0 or not _sign_ok(amount, kind, line["receiptLineType"] == "Sale"):
                out.append(finding("RCPT022", _at(i, "receiptLinePrice")))
        if line["receiptLineQuantity"] <= 0:
            out.append(finding("RCPT023", _at(i, "receiptLineQuantity")))
        if price is not None and line["receiptLineTotal"] is not None:
            want = money.line_total(price, line["receiptLineQuantity"])
            if want != line["receiptLineTotal"]:
                out.append(
                    finding(
                        "RCPT024",
                        _at(i, "receiptLineTotal"),
                        "Line total is "
                        + money.format_fixed(line["receiptLineTotal"], 2)
                        + " but price x quantity is "
                        + money.format_fixed(want, 2)
                        + ".",
                    )
                )
        if ctx.taxes is not None:
            tax = ctx.tax_index.get((line["taxID"], line["taxPercent"]))
            if tax is None or not _valid_on(tax, receipt["receiptDate"]):
                out.append(
                    finding(
                        "RCPT025",
                        _at(i, "taxID"),
                        "Tax "
                        + str(line["taxID"])
                        + " at "
                        + (money.percent_text(line["taxPercent"]) or "exempt")
                        + " is not one of the taxes in force on the receipt date.",
                    )
                )
            elif ctx.vat_payer is False and is_vat_tax(tax):
                out.append(finding("RCPT021", _at(i, "taxID")))
        hs = line["receiptLineHSCode"]
        if ctx.vat_payer and not hs:
            out.append(finding("RCPT047", _at(i, "receiptLineHSCode")))
        if hs:
            needs_eight = ctx.vat_payer and not line["taxPercent"]
            if not money.is_digits(hs) or len(hs) not in ((8,) if needs_eight else (4, 8)):
                out.append(
                    finding(
                        "RCPT048",
                        _at(i, "receiptLineHSCode"),
                        "HS code must be 8 digits"
                        + ("" if needs_eight else " or 4 digits")
                        + (" for a zero-rated or exempt line of a VAT payer." if needs_eight else "."),
                    )
                )
    # With the tax table known, a tax ID at a percent not its own is caught above; without it, lines of one
    # tax ID must at least agree, or their group would be taxed at the first line's percent.
    percents = {}
    for i, line in enumerate(receipt["receiptLines"] if ctx.taxes is None else ()):
        first = percents.setdefault(line["taxID"], line["taxPercent"])
        if first != line["taxPercent"]:
            out.append(
                finding("RCPT025", _at(i, "taxPercent"), "Lines of one tax ID carry different percents.")
            )
    codes = [line["taxCode"] is None for line in receipt["receiptLines"]]
    if codes and any(codes) and not all(codes):
        out.append(finding("RCPT025", "receiptLines", "A tax code must be on every line or on none."))


def _rule_taxes(receipt, out, groups):
    given = receipt["receiptTaxes"] or []
    if not given or given is groups:  # the groups themselves: computed from these lines, nothing to compare
        return
    expected = {}
    for tax in groups if groups is not None else tax_groups(receipt):
        expected[_tax_order(tax)] = tax
    seen = {}
    for i, tax in enumerate(given):
        field = "receiptTaxes[" + str(i) + "]"
        key = _tax_order(tax)
        want = expected.get(key)
        if want is None or key in seen:
            out.append(finding("RCPT027", field, "No receipt line carries this tax, or it is listed twice."))
            continue
        seen[key] = True
        if want["taxPercent"] != tax["taxPercent"]:
            out.append(
                finding("RCPT025", field + ".taxPercent", "The percent differs from the lines' percent.")
            )
        if want["taxAmount"] != tax["taxAmount"]:
            out.append(
                finding(
                    "RCPT026",
                    field + ".taxAmount",
                    "Tax amount is "
                    + money.format_fixed(tax["taxAmount"], 2)
                    + " but the group's tax is "
                    + money.format_fixed(want["taxAmount"], 2)
                    + ".",
                )
            )
        if want["salesAmountWithTax"] != tax["salesAmountWithTax"]:
            out.append(
                finding(
                    "RCPT027",
                    field + ".salesAmountWithTax",
                    "Sales amount with tax is "
                    + money.format_fixed(tax["salesAmountWithTax"], 2)
                    + " but the group's lines give "
                    + money.format_fixed(want["salesAmountWithTax"], 2)
                    + ".",
                )
            )
    for key in expected:
        if key not in seen:
            out.append(finding("RCPT027", "receiptTaxes", "Tax " + str(key[0]) + " of the lines is missing."))


def _sum(items, key):
    total = 0
    for item in items:
        total += item[key]
    return total


def _rule_totals(receipt, out):
    total = receipt["receiptTotal"]
    kind = receipt["receiptType"]
    taxes = receipt["receiptTaxes"] or []
    want = expected_total(receipt, taxes)
    if total != want:
        if receipt["receiptLinesTaxInclusive"]:
            out.append(finding("RCPT019", "receiptTotal", _differs("the lines", total, want)))
        else:
            out.append(finding("RCPT037", "receiptTotal", _differs("the lines and taxes", total, want)))
    table = _sum(taxes, "salesAmountWithTax")
    if taxes and total != table:
        out.append(finding("RCPT038", "receiptTotal", _differs("the tax table", total, table)))
    payments = receipt["receiptPayments"]
    paid = _sum(payments, "paymentAmount")
    if payments and total != paid:
        out.append(finding("RCPT039", "receiptTotal", _differs("the payments", total, paid)))
    for i, payment in enumerate(payments):
        if not _sign_ok(payment["paymentAmount"], kind):
            out.append(finding("RCPT028", "receiptPayments[" + str(i) + "].paymentAmount"))
    if not _sign_ok(total, kind):
        out.append(finding("RCPT040", "receiptTotal"))


def _differs(what, total, want):
    return (
        "Receipt total is "
        + money.format_fixed(total, 2)
        + " but "
        + what
        + " add up to "
        + money.format_fixed(want, 2)
        + "."
    )


def _rule_sequence(receipt, ctx, out):
    counter = receipt["receiptCounter"]
    global_no = receipt["receiptGlobalNo"]
    prev = ctx.previous_in_day
    if counter is not None and (prev or ctx.first_in_day):
        want = prev["receiptCounter"] + 1 if prev else 1
        if counter != want:
            out.append(finding("RCPT011", "receiptCounter", "Receipt counter should be " + str(want) + "."))
    if global_no is not None:
        allowed = None
        if prev:
            allowed = (prev["receiptGlobalNo"] + 1,)
        elif ctx.first_in_day and ctx.last_global_no is not None:
            allowed = (ctx.last_global_no + 1, 1)
        if allowed is not None and global_no not in allowed:
            out.append(
                finding(
                    "RCPT012", "receiptGlobalNo", "Receipt global number should be " + str(allowed[0]) + "."
                )
            )
    date = receipt["receiptDate"]
    if date is None:
        return
    # Dates are all YYYY-MM-DDTHH:mm:ss strings, so text order is time order.
    last = prev["receiptDate"] if prev else ctx.last_receipt_date
    if last is not None and date <= last:
        out.append(
            finding(
                "RCPT030",
                "receiptDate",
                "Receipt date must be later than the previous receipt's " + last + ".",
            )
        )
    if ctx.day_opened is not None and date < ctx.day_opened:
        out.append(finding("RCPT014", "receiptDate"))
    if ctx.day_end is not None and date > ctx.day_end:
        out.append(finding("RCPT041", "receiptDate"))
    if ctx.now is not None and date > ctx.now:  # only then is the allowed skew worth computing
        if localtime.seconds(date) > localtime.seconds(ctx.now) + ctx.future_skew_seconds:
            out.append(finding("RCPT031", "receiptDate"))


def _rule_note(receipt, ctx, out):
    kind = receipt["receiptType"]
    note = receipt["creditDebitNote"]
    if kind == "FiscalInvoice":
        if note is not None:
            out.append(finding("RCPT029", "creditDebitNote"))
        return
    if not (receipt["receiptNotes"] or "").strip():
        out.append(finding("RCPT034", "receiptNotes"))
    # The original is named by its FDMS receiptID, or by device, global number and fiscal day together.
    by_place = note is not None and None not in (
        note["deviceID"],
        note["receiptGlobalNo"],
        note["fiscalDayNo"],
    )
    if note is None or (note["receiptID"] is None and not by_place):
        out.append(finding("RCPT015", "creditDebitNote"))
        return
    if ctx.original is None:
        return
    if note["receiptID"] is not None:
        # FDMS takes the original its receiptID names, whatever the place says: so must the lookup (the
        # box's own finds places only, and refuses an ID it cannot check rather than sign what FDMS rejects).
        note = {
            "receiptID": note["receiptID"],
            "deviceID": None,
            "receiptGlobalNo": None,
            "fiscalDayNo": None,
        }
    found = ctx.original(note)
    if found is None:
        out.append(finding("RCPT032", "creditDebitNote"))
        return
    original = found["receipt"]
    date = receipt["receiptDate"]
    if date is not None and original["receiptDate"] < localtime.months_before(date, 12):
        out.append(finding("RCPT033", "creditDebitNote"))
    if original["receiptCurrency"] != receipt["receiptCurrency"]:
        out.append(finding("RCPT042", "receiptCurrency"))
    if kind == "CreditNote":
        remaining = original["receiptTotal"] + found.get("notes_total", 0) + receipt["receiptTotal"]
        if remaining < 0:
            out.append(
                finding(
                    "RCPT035",
                    "receiptTotal",
                    "Only "
                    + money.format_fixed(original["receiptTotal"] + found.get("notes_total", 0), 2)
                    + " of the original invoice is left to credit.",
                )
            )
    used = [(t["taxID"], t["taxPercent"]) for t in original["receiptTaxes"]]
    for i, tax in enumerate(receipt["receiptTaxes"] or []):
        if (tax["taxID"], tax["taxPercent"]) not in used:
            out.append(finding("RCPT036", "receiptTaxes[" + str(i) + "]"))


def _rule_buyer(receipt, out):
    buyer = receipt["buyerData"]
    if buyer is None:
        return
    name = buyer.get("buyerRegisterName")
    if not isinstance(name, str) or not name.strip() or len(name) > 250 or not buyer.get("buyerTIN"):
        out.append(finding("RCPT043", "buyerData", "A buyer needs both buyerRegisterName and buyerTIN."))
        return
    tin = buyer["buyerTIN"]
    if not isinstance(tin, str) or len(tin) != 10:
        out.append(finding("RCPT043", "buyerData.buyerTIN", "A buyer's TIN has exactly 10 characters."))
    vat = buyer.get("vatNumber")
    if vat is not None and (not isinstance(vat, str) or len(vat) != 9):
        out.append(
            finding("RCPT043", "buyerData.vatNumber", "A buyer's VAT number has exactly 9 characters.")
        )


def validate(receipt, ctx=None, groups=None):
    """Every finding FDMS would report for this completed receipt, in rule order; [] when it is clean.

    `groups`: the tax groups of the lines when the caller has them already (see `prepare`).
    """
    ctx = ctx or Context()
    out = []
    if ctx.currencies is not None and receipt["receiptCurrency"] not in ctx.currencies:
        out.append(finding("RCPT010", "receiptCurrency"))
    if ctx.invoice_seen is not None and ctx.invoice_seen(receipt["invoiceNo"]):
        out.append(finding("RCPT013", "invoiceNo"))
    if not receipt["receiptLines"]:
        out.append(finding("RCPT016", "receiptLines"))
    if not receipt["receiptTaxes"]:
        out.append(finding("RCPT017", "receiptTaxes"))
    if not receipt["receiptPayments"]:
        out.append(finding("RCPT018", "receiptPayments"))
    _rule_sequence(receipt, ctx, out)
    _rule_note(receipt, ctx, out)
    _rule_lines(receipt, ctx, out)
    _rule_taxes(receipt, out, groups)
    _rule_totals(receipt, out)
    _rule_buyer(receipt, out)
    if len(out) > 1:
        out.sort(key=lambda f: f["code"])
    return out


def blocking(findings):
    """The findings that stop the box from signing: everything Red."""
    return [f for f in findings if f["colour"] == RED]


# ---------------------------------------------------------------------------------------------------------
# Signature strings (sections 5 and 7) and hashes


def b64(data):
    return binascii.b2a_base64(data)[:-1].decode()


def unb64(text, field="signature"):
    try:
        return binascii.a2b_base64(text)
    except Exception:
        raise FiscalError("BOX_BAD_BASE64", "This is not valid base64.", field) from None


def hash_b64(text):
    """FDMS's `hash`: base64 of SHA-256 over the UTF-8 bytes of the string (str, or those bytes)."""
    return b64(hashlib.sha256(text if isinstance(text, bytes) else text.encode()).digest())


def receipt_taxes_text(taxes):
    parts = []
    for tax in sorted(taxes, key=_tax_order):
        parts.append(
            (tax["taxCode"] or "")
            + money.percent_text(tax["taxPercent"])
            + str(tax["taxAmount"])
            + str(tax["salesAmountWithTax"])
        )
    return "".join(parts)


def receipt_string(device_id, receipt, previous_hash=None):
    """deviceID, TYPE, currency, globalNo, date, total in cents, tax lines, previous hash (section 5.1).

    The previous receipt's hash is left out for the first receipt of a fiscal day (pass None).
    """
    for key in ("receiptGlobalNo", "receiptDate", "receiptTotal"):
        if receipt[key] is None:
            raise FiscalError("RCPT02", "The receipt has no " + key + " yet.", key)
    return (
        str(device_id)
        + receipt["receiptType"].upper()
        + receipt["receiptCurrency"].upper()
        + str(receipt["receiptGlobalNo"])
        + receipt["receiptDate"]
        + str(receipt["receiptTotal"])
        + receipt_taxes_text(receipt["receiptTaxes"] or [])
        + (previous_hash or "")
    )


def receipt_server_string(device_signature_b64, receipt_id, server_date):
    """What FDMS signs for a receipt (section 5.5): the device's base64 signature, receiptID, serverDate."""
    return device_signature_b64 + str(receipt_id) + server_date


# ---------------------------------------------------------------------------------------------------------
# Fiscal counters (section 6) and the day signature (section 7)


def new_counters():
    """Counters of a fresh day: {(type index, currency, taxID or money-type index, percent or -1): cents}."""
    return {}


def _add(counters, key, value):
    counters[key] = counters.get(key, 0) + value


def _pct_key(pct):
    return -1 if pct is None else pct


def update_counters(counters, receipt):
    """Add one receipt to the day's counters, incrementally (section 6.1)."""
    base = RECEIPT_TYPES.index(receipt["receiptType"]) * 2
    currency = receipt["receiptCurrency"]
    for tax in receipt["receiptTaxes"]:
        pct = _pct_key(tax["taxPercent"])
        _add(counters, (base, currency, tax["taxID"], pct), tax["salesAmountWithTax"])
        _add(counters, (base + 1, currency, tax["taxID"], pct), tax["taxAmount"])
    for payment in receipt["receiptPayments"]:
        index = MONEY_TYPES.index(payment["moneyTypeCode"])
        _add(counters, (BALANCE, currency, index, -1), payment["paymentAmount"])
    return counters


def day_counters(counters):
    """The ONE sorted list of non-zero counters used for both the day string and the CloseDay JSON.

    Order: counter type (enum order), currency, then taxID (byTax) or money type in enum order (balance).
    """
    result = []
    for key in sorted(counters.keys()):
        value = counters[key]
        if value == 0:
            continue
        type_index, currency, sub, pct = key
        counter = {"fiscalCounterType": COUNTER_TYPES[type_index], "fiscalCounterCurrency": currency}
        if type_index == BALANCE:
            counter["fiscalCounterMoneyType"] = MONEY_TYPES[sub]
        else:
            counter["fiscalCounterTaxID"] = sub
            counter["fiscalCounterTaxPercent"] = None if pct == -1 else pct
        counter["fiscalCounterValue"] = value
        result.append(counter)
    return result


def parse_counters(raw_list):
    """FDMS FiscalDayCounter JSON -> counters keyed like `update_counters` (summing duplicates)."""
    if not isinstance(raw_list, list):
        raise FiscalError("RCPT02", "Must be a list.", "fiscalDayCounters")
    counters = new_counters()
    for i, raw in enumerate(raw_list):
        where = "fiscalDayCounters[" + str(i) + "]."
        if not isinstance(raw, dict):
            raise FiscalError("RCPT02", "Must be an object.", where[:-1])
        type_index = COUNTER_TYPES.index(_enum(raw, "fiscalCounterType", COUNTER_TYPES, where))
        currency = _text(raw, "fiscalCounterCurrency", 3, where).upper()
        value = _number(raw, "fiscalCounterValue", money.AMOUNT_PLACES, where)
        if type_index == BALANCE:
            money_type = _enum(raw, "fiscalCounterMoneyType", MONEY_TYPES, where)
            key = (BALANCE, currency, MONEY_TYPES.index(money_type), -1)
        else:
            tax_id = _int(raw, "fiscalCounterTaxID", where)
            pct = _number(raw, "fiscalCounterTaxPercent", money.PERCENT_PLACES, where, False)
            key = (type_index, currency, tax_id, _pct_key(pct))
        _add(counters, key, value)
    return counters


def counter_text(counter):
    """TYPE, CURRENCY, percent (2 dp, empty for exempt) or MONEYTYPE, value in cents (section 7.1)."""
    if counter["fiscalCounterType"] == "BalanceByMoneyType":
        middle = counter["fiscalCounterMoneyType"].upper()
    else:
        middle = money.percent_text(counter["fiscalCounterTaxPercent"])
    return (
        counter["fiscalCounterType"].upper()
        + counter["fiscalCounterCurrency"].upper()
        + middle
        + str(counter["fiscalCounterValue"])
    )


def day_string(device_id, day_no, day_date, counter_list):
    """deviceID, fiscalDayNo, the day's OPENING date (YYYY-MM-DD), then every counter in list order."""
    return str(device_id) + str(day_no) + day_date + "".join([counter_text(c) for c in counter_list])


def day_server_string(
    device_id, day_no, day_date, closed_at, reconciliation_mode, counter_list, device_signature_b64
):
    """What FDMS signs for a closed day (section 7.5); the device signature is left out for a MANUAL close."""
    mode = reconciliation_mode.upper()
    return (
        day_string(device_id, day_no, day_date, [])
        + closed_at
        + mode
        + "".join([counter_text(c) for c in counter_list])
        + ("" if mode == "MANUAL" else device_signature_b64)
    )


def counters_wire(counter_list):
    """The CloseDay `fiscalDayCounters` array, in the same order as the day string."""
    out = []
    for counter in counter_list:
        item = {}
        for key in counter:
            item[key] = counter[key]
        item["fiscalCounterValue"] = money.cents(counter["fiscalCounterValue"])
        if "fiscalCounterTaxPercent" in item:
            if item["fiscalCounterTaxPercent"] is None:
                del item["fiscalCounterTaxPercent"]
            else:
                item["fiscalCounterTaxPercent"] = money.hundredths(item["fiscalCounterTaxPercent"])
        out.append(item)
    return out


# ---------------------------------------------------------------------------------------------------------
# The receipt as FDMS receives it


def receipt_wire(receipt):
    """The `receipt` object of SubmitReceipt with exact decimals; write it with `wire.dumps`."""
    out = {}
    for key in receipt:
        value = receipt[key]
        if value is not None:
            out[key] = value
    lines = []
    for line in receipt["receiptLines"]:
        item = {}
        for key in line:
            if line[key] is not None:
                item[key] = line[key]
        if "receiptLinePrice" in item:
            item["receiptLinePrice"] = money.micros(item["receiptLinePrice"])
        item["receiptLineQuantity"] = money.micros(item["receiptLineQuantity"])
        item["receiptLineTotal"] = money.cents(item["receiptLineTotal"])
        if "taxPercent" in item:
            item["taxPercent"] = money.hundredths(item["taxPercent"])
        lines.append(item)
    out["receiptLines"] = lines
    taxes = []
    for tax in receipt["receiptTaxes"] or []:
        item = {"taxID": tax["taxID"], "taxAmount": money.cents(tax["taxAmount"])}
        item["salesAmountWithTax"] = money.cents(tax["salesAmountWithTax"])
        if tax["taxCode"] is not None:
            item["taxCode"] = tax["taxCode"]
        if tax["taxPercent"] is not None:
            item["taxPercent"] = money.hundredths(tax["taxPercent"])
        taxes.append(item)
    out["receiptTaxes"] = taxes
    out["receiptPayments"] = [
        {"moneyTypeCode": p["moneyTypeCode"], "paymentAmount": money.cents(p["paymentAmount"])}
        for p in receipt["receiptPayments"]
    ]
    if receipt["receiptTotal"] is not None:
        out["receiptTotal"] = money.cents(receipt["receiptTotal"])
    if receipt["creditDebitNote"] is not None:
        note = receipt["creditDebitNote"]
        out["creditDebitNote"] = {k: note[k] for k in note if note[k] is not None}
    return out


# ---------------------------------------------------------------------------------------------------------
# QR code, verification code, certificate subject (sections 8 and 9)


def qr_data(signature_bytes):
    """First 16 hex characters (upper case) of MD5 over the raw device signature bytes."""
    return binascii.hexlify(hashlib.md5(signature_bytes).digest()).decode().upper()[:16]


def qr_url(qr_base, device_id, receipt_date, global_no, data):
    """qrUrl/ + deviceID (10 digits) + receipt date ddMMyyyy + globalNo (10 digits) + `qr_data`."""
    year, month, day = receipt_date[0:4], receipt_date[5:7], receipt_date[8:10]
    base = qr_base if qr_base.endswith("/") else qr_base + "/"
    return base + "%010d" % device_id + day + month + year + "%010d" % global_no + data


def verification_code(data):
    """The printed code: the 16 QR characters in four groups of four, e.g. 4C8B-E276-6333-0417."""
    return "-".join([data[i : i + 4] for i in range(0, 16, 4)])


def csr_common_name(serial_no, device_id):
    """CN of the device's certificate request: ZIMRA-<serial>-<device ID padded to 10 digits>."""
    return "ZIMRA-" + serial_no + "-" + "%010d" % device_id
