"""`fiscalbox-device`: the box's runtime entry point and the composition root.

The concrete drivers (which key store, later which printer and port) are chosen here and nowhere else.
For now the box can be given its identity: a key made inside the key store, the certificate request FDMS
expects, and the certificate it returns.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from cryptography import x509

from firmware import config as configuration
from firmware.core import fdms
from firmware.core.errors import FiscalError
from hardware import ECDSA_P256, RSA_2048, KeyStore
from hardware.keystores import FileKeyStore, Pkcs11KeyStore

ALGORITHM_NAMES = {"ecdsa": ECDSA_P256, "rsa": RSA_2048}
T = TypeVar("T")


def build_key_store(cfg: configuration.Config, environ: Mapping[str, str]) -> KeyStore:
    """The key store the configuration names, opened (a token store logs in once and stays open)."""
    keys = cfg.keys
    if keys["store"] == "file":
        return FileKeyStore(keys["directory"], cfg.secret("keys", "passphrase_env", environ).encode())
    if keys["store"] == "pkcs11":
        return Pkcs11KeyStore(
            keys["pkcs11_module"],
            keys["token_label"],
            cfg.secret("keys", "pin_env", environ),
            keys["key_label"],
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


@click.group()
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


def _with_store(cfg: configuration.Config, action: Callable[[KeyStore], T]) -> T:
    """Open the configured key store, run `action`, close it; a refusal becomes one line and exit 2."""
    try:
        with closing(build_key_store(cfg, os.environ)) as store:
            return action(store)
    except FiscalError as error:
        _fail(error)


@key.command("generate")
@click.option("--algorithm", type=click.Choice(sorted(ALGORITHM_NAMES)), default="ecdsa", show_default=True)
@click.option("--replace", is_flag=True, help="Replace an existing key (its certificate goes with it).")
@click.pass_obj
def key_generate(cfg: configuration.Config, algorithm: str, replace: bool) -> None:
    """Make the device key pair inside the key store; prints its public key."""

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
    """The key's algorithm and public key, and the certificate's subject and validity when there is one."""
    info = _with_store(cfg, lambda store: _describe(store, cfg.keys["store"]))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"key store: {info['store']}\nalgorithm: {info['algorithm'] or 'no key yet'}")
    cert = info.get("certificate")
    if cert:
        click.echo(f"certificate: {cert['subject']}, valid till {cert['valid_till']}")
    else:
        click.echo("certificate: none installed")


if __name__ == "__main__":
    main()
