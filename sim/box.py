"""The virtual box: the real service (`fiscalbox-device run`) on a pseudo-terminal, with the virtual printer.

What runs is the box's own code, unchanged, as a subprocess: its link port is one end of a null-modem cable
made of two pseudo-terminals (`NullModem`), the host end is the port a POS or the `fiscalbox` host tool opens;
its printer port is a pseudo-terminal with `VirtualPrinter` behind it, whose pages are written to files. The
FDMS it talks to is the simulator, started here (state kept beside the box's, on the same port across
restarts) or one given by URL and CA.

Set-up goes through the link as an operator would do it, with the host tool's `BoxClient`: an operator and a
POS host key made (PEM files, 0600), the operator key enrolled first (signed by itself: the first-operator
rule), the POS key enrolled by the operator, the identity provisioned, the box registered with the activation
key (sent in the register request; the service never sees it as an argument or in its environment). Each step
done is recorded in `vbox.json`, so a second start on the same state directory resumes without registering
again.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path
from typing import Any

from firmware.core.errors import FiscalError
from hardware import printers
from sim.printer import VirtualPrinter
from sim.pty_port import PtyPort

PRINTER_MODEL = "epson-tm-t20ii"
DEVICE_ID = 10001  # a device of the simulator's default scenario (its serial and activation key are there)
READY_SECONDS = 60.0  # how long the service may take to answer on its link after it was started
STOP_SECONDS = 30.0  # how long it may take to finish the operation in flight once asked to stop
EXAMPLE_SALE = {
    "receiptType": "FiscalInvoice",
    "receiptCurrency": "USD",
    "invoiceNo": "EXAMPLE-1",
    "receiptLinesTaxInclusive": True,
    "receiptLines": [
        {
            "receiptLineType": "Sale",
            "receiptLineName": "Bread 700g",
            "receiptLinePrice": "1.15",
            "receiptLineQuantity": "2",
            "taxID": 517,
            "taxPercent": "15.5",
            "receiptLineHSCode": "19059000",
        }
    ],
    "receiptPayments": [{"moneyTypeCode": "Cash", "paymentAmount": "2.30"}],
}  # written beside the keys, so a person trying the box has a sale to send at once


def _die_with_parent() -> None:
    """In the service's process, before exec: SIGTERM it when the process that started it dies, so a virtual
    box killed hard never leaves its service behind holding the journal."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class NullModem:
    """Two pseudo-terminals joined master to master, like a null-modem cable: what one side's slave writes
    the other side's slave reads. Both slaves stay open here, so either end may be opened and closed at will
    (a host that unplugs and plugs again) without the other seeing a hang-up. Bytes for an end nobody reads
    are dropped once its buffer is full, as on a real line."""

    def __init__(self) -> None:
        self._fds: list[int] = []
        box_master, box_slave = self._pair()
        host_master, host_slave = self._pair()
        self.box_path = os.ttyname(box_slave)
        self.host_path = os.ttyname(host_slave)
        self._peer = {box_master: host_master, host_master: box_master}
        self._box_master = box_master
        self._lose = 0  # answers (box to host packets) still to drop
        self._lose_what: tuple[int | None, int | None] = (None, None)
        self._losing: Any = None  # the decoder reading the box's packets while answers are lost
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="null-modem", daemon=True)
        self._thread.start()

    def _pair(self) -> tuple[int, int]:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline: the link is its own framing
        os.set_blocking(master, False)
        self._fds += [master, slave]
        return master, slave

    def lose_answers(self, count: int = 1, group: int | None = None, command: int | None = None) -> None:
        """Lose the box's next `count` answers to the host (only those to `group`/`command` when given), as a
        cable glitch would: the box did the work, the host never hears of it."""
        with self._lock:
            self._lose += count
            self._lose_what = (group, command)

    def _pump(self) -> None:
        masters = list(self._peer)
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(masters, [], [], 0.05)
            except (OSError, ValueError):
                return
            for source in ready:
                try:
                    data = os.read(source, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if source == self._box_master:
                    data = self._censor(data)
                if data:
                    self._send(self._peer[source], data)

    def _censor(self, data: bytes) -> bytes:
        """What of the box's bytes reaches the host while answers are being lost: whole packets only, each
        passed on again unless it is one to lose."""
        from firmware.core import smp

        with self._lock:
            if not self._lose:
                return data
            if self._losing is None:
                self._losing = smp.Decoder()
            passed = b""
            for frame in self._losing.feed(data):
                _, _, _, _, group, _, command = smp.parse_header(frame)
                wanted = self._lose_what
                if self._lose and wanted[0] in (None, group) and wanted[1] in (None, command):
                    self._lose -= 1
                else:
                    passed += smp.encode(frame)
            if not self._lose:
                self._losing = None
            return passed

    @staticmethod
    def _send(fd: int, data: bytes) -> None:
        while data:
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:
                ready = select.select([], [fd], [], 0.5)[1]
                if not ready:
                    return  # nobody reads this end: the rest is lost, as on a line with no one listening
            except OSError as error:
                if error.errno in (errno.EIO, errno.EBADF):
                    return
                raise

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _write_private(path: Path, data: bytes) -> None:
    """A file only its owner may read, written whole or not at all."""
    partial = path.with_name(path.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(partial, 0o600)
    os.replace(partial, path)


def host_key(path: Path) -> bytes:
    """The ECDSA P-256 host key at `path` (PEM, 0600), made there first if it does not exist yet."""
    from host_tools.link import new_key

    if not path.exists():
        new_key(path)
    return path.read_bytes()


def device_key_pem(operator: Any) -> bytes:
    """The device key's public half (PEM), asked over the link with an operator's `BoxClient`: from the
    status when it gives one, else from the device's own certificate request (made by that key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from host_tools.link import device_public_key

    key = device_public_key(operator.status())
    if key is None:
        key = x509.load_pem_x509_csr(operator.certificate_request()["csr"].encode()).public_key()
    pem: bytes = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


class VirtualBox:
    """The service, its printer and (unless given one) its FDMS, in `state_dir`.

    `setup=False` starts the service only: the host keys are made, but nothing is enrolled, provisioned or
    registered, for a caller (the demo) that does those steps itself through the host tool."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        fdms_url: str | None = None,
        fdms_ca: str | os.PathLike[str] | None = None,
        scenario: Any = None,
        setup: bool = True,
        pages: str | os.PathLike[str] | None = None,
        device_id: int = DEVICE_ID,
        serial: str | None = None,
        activation_key: str | None = None,
        printer_model: str = PRINTER_MODEL,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.fdms_url = fdms_url
        self.fdms_ca = Path(fdms_ca).absolute() if fdms_ca else None
        self.scenario = scenario
        self.setup = setup
        self.pages_dir = Path(pages).absolute() if pages else self.state_dir / "receipts"
        self.device_id = device_id
        self.serial = serial
        self.activation_key = activation_key
        self.model = printers.profile(printer_model)
        self.environ = dict(os.environ if environ is None else environ)
        self.sim: Any = None
        self.printer = VirtualPrinter(dots=self.model.dots)
        self.saved = 0  # pages of the printer already written to files
        self.modem: NullModem | None = None
        self.printer_port: PtyPort | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.keys = {"operator": self.state_dir / "operator.pem", "pos": self.state_dir / "pos.pem"}
        self.progress: dict[str, Any] = {}
        self._lock: Any = None  # the state dir's lock file, held while this box runs

    # --- paths ----------------------------------------------------------------------------------------------

    @property
    def port(self) -> str:
        """The host end of the link: what `fiscalbox --port` and `BoxClient` open. STATE/link, a symbolic link
        to this run's pseudo-terminal made again at each start: one path across restarts."""
        assert self.modem is not None, "the virtual box is not started"
        return str(self.link_path)

    @property
    def link_path(self) -> Path:
        return self.state_dir / "link"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "box.toml"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "service.log"

    def key_pem(self, role: str) -> bytes:
        return self.keys[role].read_bytes()

    # --- start and stop -------------------------------------------------------------------------------------

    def start(self) -> VirtualBox:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self._make_state_dir()
        self._lock_state_dir()  # before anything is written: a second start must not touch the running box
        progress_file = self.state_dir / "vbox.json"
        self.progress = json.loads(progress_file.read_text()) if progress_file.exists() else {}
        for path in self.keys.values():
            host_key(path)
        example = self.state_dir / "example-sale.json"
        if not example.exists():  # something to sell at once: `fiscalbox sale example-sale.json`
            example.write_text(json.dumps(EXAMPLE_SALE, indent=2) + "\n")
        passphrase_file = self.state_dir / "key-passphrase"
        if not passphrase_file.exists():
            _write_private(passphrase_file, secrets.token_urlsafe(24).encode())
        self._start_fdms()
        self.modem = NullModem()
        fresh = self.link_path.with_name("link.new")
        fresh.unlink(missing_ok=True)
        fresh.symlink_to(self.modem.host_path)
        os.replace(fresh, self.link_path)  # the stable path now points at this run's pty
        self.printer_port = PtyPort(self.printer)
        self._write_config()
        environ = dict(self.environ)
        environ["FISCALBOX_KEY_PASSPHRASE"] = passphrase_file.read_text()
        for name in list(environ):  # the box reads its settings from its file, not from this shell
            if name.startswith("FISCALBOX_") and name != "FISCALBOX_KEY_PASSPHRASE":
                del environ[name]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "firmware.main", "--config", str(self.config_path), "run"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ,
                cwd=self.state_dir,
                start_new_session=True,  # a Ctrl-C in the terminal reaches this process, which stops it
                preexec_fn=_die_with_parent,
            )
        self._wait_ready()
        if self.setup:
            self._set_up()

    def _make_state_dir(self) -> None:
        existing = next(p for p in (self.state_dir, *self.state_dir.parents) if p.exists())
        if not existing.is_dir():
            raise FiscalError(
                "SIM_STATE_DIR",
                f"Cannot keep the virtual box in {self.state_dir}: {existing} is a file.",
                "state_dir",
            )
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.pages_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise FiscalError(
                "SIM_STATE_DIR",
                f"Cannot keep the virtual box in {self.state_dir}: {error.strerror}.",
                "state_dir",
            ) from None
        if not os.access(self.state_dir, os.W_OK | os.X_OK):
            raise FiscalError("SIM_STATE_DIR", f"Cannot write to {self.state_dir}.", "state_dir")

    def _lock_state_dir(self) -> None:
        """One virtual box on a state dir at a time: `vbox.lock`, locked for this box's life."""
        path = self.state_dir / "vbox.lock"
        try:
            handle = open(path, "a")  # noqa: SIM115 (held until stop)
        except OSError as error:
            raise FiscalError(
                "SIM_STATE_DIR", f"Cannot lock {path}: {error.strerror}.", "state_dir"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise FiscalError(
                "SIM_BUSY",
                f"{self.state_dir} is in use by another fiscalbox-sim box: stop it (Ctrl-C in its terminal) "
                "or give another --state-dir. Nothing was changed.",
                "state_dir",
            ) from None
        self._lock = handle

    def _start_fdms(self) -> None:
        if self.fdms_url:
            if self.fdms_ca is not None and not self.fdms_ca.is_file():
                raise FiscalError("SIM_ARGUMENT", f"--fdms-ca {self.fdms_ca}: no such file.", "fdms_ca")
            return
        from sim.fdms.scenario import Scenario
        from sim.fdms.server import FdmsSimulator

        scenario = self.scenario or Scenario.default()
        port = int(self.progress.get("fdms_port", 0))  # the URL the box was provisioned with
        scenario.server.port = port
        try:
            self.sim = FdmsSimulator(scenario, state_dir=self.state_dir / "fdms").start()
        except FiscalError as error:
            if error.code != "SIM_PORT" or not port:
                raise
            raise FiscalError(
                "SIM_PORT",
                f"This virtual box's FDMS simulator listens on port {port} (the URL the box was provisioned "
                f"with), and the port is in use: is another fiscalbox-sim box running on {self.state_dir}?",
                "state_dir",
            ) from None
        self.fdms_url = self.sim.url
        self.fdms_ca = Path(self.sim.ca_cert_path)
        if self.progress.get("fdms_port") != self.sim.url.rsplit(":", 1)[1]:
            self._record(fdms_port=int(self.sim.url.rsplit(":", 1)[1]))

    def _record(self, **done: Any) -> None:
        self.progress.update(done)
        (self.state_dir / "vbox.json").write_text(json.dumps(self.progress, indent=2) + "\n")

    def _write_config(self) -> None:
        assert self.modem is not None and self.printer_port is not None
        where = self.state_dir
        sections: dict[str, dict[str, Any]] = {
            "device": {"model_name": "fiscalbox", "model_version": "1.0"},
            "keys": {"store": "file", "directory": where / "keys"},
            "journal": {"path": where / "journal.db", "anchor": where / "anchor.json"},
            "box": {"provisioned": where / "provisioned.json"},
            "printer": {"model": self.model.name, "port": self.printer_port.path, "baud": 19200},
            "link": {"port": self.modem.box_path, "hosts": where / "hosts.json"},
            "backup": {"at": "", "dir": where / "backups", "retain": 3},
        }
        text = "# The virtual box's configuration, written by fiscalbox-sim box at each start.\n"
        for name, values in sections.items():
            text += f"\n[{name}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in values.items())
        self.config_path.write_text(text)

    def client(self, role: str = "operator", timeout: float = 10.0) -> Any:
        """A `BoxClient` on the host end, signing with the `role` host key."""
        from host_tools.link import BoxClient

        return BoxClient(self.port, self.key_pem(role), timeout=timeout)

    def _exited(self) -> FiscalError | None:
        assert self.process is not None
        code = self.process.poll()
        if code is None:
            return None
        said = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        last = said[-1] if said else "nothing"
        return FiscalError(
            "SIM_BOX_SERVICE", f"The box's service stopped (exit {code}); it said: {last[:300]}"
        )

    def _wait_ready(self) -> None:
        """Until the service answers on its link (it does once its boot check is done). Any answer will do,
        a refusal of a key not enrolled yet too: only silence means it is not there yet."""
        from host_tools.link import BoxClient

        deadline = time.monotonic() + READY_SECONDS
        last: Exception | None = None
        while time.monotonic() < deadline:
            stopped = self._exited()
            if stopped is not None:
                raise stopped
            try:
                with BoxClient(self.port, self.key_pem("operator"), timeout=0.5, retries=0) as probe:
                    probe.status()
                return
            except FiscalError as error:
                if error.code not in ("BOX_LINK_TIMEOUT", "BOX_LINK_PORT"):
                    return
                last = error
        raise FiscalError(
            "SIM_BOX_SERVICE",
            f"The box's service did not answer on its link in "
            f"{READY_SECONDS:.0f} s ({last}); see {self.log_path}.",
        )

    def _set_up(self) -> None:
        """The operator's first steps, each once (recorded in vbox.json)."""
        from sim.fdms.scenario import Scenario

        scenario = self.scenario or Scenario.default()
        known = scenario.device(self.device_id)
        serial = self.serial or (known.serial if known is not None else None)
        if not serial:
            raise FiscalError("SIM_ARGUMENT", f"Give --serial: the scenario has no device {self.device_id}.")
        with self.client("operator") as operator:
            if not self.progress.get("operator_enrolled"):
                operator.enroll_self("operator", "virtual box operator")  # the first operator key
                self._record(operator_enrolled=True)
            if not self.progress.get("pos_enrolled"):
                operator.enroll(self.key_pem("pos"), "pos", "virtual box POS")
                self._record(pos_enrolled=True)
            if not self.progress.get("provisioned"):
                assert self.fdms_url is not None
                operator.provision(
                    {
                        "device_id": self.device_id,
                        "serial": serial,
                        "model_name": "fiscalbox",
                        "model_version": "1.0",
                        "fdms_url": self.fdms_url,
                        "fdms_ca": self.fdms_ca.read_text() if self.fdms_ca else "",
                        "currencies": ["USD", "ZWG"],
                    }
                )
                self._record(provisioned=True, device_id=self.device_id, serial=serial)
            if not self.progress.get("registered"):
                key = self.activation_key or self.environ.get("FISCALBOX_ACTIVATION_KEY")
                if not key and known is not None:
                    key = known.activation_key
                if not key:
                    raise FiscalError(
                        "SIM_ARGUMENT", "Set FISCALBOX_ACTIVATION_KEY to the activation key FDMS gave."
                    )
                operator.register(key)
                self._record(registered=True)

    def status(self) -> Any:
        with self.client("operator") as operator:
            return operator.status()

    def facts(self) -> dict[str, Any]:
        """What `fiscalbox-sim box` prints on start: where everything is."""
        assert self.printer_port is not None
        assert self.modem is not None
        facts: dict[str, Any] = {
            "port": self.port,
            "pty": self.modem.host_path,
            "keys": {role: str(path) for role, path in self.keys.items()},
            "fdms": {
                "url": self.fdms_url,
                "ca": str(self.fdms_ca) if self.fdms_ca else None,
                "simulator": self.sim is not None,
            },
            "state_dir": str(self.state_dir),
            "printer": {"model": self.model.name, "port": self.printer_port.path, "out": str(self.pages_dir)},
            "log": str(self.log_path),
            "example_sale": str(self.state_dir / "example-sale.json"),
            "registered": bool(self.progress.get("registered")),
        }
        if not self.progress.get("registered") and self.sim is not None:
            known = self.sim.scenario.device(self.device_id)  # what a set-up by hand (--no-setup) needs
            if known is not None:
                facts["fdms_device"] = {
                    "device_id": known.id,
                    "serial": known.serial,
                    "activation_key": known.activation_key,
                }
        if self.progress.get("registered"):
            status = self.status()
            day = status.get("day")
            facts["device_id"] = status.get("device_id")
            facts["serial"] = status.get("serial")
            facts["day"] = None if day is None else {"day_no": day["day_no"], "status": day["status"]}
            facts["last_global_no"] = status.get("last_global_no")
        return facts

    def save_pages(self, stem: str | None = None) -> list[Path]:
        """Write the pages the printer finished since the last call to the pages folder: as STEM.txt and
        STEM.png (STEM-2, ... for more pages), or numbered NNNN from the first page on."""
        written = []
        pages = self.printer.pages
        first = self.saved
        for index in range(first, len(pages)):
            if stem is None:  # numbered on from the pages of earlier runs
                name = f"{self.progress.get('pages', 0) + 1:04d}"
                self.progress["pages"] = self.progress.get("pages", 0) + 1
            else:
                name = stem if index == first else f"{stem}-{index - first + 1}"
            text, _ = self.printer.save(pages[index], self.pages_dir, name)
            written.append(text)
        self.saved = len(pages)
        if stem is None and written:
            self._record()
        return written

    def stop(self) -> int | None:
        """SIGTERM to the service (it finishes what it is doing), then everything else closed. The service's
        exit status, or None when it had not started."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
            self.process = None
        if self.printer_port is not None:
            self.printer_port.close()
            self.printer_port = None
            self.printer.end_page()
            self.save_pages()
        if self.modem is not None:
            self.modem.close()
            self.modem = None
        if self.sim is not None:
            self.sim.stop()
            self.sim = None
        if self._lock is not None:
            self._lock.close()  # closing drops the lock
            self._lock = None
        return code

    def __enter__(self) -> VirtualBox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
