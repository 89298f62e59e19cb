"""A printer pulled off its serial port before or in the middle of a print, through pyserial on a real
pseudo-terminal: the sale is still answered, the journal tells the truth (committed, unprinted, the print's
start recorded once bytes may have gone out) and the next print of the receipt says COPY."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import serial
from box_rig import SETTINGS, Rig, sale

from firmware.box import Box
from firmware.core.errors import FiscalError
from hardware import printers
from sim.printer import VirtualPrinter
from sim.pty_port import PtyPort, serve_on_pty

MODELS = ["epson-tm-t20ii", "pos-5890", "adafruit-csn-a2"]  # python-escpos native QR, raster; Adafruit's


class Bench:
    """One roll of virtual paper that can be unplugged from its pty and plugged into a new one."""

    def __init__(self, model: str, stack: ExitStack) -> None:
        self.model = model
        self.stack = stack
        self.paper = VirtualPrinter(dots=printers.PROFILES[model].dots)
        self.port: PtyPort
        self.driver = self.plug()

    def plug(self) -> Any:
        """A new pty for the same paper and a driver on it through pyserial, as the box's CLI opens it."""
        self.port = self.stack.enter_context(serve_on_pty(self.paper))
        link = self.stack.enter_context(serial.Serial(self.port.path, 19200, timeout=1, write_timeout=10))
        options = {"paced": False} if printers.PROFILES[self.model].escpos_profile is None else {}
        self.driver = printers.open_printer(self.model, link, **options)
        return self.driver

    def unplug_after_check(self, document_bytes: int) -> None:
        """Pull the cable once the box's status check has passed and `document_bytes` of the print are out.
        A check of the test's own counts the bytes the box's check will take."""
        before = self.port.received
        self.driver.check()
        self.port.unplug_after(self.port.received - before + document_bytes)

    def last_page_text(self) -> str:
        if not printers.PROFILES[self.model].cutter:
            self.paper.end_page()  # tear it off: no cutter ends the page
        return self.paper.pages[-1].text().replace(" ", "")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as opened:
        yield opened


def _box(rig: Rig, bench: Bench) -> Box:
    box = rig.box(printer=bench.driver)
    box.provision(SETTINGS)
    box.open_day()
    rig.clock.advance(60)
    return box


def _replug(box: Box, bench: Bench) -> None:
    box.printer = bench.plug()


@pytest.mark.parametrize("model", MODELS)
def test_a_printer_gone_before_the_sale_is_reported_and_nothing_is_recorded(
    rig: Rig, stack: ExitStack, model: str
) -> None:
    bench = Bench(model, stack)
    box = _box(rig, bench)
    bench.port.close()
    result = box.issue(sale("2.00"))
    assert not result["printed"]
    assert [w["code"] for w in result["warnings"]] == ["BOX_PRINTER_OFFLINE"]
    message = result["warnings"][0]["message"]
    assert "check its power and cable, then reprint" in message and "committed but not printed" in message
    assert "did not finish" not in message  # refused by the check: not a byte of it went out
    assert box.journal.receipt(1) is not None
    assert box.journal.prints(1) == (0, 0) and box.journal.unprinted() == [1]

    _replug(box, bench)
    assert box.reprint(1)["copy"] is False  # it never began printing: the original
    assert "COPY" not in bench.last_page_text()
    assert box.status()["unprinted"] == []


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("sent", [0, 300], ids=["at-the-first-byte", "mid-receipt"])
def test_a_printer_unplugged_mid_sale_leaves_the_receipt_committed_unprinted_and_started(
    rig: Rig, stack: ExitStack, model: str, sent: int
) -> None:
    bench = Bench(model, stack)
    box = _box(rig, bench)
    bench.unplug_after_check(sent)
    result = box.issue(sale("3.30"))  # answered, not raised: the POS must not retry a committed sale
    assert result["global_no"] == 1 and not result["printed"]
    assert [w["code"] for w in result["warnings"]] == ["BOX_PRINTER_OFFLINE"]
    message = result["warnings"][0]["message"]
    assert message.startswith("The print did not finish.") and "committed but not printed" in message
    assert box.journal.receipt(1) is not None
    assert box.journal.prints(1) == (1, 0)  # started, never completed
    assert box.journal.unprinted() == [1] and box.status()["unprinted_count"] == 1
    assert bench.paper.current_page.has_content == (sent > 0) and bench.paper.pages == []

    _replug(box, bench)
    again = box.reprint(1)
    assert again["copy"] is True
    assert "COPY" in bench.last_page_text()
    assert box.journal.prints(1) == (2, 1) and box.journal.unprinted() == []
    assert box.audit()["clean"]


