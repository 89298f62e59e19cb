import json

from core_support import raises, vectors

from firmware.core import fdms, money

V = vectors("fdms")


def _amount_or_none(value):
    return None if value is None else money.amount(value)


def test_receipt_vectors_string_and_hash():
    for case in V["receipts"]:
        receipt = fdms.complete(fdms.parse_receipt(case["receipt"]))
        text = fdms.receipt_string(case["device_id"], receipt, case["previous_hash"])
        assert text == case["string"], case["name"]
        assert fdms.hash_b64(text) == case["hash"], case["name"]


def test_receipt_vectors_completion():
    for case in V["receipts"]:
        if case.get("string_only"):
            continue
        receipt = fdms.complete(fdms.parse_receipt(case["receipt"]))
        want = [
            {
                "taxCode": t["taxCode"],
                "taxPercent": None if t["taxPercent"] is None else money.percent(t["taxPercent"]),
                "taxID": t["taxID"],
                "taxAmount": money.amount(t["taxAmount"]),
                "salesAmountWithTax": money.amount(t["salesAmountWithTax"]),
            }
            for t in case["expect_taxes"]
        ]
        assert receipt["receiptTaxes"] == want, case["name"]
        assert receipt["receiptTotal"] == money.amount(case["expect_total"]), case["name"]
        assert fdms.validate(receipt) == [], case["name"]


def test_day_vectors():
    for case in V["days"]:
        if "receipts" in case:
            counters = fdms.new_counters()
            for raw in case["receipts"]:
                fdms.update_counters(counters, fdms.complete(fdms.parse_receipt(raw)))
        else:
            counters = fdms.parse_counters(case["counters"])
        ordered = fdms.day_counters(counters)
        text = fdms.day_string(case["device_id"], case["day_no"], case["day_date"], ordered)
        assert text == case["string"], case["name"]
        if "hash" in case:
            assert fdms.hash_b64(text) == case["hash"], case["name"]


def test_literal_hashes():
    for case in V["literal_hashes"]:
        assert fdms.hash_b64(case["text"]) == case["hash"], case["name"]


def test_qr_vectors():
    for case in V["qr"]:
        url = fdms.qr_url(
            case["qr_url"], case["device_id"], case["receipt_date"], case["global_no"], case["qr_data"]
        )
        assert url == case["url"]
        assert fdms.verification_code(case["qr_data"]) == case["code"]


def test_qr_data_is_md5_of_raw_signature_bytes():
    # MD5 of the three bytes "abc" is 900150983cd24fb0...; the QR keeps 16 upper-case hex digits.
    assert fdms.qr_data(b"abc") == "900150983CD24FB0"


def test_common_names():
    for case in V["common_names"]:
        assert fdms.csr_common_name(case["serial"], case["device_id"]) == case["cn"]


def test_counters_json_follows_the_signed_order_and_drops_zeros():
    counters = fdms.parse_counters(V["days"][0]["counters"])
    ordered = fdms.day_counters(counters)
    assert [c["fiscalCounterType"] for c in ordered] == ["SaleByTax"] + ["BalanceByMoneyType"] * 3
    assert [c.get("fiscalCounterMoneyType") for c in ordered[1:]] == ["Cash", "Card", "Other"]
    wire_list = fdms.counters_wire(ordered)
    assert "fiscalCounterTaxPercent" not in wire_list[0]  # exempt: no percent at all
    assert str(wire_list[0]["fiscalCounterValue"]) == "6.00"


def test_server_strings():
    assert fdms.receipt_server_string("c2ln", 48377, "2019-09-19T15:43:12") == "c2ln483772019-09-19T15:43:12"
    counters = fdms.day_counters(fdms.parse_counters(V["days"][0]["counters"]))
    auto = fdms.day_server_string(37367, 20, "2026-09-07", "2026-09-07T22:00:00", "Auto", counters, "U0lH")
    assert auto == "37367202026-09-072026-09-07T22:00:00AUTO" + V["days"][0]["string"][17:] + "U0lH"
    manual = fdms.day_server_string(
        37367, 20, "2026-09-07", "2026-09-07T22:00:00", "Manual", counters, "U0lH"
    )
    assert manual.endswith("MANUAL" + V["days"][0]["string"][17:])


