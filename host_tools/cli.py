"""The `fiscalbox` command: provisioning, operation and the integrator's tools.

Exit status: 0 done and clean, 1 done but something is wrong (a Red finding, a bad signature), 2 the input
itself could not be used (one line on stderr names the field). `--json` prints one JSON object for scripts.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from firmware.core import fdms, localtime
from firmware.core.errors import FiscalError
from hardware import signatures
from host_tools import box_commands, journal_file
from host_tools import explain as explaining

PASSPHRASE_ENV = "FISCALBOX_KEY_PASSPHRASE"


def _fail(error: FiscalError) -> NoReturn:
    where = f"{error.field}: " if error.field else ""
    click.echo(f"error {error.code}: {where}{error.message}", err=True)
    sys.exit(2)


@contextmanager
def _one_line_usage() -> Iterator[None]:
    """Click's own refusals (a missing option, a value of the wrong type) as one `error` line too."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # a bare group: its help is the answer
    except click.MissingParameter as error:
        _fail(FiscalError("BOX_USAGE", f"{error.format_message()} See --help."))
    except click.BadParameter as error:
        _fail(FiscalError(getattr(error, "code", "BOX_BAD_OPTION"), error.format_message()))
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

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # Ctrl-C: one error line saying what may have reached the box, not click's
            _fail(box_commands.interrupted(ctx))


class _Choice(click.ParamType):
    """An option value checked by `check`, which returns it converted, or None: then `rule` is the error."""

    def __init__(self, name: str, rule: str, check: Any, code: str = "BOX_BAD_OPTION") -> None:
        self.name = name
        self.rule = rule
        self.check = check
        self.code = code

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        converted = self.check(value) if isinstance(value, str) else value
        if converted is None:
            error = click.BadParameter(f"{value[:60]!r}: {self.rule}", ctx, param)
            error.code = self.code  # type: ignore[attr-defined]
            raise error
        return converted


def _positive(digits: int) -> Any:
    def check(text: str) -> int | None:
        text = text.strip()
        return int(text) if text.isdigit() and text.isascii() and len(text) <= digits and int(text) else None

    return check


def _base64(length: int | None, empty: bool = False) -> Any:
    """Standard base64 as FDMS writes it (no line breaks, padding kept), of `length` bytes if given."""

    def check(text: str) -> str | None:
        if empty and text == "":
            return text
        try:
            data = explaining.strict_unb64(text, "option")
        except FiscalError:
            return None
        return text if length in (None, len(data)) else None

    return check


def _url(text: str) -> str | None:
    return text if text.startswith(("https://", "http://")) and len(text.split()) == 1 else None


def _day_date(text: str) -> str | None:
    try:
        return explaining.check_day_date(text)
    except FiscalError:
        return None


DEVICE_ID = _Choice(
    "id", "the FDMS device ID is a positive whole number of at most 10 digits.", _positive(10)
)
DAY_NO = _Choice("number", "the fiscal day number is a positive whole number.", _positive(18))
HASH = _Choice("base64", "a hash is 44 characters of base64 (SHA-256), as FDMS gives it.", _base64(32, True))
SIGNATURE = _Choice("base64", "a signature is base64, as FDMS gives it.", _base64(None))
URL = _Choice("url", "give the qrUrl from GetConfig, starting https://.", _url)


def _receipt_date(text: str) -> str | None:
    try:
        localtime.parse(text, "receiptDate")
    except FiscalError:
        return None
    return text


NUMBER = _Choice("number", "a receipt number is a positive whole number.", _positive(18))
RECEIPT_DATE = _Choice(
    "date", "give the receipt's local date and time, YYYY-MM-DDTHH:MM:SS.", _receipt_date, "BOX_BAD_DATE"
)
DAY_DATE = _Choice(
    "date",
    "give the date the day was OPENED, a real date written YYYY-MM-DD (e.g. 2026-12-04), without a time.",
    _day_date,
    "BOX_BAD_DATE",
)


def _read(file: str) -> Any:
    if file == "-":
        try:
            text = sys.stdin.buffer.read().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise FiscalError("BOX_BAD_JSON", "Standard input is not UTF-8 text.") from None
        return explaining.load_json(text, "standard input")
    path = Path(file)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark, as Windows editors write, is fine
    except OSError as error:
        raise FiscalError("BOX_FILE", f"Cannot read {file}: {error.strerror}.") from None
    except UnicodeDecodeError:
        raise FiscalError("BOX_BAD_JSON", f"{file} is not UTF-8 text.") from None
    return explaining.load_json(text, file)


