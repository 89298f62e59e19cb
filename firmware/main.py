"""`fiscalbox-device`: the box's runtime entry point and the composition root.

The concrete drivers (which key store, later which printer and port) are chosen here and nowhere else.
For now the box can be given its identity: a key made inside the key store, the certificate request FDMS
expects, and the certificate it returns.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import serial
from cryptography import x509

from firmware import config as configuration
from firmware import verify
from firmware.backup import Anchor, missing_journal, restore
from firmware.box import Box
from firmware.core import fdms
from firmware.core.errors import FiscalError
from firmware.delivery import Delivery
from firmware.fdms_client import FdmsClient
from firmware.journal import CLOSED, OPENED, Journal
from hardware import ECDSA_P256, RSA_2048, KeyStore, Printer, printers
from hardware.keystores import FileKeyStore, Pkcs11KeyStore, PublicKeys
from hardware.signatures import load_public_key

ALGORITHM_NAMES = {"ecdsa": ECDSA_P256, "rsa": RSA_2048}
T = TypeVar("T")
LARGEST = (1 << 63) - 1  # receipt and day numbers as the journal stores them (SQLite integers)


class _Whole(click.ParamType):
    """A whole number from `low` to `high`; anything else (a fraction, a word, a number too large to name
    anything) is refused with `rule`, a sentence saying what the command takes."""

    name = "number"

    def __init__(self, low: int, high: int, rule: str) -> None:
        self.low, self.high, self.rule = low, high, rule

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if text.isascii() and text.isdigit() and len(text) <= 19 and self.low <= int(text) <= self.high:
            return int(text)
        self.fail(f"{text[:30]!r}: {self.rule}", param, ctx)


class _Seconds(click.ParamType):
    """A number of seconds, 0 or more (not NaN, not infinity)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and 0 <= seconds <= 86_400):
            self.fail(f"{str(value)[:30]!r}: give a number of seconds from 0 to 86400.", param, ctx)
        return seconds


RECEIPT_NO = _Whole(1, LARGEST, "receipt numbers are whole numbers from 1 (`status` shows the last one).")
DAY_NO = _Whole(1, LARGEST, "fiscal day numbers are whole numbers from 1 (`status` shows the current day).")
COUNT = _Whole(1, 100_000, "give a whole number from 1 to 100000.")


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


def _common_name(cfg: configuration.Config) -> str:
    device = cfg.device
    if not device["serial"] or device["id"] <= 0:
        raise FiscalError("BOX_CONFIG", "Set device.id and device.serial before asking for a certificate.")
    return fdms.csr_common_name(device["serial"], device["id"])


def _fail(error: FiscalError) -> NoReturn:
    click.echo(f"error {error.code}: {error.message}", err=True)
    sys.exit(2)


@contextmanager
def _one_line_usage() -> Iterator[None]:
    """Click's own refusals (a missing argument, a value of the wrong type) as one `error` line too."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # a bare group: its help is the answer
    except click.NoSuchOption as error:
        if error.option_name.lstrip("-").isdigit():  # `show -1`: a negative number, not an option
            _fail(
                FiscalError("BOX_BAD_OPTION", f"{error.option_name}: numbers here are whole numbers from 1.")
            )
        _fail(FiscalError("BOX_USAGE", f"{error.format_message()} See --help."))
    except click.MissingParameter as error:
        _fail(FiscalError("BOX_USAGE", f"{error.format_message()} See --help."))
    except click.BadParameter as error:
        _fail(FiscalError("BOX_BAD_OPTION", error.format_message()))
    except click.UsageError as error:
        _fail(FiscalError("BOX_USAGE", f"{error.format_message()} See --help."))


class _Command(click.Command):
    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _one_line_usage():
            return super().make_context(*args, **kwargs)


class _Group(click.Group, _Command):
    command_class = _Command
    group_class = type  # subgroups are _Group too

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        with _one_line_usage():
            return super().resolve_command(ctx, args)


@click.group(cls=_Group)
@click.option("--config", "config_path", envvar="FISCALBOX_CONFIG", help="The box's TOML configuration.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """fiscalbox-device: the fiscal box's own commands."""
    try:
        ctx.obj = configuration.load(config_path)
    except FiscalError as error:
        _fail(error)


