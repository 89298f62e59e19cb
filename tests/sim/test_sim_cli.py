"""`fiscalbox-sim printer` as a separate process: a driver prints to its pty and the page lands on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import serial

from firmware.core import layout
from hardware.printers import EscposPrinter, profile


def test_a_page_printed_to_the_served_port_is_written_as_text_and_image(tmp_path: Path) -> None:
    out = tmp_path / "pages"
    command = [sys.executable, "-m", "sim.main", "printer", "--json", "--out", str(out), "--poll", "0.05"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        started = json.loads(process.stdout.readline())
        with serial.Serial(started["port"], 115200, timeout=1) as port:
            driver = EscposPrinter(profile("epson-tm-t20ii"), port)
            document = layout.Document(48)
            document.text("SIMULATED PAGE", align=layout.CENTER, bold=True)
            document.qr("https://fdms.zimra.co.zw/000000001")
            driver.print_document(document)
        page = json.loads(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert page["page"] == 1
    assert "SIMULATED PAGE" in Path(page["text"]).read_text(encoding="utf-8")
    assert Path(page["image"]).read_bytes().startswith(b"\x89PNG")
    assert process.returncode == 0
