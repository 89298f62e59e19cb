"""The `fiscalbox` commands that talk to a box over its USB link, through `host_tools.link.BoxClient`.

`fiscalbox --port PORT --key PEM COMMAND`: the port and the host key also come from FISCALBOX_PORT and
FISCALBOX_HOST_KEY, or from a host config file (--host-config, FISCALBOX_HOST_CONFIG, or
~/.config/fiscalbox/host.toml) holding `port`, `key`, `timeout` and `device_key`. Every command takes --json
(the box's answer, field for field); a refusal is one line `error CODE: message` and exit 2.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from firmware.core.errors import FiscalError
from host_tools import link
from host_tools.link import BoxClient

T = TypeVar("T")
HOST_KEY_PASSPHRASE_ENV = "FISCALBOX_HOST_KEY_PASSPHRASE"
ACTIVATION_KEY_ENV = "FISCALBOX_ACTIVATION_KEY"


def _fail(error: FiscalError) -> NoReturn:
    from host_tools.cli import _fail as fail  # the one error line of every fiscalbox command

    fail(error)


def _default_host_config() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fiscalbox" / "host.toml"


class Connection:
    """The group's link options; the client is made (and the port opened) only when a command needs it."""

    def __init__(
        self,
        port: str | None,
        key: str | None,
        host_config: str | None,
        timeout: float | None,
        device_key: str | None = None,
    ) -> None:
        self.options = {"port": port, "key": key, "timeout": timeout, "device_key": device_key}
        self.host_config = host_config
        self._client: BoxClient | None = None

    def _settings(self) -> dict[str, Any]:
        path = Path(self.host_config) if self.host_config else _default_host_config()
        if not self.host_config and not path.exists():
            return {}
        try:
            settings = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise FiscalError("BOX_FILE", f"Cannot read {path}: {error.strerror}.", "host_config") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise FiscalError("BOX_CONFIG", f"{path} is not TOML: {error}.", "host_config") from None
        unknown = sorted(set(settings) - {"port", "key", "timeout", "device_key"})
        if unknown:
            raise FiscalError("BOX_CONFIG", f"{path}: unknown setting {unknown[0]}.", unknown[0])
        for name in ("key", "device_key"):  # relative to the file, as a person reads it
            if name in settings:
                settings[name] = str((path.parent / Path(str(settings[name])).expanduser()).resolve())
        return settings

    def client(self) -> BoxClient:
        if self._client is not None:
            return self._client
        settings = {**self._settings(), **{k: v for k, v in self.options.items() if v is not None}}
        port, key_path = settings.get("port"), settings.get("key")
        if not port:
            raise FiscalError(
                "BOX_USAGE", "Say where the box is: --port, FISCALBOX_PORT or `port` in host.toml.", "port"
            )
        if not key_path:
            raise FiscalError(
                "BOX_USAGE",
                "Give this host's key: --key, FISCALBOX_HOST_KEY or `key` in host.toml "
                "(`fiscalbox keys new FILE` makes one).",
                "key",
            )
        timeout = settings.get("timeout", 10.0)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise FiscalError("BOX_CONFIG", "timeout is a number of seconds above 0.", "timeout")
        try:
            pem = Path(str(key_path)).expanduser().read_bytes()
        except OSError as error:
            raise FiscalError(
                "BOX_FILE", f"Cannot read the host key {key_path}: {error.strerror}.", "key"
            ) from None
        device_key = None
        if settings.get("device_key"):
            try:
                device_key = Path(str(settings["device_key"])).expanduser().read_bytes()
            except OSError as error:
                raise FiscalError(
                    "BOX_FILE",
                    f"Cannot read the device key {settings['device_key']}: {error.strerror}.",
                    "device_key",
                ) from None
        passphrase = os.environ.get(HOST_KEY_PASSPHRASE_ENV)
        self._client = BoxClient(
            str(port),
            pem,
            float(timeout),
            passphrase=passphrase.encode() if passphrase else None,
            device_key=device_key,
            strict=device_key is not None,  # a key given: nothing unchecked is believed (docs/pos-api.md)
        )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def link_options(f: Callable[[], None]) -> Callable[..., None]:
    """The group-level options of the link commands; `cli.main` wears it."""

    @functools.wraps(f)
    def group(
        port: str | None,
        key: str | None,
        host_config: str | None,
        timeout: float | None,
        device_key: str | None,
        verbose: bool,
    ) -> None:
        _log_link(verbose)
        ctx = click.get_current_context()
        connection = Connection(port, key, host_config, timeout, device_key)
        ctx.obj = connection
        ctx.call_on_close(connection.close)
        f()

    options = [
        click.option("--port", envvar="FISCALBOX_PORT", metavar="PORT", help="The box's serial port or URL."),
        click.option(
            "--key", envvar="FISCALBOX_HOST_KEY", metavar="PEM", help="This host's key (ECDSA P-256 PEM)."
        ),
        click.option(
            "--host-config",
            envvar="FISCALBOX_HOST_CONFIG",
            metavar="FILE",
            help="port, key and timeout in a TOML file [default: ~/.config/fiscalbox/host.toml].",
        ),
        click.option(
            "--timeout", type=click.FloatRange(min=0.1), help="Seconds to wait for an answer [default: 10]."
        ),
        click.option(
            "--device-key",
            envvar="FISCALBOX_DEVICE_KEY",
            metavar="PEM",
            help="The box's device key or certificate: every answer is checked against it (`keys device`).",
        ),
        click.option("--verbose", is_flag=True, help="Also say on standard error what the link retried."),
    ]
    for option in reversed(options):
        group = option(group)
    return group


