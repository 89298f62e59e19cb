"""The `fiscalbox` command: provisioning, operation and the integrator's tools.

Exit status: 0 done and clean, 1 done but something is wrong (a Red finding, a bad signature), 2 the input
itself could not be used (one line on stderr names the field). `--json` prints one JSON object for scripts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from firmware.core import fdms
from firmware.core.errors import FiscalError
from hardware import signatures
from host_tools import explain as explaining
from host_tools import journal_file

PASSPHRASE_ENV = "FISCALBOX_KEY_PASSPHRASE"


def _fail(error: FiscalError) -> None:
    where = f"{error.field}: " if error.field else ""
    click.echo(f"error {error.code}: {where}{error.message}", err=True)
    sys.exit(2)


def _read(file: str) -> Any:
    if file == "-":
        return explaining.load_json(sys.stdin.read(), "standard input")
    path = Path(file)
    try:
        text = path.read_text(encoding="utf-8")
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
        return signatures.load_private_key(pem, passphrase.encode() if passphrase else None)
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


def _print_report(report: dict[str, Any]) -> None:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 160  # piped into a file or a ticket: keep tokens whole
    if report["kind"] == "receipt":
        first = " (first receipt of the day: no previous hash)" if report["first_in_day"] else ""
        console.print(f"[bold]Receipt signature string[/bold]{first}")
        table = Table(
            "taxID", "code", "percent", "tax", "with tax", "token", title="Tax lines, in signing order"
        )
        for tax in report["receiptTaxes"]:
            table.add_row(
                str(tax["taxID"]),
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
            table.add_row(
                counter["type"], counter["currency"], sub, percent, counter["value"], counter["token"]
            )
    console.print(report["string"], markup=False)
    console.print(f"[bold]SHA-256 (base64):[/bold] {report['hash']}")
    console.print(table)
    if report["findings"]:
        findings = Table("code", "colour", "field", "what is wrong", title="Findings")
        for f in report["findings"]:
            colour = {"Red": "red", "Yellow": "yellow", "Grey": "grey50"}.get(f["colour"], "white")
            findings.add_row(f["code"], f"[{colour}]{f['colour']}[/{colour}]", f["field"] or "", f["message"])
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
            console.print(f"[bold]{label}:[/bold] {report[key]}", markup=True)


@click.group()
def main() -> None:
    """fiscalbox: provision, operate and inspect a fiscal box."""


@main.group()
def explain() -> None:
    """Show exactly what gets hashed and signed, and why FDMS might refuse it."""


@explain.command("receipt")
@click.argument("file")
@click.option("--device-id", type=int, required=True, help="The FDMS device ID that signs the receipt.")
@click.option(
    "--previous-hash", help="Base64 hash of the previous receipt of the same day (omit for the first)."
)
@click.option("--key", "key_path", help=f"Private key PEM to sign with (passphrase from ${PASSPHRASE_ENV}).")
@click.option("--cert", "cert_path", help="Certificate or public key PEM to verify the receipt's signature.")
@click.option("--signature", help="Base64 device signature, for the QR URL and verification code.")
@click.option("--qr-url", default=explaining.DEFAULT_QR_URL, show_default=True, help="qrUrl from GetConfig.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
def explain_receipt(
    file: str,
    device_id: int,
    previous_hash: str | None,
    key_path: str | None,
    cert_path: str | None,
    signature: str | None,
    qr_url: str,
    as_json: bool,
) -> None:
    """FILE (or - for standard input): a SubmitReceipt body or a bare receipt."""
    try:
        report = explaining.explain_receipt(
            _read(file),
            device_id,
            previous_hash,
            _read_key(key_path, True),
            _read_key(cert_path, False),
            signature,
            qr_url,
        )
    except FiscalError as error:
        _fail(error)
    _show(report, as_json)


@explain.command("day")
@click.argument("file")
@click.option("--device-id", type=int, required=True, help="The FDMS device ID.")
@click.option("--day-no", type=int, help="The fiscal day number (default: fiscalDayNo in FILE).")
@click.option("--day-date", required=True, help="The date the day was OPENED, YYYY-MM-DD.")
@click.option("--key", "key_path", help=f"Private key PEM to sign with (passphrase from ${PASSPHRASE_ENV}).")
@click.option("--cert", "cert_path", help="Certificate or public key PEM to verify the day signature.")
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
    """A box's journal, offline."""


@journal.command("verify")
@click.argument("file")
@click.option("--cert", "cert_path", required=True, help="The device's certificate or public key PEM.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
def journal_verify(file: str, cert_path: str, as_json: bool) -> None:
    """Check a journal export (`fiscalbox-device export`): exit 0 clean, 1 problems found, 2 bad input."""
    try:
        report = journal_file.verify_export(_read(file), _read_key(cert_path, False))
    except FiscalError as error:
        _fail(error)
    except (KeyError, TypeError, ValueError) as error:
        _fail(FiscalError("BOX_EXPORT_FORMAT", f"The file is missing or mangles a member ({error}).", "file"))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        verdict = "clean" if report["clean"] else "PROBLEMS FOUND"
        click.echo(
            f"{verdict}: device {report['device_id']}, receipts {report['first']}..{report['last']} "
            f"({report['receipts']}), days {report['days']}"
        )
        for item in report["problems"]:
            click.echo(f"  {item['code']}: {item['message']}")
    sys.exit(0 if report["clean"] else 1)


if __name__ == "__main__":
    main()
