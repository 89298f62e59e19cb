"""Receipts and day reports as printer-neutral documents: lines with alignment, emphasis, size, rules, a QR.

The fields and their order follow ZIMRA's Receipt48 template and the X/Z reports (reference sections 10.4,
10.5 and 12). A driver turns a Document into printer bytes; the layout never knows the printer, only its
width in columns and, through `legible`, what its code page can show. Everything here is MicroPython-clean:
no str.ljust/center, no textwrap, no floats.
"""

from firmware.core import fdms, money

WIDTHS = (32, 42, 48)  # 58 mm paper, and 80 mm paper with the 13- and 12-dot fonts

LEFT = "left"
CENTER = "center"
RIGHT = "right"

TITLES = {
    "FiscalInvoice": "FISCAL TAX INVOICE",
    "CreditNote": "CREDIT NOTE",
    "DebitNote": "DEBIT NOTE",
}
NON_VAT_INVOICE = "FISCAL INVOICE"
NOTE_BLOCK = {"CreditNote": "CREDITED INVOICE", "DebitNote": "DEBITED INVOICE"}
COPY_MARK = "*** COPY ***"
MONEY_NAMES = {
    "Cash": "Cash",
    "Card": "Card",
    "MobileWallet": "Mobile wallet",
    "Coupon": "Coupon",
    "Credit": "Credit",
    "BankTransfer": "Bank transfer",
    "Other": "Other",
}
DOCUMENT_NAMES = (("FiscalInvoice", "Invoices"), ("CreditNote", "Credit notes"), ("DebitNote", "Debit notes"))


class Line:
    """One printed line, or a rule, a blank, or the QR block (kind 'text', 'rule', 'blank', 'qr')."""

    def __init__(self, kind, text="", align=LEFT, bold=False, double=False):
        self.kind = kind
        self.text = text
        self.align = align
        self.bold = bold
        self.double = double  # double width and height: half as many columns

    def __eq__(self, other):
        return isinstance(other, Line) and self.key() == other.key()

    def key(self):
        return (self.kind, self.text, self.align, self.bold, self.double)

    def __repr__(self):
        return "Line" + repr(self.key())


