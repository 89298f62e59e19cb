"""`make demo` tells the whole story: it must run to the end and leave the receipts and reports it shows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from host_tools import demo


def test_the_demo_runs_from_registration_to_fdms_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FISCALBOX_KEY_PASSPHRASE", "demo test")  # the demo sets it; undone after the test
    demo.main()
    said = capfd.readouterr().out
    printed = tmp_path / "out" / "receipts"
    last = len(demo.SALES) + demo.SHOP_SALES
    stems = [f"{n:04d}" for n in range(1, last + 1) if n != 3] + ["0003-torn", "0003-copy"]  # paper out
    for stem in stems:
        assert (printed / f"{stem}.txt").exists() and (printed / f"{stem}.png").exists(), stem

    def squeezed(name: str) -> str:  # double-width text is dumped with a space after each character
        return "".join((printed / name).read_text().split())

    assert "***COPY***" in squeezed("0003-copy.txt")
    assert "XREPORT" in squeezed("x-report-day-1.txt") and "ZREPORT" in squeezed("z-report-day-1.txt")
    assert f"FDMS holds receipts 1..{last}, each once, in order" in said
    assert "day 1 FiscalDayClosed" in said and "signature verified by the box" in said
    assert "BOX_FDMS_UNAVAILABLE" in said  # the outage really happened
    assert f"clean: device {demo.DEVICE_ID}, receipts 1..{last}" in said
    # Counts read as words, never a Python dict's repr.
    assert re.search(r"outbox \d+ delivered, \d+ pending;", said) or re.search(r"outbox \d+ pending;", said)
    assert f"Audit: clean, {last} receipts, 1 day, " in said and " checked" in said
    assert "{'" not in said
    close = json.loads((tmp_path / "out" / "demo" / "close-day.json").read_text())
    assert close["receiptCounter"] == last
