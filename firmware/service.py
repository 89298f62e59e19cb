"""The box as a device: what the USB link (and later the local page) operates, and the service that runs it.

`Device` holds everything one running box has: its configuration, the key store, the journal's Box once
there is a journal (the first `register` makes it), the printer and the delivery worker. Each method is one
command of docs/link.md section 3 and answers the JSON the matching one-shot `fiscalbox-device ... --json`
command prints: both are built by the helpers here, so the two never drift apart. `run` is
`fiscalbox-device run`: the link, delivery, printing and the daily backup in one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import serial
from cryptography import x509

from firmware import config as configuration
from firmware import cose, verify
from firmware.backup import Anchor, missing_journal, write_atomically
from firmware.box import Box, device_key
from firmware.core import fdms
from firmware.core.errors import FiscalError
from firmware.delivery import Delivery
from firmware.fdms_client import FdmsClient
from firmware.hosts import HostKeys
from firmware.journal import CLOSED, OPENED, Journal
from firmware.link import Link, open_port
from hardware import ECDSA_P256, RSA_2048, KeyStore, Printer, printers
from hardware.keystores import FileKeyStore, Pkcs11KeyStore, PublicKeys
from hardware.signatures import load_public_key

ALGORITHM_NAMES = {"ecdsa": ECDSA_P256, "rsa": RSA_2048}
COSE_ALGORITHMS = {ECDSA_P256: cose.ES256, RSA_2048: cose.RS256}  # docs/link.md section 4
STOP_SECONDS = 60.0  # all the waits at stop together (systemd kills the service at TimeoutStopSec=90)
PORT_RETRY_MIN, PORT_RETRY_MAX = 0.5, 5.0  # seconds between reopenings of a failed link port
BACKUP_RETRY_SECONDS = 3600.0  # a failed scheduled backup is tried again this much later
DELIVERY_RESTART_MAX = 300.0  # seconds at most before a delivery worker stopped by a fault starts again


def _iso(moment: float, zone: str) -> str:
    return datetime.datetime.fromtimestamp(moment, ZoneInfo(zone)).isoformat(timespec="seconds")


class SystemClock:
    """The box's real-time clock."""

    def now(self) -> float:
        return time.time()


# ---------------------------------------------------------------------------------------------------------
# Building the box's parts from its configuration (main.py's one-shot commands use these too)


def build_key_store(cfg: configuration.Config, environ: Mapping[str, str]) -> KeyStore:
    """The key store the configuration names, opened (a token store logs in once and stays open)."""
    keys = cfg.keys
    if keys["store"] == "file":
        passphrase = cfg.secret("keys", "passphrase_env", environ).encode()
        return FileKeyStore(keys["directory"], passphrase, keys["passphrase_env"])
    if keys["store"] == "pkcs11":
        return Pkcs11KeyStore(
            keys["pkcs11_module"],
            keys["token_label"],
            cfg.secret("keys", "pin_env", environ),
            keys["key_label"],
            keys["pin_env"],
        )
    raise FiscalError("BOX_CONFIG", "keys.store must be 'file' or 'pkcs11'.", "keys.store")


def public_key_store(cfg: configuration.Config, environ: Mapping[str, str]) -> KeyStore | PublicKeys:
    """What a command that only reads needs of the key store: the public key, without the passphrase. A
    token still needs its PIN to be opened at all."""
    if cfg.keys["store"] == "file":
        public = FileKeyStore.public_only(cfg.keys["directory"])
        if public.algorithm is not None or not environ.get(cfg.keys["passphrase_env"]):
            return public
    return build_key_store(cfg, environ)  # a token, or a key store older than its public file


def build_printer(cfg: configuration.Config) -> Printer | None:
    """The configured printer on its serial port, or None when the box has none."""
    settings = cfg.printer
    if not settings["model"]:
        return None
    model = printers.profile(settings["model"])  # refuses an unknown model before the port is opened
    try:
        port = serial.Serial(settings["port"], settings["baud"], timeout=1, write_timeout=10)
    except serial.SerialException as error:
        raise FiscalError(
            "BOX_PRINTER_OFFLINE", f"Cannot open the printer port {settings['port']}: {error}."
        ) from None
    options = {"firmware": settings["adafruit_firmware"]} if model.escpos_profile is None else {}
    return printers.open_printer(model.name, port, **options)


def build_fdms_client(cfg: configuration.Config, store: Any) -> FdmsClient | None:
    """The FDMS client for the configured URL, with the key store's certificate once there is one."""
    settings = cfg.fdms
    if not settings["url"]:
        return None
    client = FdmsClient(
        settings["url"],
        cfg.device["id"],
        cfg.device["model_name"],
        cfg.device["model_version"],
        ca_file=settings["ca_file"] or None,
        timeout=float(settings["timeout_seconds"]),
    )
    material = getattr(store, "tls_key_material", None)
    if material is not None and store.algorithm is not None and store.certificate_pem() is not None:
        client.use_certificate(material())
    return client


def open_journal(cfg: configuration.Config, read_only: bool, create: bool = False) -> Journal:
    """The configured journal. A missing one is created only by the box's first provisioning (`create`),
    and never where the anchor shows that this box has issued receipts before: then it must be restored."""
    path = Path(cfg.journal["path"])
    if not path.exists():
        refusal = missing_journal(path, Anchor(cfg.journal["anchor"]))
        if not create or refusal.code == "BOX_JOURNAL_MISSING":
            raise refusal
    return Journal(path, read_only=read_only, create=create)