def _read_key(path: str | None, private: bool) -> Any:
    if path is None:
        return None
    try:
        pem = Path(path).read_bytes()
    except OSError as error:
        raise FiscalError("BOX_FILE", f"Cannot read {path}: {error.strerror}.", "key") from None
    if private:
        passphrase = os.environ.get(PASSPHRASE_ENV)
        encrypted = b"ENCRYPTED" in pem  # a passphrase set for another key must not refuse a plain one
        return signatures.load_private_key(pem, passphrase.encode() if passphrase and encrypted else None)
    try:
        return signatures.load_public_key(pem)
    except (ValueError, FiscalError):
        raise FiscalError("BOX_KEY_UNREADABLE", f"{path} holds no certificate or key.", "cert") from None


def _show(report: dict[str, Any], as_json: bool) -> None:
    red = any(f["colour"] == fdms.RED for f in report["findings"]) or report.get("signature_valid") is False
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        _print_report(report)
    sys.exit(1 if red else 0)


def _plain_row(table: Table, *cells: Any) -> None:
    """A row of the sender's own text: a tax code such as "[/]" is shown, never read as rich markup."""
    table.add_row(*(Text(str(cell)) for cell in cells))


def _print_report(report: dict[str, Any]) -> None:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 160  # piped into a file or a ticket: keep tokens whole
    if report["kind"] == "receipt":
        if report["first_in_day"]:
            first = " (receiptCounter 1, the day's first receipt: no previous hash)"
        elif report["previous_hash"] is None:
            first = f" (receiptCounter {report['receiptCounter']}, NO previous hash given: see the findings)"
        else:
            first = f" (receiptCounter {report['receiptCounter']}, after the previous hash given)"
        console.print(f"[bold]Receipt signature string[/bold]{first}")
        table = Table(
            "taxID", "code", "percent", "tax", "with tax", "token", title="Tax lines, in signing order"
        )
        for tax in report["receiptTaxes"]:
            _plain_row(
                table,
                tax["taxID"],
                tax["taxCode"] or "",
                tax["taxPercent"] or "exempt",
                tax["taxAmount"],
                tax["salesAmountWithTax"],
                tax["token"],
            )
    else:
        console.print(
            f"[bold]Day signature string[/bold] (day {report['day_no']}, opened {report['day_date']})"
        )
        table = Table(
            "type", "currency", "tax / money", "percent", "value", "token", title="Counters, in signing order"
        )
        for counter in report["counters"]:
            sub = counter["moneyType"] or str(counter["taxID"])
            percent = counter["taxPercent"] or ("" if counter["moneyType"] else "exempt")
            _plain_row(
                table, counter["type"], counter["currency"], sub, percent, counter["value"], counter["token"]
            )
    console.print(report["string"], markup=False)
    console.print(f"[bold]SHA-256 (base64):[/bold] {report['hash']}")
    console.print(table)
    if report["findings"]:
        findings = Table("code", "colour", "field", "what is wrong", title="Findings")
        for f in report["findings"]:
            colour = {"Red": "red", "Yellow": "yellow", "Grey": "grey50"}.get(f["colour"], "white")
            findings.add_row(
                Text(f["code"]), Text(f["colour"], style=colour), Text(f["field"] or ""), Text(f["message"])
            )
        console.print(findings)
    else:
        console.print("[green]No findings: FDMS's rules that the box can judge alone all pass.[/green]")
    if "signature_valid" in report:
        verdict = "[green]valid[/green]" if report["signature_valid"] else "[red]INVALID[/red]"
        console.print(f"[bold]Signature sent:[/bold] {verdict}")
    for key, label in (
        ("signature", "Signature (base64)"),
        ("signature_made", "Signature made with --key"),
        ("qr_url", "QR URL"),
        ("verification_code", "Verification code"),
    ):
        if key in report:
            console.print(Text.assemble((f"{label}: ", "bold"), report[key]))


@click.group(cls=_Group)
@box_commands.link_options
def main() -> None:
    """fiscalbox: provision, operate and inspect a fiscal box."""


@main.group()
def explain() -> None:
    """Show exactly what gets hashed and signed, and why FDMS might refuse it."""


