"""`make demo` tells the whole story: it must run to the end and leave the receipts and reports it shows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from host_tools import demo


def test_the_demo_runs_a_shops_day_through_the_host_tool_from_registration_to_fdms_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    demo.main()
    said = capfd.readouterr().out
    printed = tmp_path / "out" / "receipts"
    sold = len(demo.SALES) + demo.SHOP_SALES
    last = sold + 1  # and the sale whose answer was lost, issued once
    stems = [f"{n:04d}" for n in range(1, last + 1) if n != 3] + ["0003-torn", "0003-copy"]  # paper out
    for stem in stems:
        assert (printed / f"{stem}.txt").exists() and (printed / f"{stem}.png").exists(), stem

    def squeezed(name: str) -> str:  # double-width text is dumped with a space after each character
        return "".join((printed / name).read_text().split())

    assert "***COPY***" in squeezed("0003-copy.txt")
    assert "XREPORT" in squeezed("x-report-day-1.txt") and "ZREPORT" in squeezed("z-report-day-1.txt")
    # Every step is a host-tool command over the link, said before it runs.
    commands = re.findall(
        r"^\$ fiscalbox --port out/demo/box/link --key \S+ (?:--timeout \S+ )?(.*)$", said, re.MULTILINE
    )
    for step in (
        "keys enroll",
        "provision",
        "register",
        "day open",
        "sale",
        "reprint 3",
        "outbox",
        "day close",
        "report z 1",
        "journal export",
        "journal verify",
        "audit",
        "backup",
    ):
        assert any(c.startswith(step) for c in commands), step
    assert sum(c.startswith("sale ") for c in commands) == sold + 1 + 2  # the bad sale, the retried one twice
    assert "BOX_FDMS_UNAVAILABLE" in said  # the outage really happened
    assert re.search(r"outbox \d+ delivered, \d+ pending;", said) or re.search(r"outbox \d+ pending;", said)
    assert f"FDMS holds receipts 1..{sold}, each once, in order" in said  # caught up after the outage
    assert f"one receipt, {last}, for the three sends" in said  # the retry did not double-issue
    assert "refused (exit 2); last receipt still" in said and "RCPT" in said  # the bad sale
    assert "FDMS: day 1 FiscalDayClosed" in said and f"receipts 1..{last}, each once, in order" in said
    assert "the box: FiscalDayClosed" in said
    assert f"clean: {last} receipts" in said  # the box's audit
    assert f"clean: device {demo.DEVICE_ID}, receipts 1..{last}" in said  # the export, verified offline
    assert "{'" not in said and "Traceback" not in said
    close = json.loads((tmp_path / "out" / "demo" / "close-day.json").read_text())
    assert close["receiptCounter"] == last