def _pad(text, width, align):
    room = width - len(text)
    if room <= 0:
        return text
    if align == RIGHT:
        return " " * room + text
    if align == CENTER:
        return " " * (room // 2) + text + " " * (room - room // 2)
    return text + " " * room


def wrap(text, width):
    """Split text into lines of at most `width` characters at spaces; a word longer than a line is cut."""
    out = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            if not word:
                continue
            while len(word) > width:
                if line:
                    out.append(line)
                    line = ""
                out.append(word[:width])
                word = word[width:]
            if not line:
                line = word
            elif len(line) + 1 + len(word) <= width:
                line = line + " " + word
            else:
                out.append(line)
                line = word
        if line or not out:
            out.append(line)
    return out


class Document:
    """A list of Lines laid out for `width` columns. `legible` maps text the printer cannot show to text it
    can (a code-page-aware transliteration from the driver); it runs before any width is measured."""

    def __init__(self, width, legible=None):
        if width not in WIDTHS:
            raise ValueError("width must be one of 32, 42 or 48 columns")
        self.width = width
        self.legible = legible
        self.lines = []

    def _show(self, text):
        text = "" if text is None else str(text)
        return self.legible(text) if self.legible is not None else text

    def text(self, text, align=LEFT, bold=False, double=False):
        room = self.width // 2 if double else self.width
        for piece in wrap(self._show(text), room):
            self.lines.append(Line("text", piece, align, bold, double))

    def pair(self, left, right, bold=False):
        """`left` flush left and `right` flush right on one line; the left side wraps when both don't fit."""
        left, right = self._show(left), self._show(right)
        if len(left) + 1 + len(right) <= self.width:
            gap = self.width - len(left) - len(right)
            self.lines.append(Line("text", left + " " * gap + right, LEFT, bold))
            return
        pieces = wrap(left, self.width)
        for piece in pieces[:-1]:
            self.lines.append(Line("text", piece, LEFT, bold))
        self._pair_tail(pieces[-1], right, bold)

    def _pair_tail(self, left, right, bold):
        if len(left) + 1 + len(right) <= self.width:
            self.lines.append(
                Line("text", left + " " * (self.width - len(left) - len(right)) + right, LEFT, bold)
            )
        else:
            self.lines.append(Line("text", left, LEFT, bold))
            self.lines.append(Line("text", _pad(right, self.width, RIGHT), LEFT, bold))

    def row(self, cells, widths, aligns, bold=False):
        """A table row, each cell padded to its width. When a cell does not fit, the first cell gets a line of
        its own and the others follow under it: an amount is never cut."""
        cells = [self._show(cell) for cell in cells]
        fits = True
        for i in range(len(cells)):
            if len(cells[i]) > widths[i]:
                fits = False
        if not fits:
            self.text(cells[0], LEFT, bold)
            cells[0] = ""
        parts = [_pad(cells[i], widths[i], aligns[i]) for i in range(len(cells))]
        self.lines.append(Line("text", " ".join(parts), LEFT, bold))

    def rule(self, char="-"):
        self.lines.append(Line("rule", char * self.width))

    def blank(self):
        self.lines.append(Line("blank"))

    def qr(self, data):
        self.lines.append(Line("qr", data, CENTER))

    def plain(self):
        """The document as plain text for screens and logs: aligned lines, the QR as a marker, double-size
        lines at normal size (the virtual printer's dump shows the paper itself)."""
        out = []
        for line in self.lines:
            if line.kind == "qr":
                out.append(_pad("[QR " + line.text + "]", self.width, CENTER).rstrip())
            elif line.kind == "blank":
                out.append("")
            else:
                out.append(_pad(line.text, self.width, line.align).rstrip())
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Formatting of values


def amount(cents):
    return money.format_fixed(cents, money.AMOUNT_PLACES)


def quantity(micros):
    return money.format_short(micros, money.QUANTITY_PLACES)


def unit_price(micros):
    """A price with two decimals at least and more only when it has them: 1.5 -> 1.50, 0.125 -> 0.125."""
    text = money.format_short(micros, money.PRICE_PLACES)
    whole, dot, frac = text.partition(".")
    return whole + "." + (frac + "00")[: max(2, len(frac))]


def percent(hundredths):
    return money.format_short(hundredths, money.PERCENT_PLACES) + "%"


def printed_date(text):
    """YYYY-MM-DDTHH:mm:ss -> dd/MM/yy HH:mm, the Receipt48 template's form."""
    return text[8:10] + "/" + text[5:7] + "/" + text[2:4] + " " + text[11:16]


def report_date(text):
    """YYYY-MM-DDTHH:mm:ss -> dd/MM/yyyy HH:mm:ss: a report keeps the seconds and the full year."""
    return text[8:10] + "/" + text[5:7] + "/" + text[0:4] + " " + text[11:19]


def tax_names(taxes):
    """{(taxID, percent or None): name} from the settings' tax table (parsed)."""
    names = {}
    for tax in taxes or []:
        names[(tax["taxID"], tax["taxPercent"])] = tax["taxName"]
    return names


def tax_label(pct, name):
    """What the tax table prints for a tax: its percent, or its name when exempt."""
    if pct is None:
        return name or "Exempt"
    return percent(pct)


# ---------------------------------------------------------------------------------------------------------
# The seller, shared by receipts and reports


def _seller(doc, seller):
    doc.text(seller["taxpayer_name"], CENTER, True)
    doc.text("TIN: " + str(seller["taxpayer_tin"]), CENTER)
    if seller.get("vat_number"):
        doc.text("VAT No: " + str(seller["vat_number"]), CENTER)
    branch = seller.get("branch_name") or ""
    if branch and branch != seller["taxpayer_name"]:
        doc.text(branch, CENTER)
    if seller.get("branch_address"):
        doc.text(seller["branch_address"], CENTER)
    if seller.get("branch_email"):
        doc.text(seller["branch_email"], CENTER)
    if seller.get("branch_phone"):
        doc.text("Tel: " + str(seller["branch_phone"]), CENTER)


def _device(doc, seller):
    doc.pair("Device serial No:", seller["serial"])
    doc.pair("Device ID:", str(seller["device_id"]))


# ---------------------------------------------------------------------------------------------------------
# The fiscal receipt (Receipt48)


def receipt_title(receipt_type, vat_payer):
    if receipt_type == "FiscalInvoice" and not vat_payer:
        return NON_VAT_INVOICE
    return TITLES[receipt_type]


def _buyer(doc, buyer):
    doc.text("BUYER", LEFT, True)
    doc.text(buyer.get("buyerRegisterName") or "")
    if buyer.get("buyerTradeName"):
        doc.text(buyer["buyerTradeName"])
    if buyer.get("buyerTIN"):
        doc.pair("TIN:", buyer["buyerTIN"])
    if buyer.get("vatNumber"):
        doc.pair("VAT No:", buyer["vatNumber"])
    address = buyer.get("buyerAddress")
    if isinstance(address, dict):
        parts = [address.get(k) for k in ("houseNo", "street", "city", "province")]
        text = ", ".join([str(p) for p in parts if p])
        if text:
            doc.text(text)
    contacts = buyer.get("buyerContacts")
    if isinstance(contacts, dict):
        if contacts.get("email"):
            doc.text(contacts["email"])
        if contacts.get("phoneNo"):
            doc.text("Tel: " + str(contacts["phoneNo"]))
    doc.rule()


def _note_block(doc, receipt_type, note, original):
    """The invoice a credit or debit note refers to: its device, number, date and customer reference."""
    doc.text(NOTE_BLOCK[receipt_type], LEFT, True)
    if original is not None:
        doc.pair("Device serial No:", original["serial"])
        doc.pair("Invoice No:", str(original["global_no"]))
        doc.pair("Date:", printed_date(original["date"]))
        doc.pair("Customer ref:", original["invoice_no"])
    else:  # issued on another device: print what the note itself names
        if note.get("deviceID") is not None:
            doc.pair("Device ID:", str(note["deviceID"]))
        if note.get("receiptGlobalNo") is not None:
            doc.pair("Invoice No:", str(note["receiptGlobalNo"]))
        if note.get("fiscalDayNo") is not None:
            doc.pair("Fiscal day No:", str(note["fiscalDayNo"]))
        if note.get("receiptID") is not None:
            doc.pair("FDMS receipt ID:", str(note["receiptID"]))
    doc.rule()


def _tax_letters(receipt):
    """A short indicator per tax group for the lines: the receipt's tax code, else A, B, C in tax order."""
    letters = {}
    spare = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    n = 0
    for tax in receipt["receiptTaxes"] or []:
        key = (tax["taxID"], tax["taxPercent"])
        if key in letters:
            continue
        if tax["taxCode"]:
            letters[key] = tax["taxCode"]
        else:
            letters[key] = spare[n % len(spare)]
            n += 1
    return letters


def _lines(doc, receipt, letters, vat_payer):
    for line in receipt["receiptLines"]:
        name = line["receiptLineName"]
        if line["receiptLineType"] == "Discount":
            name = "Discount: " + name
        doc.text(name)
        price = line["receiptLinePrice"]
        each = quantity(line["receiptLineQuantity"])
        if price is not None:
            each = each + " x " + unit_price(price)
        total = amount(line["receiptLineTotal"])
        if vat_payer:
            total = total + " " + letters.get((line["taxID"], line["taxPercent"]), "")
        doc.pair("  " + each, total)


def _items(receipt):
    """Field 39: the sum of the Sale lines' quantities, always shown positive."""
    count = 0
    for line in receipt["receiptLines"]:
        if line["receiptLineType"] == "Sale":
            qty = line["receiptLineQuantity"]
            count += -qty if qty < 0 else qty
    return count


def _tax_table(doc, receipt, letters, names):
    """Fields 40-44: code, VAT % (or the tax's name when exempt), net, VAT and the amount with tax. On 58 mm
    paper each tax takes a few lines instead of a cramped table."""
    rows = []
    for tax in receipt["receiptTaxes"] or []:
        key = (tax["taxID"], tax["taxPercent"])
        label = (letters.get(key, "") + " " + tax_label(tax["taxPercent"], names.get(key))).strip()
        net = tax["salesAmountWithTax"] - tax["taxAmount"]
        rows.append((label, amount(net), amount(tax["taxAmount"]), amount(tax["salesAmountWithTax"])))
    if doc.width < 42:
        for label, net, vat, gross in rows:
            doc.text(label, LEFT, True)
            doc.pair("  Net", net)
            doc.pair("  VAT", vat)
            doc.pair("  Incl. tax", gross)
        return
    amount_w = 11 if doc.width >= 48 else 10
    widths = (doc.width - 3 * amount_w - 3, amount_w, amount_w, amount_w)
    aligns = (LEFT, RIGHT, RIGHT, RIGHT)
    doc.row(("Tax", "Net", "VAT", "Incl. tax"), widths, aligns, True)
    for row in rows:
        doc.row(row, widths, aligns)


def receipt_document(receipt, seller, info, width=48, copy=False, legible=None):
    """A committed receipt as the customer gets it. `receipt` is the parsed stored receipt; `seller` the
    settings (taxpayer, branch, device, taxes, qr_url); `info` what the journal adds: day_no, qr_data and
    `original` (serial, global_no, date, invoice_no of a note's invoice if this box issued it, else None).

    A reprint (`copy`) adds the COPY marks and nothing else: every fiscal field stays as first printed.
    """
    doc = Document(width, legible)
    vat_payer = bool(seller.get("vat_number"))
    receipt_type = receipt["receiptType"]
    if copy:
        doc.text(COPY_MARK, CENTER, True, True)
    doc.text(receipt_title(receipt_type, vat_payer), CENTER, True, True)
    _seller(doc, seller)
    doc.rule()
    if receipt["buyerData"]:
        _buyer(doc, receipt["buyerData"])
    doc.pair("Invoice No:", str(receipt["receiptCounter"]) + "/" + str(receipt["receiptGlobalNo"]))
    doc.pair("Fiscal day No:", str(info["day_no"]))
    doc.pair("Customer ref:", receipt["invoiceNo"])
    _device(doc, seller)
    doc.pair("Date:", printed_date(receipt["receiptDate"]))
    doc.rule()
    if receipt_type in NOTE_BLOCK:
        _note_block(doc, receipt_type, receipt["creditDebitNote"] or {}, info.get("original"))
    letters = _tax_letters(receipt)
    _lines(doc, receipt, letters, vat_payer)
    doc.rule()
    doc.pair("Invoice total, " + receipt["receiptCurrency"], amount(receipt["receiptTotal"]), True)
    for payment in receipt["receiptPayments"]:
        doc.pair(MONEY_NAMES[payment["moneyTypeCode"]], amount(payment["paymentAmount"]))
    doc.pair("Number of items:", quantity(_items(receipt)))
    doc.rule()
    if vat_payer:
        _tax_table(doc, receipt, letters, tax_names(seller.get("taxes")))
        doc.rule()
    url = fdms.qr_url(
        seller["qr_url"],
        seller["device_id"],
        receipt["receiptDate"],
        receipt["receiptGlobalNo"],
        info["qr_data"],
    )
    doc.blank()
    doc.qr(url)
    doc.blank()
    doc.text("Verification code:", CENTER)
    doc.text(fdms.verification_code(info["qr_data"]), CENTER, True)
    doc.text("Verify this receipt at", CENTER)
    doc.text(seller["qr_url"], CENTER)
    if receipt["receiptNotes"]:
        doc.rule()
        doc.text(receipt["receiptNotes"])
    if copy:
        doc.rule()
        doc.text(COPY_MARK, CENTER, True, True)
    return doc


# ---------------------------------------------------------------------------------------------------------
# X and Z reports (sections 10.4 and 10.5)

SALE, SALE_TAX, CREDIT, CREDIT_TAX, DEBIT, DEBIT_TAX = 0, 1, 2, 3, 4, 5


def _by_tax(counters, currency, kinds):
    """{(taxID, pct): sum over `kinds`} for one currency."""
    out = {}
    for key in counters:
        kind, cur, sub, pct = key
        if cur == currency and kind in kinds:
            tax = (sub, pct)
            out[tax] = out.get(tax, 0) + counters[key]
    return out


def _descending(taxes):
    """Taxes in descending percent order, exempt last, then by tax ID."""
    return sorted(taxes, key=lambda tax: (-tax[1] if tax[1] >= 0 else 1, tax[0]))


def _report_section(doc, title, values, names, keep):
    doc.text(title, LEFT, True)
    total = 0
    for tax in _descending([t for t in values if keep(t)]):
        name = names.get((tax[0], None if tax[1] < 0 else tax[1]))
        doc.pair("  " + tax_label(None if tax[1] < 0 else tax[1], name), amount(values[tax]))
        total += values[tax]
    doc.pair("  Total", amount(total), True)


def report_document(day, counters, documents, seller, at, width=48, legible=None):
    """The X report (day so far) or the Z report (closed day), per currency in alphabetical order.

    `counters` are the day's counters as the journal keeps them: {(type, currency, taxID or money type,
    percent or -1): cents}; `documents` the journal's per-type and per-currency counts and totals.
    """
    doc = Document(width, legible)
    closed = day["status"] == "FiscalDayClosed"
    doc.text("Z REPORT" if closed else "X REPORT", CENTER, True, True)
    _seller(doc, seller)
    doc.rule()
    doc.pair("Fiscal day No:", str(day["day_no"]))
    doc.pair("Opened:", report_date(day["opened"]))
    if closed and day.get("closed_at"):
        doc.pair("Closed:", report_date(day["closed_at"]))
    else:
        doc.pair("Status:", day["status"])
        doc.pair("Printed:", report_date(at))
    _device(doc, seller)
    names = tax_names(seller.get("taxes"))
    currencies = {}
    for key in counters:
        currencies[key[1]] = True
    for document in documents:
        currencies[document["currency"]] = True
    for currency in sorted(currencies):
        doc.rule("=")
        doc.text(currency, CENTER, True, True)
        gross = _by_tax(counters, currency, (SALE, CREDIT, DEBIT))
        taxes = _by_tax(counters, currency, (SALE_TAX, CREDIT_TAX, DEBIT_TAX))
        net = {}
        for tax in gross:
            net[tax] = gross[tax] - taxes.get(tax, 0)
        _report_section(doc, "Net sales", net, names, lambda tax: True)
        _report_section(doc, "Taxes", taxes, names, lambda tax: tax[1] > 0)
        _report_section(doc, "Gross sales (incl. tax)", gross, names, lambda tax: True)
        doc.text("Payments", LEFT, True)
        for key in sorted(counters):
            kind, cur, sub, pct = key
            if cur == currency and kind == fdms.BALANCE:
                doc.pair("  " + MONEY_NAMES[fdms.MONEY_TYPES[sub]], amount(counters[key]))
        w = doc.width
        widths = (w - 18, 5, 11)
        aligns = (LEFT, RIGHT, RIGHT)
        doc.row(("Documents", "Qty", "Total"), widths, aligns, True)
        count_all = 0
        total_all = 0
        for receipt_type, label in DOCUMENT_NAMES:
            count = 0
            total = 0
            for document in documents:
                if document["currency"] == currency and document["type"] == receipt_type:
                    count += document["count"]
                    total += document["total"]
            count_all += count
            total_all += total
            doc.row(("  " + label, str(count), amount(total)), widths, aligns)
        doc.row(("  Total", str(count_all), amount(total_all)), widths, aligns, True)
    doc.rule("=")
    doc.text("END OF " + ("Z REPORT" if closed else "X REPORT"), CENTER)
    return doc
