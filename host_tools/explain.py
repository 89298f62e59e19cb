"""The integrator's debugger: canonical strings, hashes, findings and QR for a receipt or a day close.

FDMS answers a wrong signature with a bare RCPT020 or BadCertificateSignature. This module rebuilds exactly
what the box would sign, from the same core code, so the difference with what was sent can be seen.
Each function takes parsed JSON and returns a plain report dict; `host_tools.cli` prints it.
"""

from __future__ import annotations

import binascii
import json
from typing import Any

from firmware.core import fdms, localtime, money
from firmware.core.errors import FiscalError
from hardware import signatures

DEFAULT_QR_URL = "https://fdmstest.zimra.co.zw"


# Far beyond any FDMS number (19 digits) yet below Python's limit on converting digits to an int (4300).
MAX_INT_DIGITS = 400


def load_json(text: str, source: str) -> Any:
    """JSON with every decimal kept as its exact text, so no amount passes through a float.

    Whatever is not plain JSON (NaN, a number too long to read, nesting deeper than Python can follow) is
    refused here with a FiscalError, never a Python exception.
    """

    def whole(digits: str) -> int:
        if len(digits) > MAX_INT_DIGITS:
            raise FiscalError(
                "BOX_BAD_NUMBER",
                f"{source} holds a number of {len(digits.lstrip('-'))} digits; no FDMS field takes so many.",
            )
        return int(digits)

    def constant(name: str) -> Any:
        raise FiscalError("BOX_BAD_JSON", f"{source} is not JSON: {name} is not a JSON number.")

    try:
        return json.loads(text, parse_float=str, parse_int=whole, parse_constant=constant)
    except json.JSONDecodeError as error:
        raise FiscalError(
            "BOX_BAD_JSON", f"{source} is not JSON: {error.msg} at line {error.lineno} column {error.colno}."
        ) from None
    except RecursionError:
        raise FiscalError(
            "BOX_BAD_JSON", f"{source} nests arrays or objects too deeply; FDMS JSON is a few levels deep."
        ) from None


def load_config(document: Any) -> dict[str, Any]:
    """The parts of a GetConfig answer the rules use: its applicable taxes, VAT status and qrUrl."""
    if not isinstance(document, dict) or not isinstance(document.get("applicableTaxes"), list):
        raise FiscalError(
            "BOX_BAD_CONFIG", "Give the GetConfig answer, with its applicableTaxes list.", "applicableTaxes"
        )
    taxes = fdms.parse_taxes(document["applicableTaxes"])
    for i, tax in enumerate(taxes):
        where = f"applicableTaxes[{i}]."
        if not isinstance(tax["taxName"], str):
            raise FiscalError("BOX_BAD_CONFIG", "Must be text.", where + "taxName")
        for key in ("validFrom", "validTill"):
            value = tax[key]
            if value is not None and not (isinstance(value, str) and _is_date(value[:10])):
                raise FiscalError(
                    "BOX_BAD_CONFIG", "Must be a date, YYYY-MM-DD or YYYY-MM-DDTHH:mm:ss.", where + key
                )
    qr_url = document.get("qrUrl")
    if qr_url is not None and not isinstance(qr_url, str):
        raise FiscalError("BOX_BAD_CONFIG", "Must be text.", "qrUrl")
    return {"taxes": taxes, "vat_payer": bool(document.get("vatNumber")), "qr_url": qr_url}


def _is_date(text: str) -> bool:
    try:
        localtime.parse(text + "T00:00:00", "date")
    except FiscalError:
        return False
    return True


def check_day_date(text: str, field: str = "day_date") -> str:
    """The opening date of a fiscal day as the day string has it, YYYY-MM-DD; anything else refused."""
    if not _is_date(text):
        raise FiscalError(
            "BOX_BAD_DATE",
            "The day's opening date is a real date written YYYY-MM-DD (e.g. 2026-12-04), without a time.",
            field,
        )
    return text


