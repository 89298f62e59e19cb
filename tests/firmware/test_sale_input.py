"""What a POS or FDMS hands the box that it cannot take is a FiscalError with a code, and changes nothing."""

from __future__ import annotations

import json

import pytest
from box_rig import SETTINGS, Rig, sale
from test_box import snapshot

from firmware.box import Box
from firmware.core.errors import FiscalError

# applicableTaxes as FDMS's GetConfig sends them: percents are JSON numbers, absent for exempt.
GETCONFIG_TAXES = """[
  {"taxID": 1, "taxName": "Exempt", "validFrom": "2023-01-01T00:00:00"},
  {"taxID": 2, "taxPercent": 0, "taxName": "Zero rated 0%", "validFrom": "2023-01-01T00:00:00"},
  {"taxID": 3, "taxPercent": 15, "taxName": "Standard rated 15%", "validFrom": "2023-01-01T00:00:00",
   "validTill": "2025-12-14T23:59:59"},
  {"taxID": 517, "taxPercent": 15.5, "taxName": "Standard rated 15.5%", "validFrom": "2025-12-15T00:00:00"}
]"""


@pytest.mark.parametrize("parse_float", [None, str], ids=["json-floats", "parse-float-str"])
def test_provision_takes_the_tax_table_as_getconfig_sends_it(rig: Rig, parse_float: type | None) -> None:
    taxes = json.loads(GETCONFIG_TAXES, parse_float=parse_float)
    box = rig.box()
    box.provision({**SETTINGS, "taxes": taxes})
    box.open_day()
    rig.clock.advance(60)
    issued = box.issue(sale("1.15"))  # a line of tax 517 at 15.5 %
    assert issued["total"] == "1.15"
    # The table is stored as given; a restarted box reads it back (floats again) and still issues.
    again = rig.box()
    assert again.boot["clean"], again.boot
    rig.clock.advance(5)
    assert again.issue(sale("2.30"))["global_no"] == 2


def test_provision_refuses_a_tax_percent_that_is_not_exact_hundredths(rig: Rig) -> None:
    box = rig.box()
    for value in (15.555, -15, True, float("nan")):
        taxes = [{"taxID": 1, "taxName": "Exempt"}, {"taxID": 3, "taxPercent": value, "taxName": "VAT"}]
        with pytest.raises(FiscalError) as refused:
            box.provision({**SETTINGS, "taxes": taxes})
        assert (refused.value.code, refused.value.field) == (
            "BOX_BAD_NUMBER",
            "applicableTaxes[1].taxPercent",
        )
    assert box.journal.settings() == {}


def _refused(box: Box, body: dict) -> FiscalError:
    before = snapshot(box.journal)
    with pytest.raises(FiscalError) as refused:
        box.issue(body)
    assert snapshot(box.journal) == before
    return refused.value


LONE_SURROGATE = json.loads('"\\ud800"')


def test_a_lone_surrogate_is_a_fiscal_error_not_a_unicode_error(box: Box) -> None:
    error = _refused(box, sale(invoice="INV-" + LONE_SURROGATE))
    assert (error.code, error.field) == ("BOX_SALE_TEXT", "invoiceNo")
    body = sale()
    body["receiptLines"][0]["receiptLineName"] = "Bread " + LONE_SURROGATE
    error = _refused(box, body)
    assert (error.code, error.field) == ("BOX_SALE_TEXT", "receiptLines[0].receiptLineName")
    # A key holding one is named in a message that can still be written out.
    error = _refused(box, sale(**{"note" + LONE_SURROGATE: "x"}))
    assert error.code == "BOX_SALE_FIELD"
    str(error).encode()


def test_terminal_escapes_and_bidi_overrides_never_reach_the_journal(box: Box) -> None:
    for text in ("\x1b[2J", "a\x00b", "Line\r\nTwo", "\u202egnp.exe"):
        error = _refused(box, sale(invoice=text))
        assert (error.code, error.field) == ("BOX_SALE_TEXT", "invoiceNo")


def test_a_misspelt_key_is_refused_by_the_box(box: Box) -> None:
    body = sale()
    del body["receiptLinesTaxInclusive"]
    body["receiptLinesTaxInclusiv"] = False
    error = _refused(box, body)
    assert (error.code, error.field) == ("BOX_SALE_FIELD", "receiptLinesTaxInclusiv")
    body = sale()
    body["receiptPayments"][0]["amount"] = "1.15"
    assert _refused(box, body).field == "receiptPayments[0].amount"
    assert box.issue(sale())["global_no"] == 1  # the fields the box sets itself still pass its own parser