# --- the rules ------------------------------------------------------------------------------------------


def _sale(**changes):
    raw = {
        "receiptType": "FiscalInvoice",
        "receiptCurrency": "USD",
        "receiptGlobalNo": 11,
        "receiptCounter": 2,
        "invoiceNo": "INV-11",
        "receiptDate": "2026-09-08T10:00:00",
        "receiptLinesTaxInclusive": True,
        "receiptLines": [
            {
                "receiptLineName": "Bread",
                "receiptLinePrice": "1.15",
                "receiptLineQuantity": "2",
                "taxPercent": "15",
                "taxID": 3,
                "receiptLineHSCode": "1905",
            },
            {
                "receiptLineName": "Water",
                "receiptLinePrice": "0.50",
                "receiptLineQuantity": "1",
                "taxID": 1,
                "receiptLineHSCode": "22011000",
            },
        ],
        "receiptPayments": [{"moneyTypeCode": "Cash", "paymentAmount": "2.80"}],
    }
    for key in changes:
        raw[key] = changes[key]
    return raw


TAXES = fdms.parse_taxes(
    [
        {"taxID": 1, "taxName": "Exempt", "validFrom": "2023-01-01"},
        {"taxID": 2, "taxPercent": 0, "taxName": "Zero rated 0%", "validFrom": "2023-01-01"},
        {
            "taxID": 3,
            "taxPercent": "15",
            "taxName": "Standard rated 15%",
            "validFrom": "2023-01-01",
            "validTill": "2026-12-31",
        },
        {"taxID": 514, "taxPercent": 5, "taxName": "Non-VAT Withholding Tax", "validFrom": "2023-01-01"},
    ]
)

ORIGINAL = fdms.complete(fdms.parse_receipt(_sale(receiptDate="2026-09-01T10:00:00")))


def _context(**changes):
    args = {
        "taxes": TAXES,
        "vat_payer": True,
        "currencies": ("USD", "ZWG"),
        "day_opened": "2026-09-08T07:00:00",
        "day_max_hours": 24,
        "previous_in_day": {"receiptCounter": 1, "receiptGlobalNo": 10, "receiptDate": "2026-09-08T09:00:00"},
        "now": "2026-09-08T10:00:00",
        "invoice_seen": lambda no: no == "USED",
        "original": lambda note: (
            {"receipt": ORIGINAL, "notes_total": 0} if note.get("receiptID") == 7 else None
        ),
    }
    for key in changes:
        args[key] = changes[key]
    return fdms.Context(**args)


def _codes(raw, ctx=None):
    receipt = fdms.complete(fdms.parse_receipt(raw))
    return [f["code"] for f in fdms.validate(receipt, ctx or _context())]


def _credit(**changes):
    raw = _sale(receiptType="CreditNote", receiptNotes="Returned", creditDebitNote={"receiptID": 7})
    raw["receiptLines"] = [
        {
            "receiptLineName": "Bread",
            "receiptLinePrice": "-1.15",
            "receiptLineQuantity": "1",
            "taxPercent": "15",
            "taxID": 3,
            "receiptLineHSCode": "1905",
        }
    ]
    raw["receiptPayments"] = [{"moneyTypeCode": "Cash", "paymentAmount": "-1.15"}]
    for key in changes:
        raw[key] = changes[key]
    return raw


def test_a_clean_sale_and_credit_note_pass():
    assert _codes(_sale()) == []
    assert _codes(_credit()) == []


