"""The integrator's debugger: canonical strings, hashes, findings and QR for a receipt or a day close.

FDMS answers a wrong signature with a bare RCPT020 or BadCertificateSignature. This module rebuilds exactly
what the box would sign, from the same core code, so the difference with what was sent can be seen.
Each function takes parsed JSON and returns a plain report dict; `host_tools.cli` prints it.
"""

from __future__ import annotations

import json
from typing import Any

from firmware.core import fdms, localtime, money
from firmware.core.errors import FiscalError
from hardware import signatures

DEFAULT_QR_URL = "https://fdmstest.zimra.co.zw"


def load_json(text: str, source: str) -> Any:
    """JSON with every decimal kept as its exact text, so no amount passes through a float."""
    try:
        return json.loads(text, parse_float=str)
    except json.JSONDecodeError as error:
        raise FiscalError(
            "BOX_BAD_JSON", f"{source} is not JSON: {error.msg} at line {error.lineno} column {error.colno}."
        ) from None


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


def explain_receipt(
    body: Any,
    device_id: int,
    previous_hash: str | None = None,
    private_key: Any = None,
    public_key: Any = None,
    signature_b64: str | None = None,
    qr_base: str = DEFAULT_QR_URL,
) -> dict[str, Any]:
    """What the box signs for this receipt, what is wrong with it, and its QR when a signature is known.

    `private_key` signs the string (and its public half verifies a signature already in the receipt);
    `public_key` only verifies. Without `previous_hash` the receipt is taken as the first of its day.
    """
    receipt = fdms.complete(fdms.parse_receipt(body))
    text = fdms.receipt_string(device_id, receipt, previous_hash)
    digest = fdms.hash_b64(text)
    report: dict[str, Any] = {
        "kind": "receipt",
        "device_id": device_id,
        "first_in_day": previous_hash is None,
        "string": text,
        "hash": digest,
        "findings": fdms.validate(receipt),
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
    if signature_b64 is None and sent:
        signature_b64 = sent["signature"]
    signature = fdms.unb64(signature_b64, "signature") if signature_b64 else None
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
    localtime.parse(day_date + "T00:00:00", "day_date")
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
    if not isinstance(day_no, int) or isinstance(day_no, bool):
        raise FiscalError(
            "RCPT02", "The fiscal day number is needed (--day-no or fiscalDayNo).", "fiscalDayNo"
        )
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
        "findings": _counter_findings(raw_counters, ordered),
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
            signature = fdms.unb64(sent_signature["signature"], "fiscalDayDeviceSignature.signature")
    if private_key is not None:
        _signature_checks(text, signature, private_key.public_key(), report, "BadCertificateSignature")
        report["signature"] = fdms.b64(signatures.sign(private_key, text.encode()))
    else:
        _signature_checks(text, signature, public_key, report, "BadCertificateSignature")
    return report


def _counter_findings(raw_counters: list[Any], ordered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two defects seen in the field: zero counters sent, and a JSON order other than the signing order."""
    findings = []
    sent = [
        fdms.counter_text(c) for raw in raw_counters for c in fdms.day_counters(fdms.parse_counters([raw]))
    ]
    zeros = len(raw_counters) - len(sent)
    if zeros:
        findings.append(
            _finding(
                "BOX_ZERO_COUNTER",
                fdms.YELLOW,
                f"{zeros} zero-value counter(s) were sent; FDMS wants them left out.",
            )
        )
    if sent != [fdms.counter_text(c) for c in ordered]:
        findings.append(
            _finding(
                "BOX_COUNTER_ORDER",
                fdms.YELLOW,
                "The counters are not in signing order; send the JSON array in the day string's order.",
                "fiscalDayCounters",
            )
        )
    return findings
