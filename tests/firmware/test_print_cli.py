"""`fiscalbox-device show / reprint / report` against the virtual printer on a real pseudo-terminal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from service_rig import PASS, make_box  # a provisioned box with day 1 open and two sales

from firmware.journal import Journal
from firmware.main import main
from sim.printer import VirtualPrinter
from sim.pty_port import PtyPort, serve_on_pty


@pytest.fixture
def paper() -> Iterator[tuple[VirtualPrinter, PtyPort]]:
    printer = VirtualPrinter(dots=576)
    with serve_on_pty(printer) as port:
        yield printer, port


def config(tmp_path: Path, port: str) -> str:
    path = tmp_path / "box.toml"
    path.write_text(
        f'[keys]\nstore = "file"\ndirectory = "{tmp_path / "keys"}"\n\n'
        f'[journal]\npath = "{tmp_path / "journal.db"}"\nanchor = "{tmp_path / "anchor.json"}"\n\n'
        f'[printer]\nmodel = "epson-tm-t20ii"\nport = "{port}"\n'
    )
    return str(path)


def run(cfg: str, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["--config", cfg, *args], env={"FISCALBOX_KEY_PASSPHRASE": PASS})


def test_reprint_and_unprinted_over_a_serial_port(
    tmp_path: Path, paper: tuple[VirtualPrinter, PtyPort]
) -> None:
    printer, port = paper
    make_box(tmp_path)
    cfg = config(tmp_path, port.path)

    first = run(cfg, "reprint", "1")
    assert first.exit_code == 0, first.output
    assert first.output.strip() == "printed receipt 1"  # never printed before: the original
    again = run(cfg, "reprint", "1")
    assert again.output.strip() == "printed receipt 1 as COPY"
    rest = run(cfg, "reprint", "--unprinted", "--json")
    assert rest.exit_code == 0
    assert json.loads(rest.output) == {"printed": [2], "stopped_at": None, "error": None, "remaining": 0}
    assert len(printer.pages) == 3
    assert "COPY" not in printer.pages[0].text().replace(" ", "")
    assert "COPY" in printer.pages[1].text().replace(" ", "")
    assert printer.pages[0].qr_payloads == printer.pages[1].qr_payloads

    shown = run(cfg, "show", "2", "--width", "32")
    assert shown.exit_code == 0 and "6.50" in shown.output and "[QR https://" in shown.output
    assert len(printer.pages) == 3  # showing prints nothing

    report = run(cfg, "report")
    assert report.exit_code == 0 and "X REPORT" in report.output and "10.50" in report.output
    figures = json.loads(run(cfg, "report", "--json").output)
    assert figures["receipts"] == 2
    printed = run(cfg, "report", "--print")
    assert printed.exit_code == 0 and "X REPORT" in printed.output
    assert "END OF X REPORT" in printer.pages[-1].text()


def test_printer_faults_are_refused_with_their_code(
    tmp_path: Path, paper: tuple[VirtualPrinter, PtyPort]
) -> None:
    printer, port = paper
    make_box(tmp_path)
    printer.cover_open = True
    refused = run(config(tmp_path, port.path), "reprint", "1")
    assert refused.exit_code == 2
    assert "error BOX_PRINTER_COVER_OPEN" in refused.output
    assert printer.pages == []
    with Journal(tmp_path / "journal.db") as journal:
        assert journal.prints(1) == (0, 0)  # refused before anything was recorded

    missing = run(config(tmp_path, str(tmp_path / "no-such-port")), "reprint", "1")
    assert (
        missing.exit_code == 2 and "error BOX_PRINTER_OFFLINE: Cannot open the printer port" in missing.output
    )
    cfg = Path(config(tmp_path, port.path))
    cfg.write_text(cfg.read_text().replace("epson-tm-t20ii", "tm-x"))
    unknown = run(str(cfg), "reprint", "1")
    assert unknown.exit_code == 2 and "error BOX_CONFIG: Unknown printer model" in unknown.output


def test_reprint_unprinted_prints_them_all_and_shows_its_progress(
    tmp_path: Path, paper: tuple[VirtualPrinter, PtyPort]
) -> None:
    printer, port = paper
    make_box(tmp_path, ("1.00",) * 130)  # more than the journal is read at a time
    done = run(config(tmp_path, port.path), "reprint", "--unprinted")
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == "printed 130 receipts"
    assert "printed 130 of 130 receipts" in done.stderr
    assert len(printer.pages) == 130
    with Journal(tmp_path / "journal.db") as journal:
        assert journal.unprinted_count() == 0


CHECK_BYTES = 9  # the three DLE EOT status queries the Epson driver sends before a print


@pytest.mark.parametrize(
    "args",
    [
        ("reprint", "1"),
        ("reprint", "--unprinted"),
        ("reprint", "--unprinted", "--json"),
        ("report", "--print"),
    ],
)
@pytest.mark.parametrize("sent", [0, CHECK_BYTES + 200], ids=["before-the-print", "mid-print"])
def test_a_printer_unplugged_during_a_command_is_one_error_line(
    tmp_path: Path, paper: tuple[VirtualPrinter, PtyPort], args: tuple[str, ...], sent: int
) -> None:
    printer, port = paper
    make_box(tmp_path)
    port.unplug_after(sent)
    result = run(config(tmp_path, port.path), *args)
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    (line,) = result.stderr.splitlines()
    assert line.startswith("error BOX_PRINTER_OFFLINE: ") and "check its power and cable" in line
    assert ("did not finish" in line) == (sent > 0)
    with Journal(tmp_path / "journal.db") as journal:
        assert journal.prints(1) == ((1, 0) if sent and args[0] == "reprint" else (0, 0))
        assert journal.unprinted() == [1, 2]
    if "--unprinted" in args:
        if "--json" in args:
            answer = json.loads(result.stdout)
            assert answer["printed"] == [] and answer["stopped_at"] == 1 and answer["remaining"] == 2
        else:
            assert result.stdout.strip() == "printed 0 receipts, stopped at receipt 1; 2 still unprinted"