_LINK_HANDLERS: list[logging.Handler] = []


def _log_link(verbose: bool) -> None:
    """The link client's retry lines on standard error only with --verbose: without a handler Python would
    print them anyway, and an error must stay the one `error CODE: message` line."""
    logger = logging.getLogger("fiscalbox.link.client")
    while _LINK_HANDLERS:
        logger.removeHandler(_LINK_HANDLERS.pop())
    _LINK_HANDLERS.append(logging.StreamHandler() if verbose else logging.NullHandler())
    logger.addHandler(_LINK_HANDLERS[0])


def interrupted(ctx: click.Context) -> FiscalError:
    """What Ctrl-C left behind: whether a request that changes something may have reached the box."""
    connection = ctx.find_object(Connection)
    client = connection._client if connection is not None else None
    rid = client.last_request_id if client is not None else None
    if rid is None:
        return FiscalError(
            "BOX_INTERRUPTED", "Stopped (Ctrl-C); nothing was asked of the box that changes it."
        )
    message = "Stopped (Ctrl-C) while the box was asked to do something: it may have done it. Check with "
    if ctx.invoked_subcommand == "sale":
        message += f"`fiscalbox status`, or send the sale again with --request-id {rid} (never issued twice)."
    else:
        message += "`fiscalbox status`."
    return FiscalError("BOX_INTERRUPTED", message)


# ---------------------------------------------------------------------------------------------------------
# Shared pieces


class _OneOf(click.Choice):  # type: ignore[type-arg]
    """A choice whose refusal fits on the one error line."""

    def get_missing_message(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "Choose " + " or ".join(str(choice) for choice in self.choices) + "."


class _Whole(click.ParamType):
    """A whole number from `low` up, refused with a sentence that says what it is."""

    name = "number"

    def __init__(self, what: str, low: int = 1) -> None:
        self.what = what
        self.low = low

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 18 and int(text) >= self.low):
            kind = "a positive whole number" if self.low == 1 else f"a whole number from {self.low} up"
            self.fail(f"{value[:40]!r}: {self.what} is {kind}.", param, ctx)
        return int(text)


RECEIPT_NO = _Whole("a receipt number")


def _box(action: Callable[[BoxClient], T]) -> T:
    connection = click.get_current_context().find_object(Connection)
    assert connection is not None
    try:
        return action(connection.client())
    except FiscalError as error:
        _fail(error)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=_jsonable))
    else:
        click.echo(text(data))


def _warnings(data: dict[str, Any]) -> list[str]:
    return [f"warning {w['code']}: {w['message']}" for w in data.get("warnings") or []]