def readable_settings(journal: Journal) -> dict[str, Any]:
    try:
        return journal.settings()
    except FiscalError:
        return {}


def check_identity(cfg: configuration.Config, journal: Journal) -> None:
    """The configuration must name the device the journal is: with another [device] id, the box would talk
    to FDMS as a device whose receipts it does not hold. (Settings the journal cannot give back are the
    box's own finding, reported by its start-up check.)"""
    identity = readable_settings(journal)
    for key, name in (("id", "device_id"), ("serial", "serial")):
        said, held = cfg.device[key], identity.get(name)
        if said and held is not None and said != held:
            raise FiscalError(
                "BOX_CONFIG",
                f"The configuration says [device] {key} = {said!r}, but this box's journal belongs to {key} "
                f"{held!r}: fix [device] {key} (or FISCALBOX_DEVICE_{key.upper()}). Nothing was done.",
                f"device.{key}",
            )


def open_box(
    cfg: configuration.Config,
    store: Any,
    read_only: bool = False,
    create: bool = False,
    printing: bool = False,
    clock: Any = None,
) -> Box:
    """The box over the configured journal (a writer runs its boot check; `read_only` writes nothing)."""
    # bad FDMS settings are refused before the journal is opened (or made, by `register`)
    client = None if read_only else build_fdms_client(cfg, store)
    made = create and not Path(cfg.journal["path"]).exists()
    journal = open_journal(cfg, read_only, create)
    try:
        if not create:  # before the box opens on it (a writer's boot check is recorded)
            check_identity(cfg, journal)
        return Box(
            journal,
            store,
            clock or SystemClock(),
            zone=cfg.box["zone"],
            day_warn_minutes=cfg.box["day_warn_minutes"],
            anchor=Anchor(cfg.journal["anchor"]),
            printer=build_printer(cfg) if printing else None,
            fdms_client=client,
        )
    except BaseException:
        close_journal(journal, made)
        raise


def close_journal(journal: Journal, made: bool) -> None:
    """Close the journal. One that a first registration `made` and that failed before FDMS gave the box its
    settings is removed (the lock file stays: removing it could let two writers hold different ones)."""
    unregistered = made and "device_id" not in readable_settings(journal)
    journal.close()
    if unregistered:
        for suffix in ("", "-wal", "-shm"):
            Path(str(journal.path) + suffix).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# The answers shared by the one-shot commands and the Device


def common_name(cfg: configuration.Config) -> str:
    device = cfg.device
    if not device["serial"] or device["id"] <= 0:
        raise FiscalError("BOX_CONFIG", "Set device.id and device.serial before asking for a certificate.")
    return fdms.csr_common_name(device["serial"], device["id"])


def describe_keys(store: Any, kind: str) -> dict[str, Any]:
    """`key show --json`: the key's algorithm and public key, the certificate's subject and validity."""
    info: dict[str, Any] = {"store": kind, "algorithm": store.algorithm}
    if store.algorithm is not None:
        info["public_key"] = store.public_key_pem().decode()
    pem = store.certificate_pem()
    if pem:
        info["certificate"] = certificate_facts(pem)
    return info


