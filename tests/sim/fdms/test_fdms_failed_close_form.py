"""The scenario switch for how GetStatus reports a failed close: FDMS's own FiscalDayCloseFailed, or the day
open again with the error code beside it, as another FDMS implementation answers."""

from __future__ import annotations

import pytest
from fdms_rig import Device

from sim.fdms.scenario import Scenario, ScenarioError
from sim.fdms.server import FdmsSimulator


@pytest.fixture
def scenario() -> Scenario:
    made = Scenario.default()
    made.server.close_delay_seconds = 0.05
    made.server.failed_close_status = "FiscalDayOpened"
    return made


def test_a_failed_close_can_read_as_the_day_open_with_its_error_code(
    sim: FdmsSimulator, device: Device
) -> None:
    device.open_day()
    device.submit(device.receipt())
    right = device.close_body()
    device.counters[next(iter(device.counters))] += 100  # a counter the receipts do not add up to
    assert device.call("POST", "CloseDay", device.close_body()).status == 200
    failed = device.wait_status("FiscalDayClosed", "FiscalDayOpened")
    assert failed["fiscalDayStatus"] == "FiscalDayOpened"
    assert failed["fiscalDayClosingErrorCode"] == "CountersMismatch"
    assert sim.day(device.device_id)["fiscalDayStatus"] == "FiscalDayCloseFailed"  # type: ignore[index]
    assert device.call("POST", "CloseDay", right).status == 200  # and it can be closed again
    closed = device.wait_status("FiscalDayClosed")
    assert closed["fiscalDayStatus"] == "FiscalDayClosed" and "fiscalDayClosingErrorCode" not in closed


def test_the_switch_takes_only_the_two_forms() -> None:
    assert Scenario.from_dict(
        {"server": {"failed_close_status": "FiscalDayOpened"}}
    ).server.failed_close_status
    with pytest.raises(ScenarioError, match="failed_close_status"):
        Scenario.from_dict({"server": {"failed_close_status": "Closed"}})