def test_each_rule_fires():
    lines = _sale()["receiptLines"]
    cases = [
        ("RCPT010", _sale(receiptCurrency="EUR"), None),
        ("RCPT011", _sale(receiptCounter=3), None),
        ("RCPT012", _sale(receiptGlobalNo=12), None),
        ("RCPT013", _sale(invoiceNo="USED"), None),
        ("RCPT014", _sale(receiptDate="2026-09-08T06:59:59"), _context(previous_in_day=None)),
        ("RCPT015", _sale(receiptType="DebitNote", receiptNotes="x"), None),
        ("RCPT016", _sale(receiptLines=[], receiptTotal="2.80", receiptTaxes=[]), None),
        ("RCPT017", _sale(receiptTaxes=[]), None),
        ("RCPT018", _sale(receiptPayments=[]), None),
        ("RCPT019", _sale(receiptTotal="2.81"), None),
        ("RCPT021", _sale(), _context(vat_payer=False)),
        ("RCPT022", _sale(receiptLines=[dict(lines[0], receiptLinePrice="-1.15")]), None),
        (
            "RCPT023",
            _sale(receiptLines=[dict(lines[0], receiptLineQuantity="-2", receiptLinePrice="-1.15")]),
            None,
        ),
        ("RCPT024", _sale(receiptLines=[dict(lines[0], receiptLineTotal="2.31"), lines[1]]), None),
        ("RCPT025", _sale(receiptLines=[dict(lines[0], taxPercent="14.5"), lines[1]]), None),
        (
            "RCPT025",
            _sale(receiptDate="2027-01-02T10:00:00"),
            _context(previous_in_day=None, day_opened=None, now=None),
        ),
        (
            "RCPT026",
            _sale(
                receiptTaxes=[
                    {"taxID": 1, "taxAmount": "0", "salesAmountWithTax": "0.50"},
                    {"taxID": 3, "taxPercent": 15, "taxAmount": "0.31", "salesAmountWithTax": "2.30"},
                ]
            ),
            None,
        ),
        (
            "RCPT027",
            _sale(
                receiptTaxes=[
                    {"taxID": 1, "taxAmount": "0", "salesAmountWithTax": "0.50"},
                    {"taxID": 3, "taxPercent": 15, "taxAmount": "0.30", "salesAmountWithTax": "2.31"},
                ]
            ),
            None,
        ),
        (
            "RCPT028",
            _sale(
                receiptPayments=[
                    {"moneyTypeCode": "Cash", "paymentAmount": "3.80"},
                    {"moneyTypeCode": "Card", "paymentAmount": "-1.00"},
                ]
            ),
            None,
        ),
        ("RCPT029", _sale(creditDebitNote={"receiptID": 7}), None),
        ("RCPT030", _sale(receiptDate="2026-09-08T09:00:00"), None),
        ("RCPT031", _sale(receiptDate="2026-09-08T11:00:00"), None),
        ("RCPT032", _credit(creditDebitNote={"receiptID": 8}), None),
        (
            "RCPT033",
            _credit(receiptDate="2027-09-02T10:00:00"),
            _context(taxes=None, previous_in_day=None, day_opened=None, now=None),
        ),
        ("RCPT034", _credit(receiptNotes=None), None),
        ("RCPT035", _credit(), _context(original=lambda note: {"receipt": ORIGINAL, "notes_total": -200})),
        (
            "RCPT036",
            _credit(
                receiptLines=[dict(lines[1], receiptLinePrice="-0.50")],
                receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "-0.50"}],
            ),
            _context(
                original=lambda note: {
                    "receipt": fdms.complete(fdms.parse_receipt(_sale(receiptLines=[lines[0]]))),
                    "notes_total": 0,
                }
            ),
        ),
        (
            "RCPT037",
            _sale(
                receiptLinesTaxInclusive=False,
                receiptTotal="2.80",
                receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "2.80"}],
            ),
            None,
        ),
        (
            "RCPT038",
            _sale(
                receiptLinesTaxInclusive=False,
                receiptTotal="3.15",
                receiptTaxes=[
                    {"taxID": 1, "taxAmount": "0", "salesAmountWithTax": "0.50"},
                    {"taxID": 3, "taxPercent": 15, "taxAmount": "0.35", "salesAmountWithTax": "2.66"},
                ],
                receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "3.15"}],
            ),
            None,
        ),
        ("RCPT039", _sale(receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "2.79"}]), None),
        (
            "RCPT040",
            _credit(
                receiptLines=[
                    dict(
                        lines[0], receiptLinePrice="1.15", receiptLineType="Discount", receiptLineQuantity="1"
                    )
                ]
            ),
            None,
        ),
        ("RCPT041", _sale(receiptDate="2026-09-09T07:00:01"), _context(now="2026-09-09T07:00:01")),
        ("RCPT042", _credit(receiptCurrency="ZWG"), None),
        ("RCPT043", _sale(buyerData={"buyerRegisterName": "Acme"}), None),
        ("RCPT043", _sale(buyerData={"buyerRegisterName": "Acme", "buyerTIN": "123"}), None),
        ("RCPT047", _sale(receiptLines=[dict(lines[0], receiptLineHSCode=None), lines[1]]), None),
        ("RCPT048", _sale(receiptLines=[lines[0], dict(lines[1], receiptLineHSCode="2201")]), None),
        ("RCPT048", _sale(receiptLines=[dict(lines[0], receiptLineHSCode="19051"), lines[1]]), None),
    ]
    for code, raw, ctx in cases:
        codes = _codes(raw, ctx)
        assert code in codes, code + " not found in " + str(codes)