@pytest.mark.parametrize("model", MODELS)
def test_a_printer_unplugged_mid_reprint_is_refused_and_the_next_print_says_copy(
    rig: Rig, stack: ExitStack, model: str
) -> None:
    bench = Bench(model, stack)
    box = _box(rig, bench)
    bench.paper.paper_out = True
    for total in ("1.00", "2.00", "3.00"):
        assert not box.issue(sale(total))["printed"]  # refused by the check: nothing started
    bench.paper.load_paper()
    assert box.journal.prints(1) == (0, 0)

    bench.unplug_after_check(200)
    with pytest.raises(FiscalError) as refused:
        box.reprint(1)
    assert refused.value.code == "BOX_PRINTER_OFFLINE"
    assert refused.value.message.startswith("The print did not finish.")
    assert box.journal.prints(1) == (1, 0) and box.journal.unprinted() == [1, 2, 3]

    _replug(box, bench)
    bench.unplug_after_check(200)  # reprint --unprinted: gone again in the middle of receipt 1
    done = box.print_unprinted()
    assert done["printed"] == [] and done["stopped_at"] == 1 and done["remaining"] == 3
    assert done["error"]["code"] == "BOX_PRINTER_OFFLINE"
    assert box.journal.prints(1) == (2, 0) and box.journal.prints(2) == (0, 0)

    _replug(box, bench)
    assert box.print_unprinted() == {"printed": [1, 2, 3], "stopped_at": None, "error": None, "remaining": 0}
    assert [box.journal.prints(n) for n in (1, 2, 3)] == [(3, 1), (1, 1), (1, 1)]
    if printers.PROFILES[model].cutter:
        pages = [page.text().replace(" ", "") for page in bench.paper.pages[-3:]]
        assert ["COPY" in text for text in pages] == [True, False, False]  # only 1 began printing before
    else:
        assert "COPY" in bench.last_page_text()


@pytest.mark.parametrize("model", MODELS)
def test_a_printer_unplugged_mid_report_is_refused_with_its_code(
    rig: Rig, stack: ExitStack, model: str
) -> None:
    bench = Bench(model, stack)
    box = _box(rig, bench)
    box.issue(sale("4.00"))
    bench.unplug_after_check(100)
    with pytest.raises(FiscalError) as refused:
        box.print_report()
    assert refused.value.code == "BOX_PRINTER_OFFLINE"
    with pytest.raises(FiscalError) as refused:  # and the next one, refused by the check
        box.print_report()
    assert refused.value.code == "BOX_PRINTER_OFFLINE"


class Unguarded(printers.EscposPrinter):
    """A driver that lets its library's own exception out: what the box's last guard in issue is for."""

    def print_document(self, document: Any) -> None:
        raise KeyError("cutter")


def test_a_driver_raising_anything_after_the_commit_still_gets_the_sale_answered(rig: Rig) -> None:
    model = printers.PROFILES["epson-tm-t20ii"]
    box = rig.box(printer=Unguarded(model, VirtualPrinter(dots=model.dots)))
    box.provision(SETTINGS)
    box.open_day()
    rig.clock.advance(60)
    result = box.issue(sale("5.00"))
    assert result["global_no"] == 1 and not result["printed"]
    assert [w["code"] for w in result["warnings"]] == ["BOX_PRINTER_FAULT"]
    assert "KeyError" in result["warnings"][0]["message"]
    assert box.journal.prints(1) == (1, 0) and box.journal.unprinted() == [1]
