"""`fiscalbox-device run` as a real process over a box on disk: start it, read its JSON log lines, stop it."""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path
from typing import Any

from box_rig import SETTINGS, StepClock, sale
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from firmware.box import Box
from firmware.hosts import HostKeys
from firmware.journal import Journal
from hardware import ECDSA_P256
from hardware.keystores import FileKeyStore

PASS = "service test pass phrase"
ENV = {"FISCALBOX_KEY_PASSPHRASE": PASS}
ROOT = Path(__file__).resolve().parents[2]
PATIENCE = 120.0  # seconds a test waits for the service before it fails (never how long it should take)


def make_box(root: Path, totals: tuple[str, ...] = ("4.00", "6.50"), clock: Any = None) -> None:
    """A provisioned box with day 1 open (on `clock`, a step clock by default) and a sale for each of
    `totals`, none printed or delivered."""
    keys = FileKeyStore(root / "keys", PASS.encode())
    keys.generate(ECDSA_P256)
    clock = clock or StepClock()
    with Journal(root / "journal.db", create=True) as journal:
        box = Box(journal, keys, clock)
        box.provision(SETTINGS)
        box.open_day()
        for total in totals:
            clock.advance(60)
            box.issue(sale(total))


def write_config(
    root: Path, extra: str = "", backup_at: str = "", link_port: str = "", zone: str = "Africa/Harare"
) -> str:
    path = root / "box.toml"
    path.write_text(
        f'[keys]\ndirectory = "{root / "keys"}"\n\n'
        f'[journal]\npath = "{root / "journal.db"}"\nanchor = "{root / "anchor.json"}"\n\n'
        f'[box]\nprovisioned = "{root / "provisioned.json"}"\nzone = "{zone}"\n\n'
        f'[backup]\nat = "{backup_at}"\ndir = "{root / "backups"}"\nretain = 2\n\n'
        f'[link]\nport = "{link_port}"\nhosts = "{root / "hosts.json"}"\n\n' + extra
    )
    return str(path)


def registered_config(root: Path, sim: Any, device_id: int = 10001) -> str:
    """A box.toml for the FDMS simulator's device, and the box registered with it by the one-shot command."""
    from click.testing import CliRunner

    from firmware.main import main

    device = sim.scenario.device(device_id)
    assert device is not None
    config = write_config(
        root,
        f'[device]\nid = {device_id}\nserial = "{device.serial}"\n\n'
        f'[fdms]\nurl = "{sim.url}"\nca_file = "{sim.ca_cert_path}"\n',
    )
    registered = CliRunner().invoke(
        main,
        ["--config", config, "register"],
        env={**ENV, "FISCALBOX_ACTIVATION_KEY": sim.activation_keys[device_id]},
    )
    assert registered.exit_code == 0, registered.output
    return config


class Service:
    """One `fiscalbox-device run` process; its log lines are read as they come."""

    def __init__(self, config: str, env: dict[str, str] | None = None) -> None:
        environment = {**os.environ, **ENV, **(env or {}), "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "firmware.main", "--config", config, "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            cwd=ROOT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, message: str) -> dict[str, Any]:
        """The first log line (from now on) with this message; every line must be one JSON object."""
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the service ended before {message!r}: {self.stderr()}")
            record = json.loads(line)
            assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= set(record)
            self.seen.append(record)
            if record["message"] == message:
                return record
        raise AssertionError(f"no {message!r} in the log: {self.seen}")

    def stop(self, number: int = signal.SIGTERM) -> int:
        self.process.send_signal(number)
        code = self.process.wait(timeout=PATIENCE)
        self.wait_for("service stopped")
        return code

    def stderr(self) -> str:
        if self.process.poll() is None:
            return ""
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def poll(check: Any, what: str) -> Any:
    """Wait (generously) until check() gives something true; fail saying `what` never happened."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen")


class PtyBridge:
    """A serial cable between two pseudo-terminals: the service opens `box_path`, a host `host_path`; what
    either writes the other reads."""

    def __init__(self) -> None:
        self._box_master, self._box_slave = os.openpty()
        self._host_master, self._host_slave = os.openpty()
        self.box_path = os.ttyname(self._box_slave)
        self.host_path = os.ttyname(self._host_slave)
        for fd in (self._box_slave, self._host_slave):
            tty.setraw(fd)
        self._closing = threading.Event()
        self._swap = threading.Lock()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._closing.is_set():
            with self._swap:
                ends = {self._box_master: self._host_master, self._host_master: self._box_master}
                ready, _, _ = select.select(list(ends), [], [], 0.05)
                for fd in ready:
                    try:
                        data = os.read(fd, 4096)
                    except OSError:  # no one has that end open just now (the service restarting)
                        continue
                    os.write(ends[fd], data)

    def unplug_host(self) -> str:
        """Pull the cable out of the host: its end of the line vanishes (a host reading it gets an error at
        once); a new host end is there instead, whose path is returned."""
        with self._swap:
            os.close(self._host_master)
            os.close(self._host_slave)
            self._host_master, self._host_slave = os.openpty()
            tty.setraw(self._host_slave)
            self.host_path = os.ttyname(self._host_slave)
        return self.host_path

    def unplug_box(self) -> str:
        """Pull the cable out of the box: its tty hangs up under whoever holds it (reads fail at once, as
        the Pi's gadget port does); a new box end is there instead, whose path is returned."""
        with self._swap:
            os.close(self._box_master)
            os.close(self._box_slave)
            self._box_master, self._box_slave = os.openpty()
            tty.setraw(self._box_slave)
            self.box_path = os.ttyname(self._box_slave)
        return self.box_path

    def close(self) -> None:
        self._closing.set()
        self._thread.join()
        for fd in (self._box_master, self._box_slave, self._host_master, self._host_slave):
            os.close(fd)


def host_key(root: Path, role: str) -> bytes:
    """A host's P-256 key (PEM), enrolled with `role` in the box's host keys before the service starts."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    HostKeys(root / "hosts.json").enroll(public, role, f"test {role}", "2026-11-22T08:00:00")
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
