"""Bodies as other clients send them (any-case names, enum indexes, numbers as strings) are bound as ASP.NET
binds them and judged exactly as their canonical twins."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from fdms_rig import Device

from sim.fdms import binding
from sim.fdms.judge import COUNTER_TYPES, LINE_TYPES, MONEY_TYPES, PRINT_FORMS, RECEIPT_TYPES

ENUMS = {
    "receiptType": RECEIPT_TYPES,
    "receiptLineType": LINE_TYPES,
    "moneyTypeCode": MONEY_TYPES,
    "receiptPrintForm": PRINT_FORMS,
    "fiscalCounterType": COUNTER_TYPES,
    "fiscalCounterMoneyType": MONEY_TYPES,
}


def lenient(value: Any, key: str = "") -> Any:
    """`value` as a lenient client sends it: PascalCase names, enums by index, every number as a string."""
    if isinstance(value, dict):
        return {k[0].upper() + k[1:]: lenient(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [lenient(item, key) for item in value]
    if key in ENUMS and isinstance(value, str):
        return ENUMS[key].index(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def test_a_lenient_receipt_is_judged_exactly_as_its_canonical_twin(
    new_device: Callable[[int], Device],
) -> None:
    canonical, loose = new_device(10001), new_device(10002)
    for made in (canonical, loose):
        assert made.register().status == 200
        assert made.open_day(1, lenient if made is loose else dict).status == 200
    stranger = ec.generate_private_key(ec.SECP256R1())
    seen = []
    for case in ("clean", "clean", "wrong key", "gap", "clean"):
        answers = []
        for made, shape in ((canonical, dict), (loose, lenient)):
            if case == "gap":
                made.global_no += 1
            body = made.receipt(sign_with=stranger if case == "wrong key" else None)
            answer = made.submit(shape(body))
            assert answer.status == 200, answer.body
            answers.append(answer.body.get("validationErrors", []))
        assert answers[0] == answers[1], case
        seen.append({e["validationErrorColor"] for e in answers[1]})
    assert seen == [set(), set(), {"Red"}, {"Grey"}, set()]
    held = loose.sim.held_receipts(10002)[0]["receipt"]
    assert held["receiptType"] == "FiscalInvoice" and held["receiptGlobalNo"] == 1
    assert held["receiptPayments"][0]["moneyTypeCode"] == "Cash"


def test_a_day_sent_leniently_closes(device: Device) -> None:
    assert device.open_day(1, lenient).body["fiscalDayNo"] == 1
    for price in ("11.50", "2.25"):
        answer = device.submit(lenient(device.receipt(price)))
        assert answer.status == 200 and "validationErrors" not in answer.body, answer.body
    close = lenient(device.close_body())
    assert "FiscalCounterMoneyType" in close["FiscalDayCounters"][-1]
    assert device.call("POST", "CloseDay", close).status == 200
    assert (
        device.wait_status("FiscalDayClosed", "FiscalDayCloseFailed")["fiscalDayStatus"] == "FiscalDayClosed"
    )


def test_enum_indexes_follow_the_reference_order_and_bad_values_stay_as_sent() -> None:
    body = {
        "RECEIPT": {
            "receiptType": 2,
            "ReceiptLines": [{"receiptLineType": "1", "RECEIPTLINENO": "-3", "receiptLinePrice": "1.5e1"}],
            "receiptPayments": [
                {"moneyTypeCode": 5},
                {"moneyTypeCode": 7},
                {"moneyTypeCode": "mobilewallet"},
            ],
            "receiptPrintForm": True,
            "CreditDebitNote": {"receiptID": "50007"},
            "receiptCounter": "1.0",
            "receiptTotal": " 10",
            "somethingElse": "7",
        }
    }
    receipt = binding.canonical(body, binding.BODIES["SubmitReceipt"])["receipt"]
    assert receipt["receiptType"] == "DebitNote" and receipt["creditDebitNote"] == {"receiptID": 50007}
    assert receipt["receiptLines"] == [
        {"receiptLineType": "Discount", "receiptLineNo": -3, "receiptLinePrice": 15}
    ]
    assert [p["moneyTypeCode"] for p in receipt["receiptPayments"]] == ["BankTransfer", 7, "MobileWallet"]
    assert receipt["receiptPrintForm"] is True
    assert (receipt["receiptCounter"], receipt["receiptTotal"]) == ("1.0", " 10")
    assert receipt["somethingElse"] == "7"
    counters = binding.canonical(
        {"fiscalDayCounters": [{"FiscalCounterType": 6, "fiscalCounterValue": "-1.25"}]},
        binding.BODIES["CloseDay"],
    )["fiscalDayCounters"]
    assert counters == [{"fiscalCounterType": "BalanceByMoneyType", "fiscalCounterValue": Decimal("-1.25")}]


def test_a_canonical_body_is_passed_on_byte_for_byte() -> None:
    body = b'{"receipt": {"receiptTotal": 10.50, "receiptType": "FiscalInvoice"}}'
    assert binding.bind("SubmitReceipt", body) is body
    assert binding.bind("SubmitReceipt", b"not json") == b"not json"
    assert binding.bind("SubmitReceipt", b'{"Receipt": {}}') == b'{"receipt":{}}'