def test_colours_follow_the_reference():
    assert fdms.RULES["RCPT014"][0] == "Yellow"
    assert fdms.RULES["RCPT031"][0] == "Yellow"
    assert fdms.RULES["RCPT041"][0] == "Yellow"
    assert fdms.RULES["RCPT030"][0] == "Red"
    yellow_only = fdms.validate(
        fdms.complete(fdms.parse_receipt(_sale(receiptDate="2026-09-08T11:00:00"))), _context()
    )
    assert [f["code"] for f in yellow_only] == ["RCPT031"]
    assert fdms.blocking(yellow_only) == []


def test_first_receipt_of_the_day_may_restart_global_numbering():
    ctx = _context(previous_in_day=None, first_in_day=True, last_global_no=10)
    assert _codes(_sale(receiptCounter=1, receiptGlobalNo=11), ctx) == []
    assert _codes(_sale(receiptCounter=1, receiptGlobalNo=1), ctx) == []
    assert "RCPT012" in _codes(_sale(receiptCounter=1, receiptGlobalNo=13), ctx)
    assert "RCPT011" in _codes(_sale(receiptCounter=2, receiptGlobalNo=11), ctx)


def test_structural_errors_name_the_field():
    bad_line = dict(_sale()["receiptLines"][0], receiptLineQuantity="two")
    error = raises("BOX_BAD_NUMBER", fdms.parse_receipt, _sale(receiptLines=[bad_line]))
    assert error.field == "receiptLines[0].receiptLineQuantity"
    assert raises("RCPT02", fdms.parse_receipt, _sale(receiptType="Invoice")).field == "receiptType"
    assert raises("RCPT02", fdms.parse_receipt, _sale(invoiceNo=None)).field == "invoiceNo"
    assert raises("RCPT02", fdms.parse_receipt, _sale(receiptLines="x")).field == "receiptLines"
    assert raises("BOX_BAD_DATE", fdms.parse_receipt, _sale(receiptDate="2026-09-08")).field == "receiptDate"
    assert raises("RCPT02", fdms.parse_receipt, [1, 2]).field == "receipt"


def test_submit_receipt_body_and_enums_case_insensitively():
    receipt = fdms.parse_receipt({"receipt": _sale(receiptType="fiscalInvoice")})
    assert receipt["receiptType"] == "FiscalInvoice"
    assert receipt["receiptPayments"][0]["moneyTypeCode"] == "Cash"


def test_credit_note_is_the_exact_negation_of_the_invoice():
    invoice = fdms.complete(fdms.parse_receipt(_sale()))
    raw = _sale(receiptType="CreditNote", receiptNotes="Refund", creditDebitNote={"receiptID": 7})
    raw["receiptLines"] = [
        dict(line, receiptLinePrice="-" + line["receiptLinePrice"]) for line in raw["receiptLines"]
    ]
    raw["receiptPayments"] = [{"moneyTypeCode": "Cash", "paymentAmount": "-2.80"}]
    credit = fdms.complete(fdms.parse_receipt(raw))
    assert credit["receiptTotal"] == -invoice["receiptTotal"]
    assert len(credit["receiptTaxes"]) == len(invoice["receiptTaxes"])
    for a, b in zip(credit["receiptTaxes"], invoice["receiptTaxes"]):  # noqa: B905 (MicroPython's zip)
        assert a["taxAmount"] == -b["taxAmount"] and a["salesAmountWithTax"] == -b["salesAmountWithTax"]