def strict_unb64(text: Any, field: str) -> bytes:
    """Base64 exactly as FDMS writes it; the core's decoder (for the box's own text) skips stray bytes."""
    try:
        data = binascii.a2b_base64(text, strict_mode=True) if isinstance(text, str) else b""
    except (binascii.Error, ValueError):
        data = b""
    if not data or fdms.b64(data) != text:
        raise FiscalError(
            "BOX_BAD_BASE64", "This is not base64 as FDMS writes it (A-Z a-z 0-9 + / =).", field
        )
    return data


def receipt_of(body: Any) -> Any:
    """A SubmitReceipt body's receipt, its member named in any case as FDMS reads JSON names; else the body.

    `{"Receipt": {...}}` read as a bare receipt would be refused for a missing receiptType it does have.
    """
    if not isinstance(body, dict):
        return body
    names = [key for key in body if key.lower() == "receipt"]
    if not names:
        return body
    if len(names) > 1:
        raise FiscalError(
            "RCPT02", "The body holds more than one receipt: " + ", ".join(names) + ".", names[1]
        )
    inner = body[names[0]]
    if not isinstance(inner, dict):
        raise FiscalError("RCPT02", "A receipt must be a JSON object.", names[0])
    return inner


def _finding(code: str, colour: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"code": code, "colour": colour, "message": message, "field": field}


def _signature_checks(
    text: str, signature: bytes | None, public_key: Any, report: dict[str, Any], code: str
) -> None:
    if signature is None or public_key is None:
        return
    valid = signatures.verify(public_key, text.encode(), signature)
    report["signature_valid"] = valid
    if not valid:
        report["findings"].append(
            _finding(
                code,
                fdms.RED,
                "The signature does not verify over this string with the given key.",
                "signature",
            )
        )


# What the box sets on a sale, and the `fiscalbox explain receipt` option that gives each for a sale.
BOX_SET = (
    ("receiptCounter", "--counter N"),
    ("receiptGlobalNo", "--global-no N"),
    ("receiptDate", "--date D"),
)


