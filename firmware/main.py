"""`fiscalbox-device`: the box's runtime entry point and the composition root.

The concrete drivers (which key store, later which printer and port) are chosen here and nowhere else.
For now the box can be given its identity: a key made inside the key store, the certificate request FDMS
expects, and the certificate it returns.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from cryptography.hazmat.primitives import serialization

from firmware import config as configuration
from firmware import service
from firmware.backup import Anchor, restore
from firmware.box import Box
from firmware.core import fdms
from firmware.core.errors import FiscalError
from firmware.delivery import Delivery
from firmware.hosts import HostKeys
from firmware.journal import OPENED, Journal
from firmware.link import utc_now
from firmware.logs import json_logging
from firmware.service import (  # the box's parts, built once for the service and the one-shot commands
    SystemClock,
    build_key_store,
    open_journal,
    public_key_store,
)
from hardware.signatures import load_public_key

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


def _with_store(cfg: configuration.Config, action: Callable[[Any], T], public_only: bool = False) -> T:
    """Open the configured key store (`public_only`: its public half, no passphrase), run `action`, close
    it; a refusal becomes one line and exit 2."""
    try:
        with service.one_shot(cfg):
            opened = public_key_store(cfg, os.environ) if public_only else build_key_store(cfg, os.environ)
            with closing(opened) as store:
                return action(store)
    except FiscalError as error:
        _fail(error)


@key.command("generate")
@click.option(
    "--algorithm", type=click.Choice(sorted(service.ALGORITHM_NAMES)), default="ecdsa", show_default=True
)
@click.option(
    "--replace", is_flag=True, help="Replace the key of a box not yet registered (its certificate goes too)."
)
@click.pass_obj
def key_generate(cfg: configuration.Config, algorithm: str, replace: bool) -> None:
    """Make the device key pair inside the key store; prints its public key."""

    try:
        service.check_key_replacement(cfg, replace)
    except FiscalError as error:
        _fail(error)
    pem = _with_store(cfg, lambda store: service.generate_key(cfg, store, algorithm, replace))
    click.echo(pem.decode(), nl=False)


@key.command("csr")
@click.pass_obj
def key_csr(cfg: configuration.Config) -> None:
    """Print the certificate request FDMS expects: CN=ZIMRA-<serial>-<device ID, 10 digits>, nothing else."""
    try:
        name = service.common_name(cfg)
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


@key.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def key_show(cfg: configuration.Config, as_json: bool) -> None:
    """The key's algorithm and public key, and the certificate's subject and validity when there is one.
    Reads only the public half: no passphrase needed."""
    info = _with_store(cfg, lambda store: service.describe_keys(store, cfg.keys["store"]), public_only=True)
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
        made = create and not Path(cfg.journal["path"]).exists()
        box = service.open_box(cfg, store, read_only=read_only, create=create, printing=printing)
        try:
            return action(box)
        except BaseException:
            service.close_journal(box.journal, made)
            raise
        finally:
            box.journal.close()

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
    ours = journal_path is None or public_key_path is None  # the box's own journal or key store
    try:
        with service.one_shot(cfg) if ours else nullcontext():
            if public_key_path is not None:
                public_key = _public_key_file(public_key_path)
            else:
                public_key = load_public_key(_with_store(cfg, lambda s: s.public_key_pem(), public_only=True))
            if journal_path is not None:
                journal = Journal(journal_path, read_only=True)
            else:
                journal = open_journal(cfg, read_only=True)
            try:
                anchor = Anchor(cfg.journal["anchor"]) if journal_path is None else None
                report = service.audit_report(journal, public_key, anchor, _progress_printer(as_json))
            finally:
                journal.close()
    except FiscalError as error:
        _fail(error)
    if not as_json:
        click.echo("", err=True)
    shown = report["problems"] if verbose else report["problems"][:10]

    def text(data: dict[str, Any]) -> str:
        checked = data["checked"]
        kinds = (("receipts", "receipt"), ("days", "day"), ("audit_entries", "audit entry"))
        numbers = [f"{checked[k]} {one if checked[k] == 1 else k.replace('_', ' ')}" for k, one in kinds]
        numbers.append(f"{checked['checkpoints']} checkpoint{'' if checked['checkpoints'] == 1 else 's'}")
        head = f"{'clean' if data['clean'] else 'PROBLEMS FOUND'}: {', '.join(numbers)} checked"
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
    help="Keep only the newest N backups (default: backup.retain).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def backup_command(cfg: configuration.Config, dest: str | None, retain: int | None, as_json: bool) -> None:
    """Copy the journal online into DEST (default: backup.dir) with a signed manifest."""
    if dest is not None and not dest.strip():
        _fail(
            FiscalError("BOX_USAGE", "DEST is empty: give the backup folder, or leave it out for backup.dir.")
        )
    target = dest or cfg.backup["dir"]
    keep = retain if retain is not None else cfg.backup["retain"]
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
        with service.one_shot(cfg):  # no service starts on the journal while it is replaced
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

    result = _with_box(cfg, lambda box: service.export_to(box, first, last, out))
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
            report: dict[str, Any] | None = service.x_report(box)
        else:
            report = box.z_report(day_no) if as_json else None
        return report, box.report_document(day_no).plain()

    report, document = _with_box(cfg, figures, read_only=True)
    if report is None:
        click.echo(document, nl=False)
        return
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
# The service


@main.command("run")
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning"]), default="info", show_default=True
)
@click.pass_obj
def run_command(cfg: configuration.Config, log_level: str) -> None:
    """Run the box as a device: the USB link ([link] port), delivery to FDMS, printing and the daily backup
    ([backup] at), until SIGTERM or SIGINT (the operation in flight finishes first). Logs one JSON object
    a line on standard output. While it runs, the one-shot commands are refused (BOX_BUSY)."""
    json_logging(log_level)
    log = logging.getLogger("fiscalbox")
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    try:
        code = service.run(cfg, os.environ, stop, log)
    except FiscalError as error:
        log.error("service not started", extra={"fields": error.as_dict()})
        _fail(error)
    sys.exit(code)


# ---------------------------------------------------------------------------------------------------------
# The host keys, on the box itself: the way back in when no operator key can sign (docs/link.md section 5)


@main.group("hosts")
def hosts_group() -> None:
    """The link's host keys ([link] hosts), kept on the box; with the service stopped."""