@contextmanager
def _progress(as_json: bool, what: str, unit: str = "") -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on standard error for long work, when a person watches a terminal."""
    console = Console(stderr=True)
    if as_json or not console.is_terminal:
        yield None
        return
    columns = [TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(what, total=None)

        def show(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield show


as_json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")


def counted(n: int, things: str) -> str:
    """`35 receipts`, `1 day`, `1 audit entry`: `things` is the plural, with _ for spaces."""
    text = things.replace("_", " ")
    if n == 1:
        text = text[:-3] + "y" if text.endswith("ies") else text.removesuffix("s")
    return f"{n:,} {text}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {state}" for state, n in sorted(counts.items())) or "empty"


# ---------------------------------------------------------------------------------------------------------
# Keys


def keys_group() -> None:
    """Host keys: make one here, enroll it on the box, list and revoke the box's keys."""


@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
def keys_new(file: str, as_json: bool) -> None:
    """Make a new host key (ECDSA P-256) in FILE, readable by you only. Its passphrase, if any, comes from
    FISCALBOX_HOST_KEY_PASSPHRASE. Changes nothing on the box: enroll it next."""
    passphrase = os.environ.get(HOST_KEY_PASSPHRASE_ENV)
    try:
        kid = link.new_key(file, passphrase.encode() if passphrase else None)
    except FiscalError as error:
        _fail(error)
    _emit(
        {"file": file, "kid": kid.hex()},
        as_json,
        lambda r: (
            f"wrote host key {r['file']} (key ID {r['kid']}); enroll it with "
            f"`fiscalbox --key {r['file']} keys enroll --role operator` on a new box, or have an operator "
            f"enroll it: `fiscalbox keys enroll {r['file']} --role pos --label NAME`"
        ),
    )


def _entry_text(entry: dict[str, Any]) -> str:
    state = (
        f"revoked {entry['revoked_at']}"
        if entry.get("revoked_at")
        else f"enrolled {entry.get('enrolled_at')}"
    )
    return f"{entry['kid']}  {entry['role']:<8}  {entry.get('label', '')}  ({state})"


@click.argument("public_key", required=False)
@click.option("--role", type=_OneOf(["pos", "operator"]), required=True, help="What the key may ask.")
@click.option("--label", help="A name for the key (the till, the person) [default: the file's name].")
@as_json_option
def keys_enroll(public_key: str | None, role: str, label: str | None, as_json: bool) -> None:
    """Enroll PUBLIC_KEY (a PEM public or private key) on the box; without it, this host's own --key (the
    first operator key of a new box enrolls itself so)."""
    try:
        data = None if public_key is None else Path(public_key).read_bytes()
    except OSError as error:
        _fail(FiscalError("BOX_FILE", f"Cannot read {public_key}: {error.strerror}.", "public_key"))
    name = label or (Path(public_key).stem if public_key else "operator")

    def enroll(box: BoxClient) -> dict[str, Any]:
        return box.enroll_self(role, name) if data is None else box.enroll(data, role, name)

    _emit(_box(enroll), as_json, lambda e: f"enrolled {_entry_text(e)}")


@as_json_option
def keys_list(as_json: bool) -> None:
    """The host keys the box knows, revoked ones too."""
    _emit(
        _box(lambda box: box.keys()),
        as_json,
        lambda r: "\n".join(_entry_text(e) for e in r["keys"]) or "no host keys enrolled",
    )


@click.option("--out", type=click.Path(dir_okay=False), help="Write the PEM to this file too.")
@as_json_option
def keys_device(out: str | None, as_json: bool) -> None:
    """The box's device key (public half, PEM), from its status (any enrolled key, a POS key too, may read
    it): what `journal verify --cert` checks an export with."""
    key = _box(lambda box: link.device_public_key(box.status()))
    if key is None:
        _fail(
            FiscalError(
                "BOX_KEY_MISSING",
                "The box has no device key yet: it makes one when it is registered (`fiscalbox register`).",
            )
        )
    pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    if out is not None:
        try:
            Path(out).write_text(pem)
        except OSError as error:
            _fail(FiscalError("BOX_FILE", f"Cannot write {out}: {error.strerror}.", "out"))
    _emit({"public_key": pem}, as_json, lambda r: r["public_key"].rstrip("\n"))


