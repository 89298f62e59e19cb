"""The box prints through a real driver into the virtual printer: after the commit, never blocking a sale.

Paper out, cover open and offline come from the virtual printer's status answers (DLE EOT, ESC v), as a
real printer gives them; the receipt stays committed and unprinted, and its reprint says COPY.
"""

from __future__ import annotations

from typing import Any

import pytest
from box_rig import SETTINGS, Rig, sale

from firmware.box import Box
from firmware.core.errors import FiscalError
from hardware import printers
from sim.printer import VirtualPrinter


def _printed_box(rig: Rig, model: str = "epson-tm-t20ii") -> tuple[Box, VirtualPrinter]:
    profile = printers.PROFILES[model]
    paper = VirtualPrinter(dots=profile.dots)
    driver: Any
    if profile.escpos_profile is None:
        driver = printers.AdafruitPrinter(paper, paced=False)
    else:
        driver = printers.EscposPrinter(profile, paper)
    box = rig.box(printer=driver)
    if "device_id" not in box.journal.settings():
        box.provision(SETTINGS)
        box.open_day()
    rig.clock.advance(60)
    return box, paper


def _without_copy_marks(text: str) -> list[str]:
    return [line for line in text.splitlines() if "COPY" not in line.replace(" ", "") and line.strip("- ")]


def test_an_issued_receipt_is_printed_once_as_the_original(rig: Rig) -> None:
    box, paper = _printed_box(rig)
    result = box.issue(sale("12.40"))
    assert result["printed"] and not result["warnings"]
    assert len(paper.pages) == 1
    page = paper.pages[0]
    assert not page.incomplete
    assert page.qr_payloads == [result["qr_url"]]
    text = page.text()
    assert result["verification_code"] in text and "12.40" in text
    assert "COPY" not in text.replace(" ", "")
    assert box.journal.prints(1) == (1, 1)
    assert box.status()["unprinted"] == []


@pytest.mark.parametrize("model", ["epson-tm-t20ii", "pos-5890", "adafruit-csn-a2"])
def test_paper_out_during_a_receipt_keeps_it_committed_and_the_reprint_says_copy(
    rig: Rig, model: str
) -> None:
    box, paper = _printed_box(rig, model)
    paper.load_paper(lines=6)  # the roll ends a few lines into the receipt
    result = box.issue(sale("3.30"))
    assert not result["printed"]
    assert [w["code"] for w in result["warnings"]] == ["BOX_PRINTER_PAPER_OUT"]
    assert "committed but not printed" in result["warnings"][0]["message"]
    assert box.journal.receipt(1) is not None  # the sale stands
    assert box.status()["unprinted"] == [1]
    torn = paper.end_page() if not paper.pages else paper.pages[-1]
    assert torn is not None and torn.incomplete

    with pytest.raises(FiscalError) as refused:  # still no paper: refused before anything is recorded
        box.reprint(1)
    assert refused.value.code == "BOX_PRINTER_PAPER_OUT"
    assert box.journal.prints(1) == (1, 0)

    paper.load_paper()
    reprint = box.reprint(1)
    assert reprint["copy"] is True
    if not profile_cuts(model):
        paper.end_page()
    copy = paper.pages[-1]
    assert not copy.incomplete
    text = copy.text()
    assert "COPY" in text.replace(" ", "")
    assert box.journal.prints(1) == (2, 1)
    assert box.status()["unprinted"] == []
    # the copy carries the very fiscal content of the receipt: a fresh original rendering without marks
    original = box.receipt_document(1, copy=False)
    assert result["verification_code"] in text
    if printers.PROFILES[model].native_qr:
        assert copy.qr_payloads == [result["qr_url"]]
    assert len(_without_copy_marks(text)) >= len([x for x in original.plain().splitlines() if x.strip("- ")])
    assert box.audit()["clean"]


def profile_cuts(model: str) -> bool:
    return printers.PROFILES[model].cutter