def _hosts(cfg: configuration.Config, action: Callable[[Any], T], recover: bool = False) -> T:
    """Run `action` on the host keys, held against the service (BOX_BUSY while it runs). `recover`: a
    damaged file is set aside (FILE.damaged) and a new list started, for an enroll."""
    path = Path(cfg.link["hosts"])
    try:
        with service.one_shot(cfg):
            try:
                keys = HostKeys(path)
            except FiscalError as error:
                if not recover or error.code != "BOX_HOSTS":
                    raise
                aside = path.with_name(path.name + ".damaged")
                os.replace(path, aside)
                click.echo(f"the damaged {path} was set aside as {aside}; a new list starts", err=True)
                keys = HostKeys(path)
            return action(keys)
    except FiscalError as error:
        _fail(error)
    except OSError as error:
        _fail(FiscalError("BOX_HOSTS", f"The host keys file {path} cannot be set aside: {error.strerror}."))


def _entry_line(entry: dict[str, Any]) -> str:
    revoked = f", revoked {entry['revoked_at']}" if entry["revoked_at"] else ""
    return f"{entry['kid']} {entry['role']} {entry['label']!r} enrolled {entry['enrolled_at']}{revoked}"


@hosts_group.command("enroll")
@click.argument("pem", type=click.Path(dir_okay=False))
@click.option("--role", type=click.Choice(["operator", "pos"]), required=True)
@click.option("--label", default="enrolled on the box", show_default=True, help="1 to 64 characters.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def hosts_enroll(cfg: configuration.Config, pem: str, role: str, label: str, as_json: bool) -> None:
    """Enroll a host's public key (PEM) on the box itself: the way back in for a box whose host keys file is
    lost or damaged (set aside as FILE.damaged), or whose operator keys are lost."""
    try:
        key = serialization.load_pem_public_key(Path(pem).read_bytes())
    except OSError as error:
        _fail(FiscalError("BOX_FILE", f"Cannot read {pem}: {error.strerror}.", "pem"))
    except (ValueError, TypeError):
        _fail(
            FiscalError(
                "BOX_LINK_KEY",
                f"{pem} is not a PEM public key: `openssl pkey -in HOST-KEY.pem -pubout` gives a host key's.",
                "pem",
            )
        )
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    entry = _hosts(cfg, lambda keys: keys.enroll(der, role, label, utc_now()), recover=True)
    _emit(entry, as_json, _entry_line)


@hosts_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def hosts_list(cfg: configuration.Config, as_json: bool) -> None:
    """Every host key enrolled, revoked ones included."""
    entries = _hosts(cfg, lambda keys: keys.entries())
    _emit({"keys": entries}, as_json, lambda r: "\n".join(map(_entry_line, r["keys"])) or "no host keys")


@hosts_group.command("revoke")
@click.argument("kid")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def hosts_revoke(cfg: configuration.Config, kid: str, as_json: bool) -> None:
    """Revoke the host key KID (32 hexadecimal digits); it stays listed."""
    try:
        wanted = bytes.fromhex(kid)
    except ValueError:
        _fail(FiscalError("BOX_USAGE", "A key ID is 32 hexadecimal digits (see `hosts list`).", "kid"))
    _emit(_hosts(cfg, lambda keys: keys.revoke(wanted, utc_now())), as_json, _entry_line)


# ---------------------------------------------------------------------------------------------------------
# FDMS: registration and delivery


@main.command("register")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def register(cfg: configuration.Config, as_json: bool) -> None:
    """Register with FDMS: taxpayer check, a key in the key store, CSR, certificate, configuration.
    The activation key comes from the environment variable [fdms] activation_key_env names."""

    def run(box: Box) -> dict[str, Any]:
        return service.register_box(box, cfg, cfg.secret("fdms", "activation_key_env", os.environ))

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
