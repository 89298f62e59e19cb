"""`fiscalbox-device run` through its faults: a hung-up link port, a long print backlog at start, a fault of
the delivery worker, a backup folder it cannot write, one-shot commands racing the service's start, and a
stop that must end before systemd kills it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from box_rig import StepClock
from service_rig import ENV, PtyBridge, Service, host_key, make_box, poll, registered_config, write_config

from firmware import config as configuration
from firmware.core.errors import FiscalError
from firmware.service import (
    BackupSchedule,
    Device,
    ServiceLock,
    SystemClock,
    backup_loop,
    join_until,
    one_shot,
)
from hardware import printers
from host_tools.link import BoxClient
from sim.fdms.scenario import Scenario
from sim.fdms.server import FdmsSimulator
from sim.printer import VirtualPrinter


class Records(logging.Handler):
    """The log records a Device or loop writes, as (message, fields)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.log = logging.getLogger(f"test.faults.{id(self)}")
        self.log.addHandler(self)
        self.log.setLevel(logging.DEBUG)
        self.log.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), dict(getattr(record, "fields", {}) or {})))

    def messages(self, message: str) -> list[dict[str, Any]]:
        return [fields for said, fields in self.seen if said == message]


@pytest.fixture
def cable() -> Iterator[PtyBridge]:
    made = PtyBridge()
    yield made
    made.close()


def test_a_hung_up_link_port_is_opened_again_and_a_host_talks_to_the_box_again(
    tmp_path: Path, cable: PtyBridge
) -> None:
    make_box(tmp_path, totals=(), clock=SystemClock())
    pos = host_key(tmp_path, "pos")
    link = tmp_path / "ttyGS0"  # as udev names the gadget port: the path stays, the tty behind it changes
    link.symlink_to(cable.box_path)
    service = Service(write_config(tmp_path, link_port=str(link)))
    try:
        service.wait_for("link listening")
        with BoxClient(cable.host_path, pos, timeout=60) as client:
            assert client.status()["last_global_no"] == 0
        fresh = cable.unplug_box()  # the cable pulled: the box's tty hangs up under the service
        swap = tmp_path / "swap"
        swap.symlink_to(fresh)
        swap.replace(link)  # plugged in again
        service.wait_for("link port lost; opening it again")
        poll(lambda: _holds(service.process.pid, fresh), "the service opened the port again")

        def answered() -> bool:
            try:
                with BoxClient(cable.host_path, pos, timeout=2, retries=0) as again:
                    return again.status()["last_global_no"] == 0
            except FiscalError:  # the request went out while the port was still being opened
                return False

        poll(answered, "a host talks to the box again")
        assert service.stop() == 0
    finally:
        service.kill()
    lost = [r for r in service.seen if r["message"] in ("link port lost; opening it again", "link.port")]
    assert len(lost) <= 3, lost  # said once an outage, not twice a second


def _holds(pid: int, path: str) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == path:
                return True
        except OSError:
            continue
    return False


class GatedPrinter(VirtualPrinter):
    """The virtual printer, holding every write until `gate` is set (a printer slow to take a receipt)."""

    def __init__(self) -> None:
        super().__init__(dots=576)
        self.gate = threading.Event()

    def write(self, data: bytes) -> int:
        self.gate.wait()
        return super().write(data)


def test_the_backlog_prints_in_its_own_thread_and_a_stop_ends_it_between_receipts(tmp_path: Path) -> None:
    make_box(tmp_path, totals=("1.00", "2.00", "3.00", "4.00"))
    cfg = configuration.load(write_config(tmp_path), ENV)
    records = Records()
    device = Device(cfg, ENV, StepClock(local="2026-11-22T09:00:00"), records.log)
    paper = GatedPrinter()
    assert device.box is not None
    device.box.printer = printers.open_printer("epson-tm-t20ii", paper)
    stop = threading.Event()
    try:
        starting = threading.Thread(target=device.start, args=(stop,))
        starting.start()
        poll(lambda: not starting.is_alive(), "start returning while the printer holds the first receipt")
        stop.set()  # SIGTERM while receipt 1 is printing
        paper.gate.set()
        done = poll(lambda: records.messages("unprinted receipts printed"), "the backlog thread ending")
    finally:
        stop.set()
        paper.gate.set()
        device.close()
    assert done[0]["printed"] == [1] and done[0]["remaining"] == 3  # receipt 1 whole, then it stopped
    assert len([p for p in paper.pages if p.has_content]) == 1


def test_a_fault_of_the_delivery_worker_is_logged_shown_and_the_worker_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FdmsSimulator(Scenario.default(), state_dir=tmp_path / "fdms") as sim:
        config = registered_config(tmp_path, sim)
        records = Records()
        device = Device(configuration.load(config, ENV), ENV, SystemClock(), records.log)
        worker = device.delivery
        assert worker is not None
        real_step = worker.step
        faults: list[int] = []

        def faulty_step() -> str:  # a bug in the worker itself, once (FDMS's own faults never end it)
            if not faults:
                faults.append(1)
                raise RuntimeError("a bug in the worker")
            return real_step()

        monkeypatch.setattr(worker, "step", faulty_step)
        stop = threading.Event()
        try:
            device.start(stop)
            said = poll(lambda: records.messages("delivery fault: the worker restarts"), "the fault logged")
            assert said[0]["code"] == "BOX_DELIVERY_FAULT" and "a bug in the worker" in said[0]["error"]
            shown = device.status()["fdms"]["delivery"]["worker"]
            assert shown["faults"] == 1 and shown["restart_at"]
            poll(lambda: records.messages("delivery restarted"), "the worker started again")
            poll(lambda: device.status()["fdms"]["delivery"]["worker"]["state"] == "running", "running")
            assert any(t.name == "delivery" and t.is_alive() for t in threading.enumerate())
        finally:
            stop.set()
            device.close()


