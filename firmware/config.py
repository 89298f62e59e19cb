"""The box's configuration: one TOML file, with environment overrides for what differs per install.

`FISCALBOX_<SECTION>_<KEY>` overrides `[section] key` (e.g. FISCALBOX_KEYS_STORE=pkcs11), so a service unit
or a test can change one setting without editing the file. Secrets are never in the file: it names the
environment variables that hold them (the key passphrase, the token PIN).
"""

from __future__ import annotations

import json
import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography import x509

from firmware.core.errors import FiscalError

DEFAULTS: dict[str, dict[str, Any]] = {
    "device": {"id": 0, "serial": "", "model_name": "fiscalbox", "model_version": "1.0"},
    "keys": {
        "store": "file",
        "directory": "/var/lib/fiscalbox/keys",
        "passphrase_env": "FISCALBOX_KEY_PASSPHRASE",
        "pkcs11_module": "/usr/lib/softhsm/libsofthsm2.so",
        "token_label": "fiscal",
        "pin_env": "FISCALBOX_TOKEN_PIN",
        "key_label": "fiscalbox-device",
    },
    "journal": {
        "path": "/var/lib/fiscalbox/journal.db",
        "anchor": "/var/lib/fiscalbox/anchor.json",
    },
    # provisioned: the identity an operator sent over the link (docs/link.md section 6), overlaid on
    # [device] and [fdms]; the CA PEM it carries lives beside it (provisioned_ca_path)
    "box": {
        "zone": "Africa/Harare",
        "day_warn_minutes": 60,
        "provisioned": "/var/lib/fiscalbox/provisioned.json",
    },
    # model "" means no printer; models are hardware.printers.PROFILES (serial or USB-serial ports)
    "printer": {"model": "", "port": "/dev/ttyUSB0", "baud": 19200, "adafruit_firmware": "2.68"},
    # url "" means no FDMS connection (the box issues and queues; delivery waits)
    "fdms": {
        "url": "",
        "ca_file": "",
        "activation_key_env": "FISCALBOX_ACTIVATION_KEY",
        "currencies": "USD,ZWG",
        "renew_days_before": 30,
        "timeout_seconds": 30,
    },
    # the service's USB link (docs/link.md); port "" means none (the service runs without a link)
    "link": {"port": "/dev/ttyGS0", "baud": 115200, "hosts": "/var/lib/fiscalbox/hosts.json"},
    # the service's daily backup at local time `at` ("HH:MM"; "" means none), into `dir`, keeping `retain`
    "backup": {"at": "03:00", "dir": "/var/lib/fiscalbox/backups", "retain": 7},
}
# Keys that moved: an old configuration naming them is told where they went.
MOVED = {"journal.backup_dir": ("backup", "dir"), "journal.retain": ("backup", "retain")}
# The identity `provision` writes: each field and the setting it stands for.
IDENTITY = {
    "device_id": ("device", "id"),
    "serial": ("device", "serial"),
    "model_name": ("device", "model_name"),
    "model_version": ("device", "model_version"),
    "fdms_url": ("fdms", "url"),
    "fdms_ca": ("fdms", "ca_file"),
    "currencies": ("fdms", "currencies"),
}

# Settings where "" means none (no serial yet, no printer, no FDMS connection, the system's CAs); any other
# setting left empty (an empty FISCALBOX_* variable) would name the current folder or nothing at all.
MAY_BE_EMPTY = {"device.serial", "printer.model", "fdms.url", "fdms.ca_file", "link.port", "backup.at"}
# The whole numbers each numeric setting may take: beyond them a value names nothing the box can use.
RANGES: dict[str, tuple[int, int]] = {
    "device.id": (0, 9_999_999_999),  # FDMS device IDs have at most 10 digits (certificate name, QR code)
    "backup.retain": (1, 100_000),
    "link.baud": (1, 4_000_000),
    "box.day_warn_minutes": (0, 48 * 60),
    "printer.baud": (1, 4_000_000),
    "fdms.renew_days_before": (0, 3650),
    "fdms.timeout_seconds": (1, 3600),
}


@dataclass(frozen=True)
class Config:
    """The settings in force, as plain values, each section a dict."""

    device: dict[str, Any]
    keys: dict[str, Any]
    journal: dict[str, Any]
    box: dict[str, Any]
    printer: dict[str, Any]
    fdms: dict[str, Any]
    link: dict[str, Any]
    backup: dict[str, Any]

    def secret(self, section: str, env_key: str, environ: Mapping[str, str]) -> str:
        """The secret held in the environment variable the config names; refused clearly when absent."""
        name = getattr(self, section)[env_key]
        value = environ.get(name)
        if not value:
            raise FiscalError("BOX_CONFIG", f"Set the environment variable {name} ({section}.{env_key}).")
        return value


def _coerce(value: str, like: Any, where: str) -> Any:
    if isinstance(like, bool):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise FiscalError("BOX_CONFIG", f"{where} must be true or false.", where)
        return value.lower() in ("true", "1", "yes")
    if isinstance(like, int):
        digits = value[1:] if value.startswith("-") else value
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 30:
            raise FiscalError("BOX_CONFIG", f"{where} must be a whole number.", where)
        return int(value)
    return value