def test_after_a_restart_the_box_lists_and_prints_what_is_unprinted(rig: Rig) -> None:
    box, paper = _printed_box(rig)
    paper.offline = True
    for n in range(3):
        result = box.issue(sale("1.%02d" % n))
        assert [w["code"] for w in result["warnings"]] == ["BOX_PRINTER_OFFLINE"]
    assert paper.pages == []
    rig.close()

    box, paper = _printed_box(rig)  # the box starts again, the printer is back
    assert box.status()["unprinted"] == [1, 2, 3]
    done = box.print_unprinted()
    assert done == {"printed": [1, 2, 3], "stopped_at": None, "error": None, "remaining": 0}
    assert len(paper.pages) == 3
    for page in paper.pages:  # never began printing before, so these are originals
        assert "COPY" not in page.text().replace(" ", "")
    assert box.status()["unprinted"] == []


def test_every_unprinted_receipt_is_counted_and_printed_not_only_the_oldest_hundred(rig: Rig) -> None:
    box, paper = _printed_box(rig)
    printer, box.printer = box.printer, None  # sold while the printer was away
    for _ in range(130):
        box.issue(sale())
    box.printer = printer
    info = box.status()
    assert info["unprinted_count"] == 130
    assert info["unprinted"] == list(range(1, 21))  # the oldest, by number
    assert box.journal.unprinted() == list(range(1, 131))
    assert box.journal.unprinted(limit=5, after=100) == list(range(101, 106))
    seen: list[tuple[int, int]] = []
    done = box.print_unprinted(lambda printed, total: seen.append((printed, total)))
    assert done == {"printed": list(range(1, 131)), "stopped_at": None, "error": None, "remaining": 0}
    assert len(paper.pages) == 130
    assert seen == [(n, 130) for n in range(1, 131)]
    assert box.status()["unprinted_count"] == 0 and box.status()["unprinted"] == []


def test_print_unprinted_stops_at_the_first_fault(rig: Rig) -> None:
    box, paper = _printed_box(rig)
    paper.cover_open = True
    result = box.issue(sale())
    assert [w["code"] for w in result["warnings"]] == ["BOX_PRINTER_COVER_OPEN"]
    box.issue(sale())
    done = box.print_unprinted()
    assert done["printed"] == [] and done["stopped_at"] == 1
    assert done["error"]["code"] == "BOX_PRINTER_COVER_OPEN"
    paper.cover_open = False
    assert box.print_unprinted()["printed"] == [1, 2]


def test_reprint_refusals(rig: Rig) -> None:
    box, _ = _printed_box(rig)
    with pytest.raises(FiscalError) as refused:
        box.reprint(99)
    assert refused.value.code == "BOX_NO_RECEIPT"
    rig.close()
    plain = rig.box()
    plain.issue(sale())
    with pytest.raises(FiscalError) as refused:
        plain.reprint(1)
    assert refused.value.code == "BOX_NO_PRINTER"
    assert plain.journal.prints(1) == (0, 0)


def test_x_and_z_reports_print(rig: Rig) -> None:
    box, paper = _printed_box(rig)
    box.issue(sale("5.00"))
    box.issue(sale("7.00", receiptCurrency="ZWG"))
    assert box.print_report()["title"] == "X REPORT"
    x = paper.pages[-1].text()
    assert "X" in x and "12.00" not in x and "5.00" in x and "7.00" in x
    with pytest.raises(FiscalError) as refused:
        box.z_report(1)
    assert refused.value.code == "BOX_DAY_NOT_CLOSED"
    box.close_day()
    box.record_close(1, "FiscalDayClosed", closed_at=box.now_local(), server_signature="c2VydmVy")
    assert box.z_report(1)["status"] == "FiscalDayClosed"
    assert box.print_report(1)["title"] == "Z REPORT"
    z = paper.pages[-1].text()
    assert "END OF Z REPORT" in z
