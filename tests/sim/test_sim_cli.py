"""`fiscalbox-sim printer` as a separate process: a driver prints to its pty and the page lands on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
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


@pytest.mark.parametrize(
    "args, code",
    [
        (["--dots", "0"], "SIM_ARGUMENT"),
        (["--dots", "-576"], "SIM_ARGUMENT"),
        (["--paper-lines", "-1"], "SIM_ARGUMENT"),
        (["--poll", "0"], "SIM_ARGUMENT"),
        (["--out", "{file}"], "SIM_OUT_DIR"),
        (["--out", "{file}/pages"], "SIM_OUT_DIR"),
    ],
)
def test_bad_printer_arguments_are_one_error_line(tmp_path: Path, args: list[str], code: str) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    argv = ["printer", "--out", str(tmp_path / "pages"), *(a.format(file=plain) for a in args)]
    done = subprocess.run(
        [sys.executable, "-m", "sim.main", *argv], capture_output=True, text=True, timeout=20
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error {code}: "), done.stderr
    assert sorted(tmp_path.iterdir()) == [plain]