@click.argument("kid")
@as_json_option
def keys_revoke(kid: str, as_json: bool) -> None:
    """Revoke key KID (as `keys list` shows it): the box refuses it from now on."""
    _emit(_box(lambda box: box.revoke(kid)), as_json, lambda e: f"revoked {_entry_text(e)}")


# ---------------------------------------------------------------------------------------------------------
# Setting up: provision, register, renew


def provision_values(document: dict[str, Any], base: Path) -> dict[str, Any]:
    """docs/box.toml's [device] and [fdms] identity as docs/link.md section 6's values."""
    device, fdms = document.get("device") or {}, document.get("fdms") or {}
    values: dict[str, Any] = {}
    for section, key, name in (
        (device, "id", "device_id"),
        (device, "serial", "serial"),
        (device, "model_name", "model_name"),
        (device, "model_version", "model_version"),
        (fdms, "url", "fdms_url"),
    ):
        if key in section:
            values[name] = section[key]
    if "ca_file" in fdms:
        ca = str(fdms["ca_file"])
        try:
            values["fdms_ca"] = (base / ca).read_text(encoding="utf-8") if ca else ""
        except (OSError, UnicodeDecodeError) as error:
            raise FiscalError("BOX_FILE", f"Cannot read the CA file {ca}: {error}.", "fdms.ca_file") from None
    if "currencies" in fdms:
        currencies = fdms["currencies"]
        if isinstance(currencies, str):
            currencies = [c.strip() for c in currencies.split(",") if c.strip()]
        values["currencies"] = currencies
    if not values:
        raise FiscalError("BOX_CONFIG", "The file has no [device] or [fdms] identity to provision.", "file")
    return values


