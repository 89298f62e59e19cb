"""The Device (what the link operates) before and after registration, against the FDMS simulator: every
operation answers what the one-shot `--json` command prints."""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from service_rig import write_config  # the service tests' box.toml

from firmware import config as configuration
from firmware.core.errors import FiscalError
from firmware.main import main
from firmware.service import Device, SystemClock
from hardware.signatures import load_public_key
from sim.fdms.scenario import Scenario
from sim.fdms.server import FdmsSimulator
from sim.shop import Shop

PASSPHRASE = "service pass phrase"
ENV = {"FISCALBOX_KEY_PASSPHRASE": PASSPHRASE}
DEVICE_ID = 10001


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[FdmsSimulator]:
    with FdmsSimulator(Scenario.default(), state_dir=tmp_path / "fdms") as running:
        yield running


def identity(sim: FdmsSimulator) -> dict[str, Any]:
    device = sim.scenario.device(DEVICE_ID)
    assert device is not None
    return {
        "device_id": DEVICE_ID,
        "serial": device.serial,
        "fdms_url": sim.url,
        "fdms_ca": Path(sim.ca_cert_path).read_text(),
        "currencies": ["USD", "ZWG"],
    }


def certificate_for(public_key: Any) -> str:
    """A certificate for `public_key`, issued by a throwaway CA (PEM text)."""
    issuer = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ZIMRA-test")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(issuer, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def one_shot(path: str, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--config", path, *args], env=ENV)
    return result


