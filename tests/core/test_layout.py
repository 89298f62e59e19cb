"""The printer-neutral layout: widths, wrapping, the Receipt48 fields and the X/Z report sections.

Runs under CPython and MicroPython alike (no pytest features)."""

from firmware.core import fdms, layout, money

SELLER = {
    "taxpayer_name": "Kudu Traders (Pvt) Ltd",
    "taxpayer_tin": "2000123456",
    "vat_number": "220012345",
    "branch_name": "Kudu Traders Avondale",
    "branch_address": "7 King George Rd, Harare",
    "serial": "KT-0001",
    "device_id": 321,
    "qr_url": "https://invoice.zimra.co.zw",
    "taxes": fdms.parse_taxes(
        [
            {"taxID": 1, "taxName": "Exempt"},
            {"taxID": 2, "taxPercent": "0", "taxName": "Zero rated"},
            {"taxID": 3, "taxPercent": "15", "taxName": "Standard"},
        ]
    ),
}
INFO = {"day_no": 84, "qr_data": "4C8BE27663330417", "original": None}


def _receipt(kind="FiscalInvoice", **extra):
    raw = {
        "receiptType": kind,
        "receiptCurrency": "USD",
        "receiptCounter": 15,
        "receiptGlobalNo": 451,
        "receiptDate": "2023-04-03T10:15:42",
        "invoiceNo": "INV-0015",
        "receiptLinesTaxInclusive": True,
        "receiptLines": [
            {
                "receiptLineName": "Maize meal 10kg",
                "receiptLinePrice": "11.5",
                "receiptLineQuantity": "2",
                "taxID": 3,
                "taxPercent": "15",
            },
            {
                "receiptLineName": "Bread",
                "receiptLinePrice": "1.25",
                "receiptLineQuantity": "1.5",
                "taxID": 2,
                "taxPercent": "0",
            },
            {
                "receiptLineName": "School fees",
                "receiptLinePrice": "100",
                "receiptLineQuantity": "1",
                "taxID": 1,
            },
        ],
        "receiptPayments": [
            {"moneyTypeCode": "Cash", "paymentAmount": "50"},
            {"moneyTypeCode": "Card", "paymentAmount": "74.88"},
        ],
    }
    raw.update(extra)
    receipt, _ = fdms.prepare(raw)
    return receipt


def _texts(doc):
    return [line.text for line in doc.lines]


def test_every_line_fits_its_paper():
    receipt = _receipt(receiptNotes="A note long enough to wrap over more than one line of a narrow receipt")
    for width in layout.WIDTHS:
        doc = layout.receipt_document(receipt, SELLER, INFO, width)
        for line in doc.lines:
            room = width // 2 if line.double else width
            if line.kind != "qr":
                assert len(line.text) <= room, (width, line.text)


def test_width_must_be_a_supported_paper():
    try:
        layout.Document(40)
    except ValueError:
        return
    raise AssertionError("a 40-column document was accepted")