def certificate_facts(pem: bytes) -> dict[str, str]:
    cert = x509.load_pem_x509_certificate(pem)
    return {
        "subject": cert.subject.rfc4514_string(),
        "valid_till": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def is_registered(cfg: configuration.Config) -> bool:
    """Whether the box has a journal or its anchor names a device: its key then signs what it holds."""
    try:
        return bool(Path(cfg.journal["path"]).exists() or Anchor(cfg.journal["anchor"]).read()["device_id"])
    except FiscalError:
        return True  # an anchor that cannot be read may well name a device


def check_key_replacement(cfg: configuration.Config, replace: bool) -> None:
    """A registered box's key is never replaced: its journal is signed with it."""
    if replace and is_registered(cfg):
        raise FiscalError(
            "BOX_KEY_IN_USE",
            "This box's journal is signed with its key: replacing the key would leave its receipts and "
            "checkpoints unverifiable. Nothing was changed; a registered box gets a new key by "
            "certificate renewal (delivery renews before the certificate expires).",
        )


def generate_key(cfg: configuration.Config, store: KeyStore, algorithm: str, replace: bool) -> bytes:
    """`key generate`: the device key made in the key store; its public key PEM."""
    if algorithm not in ALGORITHM_NAMES:
        raise FiscalError("BOX_USAGE", "The algorithm is 'ecdsa' or 'rsa'.", "algorithm")
    check_key_replacement(cfg, replace)
    store.generate(ALGORITHM_NAMES[algorithm], replace=replace)
    return store.public_key_pem()


def register_box(box: Box, cfg: configuration.Config, activation_key: str) -> dict[str, Any]:
    """`register --json`: register with FDMS and store its configuration."""
    currencies = [c.strip() for c in cfg.fdms["currencies"].split(",") if c.strip()]
    try:
        result = box.register(cfg.device["id"], cfg.device["serial"], activation_key, currencies)
    except FiscalError as error:
        if error.code in ("BOX_FDMS_UNAVAILABLE", "BOX_FDMS_BUSY"):  # registration is not retried for you
            reason = error.message.replace("; the box will try again later.", ".")
            done = (
                "FDMS registered the device and its certificate is installed, but the box has not yet "
                "got its configuration"
                if box.keys.certificate_pem() is not None
                else "Nothing was registered"
            )
            raise FiscalError(error.code, f"{reason} {done}: run register again once FDMS answers.") from None
        raise
    return {
        "taxpayer": result["taxpayer"].get("taxPayerName"),
        "settings": result["config"],
        "warnings": result["warnings"],
    }


def x_report(box: Box) -> dict[str, Any]:
    """`report --json`: the X report, saying so when no day is open (it is then the last day's)."""
    report = box.x_report()
    if report["status"] == CLOSED:
        report["note"] = (
            f"No fiscal day is open: this is the Z report of the last day, day {report['day_no']}."
        )
    elif report["status"] != OPENED:
        report["note"] = (
            f"No fiscal day is open: this is the report of the last day, day {report['day_no']}, whose close "
            f"is not confirmed yet ({report['status']}): an X report until FDMS closes it."
        )
    return report


def audit_report(
    journal: Journal, public_key: Any, anchor: Anchor | None, progress: Callable[[int, int], None] | None
) -> dict[str, Any]:
    """`audit --json`: the full audit of a journal read as one snapshot; with the box's `anchor`, whether
    it is the journal the box wrote. Writes nothing."""
    marked = anchor.read() if anchor is not None else None  # before the snapshot: see problems()
    with journal.reading():
        device_id = journal.settings().get("device_id", 0)
        report = verify.full_audit(journal, public_key, device_id, progress)
        if anchor is not None:
            anchored = anchor.problems(journal, marked)
            report["problems"][:0] = anchored
            report["clean"] = report["clean"] and not anchored
    return report


def export_to(
    box: Box,
    first: int,
    last: int,
    out: str | os.PathLike[str],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """`export --json`: receipts first..last as a signed file at `out`."""
    try:
        return box.export_journal(first, last, out, progress)
    except OSError as error:  # the file is written before the export is logged: nothing changed
        raise FiscalError("BOX_FILE", f"Cannot write the export {out}: {error.strerror}.", "out") from None


# ---------------------------------------------------------------------------------------------------------
# The service lock: one-shot commands never open the journal beside a running service


def service_lock_path(cfg: configuration.Config) -> Path:
    journal = Path(cfg.journal["path"]).resolve()
    return journal.with_name(journal.name + ".service")


def _busy(holder: str) -> FiscalError:
    return FiscalError(
        "BOX_BUSY",
        f"The box's service (fiscalbox-device run{holder}) holds the journal: use the `fiscalbox` host tool "
        "over the link, or stop the service (`systemctl stop fiscalbox` on a box; the virtual box: stop "
        "fiscalbox-sim box) first. Nothing was done.",
    )


def _holder(handle: Any) -> str:
    handle.seek(0)
    text = handle.read(32).strip()
    return f", process {text}" if text.isdigit() else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def one_shot(cfg: configuration.Config) -> Iterator[None]:
    """A one-shot command's hold on the box: refused with BOX_BUSY while the service runs, and holding a
    shared lock meanwhile so the service does not start under it."""
    path = service_lock_path(cfg)
    try:  # made when missing: else a service started just after would not see this command
        handle = open(path, "a+")  # noqa: SIM115 (held for the command's life)
    except OSError:  # a folder the command cannot write (a read-only copy): no service can run there either
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(_holder(handle)) from None
        yield


class ServiceLock:
    """The running service's claim on the box: `<journal>.service`, locked for its life, holding its pid."""

    def __init__(
        self, cfg: configuration.Config, wait: float = 30.0, stop: threading.Event | None = None
    ) -> None:
        self.path = service_lock_path(cfg)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a+")  # noqa: SIM115 (held for the service's life)
        except OSError as error:
            raise FiscalError(
                "BOX_JOURNAL", f"The service's lock file {self.path} cannot be opened: {error.strerror}."
            ) from None
        deadline = time.monotonic() + wait  # a one-shot command still running is waited for
        while True:
            try:
                fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(self._handle)
                if holder and _alive(int(holder.rpartition(" ")[2])):
                    self._handle.close()
                    raise _busy(holder) from None
                if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                    self._handle.close()
                    raise FiscalError(
                        "BOX_BUSY",
                        "A one-shot fiscalbox-device command is using the box: let it finish (or stop it), "
                        "then start the service.",
                    ) from None
                if stop is not None:
                    stop.wait(0.1)  # SIGTERM ends the wait
                else:
                    time.sleep(0.1)
        self._handle.truncate(0)
        self._handle.write(str(os.getpid()))
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.truncate(0)
            self._handle.close()  # closing drops the lock


# ---------------------------------------------------------------------------------------------------------
# The provisioned identity (docs/link.md section 6)


def _check_fdms_settings(cfg: configuration.Config) -> None:
    """The FDMS client the settings `cfg` would give can be built (address, device ID, model names): what
    provision checks before it writes the identity, so the box it leaves still starts."""
    if not cfg.fdms["url"] or not cfg.device["id"]:
        return  # no connection, or no device yet: nothing to build (the identity checks did the address)
    try:
        build_fdms_client(cfg, None)
    except FiscalError as error:
        field = {"device.id": "device_id"}.get(error.field or "", "fdms_url")
        raise FiscalError("BOX_SETTINGS", f"{error.message} Nothing was changed.", field) from None


def identity_in_force(cfg: configuration.Config) -> dict[str, Any]:
    """The identity the box runs with, as `provision` takes it (the CA as its PEM text)."""
    ca_file = cfg.fdms["ca_file"]
    try:
        ca = Path(ca_file).read_text(encoding="utf-8") if ca_file else ""
    except (OSError, UnicodeDecodeError):
        ca = ""
    return {
        "device_id": cfg.device["id"],
        "serial": cfg.device["serial"],
        "model_name": cfg.device["model_name"],
        "model_version": cfg.device["model_version"],
        "fdms_url": cfg.fdms["url"],
        "fdms_ca": ca,
        "currencies": [c.strip() for c in cfg.fdms["currencies"].split(",") if c.strip()],
    }


# ---------------------------------------------------------------------------------------------------------
# The device


def _not_registered() -> FiscalError:
    return FiscalError(
        "BOX_NOT_PROVISIONED",
        "The box is not registered yet: provision its identity, then register it with FDMS.",
    )


class Device:
    """One running box: what the link operates. Every method returns JSON-able data or raises FiscalError;
    before the first `register` there is no journal, and only the identity, key and registration commands
    (and `status`) work."""

    def __init__(
        self,
        cfg: configuration.Config,
        environ: Mapping[str, str],
        clock: Any,
        log: logging.Logger | None = None,
    ) -> None:
        self.cfg = cfg
        self.environ = environ
        self.clock = clock
        self.log = log or logging.getLogger("fiscalbox.device")
        self.lock = threading.RLock()  # the device's own changes: identity, key, registration
        self.keys = build_key_store(cfg, environ)
        self.box: Box | None = None
        self.delivery: Delivery | None = None
        self._stop: threading.Event | None = None  # set by start(): the service's life
        self._threads: list[threading.Thread] = []
        self._printer_missing = False
        self.worker: dict[str, Any] = {"state": "running", "faults": 0}  # the delivery thread, for status
        self.backup_failure: dict[str, Any] | None = None  # the last scheduled backup's failure, for status
        self.missing: FiscalError | None = None  # why there is no box (not registered, journal missing)
        self.fdms_fault: FiscalError | None = None  # FDMS settings refused at start: delivery is off
        try:
            if Path(cfg.journal["path"]).exists():
                self._attach(open_box(self._fdms_checked(cfg), self.keys, clock=clock))
            else:
                self.missing = missing_journal(Path(cfg.journal["path"]), Anchor(cfg.journal["anchor"]))
        except BaseException:
            self.keys.close()
            raise

    def _fdms_checked(self, cfg: configuration.Config) -> configuration.Config:
        """`cfg`, or without its FDMS address when the client refuses it: a bad address must not stop the
        service (the link stays up, so an operator can provision the right one); status says what to fix."""
        try:
            build_fdms_client(cfg, self.keys)
        except FiscalError as error:
            self.fdms_fault = error
            self.log.warning("delivery off: the FDMS settings are refused", extra={"fields": error.as_dict()})
            return dataclasses.replace(cfg, fdms={**cfg.fdms, "url": ""})
        return cfg

    def _fdms_warning(self) -> list[dict[str, Any]]:
        if self.fdms_fault is None:
            return []
        message = (
            f"Delivery to FDMS is off: {self.fdms_fault.message} Send FDMS's https:// address with "
            "`fiscalbox provision --fdms-url` (receipts are issued and queued meanwhile)."
        )
        return [{"code": self.fdms_fault.code, "colour": "Red", "field": "fdms_url", "message": message}]

    @property
    def registered(self) -> bool:
        return self.box is not None

    @property
    def ever_registered(self) -> bool:
        """Registered at some time, its journal open or not (gone, to be restored): the anchor or the journal
        file names a device. The link's self-signed first operator enroll is refused then."""
        return self.box is not None or is_registered(self.cfg)

    def _attach(self, box: Box) -> None:
        """Take the box over: its printer, its delivery worker (running once the service has started)."""
        self.box, self.missing = box, None
        self._connect_printer()
        if box.fdms is not None:
            self.delivery = Delivery(
                box, box.fdms, self.clock, renew_days_before=self.cfg.fdms["renew_days_before"]
            )
            box.delivery = self.delivery
        if self._stop is not None:
            self._start_delivery()

    def _connect_printer(self) -> None:
        """The printer, when it is configured and not yet connected; one unplugged is said and tried again at
        the next print (the sale is committed either way)."""
        if self.box is None or self.box.printer is not None or not self.cfg.printer["model"]:
            return
        try:
            self.box.printer = build_printer(self.cfg)
        except FiscalError as error:
            if not self._printer_missing:  # said once, not at every sale
                self.log.warning("printer not connected", extra={"fields": error.as_dict()})
            self._printer_missing = True
        else:
            if self._printer_missing:
                self.log.info("printer connected")
            self._printer_missing = False

    def _require_box(self) -> Box:
        if self.box is None:
            raise self.missing or _not_registered()
        return self.box

    def _printing(self, work: Callable[[Box], dict[str, Any]]) -> dict[str, Any]:
        """A printing operation: the printer connected first if it is not; after a print that found it
        gone (unplugged, switched off), its port is let go, so the next print opens it afresh."""
        box = self._require_box()
        self._connect_printer()
        try:
            result = work(box)
        except FiscalError as error:
            if error.code == "BOX_PRINTER_OFFLINE":
                self._let_printer_go()
            raise
        faults = [w.get("code") for w in result.get("warnings") or []] + [
            (result.get("error") or {}).get("code")
        ]
        if "BOX_PRINTER_OFFLINE" in faults:
            self._let_printer_go()
        return result

    def _let_printer_go(self) -> None:
        assert self.box is not None
        with self.box.lock:
            printer, self.box.printer = self.box.printer, None
        self.log.warning("printer gone: its port is opened afresh at the next print")
        self._printer_missing = True
        port = getattr(printer, "port", None) or getattr(getattr(printer, "device", None), "port", None)
        if port is not None:
            with contextlib.suppress(Exception):  # a port already gone may refuse even to close
                port.close()

    # -- the service's life --------------------------------------------------------------------------------

    def start(self, stop: threading.Event) -> None:
        """Run the delivery worker until `stop`, and print what a previous run left unprinted in a thread of
        its own (a long backlog neither holds up the link nor a stop)."""
        self._stop = stop
        if self.box is not None:
            self._start_delivery()
            if self.box.printer is not None and self.box.journal.unprinted_count():
                thread = threading.Thread(
                    target=self._print_backlog, args=(stop,), name="backlog", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _print_backlog(self, stop: threading.Event) -> None:
        """One receipt at a time, `stop` checked between receipts (never in one), the box free between."""
        printed: list[int] = []
        while not stop.is_set():
            box = self._require_box()
            with box.lock:
                waiting = box.journal.unprinted(limit=1)
            if not waiting:
                break
            global_no = waiting[0]
            try:
                self._printing(functools.partial(Box.reprint, global_no=global_no))
            except FiscalError as error:  # the box's own finding: status says it too
                fields = {"printed": printed, "stopped_at": global_no, **error.as_dict()}
                self.log.warning("unprinted receipts not printed", extra={"fields": fields})
                return
            printed.append(global_no)
        fields = {"printed": printed, "remaining": self._require_box().journal.unprinted_count()}
        self.log.info("unprinted receipts printed", extra={"fields": fields})

    def _start_delivery(self) -> None:
        if self.delivery is None or self._stop is None:
            return
        thread = threading.Thread(
            target=self._deliver, args=(self.delivery, self._stop), name="delivery", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _deliver(self, worker: Delivery, stop: threading.Event) -> None:
        """The worker, started again with back-off (1 s to 5 min) after a fault of its own (FDMS's and the
        network's never end it); status says it meanwhile."""
        while not stop.is_set():
            try:
                worker.run(stop)
                return
            except Exception as error:
                faults = self.worker["faults"] + 1
                delay = min(DELIVERY_RESTART_MAX, 2.0 ** (faults - 1))
                restart_at = self.clock.now() + delay
                self.worker = {
                    "state": "failed",
                    "faults": faults,
                    "code": "BOX_DELIVERY_FAULT",
                    "error": f"{type(error).__name__}: {error}"[:300],
                    "restart_at": _iso(restart_at, self.cfg.box["zone"]),
                }
                self.log.error("delivery fault: the worker restarts", extra={"fields": dict(self.worker)})
            if not stop.wait(delay):
                self.worker = {**self.worker, "state": "running"}
                self.log.info("delivery restarted", extra={"fields": {"faults": self.worker["faults"]}})

    def close(self, deadline: float | None = None) -> None:
        """Stop: the operation in flight finishes first (it holds the box's lock), then the journal closes.
        The threads are waited for until `deadline` (time.monotonic()) at the latest."""
        with self.lock:
            join_until(self._threads, deadline or time.monotonic() + STOP_SECONDS, self.log)
            if self.box is not None:
                with self.box.lock:
                    self.box.journal.close()
            self.keys.close()

    # -- answers signed by the device key (docs/link.md section 4) -----------------------------------------

    def sign_answer(self, payload: bytes) -> tuple[int, bytes] | None:
        """(COSE alg, signature) over `payload` by the device key; None while the box has no key."""
        algorithm = self.keys.algorithm
        if algorithm is None:
            return None
        signature = self.keys.sign(payload)
        if algorithm == ECDSA_P256:
            signature = cose.es256_raw(signature)  # the key store signs DER; COSE wants r || s
        return COSE_ALGORITHMS[algorithm], signature

    # -- reads -----------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """`status --json`; before registration the same shape, with nothing in it yet."""
        if self.box is not None:
            status = self.box.status()
            if self._stop is not None and isinstance(status["fdms"].get("delivery"), dict):
                status["fdms"]["delivery"]["worker"] = dict(self.worker)
            if self.backup_failure is not None:  # the service's scheduled backup failed: when, why, next try
                status["backup_failure"] = dict(self.backup_failure)
            status["warnings"] += self._fdms_warning()
            return status
        problem = (self.missing or _not_registered()).as_dict()
        journal_missing = problem["code"] == "BOX_JOURNAL_MISSING"
        return {
            "device_id": None,
            "serial": None,
            "last_global_no": 0,
            "day": None,
            "outbox": {},
            "unprinted": [],
            "unprinted_count": 0,
            "journal": {
                "clean": not journal_missing,
                "problems": [problem] if journal_missing else [],
                "skipped": None if journal_missing else "no journal yet: the box is not registered",
            },
            "fdms": {
                "mode": None,
                "certificate_valid_till": None,
                "flagged": [],
                "security": [],
                "delivery": None,
            },
            "warnings": [] if journal_missing else [{**problem, "colour": "Yellow", "field": None}],
            "days_waiting": [],
            "device_key": device_key(self.keys),
        }

    def receipt(self, global_no: int) -> dict[str, Any]:
        return self._require_box().receipt(global_no)

    def outbox(self, limit: int = 20) -> dict[str, Any]:
        return self._require_box().outbox(limit)

    def x_report(self) -> dict[str, Any]:
        return x_report(self._require_box())

    def z_report(self, day: int) -> dict[str, Any]:
        return self._require_box().z_report(day)

    # -- the fiscal day --------------------------------------------------------------------------------------

    def issue(self, sale: dict[str, Any], request_id: str | None = None, host: str = "") -> dict[str, Any]:
        return self._printing(lambda box: box.issue(sale, request_id=request_id, host=host))

    def reprint(self, global_no: int) -> dict[str, Any]:
        return self._printing(lambda box: box.reprint(global_no))

    def print_unprinted(self) -> dict[str, Any]:
        return self._printing(lambda box: box.print_unprinted())

    def print_report(self, day: int | None = None) -> dict[str, Any]:
        return self._printing(lambda box: box.print_report(day))

    def open_day(self) -> dict[str, Any]:
        return self._require_box().open_day()

    def close_day(self) -> dict[str, Any]:
        return self._require_box().close_day()

    # -- identity, key, registration -------------------------------------------------------------------------

    def provision(self, values: Any) -> dict[str, Any]:
        """Write the box's identity (device ID, serial, model, FDMS address and CA, currencies): what the
        configuration file would otherwise say. A registered box keeps its device ID and serial."""
        with self.lock:
            checked = configuration.check_identity(values)
            if self.box is not None or is_registered(self.cfg):
                held = readable_settings(self.box.journal) if self.box is not None else self._anchored()
                for name, key in (("device_id", "id"), ("serial", "serial")):
                    was = held.get(name) or self.cfg.device[key]  # 0 or "": not known, nothing to keep
                    if name in checked and was and checked[name] != was:
                        raise FiscalError(
                            "BOX_SETTINGS",
                            f"This box is registered as {name} {was!r}: a registered box cannot change it. "
                            "Nothing was changed.",
                            name,
                        )
                if checked.get("fdms_url") == "":
                    raise FiscalError(
                        "BOX_SETTINGS",
                        "A registered box delivers to FDMS: give its address, not an empty one. Nothing was "
                        "changed.",
                        "fdms_url",
                    )
            path = Path(self.cfg.box["provisioned"])
            ca_path = configuration.provisioned_ca_path(path)
            stored = configuration.read_identity(path)
            for name, value in checked.items():
                stored[name] = (str(ca_path) if value else "") if name == "fdms_ca" else value
            cfg = configuration.with_identity(self.cfg, stored, str(path), self.environ)
            # before anything is written, so a refusal changes nothing (a new CA is checked as text above)
            _check_fdms_settings(
                dataclasses.replace(cfg, fdms={**cfg.fdms, "ca_file": ""}) if checked.get("fdms_ca") else cfg
            )
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if checked.get("fdms_ca"):
                    write_atomically(ca_path, checked["fdms_ca"].encode())
                write_atomically(path, json.dumps(stored, indent=2, sort_keys=True).encode())
            except OSError as error:
                raise FiscalError(
                    "BOX_FILE", f"Cannot write the identity to {path}: {error.strerror}.", "values"
                ) from None
            self.cfg = cfg
            self.fdms_fault = None
            if self.box is not None and {"fdms_url", "fdms_ca", "model_name", "model_version"} & set(checked):
                self._reconnect_fdms()
            identity = identity_in_force(self.cfg)
            self.log.info(
                "provisioned", extra={"fields": {k: v for k, v in identity.items() if k != "fdms_ca"}}
            )
            return identity

    def _anchored(self) -> dict[str, Any]:
        """The device the anchor names, for a registered box whose journal is not open."""
        try:
            device_id = Anchor(self.cfg.journal["anchor"]).read()["device_id"]
        except FiscalError:
            return {}
        return {"device_id": device_id} if device_id else {}

    def _reconnect_fdms(self) -> None:
        """A registered box's new FDMS address or CA: its client replaced, the delivery worker told."""
        assert self.box is not None
        with self.box.lock:
            client = build_fdms_client(self.cfg, self.keys)
            self.box.fdms = client
            if self.delivery is not None:
                self.delivery.client = client
            elif client is not None:  # delivery was off (no address, or one refused at start): now on
                self.delivery = Delivery(
                    self.box, client, self.clock, renew_days_before=self.cfg.fdms["renew_days_before"]
                )
                self.box.delivery = self.delivery
                self._start_delivery()

    def generate_key(self, algorithm: str, replace: bool = False) -> dict[str, Any]:
        with self.lock:
            pem = generate_key(self.cfg, self.keys, algorithm, replace)
            return {"algorithm": self.keys.algorithm, "public_key": pem.decode()}

    def certificate_request(self) -> dict[str, Any]:
        with self.lock:
            return {"csr": self.keys.certificate_request(common_name(self.cfg)).decode()}

    def install_certificate(self, certificate: str) -> dict[str, Any]:
        if not isinstance(certificate, str):
            raise FiscalError("BOX_USAGE", "The certificate is PEM text.", "certificate")
        with self.lock:
            pem = certificate.encode()
            self.keys.install_certificate(pem)
            return certificate_facts(pem)

    def register(self, activation_key: str) -> dict[str, Any]:
        """`register --json`: as the one-shot command (it creates the journal); the device then has a box.
        The activation key is used for this call only: never stored, never logged."""
        with self.lock:
            if self.box is not None:
                return register_box(self.box, self.cfg, activation_key)  # the box refuses another device
            made = not Path(self.cfg.journal["path"]).exists()
            box = open_box(self.cfg, self.keys, create=True, clock=self.clock)
            try:
                result = register_box(box, self.cfg, activation_key)
            except BaseException:
                close_journal(box.journal, made)
                raise
            self._attach(box)
            self.log.info("registered", extra={"fields": {"device_id": self.cfg.device["id"]}})
            return result

    def renew_certificate(self) -> dict[str, Any]:
        return self._require_box().renew_certificate()

    # -- long work -------------------------------------------------------------------------------------------

    def audit(self, progress: Callable[[int, int], None] | None) -> dict[str, Any]:
        """`audit --json`: over its own read-only view of the journal, so sales go on meanwhile."""
        self._require_box()
        public_key = load_public_key(self.keys.public_key_pem())
        journal = open_journal(self.cfg, read_only=True)
        try:
            return audit_report(journal, public_key, Anchor(self.cfg.journal["anchor"]), progress)
        finally:
            journal.close()

    def backup(
        self, progress: Callable[[int, int], None] | None, retain: int | None = None
    ) -> dict[str, Any]:
        """`backup --json` into [backup] dir, keeping [backup] retain (or `retain`) copies."""
        box = self._require_box()
        return box.backup(
            self.cfg.backup["dir"], retain if retain is not None else self.cfg.backup["retain"], progress
        )

    def export_journal(
        self, first: int, last: int, dest: str | os.PathLike[str], progress: Callable[[int, int], None] | None
    ) -> dict[str, Any]:
        """`export --json`: the signed export of receipts first..last written to `dest`."""
        return export_to(self._require_box(), first, last, dest, progress)

    def replay(self, since: int) -> dict[str, Any]:
        """Send FDMS again every receipt of the last `since` fiscal days that it has already answered, so an
        FDMS that lost them holds them again. FDMS answers a receipt it holds with its original answer, so
        this changes nothing there nor in the journal; an answer that differs from the stored one is logged
        as a finding. Runs in the background on its own FDMS connection; the log says when it is done."""
        box = self._require_box()
        if type(since) is not int or not 1 <= since <= 3650:
            raise FiscalError("BOX_USAGE", "since is a number of fiscal days from 1 to 3650.", "since")
        if box.fdms is None:
            raise FiscalError("BOX_NO_FDMS", "No FDMS connection is configured: provision fdms_url first.")
        with box.lock:
            last_day = box.journal.head()["day_no"]
            first_day = max(last_day - since + 1, 1)
            queued = []
            for row in box.journal.receipts():
                if row[1] < first_day:
                    continue
                delivery = box.journal.delivery(row[0]) or {}
                if delivery.get("receipt_id") is not None:
                    queued.append((row[0], row[7], delivery["receipt_id"]))
        client = build_fdms_client(self.cfg, self.keys)
        thread = threading.Thread(target=self._resend, args=(client, queued), name="replay", daemon=True)
        thread.start()
        self._threads.append(thread)
        return {"queued": len(queued), "first_day": first_day, "last_day": last_day}

    def _resend(self, client: Any, queued: list[tuple[int, str, int]]) -> None:
        differed: list[int] = []
        sent = 0
        for global_no, body, receipt_id in queued:
            if self._stop is not None and self._stop.is_set():
                break
            try:
                answer = client.submit_receipt(body).body
            except FiscalError as error:
                self.log.warning(
                    "replay stopped", extra={"fields": {"global_no": global_no, **error.as_dict()}}
                )
                break
            sent += 1
            if int(answer.get("receiptID", -1)) != receipt_id:
                differed.append(global_no)
                self.log.warning(
                    "replay: FDMS answered another receipt ID",
                    extra={
                        "fields": {
                            "global_no": global_no,
                            "stored": receipt_id,
                            "now": answer.get("receiptID"),
                        }
                    },
                )
        self.log.info(
            "replay done", extra={"fields": {"sent": sent, "of": len(queued), "differed": differed}}
        )


# ---------------------------------------------------------------------------------------------------------
# The daily backup


class BackupSchedule:
    """Due once a local day at [backup] at, or at start when today's time has passed and no backup of today
    is in the folder (a box switched off at night still gets its daily copy). The folder is looked at each
    time, ignoring copies dated after now (a clock moved back), so a copy made another way counts too; a
    failed backup is tried again an hour later."""

    def __init__(self, at: str, folder: str | os.PathLike[str], zone: str) -> None:
        hours, minutes = at.split(":")
        self.at = datetime.time(int(hours), int(minutes))
        self.zone = ZoneInfo(zone)
        self.folder = Path(folder)
        self.last: datetime.date | None = None  # the last backup this process made
        self.retry_at: float | None = None

    def _local(self, moment: float) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(moment, self.zone)

    def newest(self, now: float) -> datetime.date | None:
        """The date of the newest copy in the folder that is not dated after `now`."""
        times = []
        for path in self.folder.glob("journal-*.db"):
            with contextlib.suppress(OSError):  # an entry gone, dangling or unreadable is no copy
                times.append(path.stat().st_mtime)
        made = [t for t in times if t <= now + 60]
        return self._local(max(made)).date() if made else None

    def due(self, now: float) -> bool:
        local = self._local(now)
        if local.time() < self.at or (self.retry_at is not None and now < self.retry_at):
            return False
        today = local.date()
        known = [d for d in (self.last, self.newest(now)) if d is not None and d <= today]
        return not known or max(known) < today

    def done(self, now: float) -> None:
        self.last, self.retry_at = self._local(now).date(), None

    def failed(self, now: float) -> None:
        self.retry_at = now + BACKUP_RETRY_SECONDS


def backup_loop(
    device: Device, schedule: BackupSchedule, stop: threading.Event, log: logging.Logger, poll: float = 30.0
) -> None:
    """The daily backup while the service runs: into [backup] dir, keeping [backup] retain copies. A backup
    that fails, for whatever reason, is said in the log (BOX_BACKUP) and in status, and tried again an
    hour later; it never stops the service."""
    cfg = device.cfg
    while not stop.is_set():
        now = device.clock.now()
        try:
            if device.registered and schedule.due(now):
                made = device.backup(None)
                log.info("backup made", extra={"fields": {"file": made["file"], "removed": made["removed"]}})
                schedule.done(now)
                device.backup_failure = None
        except Exception as error:
            schedule.failed(now)
            failure = error.as_dict() if isinstance(error, FiscalError) else {}
            device.backup_failure = {
                "code": failure.get("code", "BOX_BACKUP"),
                "message": failure.get("message")
                or f"The backup into {cfg.backup['dir']} failed: {error}. It is tried again in an hour.",
                "at": _iso(now, cfg.box["zone"]),
                "retry_at": _iso(now + BACKUP_RETRY_SECONDS, cfg.box["zone"]),
            }
            log.warning("backup failed", extra={"fields": device.backup_failure})
        stop.wait(poll)


def serve_link(device: Device, cfg: configuration.Config, stop: threading.Event, log: logging.Logger) -> None:
    """The link on [link] port until `stop`; a port not there yet (the USB gadget still coming up) is
    tried again every few seconds."""
    link = Link(device, HostKeys(cfg.link["hosts"]), log)
    try:
        _listen(link, cfg, stop, log)
    finally:
        # a backup or export under way finishes before the journal closes (run waits STOP_SECONDS at most)
        link.join_jobs(timeout=STOP_SECONDS)
        link.close()


def _listen(link: Link, cfg: configuration.Config, stop: threading.Event, log: logging.Logger) -> None:
    """Open the port and serve it; a port that fails (the USB cable pulled hangs the gadget's tty up) is
    closed and opened again, with back-off (0.5 s to 5 s), said once an outage."""
    said, delay = False, PORT_RETRY_MIN
    while not stop.is_set():
        try:
            port = open_port(cfg.link["port"], cfg.link["baud"])
        except FiscalError as error:
            if not said:
                log.warning("link port not ready; trying again", extra={"fields": error.as_dict()})
                said = True
            stop.wait(delay)
            delay = min(delay * 2, PORT_RETRY_MAX)
            continue
        if not said:
            log.info("link listening", extra={"fields": {"port": cfg.link["port"]}})
        opened = time.monotonic()
        try:
            link.serve(port, stop)  # returns at `stop`, or when the port fails
        finally:
            with contextlib.suppress(Exception):  # a port already gone may refuse even to close
                port.close()
        if stop.is_set():
            break
        if time.monotonic() - opened > PORT_RETRY_MAX:  # it served a while: this is a new outage
            said, delay = False, PORT_RETRY_MIN
        if not said:
            log.warning("link port lost; opening it again", extra={"fields": {"port": cfg.link["port"]}})
            said = True
        stop.wait(delay)
        delay = min(delay * 2, PORT_RETRY_MAX)


def join_until(threads: list[threading.Thread], deadline: float, log: logging.Logger) -> None:
    """Wait for `threads` until `deadline` (time.monotonic()) at the latest; say which were given up."""
    for thread in threads:
        thread.join(timeout=max(deadline - time.monotonic(), 0.0))
    running = [t.name for t in threads if t.is_alive()]
    if running:
        log.warning("stop: given up waiting", extra={"fields": {"still_running": running}})


def run(
    cfg: configuration.Config,
    environ: Mapping[str, str],
    stop: threading.Event,
    log: logging.Logger,
    backup_poll: float = 30.0,
) -> int:
    """`fiscalbox-device run`: the link, delivery, printing and the daily backup over one Device, until
    `stop`. The operation in flight finishes before the journal closes; 0 on a clean stop, 1 when a part
    failed (systemd restarts the service)."""
    lock = ServiceLock(cfg, stop=stop)
    failed: list[str] = []
    deadline: float | None = None
    try:
        device = Device(cfg, environ, SystemClock(), log)
        try:
            box = device.box
            log.info(
                "service started",
                extra={
                    "fields": {
                        "pid": os.getpid(),
                        "registered": device.registered,
                        "link": cfg.link["port"] or None,
                        "journal_clean": None if box is None else box.boot["clean"],
                        "journal_problems": [] if box is None else box.boot["problems"],
                    }
                },
            )

            def guarded(name: str, work: Callable[[], None]) -> Callable[[], None]:
                def run_part() -> None:
                    try:
                        work()
                    except Exception:
                        log.exception(f"{name} failed: the service stops")
                        failed.append(name)
                        stop.set()

                return run_part

            parts = []
            if cfg.link["port"]:
                parts.append(("link", lambda: serve_link(device, cfg, stop, log)))
            if cfg.backup["at"]:
                schedule = BackupSchedule(cfg.backup["at"], cfg.backup["dir"], cfg.box["zone"])
                parts.append(("backup", lambda: backup_loop(device, schedule, stop, log, backup_poll)))
            threads = [
                threading.Thread(target=guarded(name, work), name=name, daemon=True) for name, work in parts
            ]
            for thread in threads:
                thread.start()
            guarded("start", lambda: device.start(stop))()
            stop.wait()
            log.info("service stopping")
            deadline = time.monotonic() + STOP_SECONDS  # one wait for all: systemd's TimeoutStopSec is 90
            join_until(threads, deadline, log)
        finally:
            device.close(deadline)
    finally:
        lock.release()
    log.info("service stopped", extra={"fields": {"failed": failed}})
    return 1 if failed else 0