def test_a_device_is_provisioned_keyed_and_registered_then_sells(
    tmp_path: Path, sim: FdmsSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(tmp_path)
    device = Device(configuration.load(path, ENV), ENV, SystemClock())
    try:
        assert not device.registered
        status = device.status()
        assert status["device_id"] is None and status["warnings"][0]["code"] == "BOX_NOT_PROVISIONED"
        assert set(status) == {
            "device_id", "serial", "last_global_no", "day", "outbox", "unprinted", "unprinted_count",
            "journal", "fdms", "warnings", "days_waiting", "device_key",
        }  # fmt: skip
        with pytest.raises(FiscalError) as refused:
            device.open_day()
        assert refused.value.code == "BOX_NOT_PROVISIONED"
        assert device.sign_answer(b"x") is None  # no key yet: answers go unsigned
        with pytest.raises(FiscalError) as refused:
            device.certificate_request()
        assert refused.value.code == "BOX_CONFIG"  # no identity yet

        with pytest.raises(FiscalError) as refused:
            device.provision({"device_id": "10001"})
        assert (refused.value.code, refused.value.field) == ("BOX_SETTINGS", "device_id")
        with pytest.raises(FiscalError) as refused:
            device.provision({"activation_key": "SECRET"})
        assert refused.value.field == "activation_key"
        assert not (tmp_path / "provisioned.json").exists()  # a refusal writes nothing
        in_force = device.provision(identity(sim))
        assert in_force["device_id"] == DEVICE_ID and in_force["fdms_ca"] == identity(sim)["fdms_ca"]
        assert in_force["model_name"] == "fiscalbox"  # what was not sent stays as configured
        # the one-shot commands see the provisioned identity too
        assert configuration.load(path, {}).device["id"] == DEVICE_ID

        key = device.generate_key("ecdsa")
        assert key["algorithm"] == "ECDSA_P256" and "PUBLIC KEY" in key["public_key"]
        assert "CERTIFICATE REQUEST" in device.certificate_request()["csr"]
        alg, signature = device.sign_answer(b"payload") or (0, b"")
        assert alg == -7 and len(signature) == 64
        public = load_public_key(key["public_key"].encode())
        der = encode_dss_signature(int.from_bytes(signature[:32]), int.from_bytes(signature[32:]))
        public.verify(der, b"payload", ec.ECDSA(hashes.SHA256()))

        with pytest.raises(FiscalError):
            device.install_certificate(certificate_for(ec.generate_private_key(ec.SECP256R1()).public_key()))
        installed = device.install_certificate(certificate_for(public))
        assert installed["subject"] == "CN=ZIMRA-test" and installed["valid_till"].endswith("Z")

        registered = device.register(sim.activation_keys[DEVICE_ID])
        assert device.registered and registered["taxpayer"] == sim.scenario.taxpayer.name
        assert (tmp_path / "journal.db").exists()
        activation_key = sim.activation_keys[DEVICE_ID]
        for stored in tmp_path.glob("*.json"):
            assert activation_key not in stored.read_text()

        with pytest.raises(FiscalError) as refused:
            device.provision({"device_id": DEVICE_ID + 1})
        assert (refused.value.code, refused.value.field) == ("BOX_SETTINGS", "device_id")
        with pytest.raises(FiscalError) as refused:
            device.provision({"serial": "SOMEONE-ELSE"})
        assert refused.value.field == "serial"
        with pytest.raises(FiscalError) as refused:
            device.provision({"fdms_url": ""})
        assert refused.value.field == "fdms_url"
        assert device.provision({"model_version": "1.1"})["model_version"] == "1.1"

        device.open_day()
        shop = Shop(seed=1, device_id=DEVICE_ID)
        for _ in range(3):
            sale = shop.next_sale()
            shop.issued(sale, device.issue(sale))
        assert device.status()["last_global_no"] == 3
        assert device.receipt(2)["global_no"] == 2
        assert device.outbox(2)["counts"] == {"pending": 3}
        assert device.x_report()["day_no"] == 1
        device.close_day()
        assert "note" in device.x_report()  # no day open: the last day's report, and it says so
        backup = device.backup(None)
        assert Path(backup["file"]).parent == tmp_path / "backups"
        exported = device.export_journal(1, 3, tmp_path / "out.export", None)
        assert exported["first"] == 1 and (tmp_path / "out.export").exists()
        assert device.audit(None)["clean"]
        assert device.delivery is not None
        device.delivery.run_until_idle(max_wait=60)
        with pytest.raises(FiscalError) as refused:
            device.replay(0)
        assert refused.value.field == "since"
        with caplog.at_level(logging.INFO, logger="fiscalbox.device"):
            assert device.replay(1) == {"queued": 3, "first_day": 1, "last_day": 1}
            device._threads[-1].join(timeout=120)
        done = [r for r in caplog.records if r.getMessage() == "replay done"]
        assert done and done[0].fields == {"sent": 3, "of": 3, "differed": []}  # type: ignore[attr-defined]
        assert device.outbox(20)["counts"] == {"delivered": 3}  # nothing changed in the journal
        answers = {
            "status": device.status(),
            "receipt": device.receipt(2),
            "outbox": device.outbox(20),
            "report": device.x_report(),
        }
    finally:
        device.close()

    # the same JSON as the one-shot commands print
    for command, args in (("status", []), ("receipt", ["2"]), ("outbox", []), ("report", [])):
        result = one_shot(path, command, *args, "--json")
        assert result.exit_code == 0, result.output
        printed = json.loads(result.output)
        expected = answers[command]
        if command == "status":  # the delivery worker's live state is only the service's
            printed["fdms"].pop("delivery"), expected["fdms"].pop("delivery")
        assert printed == expected, command

    # an FDMS address provision refuses is refused before anything is written
    device = Device(configuration.load(path, ENV), ENV, SystemClock())
    try:
        for refused_url in ("http://fdms.example", "https://", "https://fdms.example:99999", "ftp://x"):
            before = (tmp_path / "provisioned.json").read_bytes()
            with pytest.raises(FiscalError) as refused:
                device.provision({"fdms_url": refused_url})
            assert (refused.value.code, refused.value.field) == ("BOX_SETTINGS", "fdms_url")
            assert (tmp_path / "provisioned.json").read_bytes() == before
    finally:
        device.close()
    # one the client refuses, already in the identity file (written before provision checked it): the box
    # still starts, with delivery off and status saying what to fix; provisioning a good one turns it on
    stored = json.loads((tmp_path / "provisioned.json").read_text())
    (tmp_path / "provisioned.json").write_text(json.dumps({**stored, "fdms_url": "http://fdms.example"}))
    device = Device(configuration.load(path, ENV), ENV, SystemClock())
    try:
        assert device.registered and device.delivery is None
        warning = [w for w in device.status()["warnings"] if w["field"] == "fdms_url"]
        assert len(warning) == 1 and "provision" in warning[0]["message"]
        device.provision({"fdms_url": sim.url})
        assert device.delivery is not None and device.box is not None and device.box.fdms is not None
        assert not [w for w in device.status()["warnings"] if w["field"] == "fdms_url"]
    finally:
        device.close()


def test_a_device_without_a_journal_but_registered_says_restore(tmp_path: Path, sim: FdmsSimulator) -> None:
    path = write_config(tmp_path)
    device = Device(configuration.load(path, ENV), ENV, SystemClock())
    try:
        device.provision(identity(sim))
        device.register(sim.activation_keys[DEVICE_ID])
    finally:
        device.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp_path / "journal.db") + suffix).unlink(missing_ok=True)
    (tmp_path / "provisioned.json").unlink()  # the identity too: the anchor still names the device
    device = Device(configuration.load(path, ENV), ENV, SystemClock())
    try:
        status = device.status()
        assert not status["journal"]["clean"]
        assert status["journal"]["problems"][0]["code"] == "BOX_JOURNAL_MISSING"
        with pytest.raises(FiscalError) as refused:
            device.register(sim.activation_keys[DEVICE_ID])
        assert refused.value.code == "BOX_JOURNAL_MISSING"
        with pytest.raises(FiscalError) as refused:
            device.provision({"device_id": DEVICE_ID + 5})
        assert refused.value.field == "device_id"  # the anchor still names the device
        assert device.provision({"device_id": DEVICE_ID})["device_id"] == DEVICE_ID
    finally:
        device.close()
    assert not (tmp_path / "journal.db").exists()