def test_malformed_values_are_fiscal_errors_naming_the_field():
    assert raises("RCPT02", fdms.parse_receipt, _sale(receiptCounter="\u00b2")).field == "receiptCounter"
    payment = [{"moneyTypeCode": "Cash", "paymentAmount": "\u00b2"}]
    error = raises("BOX_BAD_NUMBER", fdms.parse_receipt, _sale(receiptPayments=payment))
    assert error.field == "receiptPayments[0].paymentAmount"
    raises("RCPT02", fdms.parse_counters, None)
    raises("RCPT02", fdms.parse_counters, [5])
    bad_value = [
        {
            "fiscalCounterType": "SaleByTax",
            "fiscalCounterCurrency": "USD",
            "fiscalCounterTaxID": 1,
            "fiscalCounterValue": "\u00b2",
        }
    ]
    assert (
        raises("BOX_BAD_NUMBER", fdms.parse_counters, bad_value).field
        == "fiscalDayCounters[0].fiscalCounterValue"
    )


def test_a_note_names_its_original_fully():
    assert _codes(_credit(creditDebitNote={"receiptID": 7})) == []
    place = {"deviceID": 1, "receiptGlobalNo": 7, "fiscalDayNo": 3}
    codes = _codes(_credit(creditDebitNote=place), _context(original=None))
    assert "RCPT015" not in codes
    for partial in ({"receiptGlobalNo": 7}, {"deviceID": 1, "receiptGlobalNo": 7}):
        assert "RCPT015" in _codes(_credit(creditDebitNote=partial))


def test_a_note_without_original_or_text_reports_both():
    codes = _codes(_credit(creditDebitNote=None, receiptNotes=None))
    assert "RCPT015" in codes and "RCPT034" in codes


def test_lines_of_one_tax_with_different_percents_are_refused():
    lines = _sale()["receiptLines"]
    odd = dict(lines[0], taxPercent="14.5", receiptLineName="Other")
    receipt = fdms.complete(fdms.parse_receipt(_sale(receiptLines=[lines[0], odd])))
    findings = fdms.validate(receipt)  # no tax table known: the inconsistency alone must be caught
    assert [f["field"] for f in findings if f["code"] == "RCPT025"] == ["receiptLines[1].taxPercent"]


# --- what FDMS would answer 400 to, or flag Red, that the box once signed (found by tests/e2e/test_red_rules)


def test_blank_required_texts_are_missing():
    assert raises("RCPT02", fdms.parse_receipt, _sale(invoiceNo="   ")).field == "invoiceNo"
    blank_name = dict(_sale()["receiptLines"][0], receiptLineName=" ")
    error = raises("RCPT02", fdms.parse_receipt, _sale(receiptLines=[blank_name]))
    assert error.field == "receiptLines[0].receiptLineName"
    assert "RCPT034" in _codes(_credit(receiptNotes="  "))
    assert "RCPT043" in _codes(_sale(buyerData={"buyerRegisterName": "  ", "buyerTIN": "2000654321"}))


def test_buyer_and_cashier_fields_have_their_shape():
    buyer = {"buyerRegisterName": "Acme", "buyerTIN": "2000654321"}
    for extra, field in (
        ({"buyerTradeName": 5}, "buyerData.buyerTradeName"),
        ({"buyerContacts": "0772000000"}, "buyerData.buyerContacts"),
        ({"buyerContacts": {"phoneNo": 772000000}}, "buyerData.buyerContacts.phoneNo"),
        ({"buyerAddress": {"city": "c" * 251}}, "buyerData.buyerAddress.city"),
        ({"vatNumber": "220012345", "VATNumber": "2200123456"}, "buyerData.VATNumber"),
    ):
        with_extra = dict(buyer)
        for key in extra:
            with_extra[key] = extra[key]
        assert raises("RCPT02", fdms.parse_receipt, _sale(buyerData=with_extra)).field == field
    for key, value, field in (
        ("username", "u" * 101, "username"),
        ("userNameSurname", 7, "userNameSurname"),
        ("userInfo", "anna", "userInfo"),
        ("userInfo", {"userFullName": 5}, "userInfo.userFullName"),
    ):
        raw = _sale()
        raw[key] = value
        assert raises("RCPT02", fdms.parse_receipt, raw).field == field
    raw = _sale(userInfo={"username": "anna", "userFullName": "Anna Moyo"}, username="anna")
    receipt = fdms.parse_receipt(raw)
    assert receipt["userInfo"]["userFullName"] == "Anna Moyo" and receipt["username"] == "anna"
    with_contacts = dict(buyer)
    with_contacts["buyerContacts"] = {"phoneNo": "0772000000", "email": "a@b.zw"}
    assert _codes(_sale(buyerData=with_contacts)) == []