@click.argument("file")
@as_json_option
def provision(file: str, as_json: bool) -> None:
    """Give the box its identity from FILE.toml ([device] id, serial, model; [fdms] url, ca_file,
    currencies, as in docs/box.toml). The activation key is not in it: `register` sends it."""
    path = Path(file)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
        values = provision_values(document, path.parent)
    except OSError as error:
        _fail(FiscalError("BOX_FILE", f"Cannot read {file}: {error.strerror}.", "file"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        _fail(FiscalError("BOX_CONFIG", f"{file} is not TOML: {error}.", "file"))
    except FiscalError as error:
        _fail(error)

    def text(r: dict[str, Any]) -> str:
        def value(v: Any) -> Any:
            return ", ".join(map(str, v)) if isinstance(v, list) else v  # USD, ZWG: not a Python list

        shown = {k: value(v) for k, v in r.items() if k != "fdms_ca"}
        return "provisioned: " + "; ".join(f"{k} {v}" for k, v in shown.items())

    _emit(_box(lambda box: box.provision(values)), as_json, text)


@click.option(
    "--activation-key-file",
    type=click.Path(dir_okay=False),
    help=f"A file holding the activation key ZIMRA gave [default: ${ACTIVATION_KEY_ENV}].",
)
@as_json_option
def register(activation_key_file: str | None, as_json: bool) -> None:
    """Register the box with FDMS. The activation key comes from $FISCALBOX_ACTIVATION_KEY or
    --activation-key-file, never from the command line (where others could read it)."""
    if activation_key_file is not None:
        try:
            key = Path(activation_key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            _fail(FiscalError("BOX_FILE", f"Cannot read {activation_key_file}: {error}.", "activation_key"))
    else:
        key = os.environ.get(ACTIVATION_KEY_ENV, "").strip()
    if not key:
        _fail(
            FiscalError(
                "BOX_USAGE",
                f"Give the activation key in ${ACTIVATION_KEY_ENV} or with --activation-key-file.",
                "activation_key",
            )
        )

    def text(r: dict[str, Any]) -> str:
        who = r.get("taxpayer") or "the taxpayer"
        return "\n".join([f"registered: {who}"] + _warnings(r))

    _emit(_box(lambda box: box.register(key)), as_json, text)


@as_json_option
def renew(as_json: bool) -> None:
    """Renew the device certificate now (a new device key; FDMS signs it)."""
    _emit(
        _box(lambda box: box.renew_certificate()),
        as_json,
        lambda r: f"certificate renewed, valid till {r.get('certificate_valid_till')}",
    )


# ---------------------------------------------------------------------------------------------------------
# The day: status, open and close, sales, reports, reprints, outbox


def _status_text(info: dict[str, Any]) -> str:
    if info.get("device_id") is None:
        lines = ["device not registered yet (`fiscalbox register`)"]
    else:
        lines = [
            f"device {info['device_id']} (serial {info.get('serial')}), last receipt {info['last_global_no']}"
        ]
    day = info.get("day")
    if day is None:
        lines.append("no day opened yet")
    else:
        line = f"day {day['day_no']} {day['status']}, {day['receipts']} receipts, opened {day['opened']}"
        lines.append(line + (f", ends {day['ends']}" if day["status"] == "FiscalDayOpened" else ""))
    lines.append(f"outbox: {_counts(info.get('outbox') or {})}; unprinted: {info.get('unprinted_count', 0)}")
    journal = info.get("journal") or {}
    if journal.get("clean") is False:
        lines.append("journal check: {code}: {message}".format(**journal["problems"][0]))
    for waiting in info.get("days_waiting") or []:
        lines.append(f"day {waiting['day_no']} {waiting['status']}")
    return "\n".join(lines + _warnings(info))


@as_json_option
def status(as_json: bool) -> None:
    """The box's state: the day, the last receipt, what waits for FDMS and the printer, warnings."""
    info = _box(lambda box: box.status())
    _emit(info, as_json, _status_text)
    sys.exit(1 if (info.get("journal") or {}).get("clean") is False else 0)


def day_group() -> None:
    """Open and close the fiscal day."""


@as_json_option
def day_open(as_json: bool) -> None:
    """Open the next fiscal day (the box fetches FDMS's latest taxes first when it can)."""

    def text(r: dict[str, Any]) -> str:
        return "\n".join([f"day {r['day_no']} opened {r['opened']}, ends {r['ends']}"] + _warnings(r))

    _emit(_box(lambda box: box.open_day()), as_json, text)


@as_json_option
def day_close(as_json: bool) -> None:
    """Close the fiscal day: the box signs its counters and delivers the close to FDMS."""
    _emit(
        _box(lambda box: box.close_day()),
        as_json,
        lambda r: (
            f"day {r.get('fiscalDayNo')} closed with "
            f"{counted(int(r.get('receiptCounter') or 0), 'receipts')}; the box sends the close to FDMS"
        ),
    )


def _sale_text(r: dict[str, Any]) -> str:
    lines = [
        f"receipt {r['global_no']}: {r['type']} {r['currency']} {r['total']} "
        f"(day {r['day_no']}, receipt {r['counter']} of the day), {r['date']}",
        f"verification code {r['verification_code']}, QR {r['qr_url']}",
    ]
    if r.get("repeated"):
        lines.append("issued before under this request ID: the same receipt, nothing new was issued")
    if r.get("printed") is False:
        lines.append("not printed")
    return "\n".join(lines + _warnings(r))


@click.argument("file")
@click.option("--request-id", help="The POS's ID for this sale; the same ID again never issues twice.")
@as_json_option
def sale(file: str, request_id: str | None, as_json: bool) -> None:
    """Issue a receipt for the sale in FILE (- for standard input), the POS's JSON of docs/sale.md.
    Without --request-id one is made and shown: give it to retry a sale whose answer was lost."""
    from host_tools.cli import _read

    try:
        body = _read(file)
    except FiscalError as error:
        _fail(error)
    rid = request_id or link.new_request_id()
    if request_id is None and not as_json:
        click.echo(f"request ID {rid}", err=True)
    connection = click.get_current_context().find_object(Connection)
    assert connection is not None
    try:
        result = connection.client().issue(body, rid)
    except FiscalError as error:
        if error.code in ("BOX_LINK_TIMEOUT", "BOX_LINK_PORT"):
            error = FiscalError(
                error.code,
                f"{error.message} The sale may have been issued: send it again with --request-id {rid} "
                "(it is never issued twice).",
                error.field,
            )
        _fail(error)
    _emit({**result, "request_id": rid}, as_json, _sale_text)


def _report_text(r: dict[str, Any]) -> str:
    lines = [
        f"day {r['day_no']} ({r['status']}), opened {r['opened']}: {r['receipts']} receipts, at {r['at']}"
    ]
    lines += [
        f"  {d['type']} {d['currency']}: {d['count']}, total {d['total']}" for d in r.get("documents", [])
    ]
    for c in r.get("counters", []):
        sub = c.get("fiscalCounterMoneyType") or c.get("fiscalCounterTaxID", "")
        percent = c.get("fiscalCounterTaxPercent")
        lines.append(
            f"  {c['fiscalCounterType']} {c['fiscalCounterCurrency']} {sub}"
            + (f" {percent}%" if percent is not None else "")
            + f": {c['fiscalCounterValue']}"
        )
    return "\n".join(lines)


@click.argument("kind", type=_OneOf(["x", "z"]))
@click.argument("day", type=_Whole("a fiscal day number"), required=False)
@click.option("--print", "to_printer", is_flag=True, help="Print it on the box's printer.")
@as_json_option
def report(kind: str, day: int | None, to_printer: bool, as_json: bool) -> None:
    """`report x`: the open day so far; `report z DAY`: closed day DAY's final figures."""
    if kind == "z" and day is None:
        _fail(FiscalError("BOX_USAGE", "Give the day: `report z DAY`."))
    if kind == "x" and day is not None:
        _fail(FiscalError("BOX_USAGE", "The X report is of the open day: `report x`, without a day."))
    if to_printer:
        _emit(
            _box(lambda box: box.print_report(day)),
            as_json,
            lambda r: f"printed the {r.get('title', 'report')} of day {r.get('day_no')}",
        )
        return
    figures = _box(lambda box: box.x_report() if day is None else box.z_report(day))
    _emit(figures, as_json, _report_text)


@click.argument("global_no", type=RECEIPT_NO, required=False)
@click.option("--unprinted", is_flag=True, help="Print every receipt that has no finished print yet.")
@as_json_option
def reprint(global_no: int | None, unprinted: bool, as_json: bool) -> None:
    """Print receipt GLOBAL_NO again (marked COPY), or every unprinted receipt."""
    if (global_no is None) == (not unprinted):
        _fail(FiscalError("BOX_USAGE", "Give either a receipt number or --unprinted."))
    if global_no is not None:
        _emit(
            _box(lambda box: box.reprint(global_no)),
            as_json,
            lambda r: f"printed receipt {r['global_no']}" + (" as COPY" if r.get("copy") else ""),
        )
        return
    result = _box(lambda box: box.print_unprinted())

    def text(r: dict[str, Any]) -> str:
        printed = r["printed"]  # over the link: {"count", "first", "last"} (docs/link.md section 3)
        line = f"printed {printed['count'] if isinstance(printed, dict) else len(printed)} receipts"
        if r.get("stopped_at") is not None:
            line += f", stopped at receipt {r['stopped_at']}"
        return line + (f"; {r['remaining']} still unprinted" if r.get("remaining") else "")

    _emit(result, as_json, text)
    if result.get("error"):
        _fail(
            FiscalError(
                result["error"]["code"], f"Receipt {result['stopped_at']}: {result['error']['message']}"
            )
        )


@click.option("--limit", type=_Whole("--limit"), default=20, show_default=True, help="How many to list.")
@as_json_option
def outbox(limit: int, as_json: bool) -> None:
    """What waits for FDMS: the outbox by state, the oldest receipts waiting, what FDMS flagged."""

    def text(info: dict[str, Any]) -> str:
        lines = [f"outbox: {_counts(info['counts'])}"]
        lines += [
            f"  waiting: #{r['global_no']} day {r['day_no']} {r['date']} {r['type']} "
            f"{r['currency']} {r['total']}"
            for r in info.get("oldest_pending", [])
        ]
        lines += [
            f"  flagged: #{f['global_no']} " + ", ".join(f"{e['code']} {e['colour']}" for e in f["errors"])
            for f in info.get("flagged", [])
        ]
        lines += [f"  day {d['day_no']} {d['status']}" for d in info.get("days_waiting", [])]
        problem = info.get("problem")
        if problem:
            lines.append(f"  delivery: {problem['code']}: {problem['message']}")
        return "\n".join(lines)

    _emit(_box(lambda box: box.outbox(limit)), as_json, text)


# ---------------------------------------------------------------------------------------------------------
# The journal: audit, backup, export, replay


@as_json_option
def audit(as_json: bool) -> None:
    """Verify the box's whole journal: exit 0 clean, 1 problems found."""
    with _progress(as_json, "auditing", "receipts") as progress:
        report_ = _box(lambda box: box.audit(progress))

    def text(r: dict[str, Any]) -> str:
        checked = r.get("checked") or {}
        numbers = [counted(n, what) for what, n in checked.items() if type(n) is int]
        head = f"{'clean' if r['clean'] else 'PROBLEMS FOUND'}: " + ", ".join(numbers) + " checked"
        shown = r["problems"][:10]
        lines = [head] + [f"  {p['code']}: {p['message']}" for p in shown]
        more = int(r.get("problems_total", len(r["problems"]))) - len(shown)  # the link carries the first
        if more > 0:
            lines.append(
                f"  {counted(more, 'more_problems')}: run `fiscalbox-device audit` on the box, or `fiscalbox "
                "journal export` and `fiscalbox journal verify` here, for all of them"
            )
        return "\n".join(lines)

    _emit(report_, as_json, text)
    sys.exit(0 if report_.get("clean") else 1)


@click.option("--retain", type=_Whole("--retain"), help="Keep only the newest N backups on the box.")
@as_json_option
def backup(retain: int | None, as_json: bool) -> None:
    """Back the journal up on the box (its configured backup folder), with a signed manifest."""
    with _progress(as_json, "backing up") as progress:
        result = _box(lambda box: box.backup(progress, retain))
    _emit(result, as_json, lambda r: f"backup {r.get('file')}, manifest {r.get('manifest_file')}")


@click.argument("first", type=RECEIPT_NO)
@click.argument("last", type=RECEIPT_NO)
@click.argument("out", type=click.Path(dir_okay=False))
@as_json_option
def journal_export(first: int, last: int, out: str, as_json: bool) -> None:
    """Fetch receipts FIRST..LAST from the box as a signed export file OUT (resumes after a pulled cable);
    then check it offline with `fiscalbox journal verify OUT --cert DEVICE.pem`."""
    with _progress(as_json, "exporting", "bytes") as progress:
        result = _box(lambda box: box.export_journal(first, last, out, progress))
    _emit(
        result, as_json, lambda r: f"exported receipts {first}..{last} to {r['file']} ({r['size']:,} bytes)"
    )


@click.option("--since", type=_Whole("--since", 0), required=True, help="Days back to send again.")
@as_json_option
def replay(since: int, as_json: bool) -> None:
    """Queue the receipts of the last SINCE days for FDMS again (after FDMS lost them)."""
    _emit(_box(lambda box: box.replay(since)), as_json, lambda r: f"queued {r['queued']} for FDMS again")


def add_to(main: click.Group, journal: click.Group) -> None:
    """Put the link commands on the `fiscalbox` group (and `export` beside `journal verify`)."""
    keys = main.group("keys")(keys_group)
    for name, command in (
        ("new", keys_new),
        ("enroll", keys_enroll),
        ("list", keys_list),
        ("revoke", keys_revoke),
        ("device", keys_device),
    ):
        keys.command(name)(command)
    day = main.group("day")(day_group)
    day.command("open")(day_open)
    day.command("close")(day_close)
    commands: list[tuple[str, Callable[..., None]]] = [
        ("provision", provision),
        ("register", register),
        ("renew", renew),
        ("status", status),
        ("sale", sale),
        ("report", report),
        ("reprint", reprint),
        ("outbox", outbox),
        ("audit", audit),
        ("backup", backup),
        ("replay", replay),
    ]
    for name, command in commands:
        main.command(name)(command)
    journal.command("export")(journal_export)