@main.group()
def key() -> None:
    """The device key: made in the key store, never leaves it."""


class SystemClock:
    """The box's real-time clock."""

    def now(self) -> float:
        return time.time()


def _with_store(cfg: configuration.Config, action: Callable[[Any], T], public_only: bool = False) -> T:
    """Open the configured key store (`public_only`: its public half, no passphrase), run `action`, close
    it; a refusal becomes one line and exit 2."""
    try:
        with closing(public_key_store(cfg) if public_only else build_key_store(cfg, os.environ)) as store:
            return action(store)
    except FiscalError as error:
        _fail(error)


@key.command("generate")
@click.option("--algorithm", type=click.Choice(sorted(ALGORITHM_NAMES)), default="ecdsa", show_default=True)
@click.option(
    "--replace", is_flag=True, help="Replace the key of a box not yet registered (its certificate goes too)."
)
@click.pass_obj
def key_generate(cfg: configuration.Config, algorithm: str, replace: bool) -> None:
    """Make the device key pair inside the key store; prints its public key."""

    try:
        registered = replace and (
            Path(cfg.journal["path"]).exists() or Anchor(cfg.journal["anchor"]).read()["device_id"]
        )
    except FiscalError:
        registered = True  # an anchor that cannot be read may well name a device: keep its key
    if registered:
        _fail(
            FiscalError(
                "BOX_KEY_IN_USE",
                "This box's journal is signed with its key: replacing the key would leave its receipts and "
                "checkpoints unverifiable. Nothing was changed; a registered box gets a new key by "
                "certificate renewal (delivery renews before the certificate expires).",
            )
        )

    def generate(store: KeyStore) -> bytes:
        store.generate(ALGORITHM_NAMES[algorithm], replace=replace)
        return store.public_key_pem()

    click.echo(_with_store(cfg, generate).decode(), nl=False)


@key.command("csr")
@click.pass_obj
def key_csr(cfg: configuration.Config) -> None:
    """Print the certificate request FDMS expects: CN=ZIMRA-<serial>-<device ID, 10 digits>, nothing else."""
    try:
        name = _common_name(cfg)
    except FiscalError as error:
        _fail(error)
    click.echo(_with_store(cfg, lambda store: store.certificate_request(name)).decode(), nl=False)


@key.command("install-cert")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.pass_obj
def key_install_cert(cfg: configuration.Config, file: str) -> None:
    """Store the certificate FDMS issued; refused unless it is for this box's key."""
    _with_store(cfg, lambda store: store.install_certificate(Path(file).read_bytes()))
    click.echo("certificate installed")


def _describe(store: KeyStore, kind: str) -> dict[str, Any]:
    info: dict[str, Any] = {"store": kind, "algorithm": store.algorithm}
    if store.algorithm is not None:
        info["public_key"] = store.public_key_pem().decode()
    pem = store.certificate_pem()
    if pem:
        cert = x509.load_pem_x509_certificate(pem)
        info["certificate"] = {
            "subject": cert.subject.rfc4514_string(),
            "valid_till": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    return info


@key.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def key_show(cfg: configuration.Config, as_json: bool) -> None:
    """The key's algorithm and public key, and the certificate's subject and validity when there is one.
    Reads only the public half: no passphrase needed."""
    info = _with_store(cfg, lambda store: _describe(store, cfg.keys["store"]), public_only=True)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"key store: {info['store']}\nalgorithm: {info['algorithm'] or 'no key yet'}")
    if info.get("public_key"):
        click.echo(info["public_key"], nl=False)
    cert = info.get("certificate")
    if cert:
        click.echo(f"certificate: {cert['subject']}, valid till {cert['valid_till']}")
    else:
        click.echo("certificate: none installed")


# ---------------------------------------------------------------------------------------------------------
# The journal: status, audit, backup, restore, export


def _emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text(data))


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


def build_fdms_client(cfg: configuration.Config, store: KeyStore) -> FdmsClient | None:
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