def test_numbers_beyond_what_fdms_and_the_journal_hold_are_refused():
    line = _sale()["receiptLines"][0]
    assert raises("RCPT02", fdms.parse_receipt, _sale(receiptLines=[dict(line, receiptLineNo=2**63)]))
    assert fdms.parse_receipt(_sale(receiptLines=[dict(line, receiptLineNo=2**63 - 1)]))
    # The journal keeps 64-bit cents: amounts stop at 15 digits before the point.
    most = "999999999999999.99"
    fits = dict(line, receiptLinePrice=most, receiptLineQuantity="1")
    pays = [{"moneyTypeCode": "Cash", "paymentAmount": most}]
    fdms.prepare(_sale(receiptLines=[fits], receiptPayments=pays))
    huge = dict(line, receiptLinePrice="0.01", receiptLineQuantity="100000000000000000")
    error = raises("BOX_BAD_NUMBER", fdms.prepare, _sale(receiptLines=[huge]))
    assert error.field == "receiptLines[0].receiptLineTotal"
    # Another tax group: each group fits, only their sum is too large.
    cent = dict(_sale()["receiptLines"][1], receiptLinePrice="0.01")
    split = [
        {"moneyTypeCode": "Cash", "paymentAmount": most},
        {"moneyTypeCode": "Card", "paymentAmount": "0.01"},
    ]
    error = raises("BOX_BAD_NUMBER", fdms.prepare, _sale(receiptLines=[fits, cent], receiptPayments=split))
    assert error.field == "receiptTotal"


def test_a_note_naming_a_receipt_id_is_judged_by_that_id():
    by_place = {"deviceID": 1, "receiptGlobalNo": 10, "fiscalDayNo": 2}
    asked = []

    def original(note):
        asked.append(note)
        return {"receipt": ORIGINAL, "notes_total": 0} if note["receiptGlobalNo"] == 10 else None

    ctx = _context(original=original)
    assert _codes(_credit(creditDebitNote=by_place), ctx) == []
    both = dict(by_place, receiptID=8)  # FDMS takes the ID, which names no invoice here
    assert "RCPT032" in _codes(_credit(creditDebitNote=both), ctx)
    assert asked[-1] == {"receiptID": 8, "deviceID": None, "receiptGlobalNo": None, "fiscalDayNo": None}


# --- the sale is parsed strictly: unknown keys and untypable text are refused, naming the field


def test_a_misspelt_key_is_refused_not_dropped():
    raw = _sale()
    del raw["receiptLinesTaxInclusive"]
    raw["receiptLinesTaxInclusiv"] = False  # once issued as tax-inclusive: the tax was wrong
    error = raises("BOX_SALE_FIELD", fdms.parse_receipt, raw)
    assert error.field == "receiptLinesTaxInclusiv"
    assert "receiptLinesTaxInclusive" in error.message


def _with(raw, path, value):
    """`raw` with `value` set at `path` (keys and list indexes), the levels on the way created."""
    node = raw
    for step in path[:-1]:
        if isinstance(step, str) and step not in node:
            node[step] = {}
        node = node[step]
    node[path[-1]] = value
    return raw


BUYER = {"buyerRegisterName": "Acme", "buyerTIN": "2000654321"}


def _full_sale():
    """A sale with every optional level present, so that each can carry a bad key or text."""
    buyer = dict(BUYER, buyerContacts={"phoneNo": "0772000000"}, buyerAddress={"city": "Harare"})
    raw = _sale(buyerData=buyer, userInfo={"username": "anna"}, receiptNotes="Thank you")
    lines = raw["receiptLines"]
    raw["receiptTaxes"] = [
        {"taxCode": "B", "taxID": 1, "taxAmount": "0", "salesAmountWithTax": "0.50"},
        {"taxCode": "A", "taxID": 3, "taxPercent": "15", "taxAmount": "0.30", "salesAmountWithTax": "2.30"},
    ]
    raw["receiptLines"] = [dict(lines[0], taxCode="A"), dict(lines[1], taxCode="B")]
    return raw


