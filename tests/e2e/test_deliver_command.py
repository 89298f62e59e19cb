"""`fiscalbox-device deliver --until-idle` and `status`, each its own process as in the shop, when FDMS cannot
be reached or not trusted; and `register` where FDMS has no VerifyTaxpayerInformation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_device_commands import PASSPHRASE, box_config, run, shop_day

from sim.fdms.ca import TestCA
from sim.fdms.scenario import Scenario
from sim.fdms.server import FdmsSimulator


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FdmsSimulator]:
    monkeypatch.setenv("FISCALBOX_KEY_PASSPHRASE", PASSPHRASE)  # for the box opened without the CLI
    with FdmsSimulator(Scenario.default(), state_dir=tmp_path / "fdms") as running:
        yield running


def registered_box_with_sales(tmp_path: Path, sim: FdmsSimulator, device_id: int, sales: int) -> str:
    path = box_config(tmp_path, sim, device_id)
    assert run(path, "register", activation_key=sim.activation_keys[device_id]).exit_code == 0
    shop_day(path, device_id, sales)
    return path


def test_an_unreachable_fdms_stops_deliver_with_the_reason_and_status_says_it(
    tmp_path: Path, sim: FdmsSimulator
) -> None:
    path = registered_box_with_sales(tmp_path, sim, 10001, 3)
    sim.set_faults("*", rate=1.0, kinds=["reset"])  # FDMS is down
    stopped = run(path, "deliver", "--until-idle", "--max-wait", "0")
    assert stopped.exit_code == 1, stopped.output
    assert "delivered 0 receipts" in stopped.stdout
    [reason] = [line for line in stopped.stdout.splitlines() if line.startswith("stopped ")]
    assert reason.startswith("stopped BOX_FDMS_UNAVAILABLE: ") and "Nothing was delivered for 0 s" in reason
    assert "(since " in reason and "; 3 receipts waiting)" in reason
    assert "delivery waits: BOX_FDMS_UNAVAILABLE" in stopped.stderr  # said as it happened
    as_json = run(path, "deliver", "--until-idle", "--max-wait", "0", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["stopped"]["code"] == "BOX_FDMS_UNAVAILABLE"
    # `status` is a process of its own: it reads what delivery left beside the journal.
    text = run(path, "status")
    assert text.exit_code == 0, text.output
    [line] = [s for s in text.stdout.splitlines() if "BOX_FDMS_UNAVAILABLE" in s]
    assert "since " in line and "next attempt " in line and "3 receipts waiting" in line
    info = json.loads(run(path, "status", "--json").stdout)
    problem = info["fdms"]["delivery"]["problem"]
    assert problem["code"] == "BOX_FDMS_UNAVAILABLE" and problem["since"] and problem["next_attempt"]
    assert info["fdms"]["delivery"]["waiting"] == 3
    sim.clear_faults()  # FDMS is back
    delivered = run(path, "deliver", "--until-idle")
    assert delivered.exit_code == 0, delivered.output
    assert "delivered 3 receipts" in delivered.stdout and "stopped" not in delivered.stdout
    after = json.loads(run(path, "status", "--json").stdout)
    assert after["fdms"]["delivery"]["problem"] is None and after["warnings"] == []


def test_an_fdms_certificate_the_box_does_not_trust_stops_deliver_at_once(
    tmp_path: Path, sim: FdmsSimulator
) -> None:
    path = registered_box_with_sales(tmp_path, sim, 10002, 2)
    other = TestCA(tmp_path / "another-ca")
    config = Path(path)
    config.write_text(config.read_text().replace(str(sim.ca_cert_path), str(other.root_cert_path)))
    # --max-wait only as a net: a certificate that is not trusted needs a person, so it stops at once.
    stopped = run(path, "deliver", "--until-idle", "--max-wait", "30", "--json")
    assert stopped.exit_code == 1, stopped.output
    reason = json.loads(stopped.stdout)["stopped"]
    assert reason["code"] == "BOX_FDMS_TLS" and reason["needs_person"] is True
    assert "Nothing was delivered" not in reason["message"]
    status = run(path, "status")
    assert (
        "warning BOX_FDMS_TLS: Delivery to FDMS: The FDMS server's certificate was not accepted"
        in status.stdout
    )


def test_registration_goes_on_where_fdms_has_no_taxpayer_check_and_stops_on_any_other_refusal(
    tmp_path: Path, sim: FdmsSimulator
) -> None:
    sim.set_faults("VerifyTaxpayerInformation", rate=1.0, kinds=["404"])
    path = box_config(tmp_path, sim, 10001)
    wrong = run(path, "register", activation_key="WRONG123")
    assert wrong.exit_code == 2 and "DEV02" in wrong.output  # RegisterDevice still checks the activation key
    registered = run(path, "register", activation_key=sim.activation_keys[10001])
    assert registered.exit_code == 0, registered.output
    assert f"registered: {sim.scenario.taxpayer.name}, device 10001" in registered.stdout
    assert "warning BOX_FDMS_NO_TAXPAYER_CHECK: FDMS has no VerifyTaxpayerInformation" in registered.stdout
    again = json.loads(run(path, "register", "--json", activation_key=sim.activation_keys[10001]).stdout)
    assert again["taxpayer"] == sim.scenario.taxpayer.name
    assert [w["code"] for w in again["warnings"]] == ["BOX_FDMS_NO_TAXPAYER_CHECK"]
    # Any other failure of the check still stops registration before anything is made.
    sim.set_faults("VerifyTaxpayerInformation", rate=1.0, kinds=["500"])
    other = box_config(tmp_path, sim, 10002)
    refused = run(other, "register", activation_key=sim.activation_keys[10002])
    assert refused.exit_code == 2 and "error BOX_FDMS_UNAVAILABLE" in refused.output
    assert "no key yet" in run(other, "key", "show").stdout
    sim.clear_faults()
    wrong = run(other, "register", activation_key="WRONG123")
    assert wrong.exit_code == 2 and "DEV02" in wrong.output  # refused by the taxpayer check itself
    assert "no key yet" in run(other, "key", "show").stdout
    checked = json.loads(run(other, "register", "--json", activation_key=sim.activation_keys[10002]).stdout)
    assert checked["warnings"] == []


def test_fdms_signatures_the_box_cannot_verify_are_its_finding_and_the_day_still_closes(
    tmp_path: Path, sim: FdmsSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = registered_box_with_sales(tmp_path, sim, 10003, 50)
    real_sign = sim.ca.sign
    monkeypatch.setattr(sim.ca, "sign", lambda text: real_sign(text + "|"))  # signs another string
    delivered = run(path, "deliver", "--until-idle")
    assert delivered.exit_code == 0, delivered.output
    assert sim.day(10003, 1)["fiscalDayStatus"] == "FiscalDayClosed"  # type: ignore[index]
    status = run(path, "status").stdout
    assert "FDMS flagged" not in status and "BOX_CLOSE_BLOCKED" not in status
    assert (
        "warning BOX_SERVER_SIGNATURE: The box's own check: FDMS's signature on receipt 1 and 50 more"
        in status
    )
    outbox = run(path, "outbox").stdout
    assert "flagged" not in outbox
    assert "finding BOX_SERVER_SIGNATURE: The box's own check: FDMS's signature on receipt 1 " in outbox
    assert "... and on 50 more" in outbox


def test_deliver_until_idle_with_nothing_waiting_stops_at_once_when_fdms_is_down(
    tmp_path: Path, sim: FdmsSimulator
) -> None:
    path = box_config(tmp_path, sim, 10003)
    assert run(path, "register", activation_key=sim.activation_keys[10003]).exit_code == 0
    sim.set_faults("*", rate=1.0, kinds=["reset"])  # FDMS is down, and nothing waits but a Ping
    stopped = run(path, "deliver", "--until-idle", "--max-wait", "120", "--json")
    assert stopped.exit_code == 1, stopped.output
    reason = json.loads(stopped.stdout)["stopped"]
    assert reason["code"] == "BOX_FDMS_UNAVAILABLE"
    assert "Nothing was delivered for" not in reason["message"]  # it did not sit out the 120 s
