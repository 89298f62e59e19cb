"""`fiscalbox-device hosts enroll|list|revoke`: the host keys kept on the box, changed on the box itself, the
way back in for a registered box whose hosts file is lost or damaged (docs/link.md section 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from firmware import config as configuration
from firmware.core.errors import FiscalError
from firmware.hosts import HostKeys
from firmware.main import main
from firmware.service import ServiceLock


def write_config(root: Path) -> str:
    path = root / "box.toml"
    path.write_text(
        f'[keys]\ndirectory = "{root / "keys"}"\n\n'
        f'[journal]\npath = "{root / "journal.db"}"\nanchor = "{root / "anchor.json"}"\n\n'
        f'[box]\nprovisioned = "{root / "provisioned.json"}"\n\n'
        f'[link]\nport = ""\nhosts = "{root / "hosts.json"}"\n'
    )
    return str(path)


def public_pem(root: Path, name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    path = root / f"{name}.pub"
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


def run(config: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", config, "hosts", *args])


def test_keys_are_enrolled_listed_and_revoked_on_the_box(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    office_pem = public_pem(tmp_path, "office")
    made = run(config, "enroll", office_pem, "--role", "operator", "--label", "office", "--json")
    assert made.exit_code == 0, made.output
    office = json.loads(made.stdout)
    assert office["role"] == "operator" and office["label"] == "office"
    till = json.loads(run(config, "enroll", public_pem(tmp_path, "till"), "--role", "pos", "--json").stdout)
    listed = json.loads(run(config, "list", "--json").stdout)["keys"]
    assert [k["kid"] for k in listed] == [office["kid"], till["kid"]]
    assert HostKeys(tmp_path / "hosts.json").has_operator()  # the file the service's link reads
    revoked = run(config, "revoke", till["kid"])
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    last = run(config, "revoke", office["kid"])
    assert last.exit_code == 2 and last.stderr.startswith("error BOX_LINK_LAST_OPERATOR: ")
    bad = run(config, "enroll", config, "--role", "pos")  # not a key
    assert bad.exit_code == 2 and bad.stderr.startswith("error BOX_LINK_KEY: ")


def test_a_damaged_hosts_file_says_how_to_recover_and_enroll_recovers(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    hosts = tmp_path / "hosts.json"
    hosts.write_text("{not json")
    listed = run(config, "list")
    assert listed.exit_code == 2 and listed.stderr.startswith("error BOX_HOSTS: ")
    assert "fiscalbox-device hosts enroll PEM --role operator" in listed.stderr
    made = run(config, "enroll", public_pem(tmp_path, "office"), "--role", "operator", "--json")
    assert made.exit_code == 0, made.output
    assert (tmp_path / "hosts.json.damaged").read_text() == "{not json"
    assert [e["kid"] for e in HostKeys(hosts).entries()] == [json.loads(made.stdout)["kid"]]


def test_hosts_commands_are_refused_while_the_service_runs(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    lock = ServiceLock(configuration.load(config))
    try:
        enroll = ["enroll", public_pem(tmp_path, "x"), "--role", "operator"]
        for args in (enroll, ["list"], ["revoke", "00" * 16]):
            refused = run(config, *args)
            assert refused.exit_code == 2 and refused.stderr.startswith("error BOX_BUSY: "), refused.output
    finally:
        lock.release()
    assert not (tmp_path / "hosts.json").exists()


def test_the_damaged_file_message_names_the_recovery_command(tmp_path: Path) -> None:
    (tmp_path / "hosts.json").write_text("[]")
    with pytest.raises(FiscalError) as damaged:
        HostKeys(tmp_path / "hosts.json")
    assert damaged.value.code == "BOX_HOSTS" and "fiscalbox-device hosts enroll" in damaged.value.message