def test_unknown_keys_are_refused_at_every_level():
    assert _codes(_full_sale()) == []
    for path, field in (
        (("receiptTotals",), "receiptTotals"),
        (("receiptLines", 1, "receiptLineNam"), "receiptLines[1].receiptLineNam"),
        (("receiptTaxes", 0, "taxPercentage"), "receiptTaxes[0].taxPercentage"),
        (("receiptPayments", 0, "currency"), "receiptPayments[0].currency"),
        (("buyerData", "buyerName"), "buyerData.buyerName"),
        (("buyerData", "buyerContacts", "mobile"), "buyerData.buyerContacts.mobile"),
        (("buyerData", "buyerAddress", "town"), "buyerData.buyerAddress.town"),
        (("userInfo", "role"), "userInfo.role"),
    ):
        error = raises("BOX_SALE_FIELD", fdms.parse_receipt, _with(_full_sale(), path, "x"))
        assert error.field == field, error.field
    credit = _credit()
    credit["creditDebitNote"]["receiptNo"] = 7
    assert raises("BOX_SALE_FIELD", fdms.parse_receipt, credit).field == "creditDebitNote.receiptNo"
    signed = _sale(receiptDeviceSignature={"hash": "aGFzaA==", "signature": "c2ln", "certificate": "x"})
    assert raises("BOX_SALE_FIELD", fdms.parse_receipt, signed).field == "receiptDeviceSignature.certificate"
    wrapped = {"receipt": _sale(), "deviceID": 1}
    assert raises("BOX_SALE_FIELD", fdms.parse_receipt, wrapped).field == "deviceID"
    # An unknown key's name is shown safely, whatever it holds.
    odd = raises("BOX_SALE_FIELD", fdms.parse_receipt, _sale(**{"note\x1b[2J": 1}))
    assert odd.field == "note\\u001b[2J" and "\x1b" not in odd.message


def test_the_fields_the_box_sets_itself_are_known():
    raw = _sale(receiptDeviceSignature={"hash": "aGFzaA==", "signature": "c2ln"})
    receipt = fdms.parse_receipt(raw)
    assert receipt["receiptCounter"] == 2 and receipt["receiptGlobalNo"] == 11
    assert receipt["receiptDate"] == "2026-09-08T10:00:00"
    assert receipt["receiptDeviceSignature"]["signature"] == "c2ln"
    # Both spellings of the buyer's VAT number are known (the spec's and the Swagger's).
    for key in ("vatNumber", "VATNumber"):
        buyer = dict(BUYER)
        buyer[key] = "220012345"
        assert fdms.parse_receipt(_sale(buyerData=buyer))["buyerData"]["vatNumber"] == "220012345"


# Each kind a text must not hold: C0 controls (NUL, ESC, CR, LF, TAB), DEL, C1, bidirectional overrides and
# isolates, lone surrogates (what json.loads('"\ud800"') gives).
FORBIDDEN = ("\x00", "\x1b", "\r", "\n", "\t", "\x7f", "\x85", "\x9f", "\u202a", "\u202e", "\u2066", "\u2069")
SURROGATES = (json.loads('"\\ud800"'), json.loads('"\\udfff"'), "\udc80")

TEXT_FIELDS = (
    (("invoiceNo",), "invoiceNo"),
    (("receiptNotes",), "receiptNotes"),
    (("receiptCurrency",), "receiptCurrency"),
    (("username",), "username"),
    (("userNameSurname",), "userNameSurname"),
    (("receiptLines", 1, "receiptLineName"), "receiptLines[1].receiptLineName"),
    (("receiptLines", 0, "receiptLineHSCode"), "receiptLines[0].receiptLineHSCode"),
    (("receiptLines", 0, "taxCode"), "receiptLines[0].taxCode"),
    (("receiptTaxes", 1, "taxCode"), "receiptTaxes[1].taxCode"),
    (("buyerData", "buyerRegisterName"), "buyerData.buyerRegisterName"),
    (("buyerData", "buyerTradeName"), "buyerData.buyerTradeName"),
    (("buyerData", "buyerTIN"), "buyerData.buyerTIN"),
    (("buyerData", "vatNumber"), "buyerData.vatNumber"),
    (("buyerData", "buyerContacts", "email"), "buyerData.buyerContacts.email"),
    (("buyerData", "buyerAddress", "street"), "buyerData.buyerAddress.street"),
    (("userInfo", "userFullName"), "userInfo.userFullName"),
)