def test_a_failed_first_registration_leaves_no_journal(tmp_path: Path, sim: FdmsSimulator) -> None:
    path = write_config(tmp_path)
    device = Device(configuration.load(path, ENV), ENV, SystemClock())
    try:
        device.provision(identity(sim))
        with pytest.raises(FiscalError) as refused:
            device.register("WRONG123")
        assert refused.value.code == "DEV02"
        assert not device.registered and not (tmp_path / "journal.db").exists()
        assert device.register(sim.activation_keys[DEVICE_ID])["warnings"] == []
    finally:
        device.close()


def test_the_provisioned_identity_wins_over_the_file_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    provisioned = tmp_path / "provisioned.json"
    provisioned.write_text(json.dumps({"device_id": 77, "currencies": ["USD"], "fdms_ca": ""}))
    loaded = configuration.load(path, {"FISCALBOX_FDMS_CURRENCIES": "ZWG"})
    assert loaded.device["id"] == 77 and loaded.fdms["ca_file"] == ""
    assert loaded.fdms["currencies"] == "ZWG"  # the environment still wins
    for damaged in (
        b"not json",
        json.dumps({"device_id": "77"}).encode(),
        json.dumps({"pin": "1234"}).encode(),
        b"[]",
        b"\xff\xfe",  # not UTF-8
        b"[" * 100_000,  # deeper than the JSON reader goes
        json.dumps({"device_id": 10**10}).encode(),  # out of range: the identity file's, not [device] id's
        json.dumps({"device_id": 0}).encode(),  # what provision refuses, the file may not hold either
        json.dumps({"currencies": ["usd"]}).encode(),
    ):
        provisioned.write_bytes(damaged)
        with pytest.raises(FiscalError) as refused:
            configuration.load(path, {})
        assert (refused.value.code, refused.value.field) == ("BOX_CONFIG", "box.provisioned"), damaged[:20]
        assert str(provisioned) in refused.value.message


def test_moved_and_bad_service_settings_are_refused_saying_what_to_write(tmp_path: Path) -> None:
    path = tmp_path / "box.toml"
    path.write_text('[journal]\nbackup_dir = "/x"\n')
    with pytest.raises(FiscalError) as refused:
        configuration.load(path, {})
    assert "write it as [backup] dir" in refused.value.message
    with pytest.raises(FiscalError) as refused:
        configuration.load(None, {"FISCALBOX_JOURNAL_RETAIN": "3"})
    assert "set FISCALBOX_BACKUP_RETAIN" in refused.value.message
    for at in ("25:00", "3:00", "03:60", "noon"):
        with pytest.raises(FiscalError) as refused:
            configuration.load(None, {"FISCALBOX_BACKUP_AT": at})
        assert refused.value.field == "backup.at"
    assert configuration.load(None, {"FISCALBOX_BACKUP_AT": ""}).backup["at"] == ""


def test_an_environment_override_still_wins_over_what_is_provisioned(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    env = {**ENV, "FISCALBOX_DEVICE_MODEL_NAME": "shop-build"}
    device = Device(configuration.load(path, env), env, SystemClock())
    try:
        in_force = device.provision({"model_name": "from-the-link", "device_id": 5})
    finally:
        device.close()
    assert (in_force["model_name"], in_force["device_id"]) == ("shop-build", 5)
    assert configuration.load(path, env).device["model_name"] == "shop-build"  # as at the next start
    assert configuration.load(path, {}).device["model_name"] == "from-the-link"
