"""docs/sale.schema.json and the box's parser agree, both ways, and docs/sale.md's examples are issued.

Sales valid under the schema pass the box's checks; sales the schema rejects for an unknown key, a wrong type,
a missing required field or a forbidden character are refused by the box, naming the field (or the object
holding it). Hypothesis builds the sales; the box's side is `fdms.prepare`, the path `Box.issue` takes.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
from box_rig import SETTINGS, TAXES, Rig
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.core import fdms, money
from firmware.core.errors import FiscalError

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCHEMA = json.loads((DOCS / "sale.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
EXAMPLES = [
    json.loads(block, parse_float=str)
    for block in re.findall(r"```json\n(.*?)\n```", (DOCS / "sale.md").read_text(encoding="utf-8"), re.S)
]
CONTEXT_TAXES = fdms.parse_taxes(TAXES)
ALL_FIELDS = (
    fdms.RECEIPT_FIELDS
    | fdms.LINE_FIELDS
    | fdms.TAX_FIELDS
    | fdms.PAYMENT_FIELDS
    | fdms.NOTE_FIELDS
    | fdms.BUYER_FIELDS
    | fdms.USER_FIELDS
    | {name for _part, names in fdms.BUYER_PARTS for name in names}
)

Path_ = tuple[str | int, ...]


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_documented_examples_are_valid_and_a_box_issues_each(rig: Rig) -> None:
    assert [sale["receiptType"] for sale in EXAMPLES] == [
        "FiscalInvoice",
        "FiscalInvoice",
        "FiscalInvoice",
        "CreditNote",
        "DebitNote",
    ]
    box = rig.box()
    box.provision(SETTINGS)
    box.open_day()
    totals = []
    for sale in EXAMPLES:
        VALIDATOR.validate(sale)
        rig.clock.advance(30)
        issued = box.issue(copy.deepcopy(sale))
        assert issued["warnings"] == [], issued["warnings"]
        totals.append((issued["currency"], issued["total"]))
    assert totals == [
        ("USD", "11.30"),
        ("USD", "242.55"),
        ("ZWG", "375.00"),
        ("USD", "-1.15"),
        ("USD", "17.33"),
    ]
    inclusive = {sale.get("receiptLinesTaxInclusive", True) for sale in EXAMPLES}
    assert inclusive == {True, False}
    assert any("buyerData" in sale for sale in EXAMPLES)
    assert any(len(sale["receiptPayments"]) > 1 for sale in EXAMPLES)


def refusal(sale: Any) -> list[str | None]:
    """The fields the box names when it refuses `sale` before signing, as Box.issue would; [] if it signs."""
    try:
        raw = dict(fdms.unwrap_receipt(sale))
        raw.update(receiptCounter=1, receiptGlobalNo=1, receiptDate="2026-09-08T10:00:00")
        ctx = fdms.Context(taxes=CONTEXT_TAXES, currencies=("USD", "ZWG"))
        _receipt, findings = fdms.prepare(raw, ctx)
    except FiscalError as error:
        assert fdms._bad_character(error.message) < 0, error.message  # always safe to show
        return [error.field]
    return [f["field"] for f in fdms.blocking(findings)]


# --- valid sales, built from the FDMS test tax table the box is provisioned with

TAX_MENU = ((1, None), (2, "0"), (517, "15.5"))
TEXT = st.characters(
    exclude_categories=("Cc", "Cs"),
    exclude_characters="\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",
)


def texts(limit: int) -> st.SearchStrategy[str]:
    return st.text(TEXT, min_size=1, max_size=min(limit, 30)).filter(lambda t: bool(t.strip()))


def digits(n: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=n, max_size=n)


def optional(draw: Any, target: dict[str, Any], key: str, strategy: st.SearchStrategy[Any]) -> None:
    if draw(st.booleans()):
        target[key] = draw(strategy)


@st.composite
def sales(draw: Any) -> dict[str, Any]:
    """A sale the box signs: its payments add up to the total its lines give."""
    kind = draw(st.sampled_from(fdms.RECEIPT_TYPES))
    sign = -1 if kind == "CreditNote" else 1
    codes = draw(st.booleans())
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        tax_id, percent = draw(st.sampled_from(TAX_MENU))
        line: dict[str, Any] = {
            "receiptLineName": draw(texts(200)),
            "receiptLinePrice": money.format_fixed(sign * draw(st.integers(1, 10**7)), 2),
            "receiptLineQuantity": money.format_short(draw(st.integers(1, 10**5)) * 1000, 6),
            "taxID": tax_id,
        }
        if percent is not None:
            line["taxPercent"] = percent
        if codes:
            line["taxCode"] = "ABC"[tax_id % 3]
        optional(draw, line, "receiptLineHSCode", st.one_of(digits(4), digits(8)))
        optional(draw, line, "receiptLineType", st.just("Sale"))
        lines.append(line)
    sale: dict[str, Any] = {
        "receiptType": kind,
        "receiptCurrency": draw(st.sampled_from(("USD", "ZWG"))),
        "invoiceNo": draw(texts(50)),
        "receiptLines": lines,
    }
    optional(draw, sale, "receiptLinesTaxInclusive", st.booleans())
    optional(draw, sale, "receiptPrintForm", st.sampled_from(fdms.PRINT_FORMS))
    optional(draw, sale, "username", texts(100))
    optional(draw, sale, "userInfo", st.fixed_dictionaries({}, optional={"username": texts(100)}))
    if kind != "FiscalInvoice" or draw(st.booleans()):
        sale["receiptNotes"] = draw(texts(500))
    if kind != "FiscalInvoice":
        sale["creditDebitNote"] = draw(
            st.one_of(
                st.fixed_dictionaries({"receiptID": st.integers(1, 10**9)}),
                st.fixed_dictionaries(
                    {k: st.integers(1, 10**6) for k in ("deviceID", "receiptGlobalNo", "fiscalDayNo")}
                ),
            )
        )
    if draw(st.booleans()):
        buyer = {"buyerRegisterName": draw(texts(250)), "buyerTIN": draw(digits(10))}
        optional(draw, buyer, "vatNumber", digits(9))
        optional(draw, buyer, "buyerTradeName", texts(250))
        optional(draw, buyer, "buyerContacts", st.fixed_dictionaries({}, optional={"email": texts(250)}))
        optional(draw, buyer, "buyerAddress", st.fixed_dictionaries({"city": texts(250)}))
        sale["buyerData"] = buyer
    receipt = fdms.complete(fdms.parse_receipt(sale))
    total = receipt["receiptTotal"]
    if draw(st.booleans()):  # the tax table and total sent, for the box to check
        sale["receiptTotal"] = money.format_fixed(total, 2)
        sale["receiptTaxes"] = [_tax_wire(tax) for tax in receipt["receiptTaxes"]]
    cuts = sorted(draw(st.lists(st.integers(0, abs(total)), max_size=2)))
    parts = [b - a for a, b in zip([0, *cuts], [*cuts, abs(total)], strict=True)]
    types = draw(st.lists(st.sampled_from(fdms.MONEY_TYPES), min_size=len(parts), max_size=len(parts)))
    sale["receiptPayments"] = [
        {"moneyTypeCode": t, "paymentAmount": money.format_fixed(sign * part, 2)}
        for t, part in zip(types, parts, strict=True)
    ]
    return sale


def _tax_wire(tax: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "taxID": tax["taxID"],
        "taxAmount": money.format_fixed(tax["taxAmount"], 2),
        "salesAmountWithTax": money.format_fixed(tax["salesAmountWithTax"], 2),
    }
    if tax["taxPercent"] is not None:
        out["taxPercent"] = money.format_fixed(tax["taxPercent"], 2)
    if tax["taxCode"] is not None:
        out["taxCode"] = tax["taxCode"]
    return out


def nodes(value: Any, path: Path_ = ()) -> list[tuple[Path_, Any]]:
    """Every value in the sale with its path, the sale itself first."""
    found = [(path, value)]
    if isinstance(value, dict):
        for key in value:
            found.extend(nodes(value[key], (*path, key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found.extend(nodes(item, (*path, i)))
    return found


def field(path: Path_) -> str:
    """A path as the box names it: receiptLines[2].receiptLineName."""
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else ("." if text else "") + step
    return text


def at(sale: Any, path: Path_) -> Any:
    for step in path:
        sale = sale[step]
    return sale


def names_it(fields: list[str | None], path: Path_) -> bool:
    """The box refused, naming the field at `path` or an object that holds it."""
    target = field(path)
    return any(
        f is not None and (target == f or target.startswith(f + ".") or target.startswith(f + "["))
        for f in fields
    )


SETTINGS_FAST = settings(max_examples=150, deadline=None)


@SETTINGS_FAST
@given(sales(), st.booleans())
def test_sales_valid_under_the_schema_are_signed(sale: dict[str, Any], wrapped: bool) -> None:
    body = {"receipt": sale} if wrapped else sale
    VALIDATOR.validate(body)
    assert refusal(body) == []


@SETTINGS_FAST
@given(sales(), st.data())
def test_an_unknown_key_at_any_level_is_refused_by_both(sale: dict[str, Any], data: st.DataObject) -> None:
    objects = [path for path, value in nodes(sale) if isinstance(value, dict)]
    path = data.draw(st.sampled_from(objects))
    name = data.draw(st.text(min_size=1, max_size=30).filter(lambda k: k not in ALL_FIELDS))
    key = name + data.draw(st.sampled_from(["", "\x1b[2J", "\ud800"]))  # a name may hold anything
    at(sale, path)[key] = "x"
    assert not VALIDATOR.is_valid(sale)
    fields = refusal(sale)
    assert fields == [field((*path, key))] if fdms._bad_character(key) < 0 else len(fields) == 1


def wrong_type(value: Any) -> st.SearchStrategy[Any]:
    if isinstance(value, bool):
        return st.sampled_from(["true", 1, 0, []])
    if isinstance(value, dict | list):
        return st.sampled_from(["x", 1, True] + ([{}] if isinstance(value, list) else [[]]))
    return st.sampled_from([True, False, [], {}] + ([] if isinstance(value, str) else ["x"]))


@SETTINGS_FAST
@given(sales(), st.data())
def test_a_wrong_type_anywhere_is_refused_by_both(sale: dict[str, Any], data: st.DataObject) -> None:
    path, value = data.draw(st.sampled_from(nodes(sale)[1:]))
    at(sale, path[:-1])[path[-1]] = data.draw(wrong_type(value))
    assert not VALIDATOR.is_valid(sale)
    assert names_it(refusal(sale), path), (field(path), refusal(sale))


def required(sale: dict[str, Any]) -> list[Path_]:
    """The paths of the fields docs/sale.md calls required, in this sale."""
    found: list[Path_] = [(k,) for k in ("receiptType", "receiptCurrency", "invoiceNo", "receiptLines")]
    found.append(("receiptPayments",))
    if sale["receiptType"] != "FiscalInvoice":
        found += [("receiptNotes",), ("creditDebitNote",)]
        found += [("creditDebitNote", k) for k in sale["creditDebitNote"]]
    for i, line in enumerate(sale["receiptLines"]):
        keys = ["receiptLineName", "receiptLineQuantity", "taxID"]
        if "receiptLineTotal" not in line:
            keys.append("receiptLinePrice")
        found += [("receiptLines", i, k) for k in keys]
    for i, _tax in enumerate(sale.get("receiptTaxes", [])):
        found += [("receiptTaxes", i, k) for k in ("taxID", "taxAmount", "salesAmountWithTax")]
    for i, _payment in enumerate(sale["receiptPayments"]):
        found += [("receiptPayments", i, k) for k in ("moneyTypeCode", "paymentAmount")]
    if "buyerData" in sale:
        found += [("buyerData", "buyerRegisterName"), ("buyerData", "buyerTIN")]
    return found


@SETTINGS_FAST
@given(sales(), st.data())
def test_a_missing_required_field_is_refused_by_both(sale: dict[str, Any], data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(required(sale)))
    del at(sale, path[:-1])[path[-1]]
    assert not VALIDATOR.is_valid(sale)
    assert names_it(refusal(sale), path), (field(path), refusal(sale))


FORBIDDEN = st.sampled_from(
    ["\x00", "\x1b", "\n", "\r", "\t", "\x7f", "\x9b", "\u202e", "\u2067", "\ud800", "\udfff"]
)


@SETTINGS_FAST
@given(sales(), st.data())
def test_a_forbidden_character_in_any_text_is_refused_by_both(
    sale: dict[str, Any], data: st.DataObject
) -> None:
    strings = [(path, value) for path, value in nodes(sale) if isinstance(value, str)]
    path, value = data.draw(st.sampled_from(strings))
    cut = data.draw(st.integers(0, len(value)))
    at(sale, path[:-1])[path[-1]] = value[:cut] + data.draw(FORBIDDEN) + value[cut:]
    assert not VALIDATOR.is_valid(sale)
    assert refusal(sale) == [field(path)]