def test_a_backup_folder_that_cannot_be_written_is_logged_shown_and_tried_again_in_an_hour(
    tmp_path: Path,
) -> None:
    make_box(tmp_path)
    cfg = configuration.load(write_config(tmp_path, backup_at="02:30"), ENV)
    # where SQLite would write the copy, a folder stands: it cannot open its file (apsw.CantOpenError, no
    # FiscalError), as in a folder the service may not write (which root, running the tests, always may)
    blocked = tmp_path / "backups" / "journal-0000000002-20261123T030000-001.db.tmp"
    blocked.mkdir(parents=True)
    clock = StepClock(local="2026-11-23T03:00:00")
    records = Records()
    device = Device(cfg, ENV, clock, records.log)
    stop = threading.Event()
    schedule = BackupSchedule("02:30", cfg.backup["dir"], cfg.box["zone"])
    loop = threading.Thread(target=backup_loop, args=(device, schedule, stop, records.log, 0.01))
    loop.start()
    try:
        failed = poll(lambda: records.messages("backup failed"), "the failure logged")
        assert failed[0]["code"] == "BOX_BACKUP" and failed[0]["retry_at"]
        assert device.status()["backup_failure"]["code"] == "BOX_BACKUP"
        assert loop.is_alive()  # the service runs on
        blocked.rmdir()
        clock.advance(3601)  # an hour later, the same day
        made = poll(lambda: records.messages("backup made"), "the backup made an hour later")
        assert "20261123" in made[0]["file"] and "backup_failure" not in device.status()
    finally:
        stop.set()
        loop.join()
        device.close()


def test_the_schedule_skips_dangling_entries_and_copies_dated_after_now(tmp_path: Path) -> None:
    folder = tmp_path / "backups"
    folder.mkdir()
    (folder / "journal-20261101-0230.db").symlink_to(tmp_path / "gone.db")  # dangling
    later = folder / "journal-20270101-0230.db"  # made while the clock ran a month ahead
    later.write_bytes(b"")
    clock = StepClock(local="2026-12-01T03:00:00")
    os.utime(later, (clock.now() + 31 * 86400, clock.now() + 31 * 86400))
    schedule = BackupSchedule("02:30", folder, "Africa/Harare")
    assert schedule.due(clock.now())  # the clock moved back: today's backup is still made
    schedule.done(clock.now())
    assert not schedule.due(clock.now() + 3600)
    assert schedule.due(clock.now() + 86400)


def test_a_one_shot_command_before_the_first_service_start_keeps_the_service_off(tmp_path: Path) -> None:
    make_box(tmp_path)
    cfg = configuration.load(write_config(tmp_path), ENV)
    with one_shot(cfg):  # no lock file yet: the service never ran here
        with pytest.raises(FiscalError) as refused:
            ServiceLock(cfg, wait=0.0)
        assert refused.value.code == "BOX_BUSY"
    ServiceLock(cfg, wait=0.0).release()


def test_the_wait_for_a_one_shot_command_at_service_start_ends_on_sigterm(tmp_path: Path) -> None:
    make_box(tmp_path)
    cfg = configuration.load(write_config(tmp_path), ENV)
    stop = threading.Event()
    outcome: list[BaseException] = []

    def start() -> None:
        try:
            ServiceLock(cfg, wait=3600.0, stop=stop).release()
        except FiscalError as error:
            outcome.append(error)

    with one_shot(cfg):
        starting = threading.Thread(target=start)
        starting.start()
        stop.set()
        poll(lambda: not starting.is_alive(), "the wait ending at SIGTERM")
    assert isinstance(outcome[0], FiscalError) and outcome[0].code == "BOX_BUSY"


def test_the_waits_at_stop_share_one_deadline_and_say_what_was_given_up() -> None:
    records = Records()
    stuck = threading.Event()
    threads = [threading.Thread(target=stuck.wait, name=name, daemon=True) for name in ("link", "delivery")]
    for thread in threads:
        thread.start()
    try:
        join_until(threads, 0.0, records.log)  # the deadline has passed: nothing is waited for
        assert records.messages("stop: given up waiting") == [{"still_running": ["link", "delivery"]}]
    finally:
        stuck.set()


def test_backup_and_export_report_the_journals_own_progress(tmp_path: Path) -> None:
    make_box(tmp_path, totals=("1.00", "2.00", "3.00"))
    cfg = configuration.load(write_config(tmp_path), ENV)
    device = Device(cfg, ENV, StepClock(local="2026-11-22T09:00:00"))
    try:
        pages: list[tuple[int, int]] = []
        device.backup(lambda done, total: pages.append((done, total)))
        assert device.box is not None
        size = int(device.box.journal.db.execute("PRAGMA page_count").fetchall()[0][0])  # type: ignore[arg-type]
        assert pages and pages[-1] == (size, size) and size > 1  # the pages SQLite copied, not 0/1 then 1/1
        receipts: list[tuple[int, int]] = []
        device.export_journal(1, 3, tmp_path / "export.json", lambda n, total: receipts.append((n, total)))
        assert receipts == [(1, 3), (2, 3), (3, 3)]
    finally:
        device.close()