def public_key_store(cfg: configuration.Config) -> KeyStore | PublicKeys:
    """What a command that only reads needs of the key store: the public key, without the passphrase. A
    token still needs its PIN to be opened at all."""
    if cfg.keys["store"] == "file":
        public = FileKeyStore.public_only(cfg.keys["directory"])
        if public.algorithm is not None or not os.environ.get(cfg.keys["passphrase_env"]):
            return public
    return build_key_store(cfg, os.environ)  # a token, or a key store older than its public file


def _readable_settings(journal: Journal) -> dict[str, Any]:
    try:
        return journal.settings()
    except FiscalError:
        return {}


def _check_identity(cfg: configuration.Config, journal: Journal) -> None:
    """The configuration must name the device the journal is: with another [device] id, the box would talk
    to FDMS as a device whose receipts it does not hold. (Settings the journal cannot give back are the
    box's own finding, reported by its start-up check.)"""
    identity = _readable_settings(journal)
    for key, name in (("id", "device_id"), ("serial", "serial")):
        said, held = cfg.device[key], identity.get(name)
        if said and held is not None and said != held:
            raise FiscalError(
                "BOX_CONFIG",
                f"The configuration says [device] {key} = {said!r}, but this box's journal belongs to {key} "
                f"{held!r}: fix [device] {key} (or FISCALBOX_DEVICE_{key.upper()}). Nothing was done.",
                f"device.{key}",
            )


def _with_box(
    cfg: configuration.Config,
    action: Callable[[Box], T],
    read_only: bool = False,
    printing: bool = False,
    create: bool = False,
) -> T:
    """Open the box over the configured journal, run `action`, close it; a refusal becomes one line and
    exit 2. A box opened `read_only` writes nothing at all: not its boot check, not a checkpoint."""

    def run(store: Any) -> T:
        # bad FDMS settings are refused before the journal is opened (or made, by `register`)
        client = None if read_only else build_fdms_client(cfg, store)
        made = create and not Path(cfg.journal["path"]).exists()
        journal = open_journal(cfg, read_only, create)
        try:
            if not create:  # before the box opens on it (a writer's boot check is recorded)
                _check_identity(cfg, journal)
            box = Box(
                journal,
                store,
                SystemClock(),
                zone=cfg.box["zone"],
                day_warn_minutes=cfg.box["day_warn_minutes"],
                anchor=Anchor(cfg.journal["anchor"]),
                printer=build_printer(cfg) if printing else None,
                fdms_client=client,
            )
            return action(box)
        except BaseException:
            if made and "device_id" not in _readable_settings(journal):
                # a first registration that failed before FDMS gave the box its settings leaves no journal
                # behind (the lock file stays: removing it could let two writers hold different ones)
                journal.close()
                for suffix in ("", "-wal", "-shm"):
                    Path(str(journal.path) + suffix).unlink(missing_ok=True)
            raise
        finally:
            journal.close()

    return _with_store(cfg, run, public_only=read_only)


def _progress_printer(as_json: bool, verb: str = "checked") -> Callable[[int, int], None] | None:
    """Progress on standard error for long work; nothing when the output is for a script."""
    if as_json:
        return None

    def show(done: int, total: int) -> None:
        click.echo(f"\r  {verb} {done:,} of {total:,} receipts", nl=False, err=True)

    return show


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def status_command(cfg: configuration.Config, as_json: bool) -> None:
    """The box's state: current day, last receipt, outbox, unprinted receipts, journal check."""

    _emit(_with_box(cfg, lambda box: box.status(), read_only=True), as_json, _status_text)


def _counts(counts: dict[str, int]) -> str:
    """{"pending": 3, "delivered": 10} as "3 pending, 10 delivered" ("empty" when there is nothing)."""
    return ", ".join(f"{n:,} {state}" for state, n in sorted(counts.items())) or "empty"


def _day_line(day: dict[str, Any] | None) -> str:
    if day is None:
        return "no day opened yet"
    head = f"day {day['day_no']} {day['status']}, {day['receipts']} receipts"
    if day["status"] == OPENED:
        return f"{head}, opened {day['opened']}, ends {day['ends']}"
    return f"{head} (it was opened {day['opened']})"