def with_box_fields(receipt: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The receipt with the numbers and date the box would set, from `given` (None: keep the receipt's).

    A sale as the POS sends it has none of them; all that are still missing are named in one refusal.
    """
    for key, _ in BOX_SET:
        if given.get(key) is not None:
            receipt[key] = given[key]
    missing = [(key, option) for key, option in BOX_SET if receipt[key] is None]
    if missing:
        raise FiscalError(
            "RCPT02",
            "A sale lacks what the box sets: "
            + ", ".join(key for key, _ in missing)
            + ". Give "
            + " ".join(option for _, option in missing).replace("--date D", "--date YYYY-MM-DDTHH:MM:SS")
            + " (the values the box would give it), or explain the receipt the box stored: "
            "`fiscalbox-device receipt N --body | fiscalbox explain receipt - ...`.",
            missing[0][0],
        )
    return receipt


def explain_receipt(
    body: Any,
    device_id: int,
    previous_hash: str | None = None,
    private_key: Any = None,
    public_key: Any = None,
    signature_b64: str | None = None,
    qr_base: str = DEFAULT_QR_URL,
    config: dict[str, Any] | None = None,
    box_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the box signs for this receipt, what is wrong with it, and its QR when a signature is known.

    `private_key` signs the string (and its public half verifies a signature already in the receipt);
    `public_key` only verifies. `previous_hash` is the day's previous receipt's: none for receiptCounter 1,
    and its absence above 1 is a finding (the string is then not FDMS's). `config` (see `load_config`)
    switches on the rules that need FDMS's tax table and the VAT status. `box_fields` gives a sale the
    receiptCounter, receiptGlobalNo and receiptDate the box would set (see `with_box_fields`).
    """
    receipt = with_box_fields(fdms.parse_receipt(receipt_of(body)), box_fields or {})
    receipt = fdms.complete(receipt)
    context = None if config is None else fdms.Context(taxes=config["taxes"], vat_payer=config["vat_payer"])
    text = fdms.receipt_string(device_id, receipt, previous_hash)
    digest = fdms.hash_b64(text)
    counter = receipt["receiptCounter"]
    report: dict[str, Any] = {
        "kind": "receipt",
        "device_id": device_id,
        "receiptCounter": counter,
        "first_in_day": counter == 1,
        "previous_hash": previous_hash,
        "string": text,
        "hash": digest,
        "findings": fdms.validate(receipt, context) + _chain_findings(counter, previous_hash),
        "receiptTaxes": [_tax_view(t) for t in receipt["receiptTaxes"]],
        "receiptTotal": money.format_fixed(receipt["receiptTotal"], 2),
    }
    sent = receipt["receiptDeviceSignature"]
    if sent and sent["hash"] != digest:
        report["findings"].append(
            _finding(
                "RCPT020",
                fdms.RED,
                "The hash in receiptDeviceSignature is "
                + sent["hash"]
                + ", not the hash of the string the rules give.",
                "receiptDeviceSignature.hash",
            )
        )
    field = "signature"
    if signature_b64 is None and sent:
        signature_b64, field = sent["signature"], "receiptDeviceSignature.signature"
    signature = strict_unb64(signature_b64, field) if signature_b64 else None
    if private_key is not None:
        made = signatures.sign(private_key, text.encode())
        if signature is None:
            signature = made
        else:
            _signature_checks(text, signature, private_key.public_key(), report, "RCPT020")
            report["signature_made"] = fdms.b64(made)
    else:
        _signature_checks(text, signature, public_key, report, "RCPT020")
    if signature is not None:
        # The QR of a receipt that carries a signature is that signature's: a fresh ECDSA one would differ.
        data = fdms.qr_data(signature)
        report["signature"] = fdms.b64(signature)
        report["qr_data"] = data
        report["qr_url"] = fdms.qr_url(
            qr_base, device_id, receipt["receiptDate"], receipt["receiptGlobalNo"], data
        )
        report["verification_code"] = fdms.verification_code(data)
    return report


def _chain_findings(counter: int, previous_hash: str | None) -> list[dict[str, Any]]:
    """Only a day's first receipt (receiptCounter 1) leaves the previous hash out of its string."""
    if counter > 1 and previous_hash is None:
        return [
            _finding(
                "BOX_NO_PREVIOUS_HASH",
                fdms.YELLOW,
                f"receiptCounter is {counter}, so the string ends with the hash of the day's receipt "
                f"{counter - 1}; without --previous-hash this string, its hash and a signature made here "
                "are not what FDMS checks. Give --previous-hash.",
                "receiptCounter",
            )
        ]
    if counter == 1 and previous_hash is not None:
        return [
            _finding(
                "BOX_PREVIOUS_HASH_ON_FIRST",
                fdms.YELLOW,
                "receiptCounter is 1, the day's first receipt: FDMS leaves the previous hash out of its "
                "string, so this string is not what FDMS checks. Leave --previous-hash out.",
                "receiptCounter",
            )
        ]
    return []


def _tax_view(tax: dict[str, Any]) -> dict[str, Any]:
    return {
        "taxID": tax["taxID"],
        "taxCode": tax["taxCode"],
        "taxPercent": None if tax["taxPercent"] is None else money.format_fixed(tax["taxPercent"], 2),
        "taxAmount": money.format_fixed(tax["taxAmount"], 2),
        "salesAmountWithTax": money.format_fixed(tax["salesAmountWithTax"], 2),
        "token": fdms.receipt_taxes_text([tax]),
    }


def _counter_view(counter: dict[str, Any]) -> dict[str, Any]:
    percent = counter.get("fiscalCounterTaxPercent")
    return {
        "type": counter["fiscalCounterType"],
        "currency": counter["fiscalCounterCurrency"],
        "taxID": counter.get("fiscalCounterTaxID"),
        "taxPercent": None if percent is None else money.format_fixed(percent, 2),
        "moneyType": counter.get("fiscalCounterMoneyType"),
        "value": money.format_fixed(counter["fiscalCounterValue"], 2),
        "token": fdms.counter_text(counter),
    }


def explain_day(
    body: Any,
    device_id: int,
    day_date: str,
    day_no: int | None = None,
    private_key: Any = None,
    public_key: Any = None,
) -> dict[str, Any]:
    """The day string FDMS rebuilds from a CloseDay body (or a bare counter list), in signing order.

    `day_date` is the date the day was OPENED; a close date here is the classic BadCertificateSignature.
    """
    check_day_date(day_date)
    sent_signature = None
    if isinstance(body, dict):
        raw_counters = body.get("fiscalDayCounters", body.get("fiscalDayCounter"))
        if day_no is None and body.get("fiscalDayNo") is not None:
            day_no = body["fiscalDayNo"]
        sent_signature = body.get("fiscalDayDeviceSignature")
    else:
        raw_counters = body
    if not isinstance(raw_counters, list):
        raise FiscalError("RCPT02", "Give a CloseDay body or a list of counters.", "fiscalDayCounters")
    if day_no is None:
        raise FiscalError(
            "RCPT02", "The fiscal day number is needed (--day-no or fiscalDayNo).", "fiscalDayNo"
        )
    if not isinstance(day_no, int) or isinstance(day_no, bool) or not 0 < day_no < fdms.INT64:
        raise FiscalError("RCPT02", "The fiscal day number must be a positive whole number.", "fiscalDayNo")
    ordered = fdms.day_counters(fdms.parse_counters(raw_counters))
    text = fdms.day_string(device_id, day_no, day_date, ordered)
    digest = fdms.hash_b64(text)
    report: dict[str, Any] = {
        "kind": "day",
        "device_id": device_id,
        "day_no": day_no,
        "day_date": day_date,
        "counters": [_counter_view(c) for c in ordered],
        "string": text,
        "hash": digest,
        "findings": _counter_findings(raw_counters),
    }
    signature = None
    if isinstance(sent_signature, dict):
        if sent_signature.get("hash") not in (None, digest):
            report["findings"].append(
                _finding(
                    "BadCertificateSignature",
                    fdms.RED,
                    "The hash in fiscalDayDeviceSignature is "
                    + str(sent_signature["hash"])
                    + ", not the hash of the day string.",
                    "fiscalDayDeviceSignature.hash",
                )
            )
        if sent_signature.get("signature"):
            signature = strict_unb64(sent_signature["signature"], "fiscalDayDeviceSignature.signature")
    if private_key is not None:
        _signature_checks(text, signature, private_key.public_key(), report, "BadCertificateSignature")
        report["signature"] = fdms.b64(signatures.sign(private_key, text.encode()))
    else:
        _signature_checks(text, signature, public_key, report, "BadCertificateSignature")
    return report


def _counter_findings(raw_counters: list[Any]) -> list[dict[str, Any]]:
    """Defects seen in the field: zero counters sent, one counter sent twice, a JSON order other than the
    signing order. FDMS checks the signature over the counters as sent, so the last two fail the close with
    BadCertificateSignature: they are Red.
    """
    findings = []
    zeros = 0
    first: dict[Any, int] = {}
    sent = []
    for i, raw in enumerate(raw_counters):
        [(key, value)] = fdms.parse_counters([raw]).items()
        if key in first:
            findings.append(
                _finding(
                    "BOX_COUNTER_TWICE",
                    fdms.RED,
                    f"This counter repeats fiscalDayCounters[{first[key]}]; FDMS answers "
                    "BadCertificateSignature. Send each counter once, with the day's whole value.",
                    f"fiscalDayCounters[{i}]",
                )
            )
            continue
        first[key] = i
        if value == 0:
            zeros += 1
        else:
            sent.append(key)
    if zeros:
        findings.append(
            _finding(
                "BOX_ZERO_COUNTER",
                fdms.YELLOW,
                f"{zeros} zero-value counter(s) were sent; FDMS wants them left out.",
            )
        )
    if len(first) == len(raw_counters) and sent != sorted(sent):  # the signing order is the keys' order
        findings.append(
            _finding(
                "BOX_COUNTER_ORDER",
                fdms.RED,
                "The counters are not in signing order; FDMS checks the signature over them as sent and "
                "answers BadCertificateSignature. Send the JSON array in the day string's order.",
                "fiscalDayCounters",
            )
        )
    return findings