def load(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the file (if given), then the environment; unknown keys and wrong types are refused."""
    environ = os.environ if environ is None else environ
    merged = {section: dict(values) for section, values in DEFAULTS.items()}
    if path is not None and str(path) == "":
        raise FiscalError(
            "BOX_CONFIG", "The configuration path is empty: give the file with --config or FISCALBOX_CONFIG."
        )
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise FiscalError(
                "BOX_CONFIG", f"Cannot read the configuration {path}: {error.strerror}."
            ) from None
        except UnicodeDecodeError:
            raise FiscalError("BOX_CONFIG", f"The configuration {path} is not UTF-8 text.") from None
        except tomllib.TOMLDecodeError as error:
            raise FiscalError("BOX_CONFIG", f"The configuration {path} is not valid TOML: {error}.") from None
        for section, values in data.items():
            if section not in merged:
                known = ", ".join(f"[{name}]" for name in DEFAULTS)
                raise FiscalError(
                    "BOX_CONFIG",
                    f"Unknown configuration section [{section}]; the sections are {known}.",
                    section,
                )
            if not isinstance(values, dict):
                raise FiscalError(
                    "BOX_CONFIG",
                    f"{section} must be a section ([{section}] followed by its keys), not a single value.",
                    section,
                )
            for key, value in values.items():
                where = f"{section}.{key}"
                if where in MOVED:
                    raise FiscalError(
                        "BOX_CONFIG",
                        "{} has moved: write it as [{}] {} instead.".format(where, *MOVED[where]),
                        where,
                    )
                if key not in merged[section]:
                    raise FiscalError("BOX_CONFIG", f"Unknown configuration key {where}.", where)
                if type(value) is not type(DEFAULTS[section][key]):
                    kind = type(DEFAULTS[section][key]).__name__
                    raise FiscalError("BOX_CONFIG", f"{where} must be of type {kind}.", where)
                merged[section][key] = value
    provisioned = environ.get("FISCALBOX_BOX_PROVISIONED", merged["box"]["provisioned"])
    for (section, key), value in _identity_settings(read_identity(provisioned), provisioned).items():
        merged[section][key] = value
    for section, values in merged.items():
        for key in values:
            name = f"FISCALBOX_{section.upper()}_{key.upper()}"
            if name in environ:
                values[key] = _coerce(environ[name], DEFAULTS[section][key], f"{section}.{key}")
    _check_override_names(environ)
    _check_values(merged)
    _check_zone(merged["box"]["zone"])
    _check_time(merged["backup"]["at"])
    return Config(**merged)


def provisioned_ca_path(provisioned: str | os.PathLike[str]) -> Path:
    """Where the FDMS CA certificates a provisioning sent are kept: beside the identity file."""
    path = Path(provisioned)
    return path.with_name(path.stem + "-fdms-ca.pem")


def read_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The provisioned identity ({} when the box was never provisioned over the link), checked as
    `provision` checks it (its FDMS address excepted: a bad one is the running box's warning, not a stop)."""
    damaged = f"The provisioned identity {path} is damaged"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise FiscalError(
            "BOX_CONFIG", f"Cannot read the provisioned identity {path}: {error.strerror}.", "box.provisioned"
        ) from None
    except UnicodeDecodeError:
        raise FiscalError(
            "BOX_CONFIG", f"{damaged} (not UTF-8 text): provision the box again.", "box.provisioned"
        ) from None
    try:
        identity = json.loads(text)
    except (ValueError, RecursionError):
        identity = None
    if not isinstance(identity, dict) or not set(identity) <= set(IDENTITY):
        raise FiscalError("BOX_CONFIG", f"{damaged}: provision the box again.", "box.provisioned")
    try:
        check_identity(identity, in_file=True)
    except FiscalError as error:
        raise FiscalError(
            "BOX_CONFIG", f"{damaged}: {error.message} Provision the box again.", "box.provisioned"
        ) from None
    return identity


def check_identity(values: Any, in_file: bool = False) -> dict[str, Any]:
    """The identity fields `provision` takes, each checked (BOX_SETTINGS naming the field). `in_file`: as
    the identity file holds them (the CA as the path of its file, the FDMS address any text)."""
    if not isinstance(values, dict):
        raise FiscalError("BOX_SETTINGS", "The identity must be a map of its fields.", "values")
    checked: dict[str, Any] = {}
    for name, value in values.items():
        if name not in IDENTITY:
            raise FiscalError(
                "BOX_SETTINGS",
                f"Unknown identity field {str(name)[:40]}; the fields are {', '.join(IDENTITY)}.",
                str(name)[:40],
            )
        if name == "device_id":
            ok = type(value) is int and 1 <= value <= 9_999_999_999
            rule = "a whole number from 1 to 9999999999 (the device ID ZIMRA gave)"
        elif name == "currencies":
            ok = (
                isinstance(value, list)
                and len(value) > 0
                and all(isinstance(c, str) and len(c) == 3 and c.isascii() and c.isupper() for c in value)
            )
            rule = 'a list of 3-letter currency codes, such as ["USD", "ZWG"]'
        elif name == "fdms_url":
            ok = isinstance(value, str) and (in_file or value == "" or is_fdms_url(value))
            rule = "FDMS's address as https://host or https://host:port, or empty for no connection"
        elif name == "fdms_ca":
            ok = isinstance(value, str) and (in_file or value == "" or _is_certificates(value))
            rule = "PEM text of CA certificates, or empty for the system's CAs"
        else:
            ok = isinstance(value, str) and 0 < len(value) <= 100 and value.isprintable()
            rule = "text of 1 to 100 characters"
        if not ok:
            raise FiscalError("BOX_SETTINGS", f"{name} must be {rule}.", name)
        checked[name] = value
    return checked


def is_fdms_url(url: str) -> bool:
    """An https:// address with a host and a valid port (FDMS accepts nothing else)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    plain = not (parts.query or parts.fragment or parts.username or parts.password)
    return parts.scheme == "https" and bool(parts.hostname) and plain and port != 0


def _is_certificates(pem: str) -> bool:
    try:
        return bool(x509.load_pem_x509_certificates(pem.encode()))
    except ValueError:
        return False


def with_identity(cfg: Config, identity: dict[str, Any], path: str, environ: Mapping[str, str]) -> Config:
    """`cfg` with a provisioned `identity` (as its file holds it) in force, as `load` would give it: an
    environment override still wins."""
    merged = {section: dict(getattr(cfg, section)) for section in DEFAULTS}
    for (section, key), value in _identity_settings(identity, path).items():
        if f"FISCALBOX_{section.upper()}_{key.upper()}" not in environ:
            merged[section][key] = value
    return Config(**merged)


def _identity_settings(identity: dict[str, Any], path: str) -> dict[tuple[str, str], Any]:
    """The settings a provisioned identity stands for (the CA as the file holding it, or "")."""
    settings: dict[tuple[str, str], Any] = {}
    for name, value in identity.items():
        if name == "currencies" and isinstance(value, list) and all(isinstance(c, str) for c in value):
            value = ",".join(value)
        section, key = IDENTITY[name]
        if type(value) is not type(DEFAULTS[section][key]):
            raise FiscalError(
                "BOX_CONFIG",
                f"The provisioned identity {path} is damaged ({name}): provision the box again.",
                "box.provisioned",
            )
        settings[section, key] = value
    return settings


def _check_time(at: str) -> None:
    """A daily local time HH:MM, or "" for none."""
    hours, _, minutes = at.partition(":")
    if at and not (
        len(hours) == 2 == len(minutes)
        and (hours + minutes).isdigit()
        and int(hours) < 24
        and int(minutes) < 60
    ):
        raise FiscalError(
            "BOX_CONFIG",
            f"backup.at {at!r} must be a local time HH:MM (such as 03:00), or empty.",
            "backup.at",
        )


def _check_override_names(environ: Mapping[str, str]) -> None:
    """An override naming a section but no key of it is a typo (FISCALBOX_JOURNAL_PTH): refused, as the same
    typo in the file is, rather than silently ignored."""
    for name in environ:
        for section, keys in DEFAULTS.items():
            prefix = f"FISCALBOX_{section.upper()}_"
            where = f"{section}.{name[len(prefix) :].lower()}"
            if name.startswith(prefix) and where in MOVED:
                raise FiscalError(
                    "BOX_CONFIG",
                    "{} has moved: set FISCALBOX_{}_{} instead.".format(
                        name, *(n.upper() for n in MOVED[where])
                    ),
                    where,
                )
            if name.startswith(prefix) and name[len(prefix) :].lower() not in keys:
                known = ", ".join(prefix + key.upper() for key in keys)
                raise FiscalError(
                    "BOX_CONFIG",
                    f"Unknown configuration override {name}; [{section}] has {known}.",
                    f"{section}.{name[len(prefix) :].lower()}",
                )


def _check_values(merged: dict[str, dict[str, Any]]) -> None:
    """Refuse an empty text setting that must name something, and a number out of its range."""
    for section, values in merged.items():
        for key, value in values.items():
            where = f"{section}.{key}"
            if value == "" and where not in MAY_BE_EMPTY:
                raise FiscalError("BOX_CONFIG", f"{where} is empty: give it a value or leave it out.", where)
            if where in RANGES:
                low, high = RANGES[where]
                if not low <= value <= high:
                    raise FiscalError(
                        "BOX_CONFIG", f"{where} must be a whole number from {low} to {high:,}.", where
                    )


def _check_zone(zone: str) -> None:
    """The box's time zone must be one the system knows (its local times are FDMS's receipt dates)."""
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise FiscalError(
            "BOX_CONFIG",
            f"box.zone {zone!r} is not a time zone this system knows; use a name such as Africa/Harare or "
            "Africa/Nairobi.",
            "box.zone",
        ) from None