def _journal_verdict(journal: dict[str, Any]) -> str:
    if not journal["clean"]:
        return "{code}: {message}".format(**journal["problems"][0])
    return f"not run ({journal['skipped']})" if journal.get("skipped") else "clean"


def _status_text(info: dict[str, Any]) -> str:
    day = info["day"]
    if info["device_id"] is None:
        identity = "device not registered yet (run `fiscalbox-device register`)"
    else:
        identity = f"device {info['device_id']} (serial {info['serial']})"
    journal = info["journal"]
    lines = [
        f"{identity}, last receipt {info['last_global_no']}",
        _day_line(day),
        f"outbox: {_counts(info['outbox'])}; unprinted: {info['unprinted_count']}",
        f"journal check: {_journal_verdict(journal)}",
    ]
    lines += [
        f"day {d['day_no']} {d['status']}" + (f" ({d['closing_error']})" if d["closing_error"] else "")
        for d in info["days_waiting"]
    ]
    lines += [f"warning {w['code']}: {w['message']}" for w in info["warnings"]]
    return "\n".join(lines)


def _public_key_file(path: str) -> Any:
    """The public key in a certificate or key PEM given on the command line."""
    try:
        return load_public_key(Path(path).read_bytes())
    except OSError as error:
        raise FiscalError("BOX_FILE", f"Cannot read {path}: {error.strerror}.", "public_key") from None
    except (ValueError, FiscalError):  # not PEM at all, or a PEM that is not a key
        raise FiscalError(
            "BOX_KEY_UNREADABLE", f"{path} holds no certificate or public key.", "public_key"
        ) from None


@main.command("audit")
@click.option(
    "--journal",
    "journal_path",
    type=click.Path(exists=True, dir_okay=False),
    help="The journal file to audit (default: the configured one).",
)
@click.option(
    "--public-key",
    "public_key_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Check against this public key or certificate instead of the key store's key.",
)
@click.option("--verbose", is_flag=True, help="List every problem, not only the first ten.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def audit_command(
    cfg: configuration.Config,
    journal_path: str | None,
    public_key_path: str | None,
    verbose: bool,
    as_json: bool,
) -> None:
    """Verify the whole journal: chain, hashes, signatures, counters, numbering, logs. Exit 0 only when clean.

    Read-only: it neither writes to the journal nor needs the private key when --public-key is given.
    """
    try:
        if public_key_path is not None:
            public_key = _public_key_file(public_key_path)
        else:
            public_key = load_public_key(_with_store(cfg, lambda s: s.public_key_pem(), public_only=True))
        if journal_path is not None:
            journal = Journal(journal_path, read_only=True)
        else:
            journal = open_journal(cfg, read_only=True)
    except FiscalError as error:
        _fail(error)
    try:
        anchor = Anchor(cfg.journal["anchor"])
        marked = anchor.read() if journal_path is None else None  # before the snapshot: see problems()
        with journal.reading():
            device_id = journal.settings().get("device_id", 0)
            report = verify.full_audit(journal, public_key, device_id, _progress_printer(as_json))
            if journal_path is None:  # the box's own journal: is it the one the box wrote?
                anchored = anchor.problems(journal, marked)
                report["problems"][:0] = anchored
                report["clean"] = report["clean"] and not anchored
    except FiscalError as error:
        _fail(error)
    finally:
        journal.close()
    if not as_json:
        click.echo("", err=True)
    shown = report["problems"] if verbose else report["problems"][:10]

    def text(data: dict[str, Any]) -> str:
        checked = data["checked"]
        head = (
            f"{'clean' if data['clean'] else 'PROBLEMS FOUND'}: {checked['receipts']} receipts, "
            f"{checked['days']} days, {checked['audit_entries']} audit entries, "
            f"{checked['checkpoints']} checkpoints checked"
        )
        lines = [head] + [
            f"  {p['code']}: {p['message']}" + (f" [field {p['field']}]" if p.get("field") else "")
            for p in shown
        ]
        if len(shown) < len(data["problems"]):
            lines.append(f"  ... and {len(data['problems']) - len(shown)} more (--verbose lists them)")
        return "\n".join(lines)

    _emit(report, as_json, text)
    sys.exit(0 if report["clean"] else 1)


