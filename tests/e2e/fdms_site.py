"""A box and the FDMS simulator on one settable clock, over real mutual TLS on loopback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "firmware"))

from box_rig import StepClock  # noqa: E402

from firmware.box import Box  # noqa: E402
from firmware.delivery import Delivery  # noqa: E402
from firmware.fdms_client import FdmsClient  # noqa: E402
from firmware.journal import Journal  # noqa: E402
from hardware.keystores import FileKeyStore  # noqa: E402
from sim.fdms.scenario import Scenario  # noqa: E402
from sim.fdms.server import FdmsSimulator  # noqa: E402


class Site:
    """One simulator and the boxes registered with it."""

    def __init__(self, root: Path, scenario: Scenario | None = None) -> None:
        self.root = root
        self.clock = StepClock()
        self.scenario = scenario or Scenario.default()
        self.sim = FdmsSimulator(self.scenario, state_dir=root / "fdms", clock=self.clock).start()
        self.journals: list[Journal] = []

    def box(self, device_id: int = 10001, register: bool = True) -> tuple[Box, Delivery]:
        device = self.scenario.device(device_id)
        assert device is not None
        where = self.root / f"box-{device_id}"
        where.mkdir(parents=True, exist_ok=True)
        keys = FileKeyStore(where / "keys", b"e2e pass phrase")
        client = FdmsClient(
            self.sim.url, device_id, "fiscalbox", "1.0", ca_file=str(self.sim.ca_cert_path), clock=self.clock
        )
        journal = Journal(where / "journal.db", create=True)
        self.journals.append(journal)
        box = Box(journal, keys, self.clock, fdms_client=client)
        if register:
            box.register(device_id, device.serial, device.activation_key, ["USD", "ZWG"])
        delivery = Delivery(box, client, self.clock, backoff_base=0.5, backoff_max=60)
        box.delivery = delivery
        return box, delivery

    def settle(self, delivery: Delivery, **options: Any) -> int:
        return delivery.run_until_idle(advance=self.clock.advance, **options)

    def close(self) -> None:
        self.sim.stop()
        for journal in self.journals:
            journal.close()