@explain.command("receipt")
@click.argument("file")
@click.option("--device-id", type=DEVICE_ID, required=True, help="The FDMS device ID that signs the receipt.")
@click.option(
    "--previous-hash",
    type=HASH,
    help="Base64 hash of the previous receipt of the same day (omit, or give '', for receiptCounter 1).",
)
@click.option("--counter", type=NUMBER, help="For a sale: the receiptCounter the box would give it.")
@click.option("--global-no", type=NUMBER, help="For a sale: the receiptGlobalNo the box would give it.")
@click.option(
    "--date",
    type=RECEIPT_DATE,
    help="For a sale: the receiptDate the box would give it, YYYY-MM-DDTHH:MM:SS.",
)
@click.option(
    "--key",
    "key_path",
    metavar="PEM",
    help=f"Private key PEM to sign with (passphrase from ${PASSPHRASE_ENV}).",
)
@click.option(
    "--cert",
    "cert_path",
    metavar="PEM",
    help="Certificate or public key PEM to verify the receipt's signature.",
)
@click.option(
    "--signature", type=SIGNATURE, help="Base64 device signature, for the QR URL and verification code."
)
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="The device's GetConfig answer (JSON): checks tax IDs and percents against its applicableTaxes.",
)
@click.option(
    "--qr-url",
    type=URL,
    help=f"qrUrl from GetConfig [default: the --config one, or {explaining.DEFAULT_QR_URL}].",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
def explain_receipt(
    file: str,
    device_id: int,
    previous_hash: str | None,
    counter: int | None,
    global_no: int | None,
    date: str | None,
    key_path: str | None,
    cert_path: str | None,
    signature: str | None,
    config_path: str | None,
    qr_url: str | None,
    as_json: bool,
) -> None:
    """FILE (or - for standard input): a receipt the box stored, bare or as a SubmitReceipt body, or a sale.

    \b
    A receipt the box stored carries the fields the box sets; explain it with
      fiscalbox-device receipt N --body | fiscalbox explain receipt - --device-id ID --previous-hash HASH
    (--previous-hash: the hash of the day's receipt before it; none for receiptCounter 1).
    A sale as the POS sends it (docs/sale.md) lacks them: give the values the box would set with
    --counter N --global-no N --date YYYY-MM-DDTHH:MM:SS (these replace the file's own, if any).
    receiptDeviceSignature is not needed: --key signs the string; --cert verifies the one FILE carries.
    """
    try:
        config = None if config_path is None else explaining.load_config(_read(config_path))
        report = explaining.explain_receipt(
            _read(file),
            device_id,
            previous_hash or None,
            _read_key(key_path, True),
            _read_key(cert_path, False),
            signature,
            qr_url or (config and config["qr_url"]) or explaining.DEFAULT_QR_URL,
            config,
            {"receiptCounter": counter, "receiptGlobalNo": global_no, "receiptDate": date},
        )
    except FiscalError as error:
        _fail(error)
    _show(report, as_json)


@explain.command("day")
@click.argument("file")
@click.option("--device-id", type=DEVICE_ID, required=True, help="The FDMS device ID.")
@click.option("--day-no", type=DAY_NO, help="The fiscal day number (default: fiscalDayNo in FILE).")
@click.option("--day-date", type=DAY_DATE, required=True, help="The date the day was OPENED, YYYY-MM-DD.")
@click.option(
    "--key",
    "key_path",
    metavar="PEM",
    help=f"Private key PEM to sign with (passphrase from ${PASSPHRASE_ENV}).",
)
@click.option(
    "--cert", "cert_path", metavar="PEM", help="Certificate or public key PEM to verify the day signature."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
def explain_day(
    file: str,
    device_id: int,
    day_no: int | None,
    day_date: str,
    key_path: str | None,
    cert_path: str | None,
    as_json: bool,
) -> None:
    """FILE (or - for standard input): a CloseDay body or a list of counters."""
    try:
        report = explaining.explain_day(
            _read(file), device_id, day_date, day_no, _read_key(key_path, True), _read_key(cert_path, False)
        )
    except FiscalError as error:
        _fail(error)
    _show(report, as_json)


@main.group()
def journal() -> None:
    """A box's journal: `export` fetches it from the box over the link, `verify` checks an export offline."""


@journal.command("verify")
@click.argument("file")
@click.option(
    "--cert", "cert_path", metavar="PEM", required=True, help="The device's certificate or public key PEM."
)
@click.option("--verbose", is_flag=True, help="List every problem (text output shows the first 10).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
def journal_verify(file: str, cert_path: str, verbose: bool, as_json: bool) -> None:
    """Check a journal export (`fiscalbox-device export`): exit 0 clean, 1 problems found, 2 bad input.

    --cert is the device's certificate or public key as it was when the export was made; a file signed by
    another key is reported once as BOX_EXPORT_KEY, its signatures left unchecked.
    """
    try:
        report = journal_file.verify_export(_read(file), _read_key(cert_path, False))
    except FiscalError as error:
        _fail(error)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        _fail(FiscalError("BOX_EXPORT_FORMAT", f"The file is missing or mangles a member ({error}).", "file"))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        verdict = "clean" if report["clean"] else "PROBLEMS FOUND"
        days = ", ".join(str(day) for day in report["days"]) or "none"
        click.echo(
            f"{verdict}: device {report['device_id']}, receipts {report['first']}..{report['last']} "
            f"({report['receipts']}), days {days}"
        )
        shown = report["problems"] if verbose else report["problems"][:10]
        for item in shown:
            click.echo(f"  {item['code']}: {item['message']}")
        if len(shown) < len(report["problems"]):
            click.echo(f"  ... and {len(report['problems']) - len(shown)} more (--verbose lists them)")
    sys.exit(0 if report["clean"] else 1)


box_commands.add_to(main, journal)

if __name__ == "__main__":
    main()
