"""Fixtures: a running FDMS simulator on loopback (real TLS, real SQLite in tmp_path) and registered devices.

The CA (root, server and RSA signing keys) is made once per session and copied into each test's state
directory, because generating an RSA key per test is slow; everything else is fresh per test.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fdms_rig import Device, FakeClock

from sim.fdms.ca import TestCA
from sim.fdms.scenario import Scenario
from sim.fdms.server import FdmsSimulator


@pytest.fixture(scope="session")
def ca_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ca-template") / "ca"
    TestCA(directory)
    return directory


@pytest.fixture
def scenario() -> Scenario:
    made = Scenario.default()
    made.server.close_delay_seconds = 0.05
    return made


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state_dir(tmp_path: Path, ca_template: Path) -> Path:
    directory = tmp_path / "fdms"
    shutil.copytree(ca_template, directory / "ca")
    return directory


@pytest.fixture
def sim(scenario: Scenario, state_dir: Path, clock: FakeClock) -> Iterator[FdmsSimulator]:
    with FdmsSimulator(scenario, state_dir=state_dir, clock=clock) as running:
        yield running


@pytest.fixture
def new_device(sim: FdmsSimulator, tmp_path: Path) -> Callable[[int], Device]:
    def make(device_id: int) -> Device:
        return Device(sim, device_id, tmp_path / "devices")

    return make


@pytest.fixture
def device(new_device: Callable[[int], Device]) -> Device:
    """Device 10001, registered."""
    made = new_device(10001)
    answer = made.register()
    assert answer.status == 200, answer.body
    return made