def test_wrap_splits_at_spaces_and_cuts_long_words():
    assert layout.wrap("one two three", 7) == ["one two", "three"]
    assert layout.wrap("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    assert layout.wrap("", 10) == [""]
    assert layout.wrap("a\nb", 10) == ["a", "b"]


def test_pair_right_aligns_and_wraps_the_left_side():
    doc = layout.Document(32)
    doc.pair("Total", "12.00")
    doc.pair("A very long product name that will not fit", "1234.56")
    texts = _texts(doc)
    assert texts[0] == "Total" + " " * 22 + "12.00"
    assert texts[-1].endswith("1234.56") and len(texts[-1]) == 32
    assert len(texts) == 3


def test_row_never_cuts_an_amount():
    doc = layout.Document(32)
    doc.row(("Label far too long", "123456789.00"), (5, 8), (layout.LEFT, layout.RIGHT))
    texts = _texts(doc)
    assert texts[0] == "Label far too long"
    assert "123456789.00" in texts[1]


def test_receipt_has_the_mandatory_fields_in_order():
    doc = layout.receipt_document(_receipt(), SELLER, INFO, 48)
    text = doc.plain()
    wanted = [
        "FISCAL TAX INVOICE",
        "Kudu Traders (Pvt) Ltd",
        "TIN: 2000123456",
        "VAT No: 220012345",
        "Kudu Traders Avondale",
        "7 King George Rd, Harare",
        "Invoice No:",
        "15/451",
        "Fiscal day No:",
        "84",
        "INV-0015",
        "KT-0001",
        "321",
        "03/04/23 10:15",
        "Maize meal 10kg",
        "2 x 11.50",
        "23.00 C",
        "1.5 x 1.25",
        "School fees",
        "Invoice total, USD",
        "124.88",
        "Cash",
        "50.00",
        "Card",
        "74.88",
        "Number of items:",
        "4.5",
        "Incl. tax",
        "https://invoice.zimra.co.zw/00000003210304202300000004514C8BE27663330417",
        "4C8B-E276-6333-0417",
        "https://invoice.zimra.co.zw",
    ]
    at = 0
    for field in wanted:
        found = text.find(field, at)
        assert found >= 0, field
        at = found
    assert [line.kind for line in doc.lines].count("qr") == 1


def test_tax_table_rows_carry_net_tax_and_gross():
    text = layout.receipt_document(_receipt(), SELLER, INFO, 48).plain()
    # 23.00 at 15 % inclusive: tax 3.00, net 20.00; 0 %: 1.88; exempt 100.00 under its name
    assert "A Exempt" in text and "100.00" in text
    assert "B 0%" in text and "1.88" in text
    for row in text.split("\n"):
        if row.startswith("C 15%"):
            assert row.split() == ["C", "15%", "20.00", "3.00", "23.00"]
            break
    else:
        raise AssertionError("no 15 % row")


def test_non_vat_taxpayer_gets_a_fiscal_invoice_without_tax_table():
    seller = dict(SELLER)
    seller["vat_number"] = None
    text = layout.receipt_document(_receipt(), seller, INFO, 48).plain()
    assert "FISCAL INVOICE" in text and "TAX INVOICE" not in text
    assert "VAT No" not in text and "Incl. tax" not in text
    assert "23.00 C" not in text and "23.00" in text


def test_branch_name_equal_to_taxpayer_is_not_repeated():
    seller = dict(SELLER)
    seller["branch_name"] = seller["taxpayer_name"]
    text = layout.receipt_document(_receipt(), seller, INFO, 48).plain()
    assert text.count("Kudu Traders (Pvt) Ltd") == 1


def test_buyer_block_only_when_sent():
    assert "BUYER" not in layout.receipt_document(_receipt(), SELLER, INFO, 42).plain()
    buyer = {
        "buyerRegisterName": "Moyo Stores",
        "buyerTradeName": "Moyo",
        "buyerTIN": "2000654321",
        "VATNumber": "220065432",
        "buyerContacts": {"email": "moyo@example.co.zw", "phoneNo": "0772000000"},
        "buyerAddress": {"houseNo": "1", "street": "Fife Ave", "city": "Gweru", "province": "Midlands"},
    }
    text = layout.receipt_document(_receipt(buyerData=buyer), SELLER, INFO, 42).plain()
    for field in (
        "BUYER",
        "Moyo Stores",
        "2000654321",
        "220065432",
        "1, Fife Ave, Gweru, Midlands",
        "moyo@example.co.zw",
        "0772000000",
    ):
        assert field in text, field


def test_credit_note_names_the_credited_invoice():
    note = {"receiptGlobalNo": 440, "deviceID": 321, "fiscalDayNo": 83}
    receipt = _receipt("CreditNote", creditDebitNote=note)
    original = {
        "serial": "KT-0001",
        "global_no": 440,
        "date": "2023-04-02T16:00:00",
        "invoice_no": "INV-0004",
    }
    info = {"day_no": 84, "qr_data": "4C8BE27663330417", "original": original}
    text = layout.receipt_document(receipt, SELLER, info, 48).plain()
    at = text.find("CREDITED INVOICE")
    assert "CREDIT NOTE" in text and at > 0
    tail = text[at:]
    for field in ("KT-0001", "440", "02/04/23 16:00", "INV-0004"):
        assert field in tail, field
    other = layout.receipt_document(receipt, SELLER, INFO, 48).plain()  # invoice from another device
    assert "CREDITED INVOICE" in other and "440" in other and "83" in other


def test_debit_note_block():
    receipt = _receipt("DebitNote", creditDebitNote={"receiptID": 9001})
    text = layout.receipt_document(receipt, SELLER, INFO, 32).plain()
    assert "DEBITED INVOICE" in text and "9001" in text


def test_copy_adds_marks_and_changes_nothing_else():
    receipt = _receipt()
    first = layout.receipt_document(receipt, SELLER, INFO, 48)
    copy = layout.receipt_document(receipt, SELLER, INFO, 48, copy=True)
    marked = [line for line in copy.lines if line.text == layout.COPY_MARK]
    assert len(marked) == 2
    rest = [line for line in copy.lines if line.text != layout.COPY_MARK]
    assert rest[:-1] == first.lines  # the one extra rule sets the closing mark apart
    assert rest[-1].kind == "rule"


def test_legible_runs_before_widths_are_measured():
    def expand(text):
        return text.replace("ß", "ss")

    seller = dict(SELLER)
    seller["taxpayer_name"] = "Straße " * 8
    doc = layout.receipt_document(_receipt(), seller, INFO, 32, legible=expand)
    for line in doc.lines:
        assert "ß" not in line.text
        assert line.kind == "qr" or len(line.text) <= (16 if line.double else 32)


def test_unit_price_keeps_two_decimals_at_least():
    assert layout.unit_price(money.price("1.5")) == "1.50"
    assert layout.unit_price(money.price("0.125")) == "0.125"
    assert layout.unit_price(money.price("7")) == "7.00"
    assert layout.percent(money.percent("15.5")) == "15.5%"


def _report(status="FiscalDayClosed"):
    counters = fdms.new_counters()
    for receipt in (_receipt(), _receipt(receiptCurrency="ZWG")):
        fdms.update_counters(counters, receipt)
    note = _receipt(
        "CreditNote",
        receiptLines=[
            {
                "receiptLineName": "Maize",
                "receiptLinePrice": "-11.5",
                "receiptLineQuantity": "1",
                "taxID": 3,
                "taxPercent": "15",
            }
        ],
        receiptPayments=[{"moneyTypeCode": "Cash", "paymentAmount": "-11.5"}],
    )
    fdms.update_counters(counters, note)
    documents = [
        {"type": "CreditNote", "currency": "USD", "count": 1, "total": -1150},
        {"type": "FiscalInvoice", "currency": "USD", "count": 1, "total": 12488},
        {"type": "FiscalInvoice", "currency": "ZWG", "count": 1, "total": 12488},
    ]
    day = {
        "day_no": 84,
        "opened": "2023-04-03T08:00:00",
        "status": status,
        "closed_at": "2023-04-03T20:00:00",
    }
    return layout.report_document(day, counters, documents, SELLER, "2023-04-03T20:05:00", 48).plain()


def test_z_report_sections_per_currency():
    text = _report()
    assert "Z REPORT" in text and "X REPORT" not in text
    assert "03/04/2023 20:00:00" in text  # closed
    usd, zwg = text.find("USD\n"), text.find("ZWG\n")
    assert 0 < usd < zwg  # alphabetical
    part = text[usd:zwg]
    # net per tax, descending percent, exempt last: 15 % (23.00 - 11.50 = 11.50 gross, 1.50 tax)
    net = part[part.find("Net sales") : part.find("Taxes")]
    assert net.find("15%") < net.find("0%") < net.find("Exempt")
    assert "10.00" in net  # 11.50 - 1.50
    taxes = part[part.find("Taxes") : part.find("Gross")]
    assert "15%" in taxes and "0%" not in taxes and "Exempt" not in taxes
    assert "1.50" in taxes
    docs = part[part.find("Documents") :]
    assert "Credit notes" in docs and "-11.50" in docs
    assert "Invoices" in docs and "124.88" in docs and "Debit notes" in docs
    payments = part[part.find("Payments") : part.find("Documents")]
    assert "Cash" in payments and "38.50" in payments  # 50.00 - 11.50


def test_x_report_for_an_open_day():
    text = _report("FiscalDayOpened")
    assert "X REPORT" in text and "FiscalDayOpened" in text and "20/00" not in text
    assert "03/04/2023 20:05:00" in text  # printed at