@main.command("backup")
@click.argument("dest", required=False)
@click.option(
    "--retain",
    type=COUNT,
    default=None,
    help="Keep only the newest N backups (default: journal.retain).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def backup_command(cfg: configuration.Config, dest: str | None, retain: int | None, as_json: bool) -> None:
    """Copy the journal online into DEST (default: journal.backup_dir) with a signed manifest."""
    if dest is not None and not dest.strip():
        _fail(
            FiscalError(
                "BOX_USAGE", "DEST is empty: give the backup folder, or leave it out for journal.backup_dir."
            )
        )
    target = dest or cfg.journal["backup_dir"]
    keep = retain if retain is not None else cfg.journal["retain"]
    result = _with_box(cfg, lambda box: box.backup(target, keep))
    _emit(
        result,
        as_json,
        lambda r: (
            f"backup {r['file']} (receipts up to {r['manifest']['last_global_no']}), "
            f"manifest {r['manifest_file']}; removed {len(r['removed'])} older"
        ),
    )


@main.command("restore")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def restore_command(cfg: configuration.Config, manifest: str, as_json: bool) -> None:
    """Put a backup in place of the journal; refused when it is older than what the box has committed."""
    try:
        pem = _with_store(cfg, lambda store: store.public_key_pem(), public_only=True)
        result = restore(Path(manifest), Path(cfg.journal["path"]), pem, Anchor(cfg.journal["anchor"]))
    except FiscalError as error:
        _fail(error)
    _emit(result, as_json, lambda r: f"restored receipts up to {r['last_global_no']} into {r['restored']}")


@main.command("export")
@click.option("--from", "first", type=RECEIPT_NO, required=True, help="First global receipt number.")
@click.option("--to", "last", type=RECEIPT_NO, required=True, help="Last global receipt number.")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def export_command(cfg: configuration.Config, first: int, last: int, out: str, as_json: bool) -> None:
    """Write receipts FROM..TO as a signed file that `fiscalbox journal verify` checks offline."""
    if not out.strip():
        _fail(FiscalError("BOX_USAGE", "OUT is empty: give the file to write the export to."))

    def run(box: Box) -> dict[str, Any]:
        try:
            return box.export_journal(first, last, out)
        except OSError as error:  # the file is written before the export is logged: nothing changed
            raise FiscalError(
                "BOX_FILE", f"Cannot write the export {out}: {error.strerror}.", "out"
            ) from None

    result = _with_box(cfg, run)
    _emit(result, as_json, lambda r: f"exported receipts {r['first']}..{r['last']} to {r['file']}")


# ---------------------------------------------------------------------------------------------------------
# Printing: receipts, reprints, X and Z reports


@main.command("show")
@click.argument("global_no", type=RECEIPT_NO)
@click.option("--width", type=click.Choice(["32", "42", "48"]), default="48", show_default=True)
@click.pass_obj
def show_command(cfg: configuration.Config, global_no: int, width: str) -> None:
    """Show receipt GLOBAL_NO as it prints (the QR as its URL). Prints nothing and changes nothing."""
    text = _with_box(
        cfg, lambda box: box.receipt_document(global_no, width=int(width)).plain(), read_only=True
    )
    click.echo("\n".join(fdms.visible(line) for line in text.split("\n")), nl=False)


@main.command("reprint")
@click.argument("global_no", type=RECEIPT_NO, required=False)
@click.option("--unprinted", is_flag=True, help="Print every receipt that has no finished print yet.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def reprint_command(cfg: configuration.Config, global_no: int | None, unprinted: bool, as_json: bool) -> None:
    """Print receipt GLOBAL_NO again (marked COPY after a first print), or all unprinted receipts."""
    if (global_no is None) == (not unprinted):
        _fail(FiscalError("BOX_USAGE", "Give either a receipt number or --unprinted."))
    if unprinted:
        progress = _progress_printer(as_json, "printed")
        result = _with_box(cfg, lambda box: box.print_unprinted(progress), printing=True)
        if progress is not None and result["printed"]:
            click.echo(err=True)  # end the progress line
        _emit(result, as_json, _unprinted_text)
        if result["error"] is not None:  # what was printed is reported above; the fault is one error line
            error = result["error"]
            _fail(FiscalError(error["code"], f"Receipt {result['stopped_at']}: {error['message']}"))
        return
    assert global_no is not None
    done = _with_box(cfg, lambda box: box.reprint(global_no), printing=True)
    _emit(done, as_json, lambda r: f"printed receipt {r['global_no']}" + (" as COPY" if r["copy"] else ""))


def _unprinted_text(result: dict[str, Any]) -> str:
    text = f"printed {len(result['printed'])} receipts"
    if result["stopped_at"] is not None:
        text += f", stopped at receipt {result['stopped_at']}"
    if result["remaining"]:
        text += f"; {result['remaining']} still unprinted"
    return text


@main.command("report")
@click.option("--day", "day_no", type=DAY_NO, help="A closed day's Z report (default: the X report).")
@click.option("--print", "to_printer", is_flag=True, help="Print it on the configured printer.")
@click.option("--json", "as_json", is_flag=True, help="The report's figures as one JSON object.")
@click.pass_obj
def report_command(cfg: configuration.Config, day_no: int | None, to_printer: bool, as_json: bool) -> None:
    """The X report of the open day, or the Z report of closed day --day; shown, or printed with --print.
    With no day open and no --day, it is the Z report of the last day, and says so."""
    if to_printer:
        result = _with_box(cfg, lambda box: box.print_report(day_no), read_only=True, printing=True)
        _emit(result, as_json, lambda r: f"printed the {r['title']} of day {r['day_no']}")
        return

    def figures(box: Box) -> tuple[dict[str, Any] | None, str]:
        if day_no is None:
            report: dict[str, Any] | None = box.x_report()
        else:
            report = box.z_report(day_no) if as_json else None
        return report, box.report_document(day_no).plain()

    report, document = _with_box(cfg, figures, read_only=True)
    if report is None:
        click.echo(document, nl=False)
        return
    if day_no is None and report["status"] == CLOSED:
        report["note"] = (
            f"No fiscal day is open: this is the Z report of the last day, day {report['day_no']}."
        )
    elif day_no is None and report["status"] != OPENED:
        report["note"] = (
            f"No fiscal day is open: this is the report of the last day, day {report['day_no']}, whose close "
            f"is not confirmed yet ({report['status']}): an X report until FDMS closes it."
        )
    if as_json:
        _emit(report, True, str)
        return
    if "note" in report:
        click.echo(report["note"], err=True)
    click.echo(document, nl=False)


@main.command("receipt")
@click.argument("global_no", type=RECEIPT_NO)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.option("--body", is_flag=True, help="Only the SubmitReceipt body sent to FDMS, byte for byte.")
@click.pass_obj
def receipt_command(cfg: configuration.Config, global_no: int, as_json: bool, body: bool) -> None:
    """One stored receipt: the JSON sent to FDMS, its hash and signature, and its delivery and print state.
    `--body` writes the exact body, for `fiscalbox explain receipt`. Changes nothing."""
    if body and as_json:
        _fail(FiscalError("BOX_USAGE", "Give --json or --body, not both."))
    info = _with_box(cfg, lambda box: box.receipt(global_no), read_only=True)
    if body:
        click.echo(info["body"], nl=False)
        return

    def text(r: dict[str, Any]) -> str:
        delivery = r["delivery"]
        lines = [
            f"receipt {r['global_no']}: {r['type']} {r['currency']} {r['total']}, invoice {r['invoice_no']}",
            f"day {r['day_no']}, counter {r['counter']}, dated {r['date']}",
            f"hash {r['hash']}",
            f"signature {r['signature']}",
            f"QR {r['qr_url']} (verification code {r['verification_code']})",
            f"delivery: {delivery['state']}"
            + (f", FDMS receipt ID {delivery['receipt_id']}" if delivery["receipt_id"] is not None else "")
            + "".join(f"; {e['code']} {e['colour']}" for e in delivery["errors"] or []),
            f"prints: {r['prints']['completed']} finished of {r['prints']['started']} started",
            "explain it: fiscalbox-device receipt {n} --body | fiscalbox explain receipt - "
            "--device-id {d}{p} --signature {s}".format(
                n=r["global_no"],
                d=r["device_id"],
                p="" if r["previous_hash"] is None else f" --previous-hash {r['previous_hash']}",
                s=r["signature"],
            ),
        ]
        return "\n".join(lines)

    _emit(info, as_json, text)


# ---------------------------------------------------------------------------------------------------------
# FDMS: registration and delivery


@main.command("register")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def register(cfg: configuration.Config, as_json: bool) -> None:
    """Register with FDMS: taxpayer check, a key in the key store, CSR, certificate, configuration.
    The activation key comes from the environment variable [fdms] activation_key_env names."""

    def run(box: Box) -> dict[str, Any]:
        key = cfg.secret("fdms", "activation_key_env", os.environ)
        currencies = [c.strip() for c in cfg.fdms["currencies"].split(",") if c.strip()]
        try:
            result = box.register(cfg.device["id"], cfg.device["serial"], key, currencies)
        except FiscalError as error:
            if error.code in ("BOX_FDMS_UNAVAILABLE", "BOX_FDMS_BUSY"):  # registration is not retried for you
                reason = error.message.replace("; the box will try again later.", ".")
                done = (
                    "FDMS registered the device and its certificate is installed, but the box has not yet "
                    "got its configuration"
                    if box.keys.certificate_pem() is not None
                    else "Nothing was registered"
                )
                raise FiscalError(
                    error.code, f"{reason} {done}: run register again once FDMS answers."
                ) from None
            raise
        return {
            "taxpayer": result["taxpayer"].get("taxPayerName"),
            "settings": result["config"],
            "warnings": result["warnings"],
        }

    try:
        result = _with_box(cfg, run, create=True)
    except FiscalError as error:
        _fail(error)
    _emit(
        result,
        as_json,
        lambda r: "\n".join(
            [f"registered: {r['taxpayer']}, device {cfg.device['id']}"]
            + [f"warning {w['code']}: {w['message']}" for w in r["warnings"]]
        ),
    )


DELIVER_MAX_WAIT = 300.0  # seconds without anything delivered before `deliver --until-idle` gives up


@main.command("deliver")
@click.option("--until-idle", is_flag=True, help="Stop once everything is delivered (otherwise run on).")
@click.option(
    "--max-wait",
    type=_Seconds(),
    default=None,
    help=f"With --until-idle: give up (exit 1, saying why) after this many seconds in which nothing could be "
    f"delivered [default: {DELIVER_MAX_WAIT:g}].",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def deliver(cfg: configuration.Config, until_idle: bool, max_wait: float | None, as_json: bool) -> None:
    """Deliver the outbox to FDMS in order: day opens, receipts, closes, pings, certificate renewal.

    With --until-idle it stops once nothing is left (exit 0), or exits 1 with the reason when nothing can
    move without a person (FDMS refused the device, its certificate is not trusted, a close is blocked or
    failed) or when --max-wait runs out. What delivery waits for is shown as it changes, and by `status`."""
    if max_wait is not None and not until_idle:
        _fail(FiscalError("BOX_USAGE", "--max-wait goes with --until-idle."))

    def announce(problem: dict[str, Any] | None) -> None:
        if problem is None:
            click.echo("delivery: going again", err=True)
        else:
            click.echo(
                f"delivery waits: {problem['code']}: {problem['message']} (next attempt "
                f"{problem.get('next_attempt')})",
                err=True,
            )

    def run(box: Box) -> dict[str, Any]:
        if box.fdms is None:
            raise FiscalError("BOX_NO_FDMS", "Set [fdms] url in the configuration first.")
        worker = Delivery(box, box.fdms, SystemClock(), renew_days_before=cfg.fdms["renew_days_before"])
        box.delivery = worker
        if not as_json:
            worker.on_problem = announce
        if until_idle:
            worker.run_until_idle(max_wait=DELIVER_MAX_WAIT if max_wait is None else max_wait)
        else:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                worker.run(stop)
            except KeyboardInterrupt:
                pass
        counts = box.journal.outbox_counts()
        return {
            "sent": worker.sent,
            **worker.state(),
            "outbox": counts,
            "waiting": counts.get("pending", 0),
            "stopped": worker.stopped,
        }

    try:
        result = _with_box(cfg, run)
    except FiscalError as error:
        _fail(error)

    def text(r: dict[str, Any]) -> str:
        line = f"delivered {r['sent']} receipts; outbox: {_counts(r['outbox'])}"
        stopped = r["stopped"]
        if stopped is None:
            return line
        since = f"since {stopped['since']}; " if stopped.get("since") else ""
        waiting = f"({since}{r['waiting']} receipts waiting)"
        return f"{line}\nstopped {stopped['code']}: {stopped['message']} {waiting}"

    _emit(result, as_json, text)
    sys.exit(0 if result["stopped"] is None else 1)


@main.command("outbox")
@click.option("--limit", type=COUNT, default=20, show_default=True, help="How many to list.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def outbox_command(cfg: configuration.Config, limit: int, as_json: bool) -> None:
    """What waits for FDMS: the outbox by state, the oldest undelivered receipts, what FDMS flagged."""

    def text(info: dict[str, Any]) -> str:
        lines = [f"outbox: {_counts(info['counts'])}"]
        lines += [
            f"  waiting: #{r['global_no']} day {r['day_no']} {r['date']} {r['type']} "
            f"{r['currency']} {r['total']}"
            for r in info["oldest_pending"]
        ]
        lines += [
            f"  flagged: #{f['global_no']} " + ", ".join(f"{e['code']} {e['colour']}" for e in f["errors"])
            for f in info["flagged"]
        ]
        lines += [
            f"  day {d['day_no']} {d['status']}" + ("" if d["open_sent"] else ", OpenDay not yet sent")
            for d in info["days_waiting"]
        ]
        lines += [f"  finding {f['code']}: {f['message']}" for f in info["security"][:1]]
        if info["security_total"] > 1:
            lines.append(
                f"  ... and on {info['security_total'] - 1} more (`outbox --json --limit N` lists them)"
            )
        problem = info["problem"]
        if problem is not None:
            lines.append(f"  delivery: {problem['code']}: {problem['message']}")
        return "\n".join(lines)

    _emit(_with_box(cfg, lambda box: box.outbox(limit), read_only=True), as_json, text)


@main.command("day-files")
@click.argument("day_no", type=DAY_NO)
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def day_files_command(cfg: configuration.Config, day_no: int, out_dir: str, as_json: bool) -> None:
    """Write day DAY_NO's SubmitFile files (header, receipts as signed, the signed close in the last one) to
    OUT_DIR, for upload in the ZIMRA self-service portal. The day must have its close signed."""
    if not out_dir.strip():
        _fail(FiscalError("BOX_USAGE", "OUT_DIR is empty: give the folder to write the day's files to."))
    try:
        files = _with_box(cfg, lambda box: box.day_files(day_no), read_only=True)
    except FiscalError as error:
        _fail(error)
    where = Path(out_dir)
    written = []
    for item in files:
        path = where / f"{cfg.device['id']}-day{day_no}-{item['sequence']:03d}.json"
        temporary = path.with_suffix(".part")
        try:
            where.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(item["body"])
            temporary.replace(path)
        except OSError as error:
            _fail(FiscalError("BOX_FILE", f"Cannot write {path}: {error.strerror}.", "out_dir"))
        written.append(
            {
                "file": str(path),
                "sequence": item["sequence"],
                "bytes": len(item["body"]),
                "first_global_no": item["first_global_no"],
                "last_global_no": item["last_global_no"],
                "has_footer": item["has_footer"],
            }
        )
    result = {"day_no": day_no, "files": written}
    _emit(
        result, as_json, lambda r: "\n".join(f"wrote {f['file']} ({f['bytes']:,} bytes)" for f in r["files"])
    )


if __name__ == "__main__":
    main()