def test_texts_refuse_control_characters_bidi_overrides_and_lone_surrogates():
    for char in FORBIDDEN + SURROGATES:
        for path, field in TEXT_FIELDS:
            error = raises("BOX_SALE_TEXT", fdms.parse_receipt, _with(_full_sale(), path, "A" + char))
            assert error.field == field, field
            assert ("U+%04X" % ord(char)) in error.message
            error.message.encode()  # the refusal itself is always printable UTF-8
    assert (
        "lone surrogate"
        in raises("BOX_SALE_TEXT", fdms.parse_receipt, _sale(invoiceNo=SURROGATES[0])).message
    )


def test_texts_keep_every_other_character():
    # Accents, CJK, the euro sign, a no-break space, a soft hyphen, Arabic, an emoji joined by U+200D.
    text = "Caf\u00e9 \u00fc\u00df \u65e5\u672c \u20ac5\u00a0\u00ad \u0627\u0644\u062e\u0628\u0632"
    text += " \U0001f469\u200d\U0001f373"
    line = dict(_sale()["receiptLines"][0], receiptLineName=text)
    receipt = fdms.parse_receipt(_sale(invoiceNo=text, receiptLines=[line]))
    assert receipt["invoiceNo"] == text and receipt["receiptLines"][0]["receiptLineName"] == text


# --- GetConfig's tax table, as FDMS sends it: JSON numbers


def test_config_tax_percents_are_read_exactly_from_json_numbers():
    table = [
        {"taxID": 1, "taxName": "Exempt", "validFrom": "2023-01-01"},
        {"taxID": 2, "taxPercent": 0, "taxName": "Zero rated 0%"},
        {"taxID": 3, "taxPercent": 15, "taxName": "Standard rated 15%"},
        {"taxID": 517, "taxPercent": 15.5, "taxName": "Standard rated 15.5%"},
        {"taxID": 518, "taxPercent": 14.25, "taxName": "A quarter"},
        {"taxID": 519, "taxPercent": 100.0, "taxName": "Whole"},
    ]
    assert [t["taxPercent"] for t in fdms.parse_taxes(table)] == [None, 0, 1500, 1550, 1425, 10000]
    # The same numbers as json.loads(parse_float=str) keeps them, exponents included.
    for text, hundredths in (("15.5", 1550), ("1.55E1", 1550), ("155e-1", 1550), ("0.0", 0), ("1e2", 10000)):
        assert fdms.parse_taxes([{"taxID": 9, "taxPercent": text}])[0]["taxPercent"] == hundredths


def test_config_tax_percents_that_are_not_exact_hundredths_are_refused():
    for value in (
        15.555,
        "15.555",
        -5,
        -0.5,
        "-15",
        True,
        False,
        float("nan"),
        float("inf"),
        "1e999",
        "abc",
        1e-05,
    ):
        error = raises("BOX_BAD_NUMBER", fdms.parse_taxes, [{"taxID": 4}, {"taxID": 3, "taxPercent": value}])
        assert error.field == "applicableTaxes[1].taxPercent"
    raises("RCPT02", fdms.parse_taxes, {"taxID": 3})
    assert (
        raises("RCPT02", fdms.parse_taxes, [{"taxID": 3, "taxName": 15}]).field
        == "applicableTaxes[0].taxName"
    )


def test_a_refusal_quoting_the_input_shows_its_control_characters_escaped():
    for bad in ("1.\x1b[2J5", "1." + SURROGATES[0]):
        error = raises("BOX_BAD_NUMBER", fdms.parse_receipt, _sale(receiptTotal=bad))
        assert error.field == "receiptTotal" and fdms._bad_character(error.message) < 0
        assert "\\u" in error.message and fdms._bad_character(str(error)) < 0
    error = raises("BOX_BAD_NUMBER", fdms.parse_taxes, [{"taxID": 3, "taxPercent": "1\x1b5"}])
    assert error.message == "'1\\u001b5' is not a decimal number."
