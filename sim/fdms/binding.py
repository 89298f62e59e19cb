"""Request bodies bound as FDMS's ASP.NET binds them, so that clients other than ours are judged fairly.

FDMS runs on ASP.NET, whose System.Text.Json reading (JsonSerializerDefaults.Web plus a string-enum
converter) is lenient in ways live clients rely on. Before an endpoint sees a body, `bind` rewrites it into
the canonical form the rest of the simulator (and the judge) expects:

- property names in any case (PropertyNameCaseInsensitive): `{"Receipt": {"ReceiptGlobalNo": 1}}`; when the
  same property is sent twice in different cases, the last one wins;
- enum values by name in any case, or by their integer index in the reference's declaration order (section
  3.1), also as a numeric string: `"moneyTypeCode": 0` is Cash. An index out of range is left as sent, and
  the structure check refuses it (400);
- numbers sent as numeric strings (NumberHandling AllowReadingFromString): `"receiptID": "50007"`,
  `"receiptTotal": "10.50"`. Strings with anything else stay strings (and get the usual 400).

Only the bodies ASP.NET binds (the JSON of the POST endpoints) are rewritten; an offline file's content is
parsed by FDMS itself after upload and is read as before. Properties the simulator does not know are kept as
sent. The box itself always sends the canonical form.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from sim.fdms.judge import COUNTER_TYPES, LINE_TYPES, MONEY_TYPES, PRINT_FORMS, RECEIPT_TYPES
from sim.fdms.state import dumps, loads

INT, DEC, TEXT, BOOL = "int", "decimal", "text", "bool"

_INT_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)", re.ASCII)
_NUMBER_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", re.ASCII)

SIGNATURE = {"hash": TEXT, "signature": TEXT}
ADDRESS = {"province": TEXT, "city": TEXT, "street": TEXT, "houseNo": TEXT, "district": TEXT}
BUYER = {
    "buyerRegisterName": TEXT,
    "buyerTradeName": TEXT,
    "buyerTIN": TEXT,
    "vatNumber": TEXT,  # the spec's VATNumber is the same property to a case-insensitive reader
    "buyerContacts": {"phoneNo": TEXT, "email": TEXT},
    "buyerAddress": ADDRESS,
}
RECEIPT = {
    "receiptType": RECEIPT_TYPES,
    "receiptCurrency": TEXT,
    "receiptCounter": INT,
    "receiptGlobalNo": INT,
    "invoiceNo": TEXT,
    "buyerData": BUYER,
    "receiptNotes": TEXT,
    "receiptDate": TEXT,
    "creditDebitNote": {"receiptID": INT, "deviceID": INT, "receiptGlobalNo": INT, "fiscalDayNo": INT},
    "receiptLinesTaxInclusive": BOOL,
    "receiptLines": [
        {
            "receiptLineType": LINE_TYPES,
            "receiptLineNo": INT,
            "receiptLineHSCode": TEXT,
            "receiptLineName": TEXT,
            "receiptLinePrice": DEC,
            "receiptLineQuantity": DEC,
            "receiptLineTotal": DEC,
            "taxCode": TEXT,
            "taxPercent": DEC,
            "taxID": INT,
        }
    ],
    "receiptTaxes": [
        {"taxCode": TEXT, "taxPercent": DEC, "taxID": INT, "taxAmount": DEC, "salesAmountWithTax": DEC}
    ],
    "receiptPayments": [{"moneyTypeCode": MONEY_TYPES, "paymentAmount": DEC}],
    "receiptTotal": DEC,
    "receiptPrintForm": PRINT_FORMS,
    "receiptDeviceSignature": SIGNATURE,
    "username": TEXT,
    "userNameSurname": TEXT,
    "userInfo": {"username": TEXT, "userFullName": TEXT},
}
COUNTER = {
    "fiscalCounterType": COUNTER_TYPES,
    "fiscalCounterCurrency": TEXT,
    "fiscalCounterTaxID": INT,
    "fiscalCounterTaxPercent": DEC,
    "fiscalCounterMoneyType": MONEY_TYPES,
    "fiscalCounterValue": DEC,
}
BODIES: dict[str, dict[str, Any]] = {
    "VerifyTaxpayerInformation": {"activationKey": TEXT, "deviceSerialNo": TEXT},
    "RegisterDevice": {"activationKey": TEXT, "certificateRequest": TEXT},
    "IssueCertificate": {"certificateRequest": TEXT},
    "OpenDay": {"fiscalDayNo": INT, "fiscalDayOpened": TEXT},
    "SubmitReceipt": {"receipt": RECEIPT},
    "CloseDay": {
        "fiscalDayNo": INT,
        "fiscalDayCounters": [COUNTER],
        "fiscalDayDeviceSignature": SIGNATURE,
        "receiptCounter": INT,
    },
}


def canonical(value: Any, kind: Any) -> Any:
    """`value` read as `kind` (an object schema, [item kind], enum names, INT, DEC, TEXT or BOOL)."""
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            return value
        names: dict[str, str] = {name.lower(): name for name in kind}
        result: dict[str, Any] = {}
        for key, item in value.items():
            name: str = names.get(str(key).lower(), str(key))
            result.pop(name, None)  # a repeated property: the last one wins, in the last one's place
            result[name] = canonical(item, kind.get(name))
        return result
    if isinstance(kind, list):
        return [canonical(item, kind[0]) for item in value] if isinstance(value, list) else value
    if isinstance(kind, tuple):
        return _enum(value, kind)
    if kind == INT and isinstance(value, str) and _INT_TEXT.fullmatch(value):
        return int(value)
    if kind == DEC and isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        return Decimal(value)
    return value


def _enum(value: Any, names: tuple[str, ...]) -> Any:
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return names[value] if 0 <= value < len(names) else value
    if isinstance(value, str):
        for name in names:
            if name.lower() == value.lower():
                return name
    return value


def bind(endpoint: str, body: bytes) -> bytes:
    """The body in canonical form for `endpoint`; unchanged when it already is, when the endpoint binds no
    JSON, or when it is not a JSON object at all (the endpoint then refuses it as before)."""
    schema = BODIES.get(endpoint)
    if schema is None or not body.strip():
        return body
    try:
        parsed = loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return body
    if not isinstance(parsed, dict):
        return body
    bound = canonical(parsed, schema)
    if bound == parsed:  # names and values as sent: keep the bytes too
        return body
    return dumps(bound).encode("utf-8")
