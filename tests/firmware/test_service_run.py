"""`fiscalbox-device run` as a real process: it starts, logs JSON lines, prints what was left unprinted,
delivers what waits, makes its daily backup, keeps the one-shot commands off its journal, and stops cleanly
on SIGTERM and SIGINT."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from box_rig import StepClock, sale
from click.testing import CliRunner
from service_rig import ENV, Service, make_box, poll, registered_config, write_config

from firmware import config as configuration
from firmware.box import Box
from firmware.main import _with_box, main
from firmware.service import BackupSchedule, Device, SystemClock, backup_loop
from sim.fdms.scenario import Scenario
from sim.fdms.server import FdmsSimulator
from sim.printer import VirtualPrinter
from sim.pty_port import PtyPort, serve_on_pty
from sim.shop import Shop


@pytest.fixture
def paper() -> Iterator[tuple[VirtualPrinter, PtyPort]]:
    printer = VirtualPrinter(dots=576)
    with serve_on_pty(printer) as port:
        yield printer, port


def one_shot(config: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", config, *args], env=ENV)
    return result.exit_code, result.output


def test_the_service_prints_what_was_left_refuses_one_shots_and_stops_on_sigterm(
    tmp_path: Path, paper: tuple[VirtualPrinter, PtyPort]
) -> None:
    printer, port = paper
    make_box(tmp_path)
    config = write_config(tmp_path, f'[printer]\nmodel = "epson-tm-t20ii"\nport = "{port.path}"\n')
    service = Service(config)
    try:
        started = service.wait_for("service started")
        assert started["pid"] == service.process.pid and started["journal_clean"] is True
        printed = service.wait_for("unprinted receipts printed")  # a restart reprints what was left
        assert printed["printed"] == [1, 2] and printed["remaining"] == 0
        assert len(printer.pages) == 2
        for args in (
            ["status", "--json"],
            ["receipt", "1"],
            ["key", "show"],
            ["audit"],
            ["backup"],
            ["reprint", "1"],
            ["report", "--json"],
        ):
            code, output = one_shot(config, *args)
            assert code == 2 and output.startswith("error BOX_BUSY"), (args, output)
            assert f"process {service.process.pid}" in output and "systemctl stop fiscalbox" in output
            assert "the virtual box: stop fiscalbox-sim box" in output  # how to stop it where it runs
        assert len(printer.pages) == 2 and not (tmp_path / "backups").exists()  # nothing was done
        second = Service(config)
        assert second.process.wait(timeout=120) == 2
        assert "error BOX_BUSY" in second.stderr()
        assert service.stop(signal.SIGTERM) == 0
    finally:
        service.kill()
    code, output = one_shot(config, "status", "--json")
    assert code == 0 and json.loads(output)["unprinted_count"] == 0


def test_the_service_makes_its_daily_backup_and_stops_on_sigint(tmp_path: Path) -> None:
    make_box(tmp_path)
    # a zone where it is around noon now, so both starts below fall on the same local day
    offset = 12 - time.gmtime().tm_hour
    zone = "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"  # Etc/GMT-3 is three hours ahead of UTC
    # 00:00 has passed today, and there is no backup of today yet
    config = write_config(tmp_path, backup_at="00:00", zone=zone)
    service = Service(config)
    try:
        made = service.wait_for("backup made")
        assert Path(made["file"]).parent == tmp_path / "backups"
        assert [p.name for p in (tmp_path / "backups").glob("*.db")] == [Path(made["file"]).name]
        assert service.stop(signal.SIGINT) == 0
    finally:
        service.kill()
    service = Service(config)  # a restart the same day: today's backup is there
    try:
        service.wait_for("service started")
        assert service.stop() == 0
    finally:
        service.kill()
    assert "backup made" not in [r["message"] for r in service.seen]
    assert len(list((tmp_path / "backups").glob("*.db"))) == 1


def test_the_daily_backup_keeps_the_newest_copies_on_the_box_clock(tmp_path: Path) -> None:
    make_box(tmp_path)
    cfg = configuration.load(write_config(tmp_path, backup_at="02:30"), ENV)
    clock = StepClock(local="2026-11-23T01:00:00")
    device = Device(cfg, ENV, clock)
    stop = threading.Event()
    schedule = BackupSchedule("02:30", cfg.backup["dir"], cfg.box["zone"])
    worker = threading.Thread(target=backup_loop, args=(device, schedule, stop, device.log, 0.01))
    worker.start()
    backups = tmp_path / "backups"
    try:
        assert schedule.due(clock.now()) is False and not backups.exists()
        for day in range(3):
            clock.advance(2 * 3600)  # past 02:30: the day's backup
            poll(lambda day=day: schedule.last is not None and schedule.last.day == 23 + day, f"day {day}")
            clock.advance(22 * 3600)
        names = sorted(p.name for p in backups.glob("*.db"))
        assert len(names) == 2  # retain = 2: the oldest went
        assert "20261124" in names[0] and "20261125" in names[1]
    finally:
        stop.set()
        worker.join()
        device.close()


def test_the_service_delivers_what_waits_and_a_restart_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FISCALBOX_KEY_PASSPHRASE", ENV["FISCALBOX_KEY_PASSPHRASE"])  # for the sales below
    with FdmsSimulator(Scenario.default(), state_dir=tmp_path / "fdms") as sim:
        config = registered_config(tmp_path, sim)
        shop = Shop(seed=3, device_id=10001)

        def sell(count: int) -> None:
            def work(box: Box) -> None:
                if box.journal.current_day() is None:
                    box.open_day()
                for _ in range(count):
                    sale = shop.next_sale()
                    shop.issued(sale, box.issue(sale))

            _with_box(configuration.load(config, ENV), work)

        sell(3)
        for expected in (3, 5):
            service = Service(config)
            try:
                service.wait_for("service started")
                poll(lambda n=expected: len(sim.held_receipts(10001)) == n, f"{expected} receipts delivered")
                assert service.stop() == 0
            finally:
                service.kill()
            if expected == 3:
                sell(2)  # while the service is stopped: the next start delivers them
        assert [h["receiptGlobalNo"] for h in sim.held_receipts(10001)] == [1, 2, 3, 4, 5]
        code, output = one_shot(config, "outbox", "--json")
        assert code == 0 and json.loads(output)["counts"] == {"delivered": 5}


def test_a_printer_plugged_in_late_or_again_is_connected_at_the_next_print_its_absence_said_once(
    tmp_path: Path, paper: tuple[VirtualPrinter, PtyPort], caplog: pytest.LogCaptureFixture
) -> None:
    printer, port = paper
    make_box(tmp_path, totals=(), clock=SystemClock())
    plug = tmp_path / "printer"  # the udev name, not there until the printer is plugged in
    config = write_config(tmp_path, f'[printer]\nmodel = "epson-tm-t20ii"\nport = "{plug}"\n')
    with caplog.at_level(logging.INFO, logger="fiscalbox.device"):
        device = Device(configuration.load(config, ENV), ENV, SystemClock())
        try:
            assert device.box is not None and device.box.printer is None
            device.issue(sale("2.00"))
            device.issue(sale("3.00"))
            assert device.status()["unprinted_count"] == 2 and printer.pages == []
            plug.symlink_to(port.path)
            device.issue(sale("4.00"))
            assert len(printer.pages) == 1 and device.print_unprinted()["printed"] == [1, 2]
            port.unplug_after(0)  # pulled out; then another printer is plugged in under the same name
            codes = [w["code"] for w in device.issue(sale("5.00"))["warnings"]]
            assert "BOX_PRINTER_OFFLINE" in codes
            another = VirtualPrinter(dots=576)
            with serve_on_pty(another) as other:
                plug.unlink()
                plug.symlink_to(other.path)
                device.issue(sale("6.00"))
                assert device.print_unprinted()["printed"] == [4]
                assert len(another.pages) == 2 and device.status()["unprinted_count"] == 0
        finally:
            device.close()
    said = [r.getMessage() for r in caplog.records]
    assert said.count("printer not connected") == 1 and said.count("printer connected") == 2
    assert said.count("printer gone: its port is opened afresh at the next print") == 1
