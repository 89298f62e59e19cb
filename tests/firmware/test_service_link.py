"""`fiscalbox-device run` with its link: a POS sells over a serial line, SIGTERM in the middle of a burst of
sales finishes the one in flight (answered, committed whole) and exits 0, and a restart sells on."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from box_rig import sale
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from service_rig import ENV, PtyBridge, Service, host_key, make_box, poll, write_config

from firmware.core.errors import FiscalError
from firmware.main import main
from firmware.service import SystemClock
from host_tools.link import BoxClient
from sim.fdms.scenario import Scenario
from sim.fdms.server import FdmsSimulator
from sim.shop import Shop


@pytest.fixture
def cable() -> Iterator[PtyBridge]:
    made = PtyBridge()
    yield made
    made.close()


def one_shot_json(config: str, *args: str) -> str:
    result = CliRunner().invoke(main, ["--config", config, *args, "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    return result.output


def test_sigterm_in_a_burst_of_sales_finishes_the_one_in_flight_and_a_restart_sells_on(
    tmp_path: Path, cable: PtyBridge
) -> None:
    make_box(tmp_path, totals=(), clock=SystemClock())  # the service's clock: the day is open now
    pos = host_key(tmp_path, "pos")
    config = write_config(tmp_path, link_port=cable.box_path)
    service = Service(config)
    answered: list[dict[str, object]] = []
    failure: list[FiscalError] = []
    try:
        service.wait_for("service started")
        service.wait_for("link listening")
        client = BoxClient(cable.host_path, pos, timeout=60, retries=0)

        def burst() -> None:
            try:
                for n in range(1000):
                    answered.append(client.issue(sale(f"{1 + n % 9}.00"), request_id=f"burst-{n}"))
            except FiscalError as error:  # the service went away: the call in the air is not answered
                failure.append(error)

        seller = threading.Thread(target=burst)
        seller.start()
        poll(lambda: len(answered) >= 5 or failure, "five sales over the link")
        assert not failure, (failure, service.seen)
        assert service.stop(signal.SIGTERM) == 0
        issued = [r for r in service.seen if r["message"] == "link.request" and r.get("name") == "issue"]
        answers = len([r for r in issued if r.get("outcome") == "ok"])
        poll(lambda: len(answered) == answers or failure, "the POS read every answer the box sent")
        cable.unplug_host()  # a sale sent after the stop is never answered: its call ends now
        seller.join(timeout=120)
        client.close()
    finally:
        service.kill()
    assert failure and failure[0].code.startswith("BOX_LINK"), failure
    assert answers == len(answered)  # each sale the box issued was answered, the one in flight too
    assert [r["global_no"] for r in answered] == list(range(1, len(answered) + 1))
    stopping = [r["message"] for r in service.seen]
    assert stopping.index("service stopping") < stopping.index("service stopped")
    # every sale the box committed was answered, and none half: the journal audits clean
    status = one_shot_json(config, "status")
    assert f'"last_global_no": {len(answered)}' in status
    assert '"clean": true' in one_shot_json(config, "audit")

    service = Service(config)  # the restart: the POS sells on
    try:
        service.wait_for("link listening")
        with BoxClient(cable.host_path, pos, timeout=60) as client:
            again = client.issue(sale("1.00"), request_id="after-restart")
            assert again["global_no"] == len(answered) + 1
            assert client.status()["last_global_no"] == len(answered) + 1
        assert service.stop() == 0
    finally:
        service.kill()


def test_a_box_set_up_over_the_link_is_registered_sells_and_logs_no_secret(
    tmp_path: Path, cable: PtyBridge
) -> None:
    operator = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with FdmsSimulator(Scenario.default(), state_dir=tmp_path / "fdms") as sim:
        device = sim.scenario.device(10001)
        assert device is not None
        activation_key = sim.activation_keys[10001]
        config = write_config(tmp_path, link_port=cable.box_path)
        service = Service(config)
        try:
            service.wait_for("link listening")
            with BoxClient(cable.host_path, operator, timeout=30) as client:
                client.enroll_self("operator", "office")
                assert client.status()["device_id"] is None
                identity = {
                    "device_id": 10001,
                    "serial": device.serial,
                    "fdms_url": sim.url,
                    "fdms_ca": Path(sim.ca_cert_path).read_text(),
                }
                assert client.provision(identity)["device_id"] == 10001
                registered = client.register(activation_key)
                assert registered["taxpayer"] == sim.scenario.taxpayer.name
                client.open_day()
                sale = Shop(seed=5, device_id=10001).next_sale()
                issued = client.issue(sale, request_id="first-sale")
                assert issued["global_no"] == 1
                poll(lambda: len(sim.held_receipts(10001)) == 1, "the sale delivered")
            assert service.stop() == 0
        finally:
            service.kill()
    log = "\n".join(json.dumps(record) for record in service.seen)
    item = sale["receiptLines"][0]["receiptLineName"]
    for secret in (activation_key, ENV["FISCALBOX_KEY_PASSPHRASE"], "PRIVATE KEY", item):
        assert secret not in log, secret
    assert "registered" in [r["message"] for r in service.seen]
