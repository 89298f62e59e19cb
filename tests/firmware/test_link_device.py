"""The link over the service's real Device, against the FDMS simulator: a box's whole first day driven by
hosts over the link, from the first operator key to a POS retry that does not double-issue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from link_rig import Host, journal_digest

from firmware import config as configuration
from firmware.hosts import HostKeys
from firmware.link import Link
from firmware.service import Device, SystemClock
from sim.fdms.scenario import Scenario
from sim.fdms.server import FdmsSimulator
from sim.shop import Shop

ENV = {"FISCALBOX_KEY_PASSPHRASE": "link pass phrase"}
DEVICE_ID = 10001


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[FdmsSimulator]:
    with FdmsSimulator(Scenario.default(), state_dir=tmp_path / "fdms") as running:
        yield running


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    path = tmp_path / "box.toml"
    path.write_text(
        f'[keys]\ndirectory = "{tmp_path / "keys"}"\n\n'
        f'[journal]\npath = "{tmp_path / "journal.db"}"\nanchor = "{tmp_path / "anchor.json"}"\n\n'
        f'[box]\nprovisioned = "{tmp_path / "provisioned.json"}"\n\n'
        f'[backup]\ndir = "{tmp_path / "backups"}"\nretain = 2\n\n'
        f'[link]\nport = ""\nhosts = "{tmp_path / "hosts.json"}"\n'
    )
    made = Device(configuration.load(str(path), ENV), ENV, SystemClock())
    yield made
    made.close()


def test_a_box_is_set_up_and_sells_over_the_link(tmp_path: Path, sim: FdmsSimulator, device: Device) -> None:
    link = Link(device, HostKeys(tmp_path / "hosts.json"), work_dir=tmp_path)
    operator = Host(link)
    try:
        assert operator.call("provision", {"values": {}})["error"]["code"] == "BOX_LINK_UNKNOWN_KEY"
        operator.result("enroll", {"public_key": operator.der, "role": "operator", "label": "office"})
        ca = Path(sim.ca_cert_path).read_text()
        serial = sim.scenario.device(DEVICE_ID).serial  # type: ignore[union-attr]
        values = {"device_id": DEVICE_ID, "serial": serial, "fdms_url": sim.url, "fdms_ca": ca}
        unsigned = operator.call("provision", {"values": {**values, "currencies": ["USD", "ZWG"]}})
        assert "cose" not in unsigned and unsigned["answer"]["ok"]["device_id"] == DEVICE_ID  # no key yet
        key = operator.result("generate_key", {"algorithm": "ecdsa"})  # signed by the key it made
        assert "PUBLIC KEY" in key["public_key"]
        assert "CERTIFICATE REQUEST" in operator.result("certificate_request")["csr"]
        operator.result("register", {"activation_key": sim.activation_keys[DEVICE_ID]})
        assert device.registered
        stranger = Host(link)
        body = {"public_key": stranger.der, "role": "operator", "label": "x"}
        assert stranger.call("enroll", body)["error"]["code"] == "BOX_LINK_ENROLL"

        till = Host(link)
        operator.result("enroll", {"public_key": till.der, "role": "pos", "label": "till 1"})
        operator.result("open_day")
        shop = Shop(seed=3, device_id=DEVICE_ID)
        sale = shop.next_sale()
        first = till.result("issue", {"sale": sale}, rid="till1-0001")
        shop.issued(sale, first)
        before = journal_digest(device.box.journal)  # type: ignore[union-attr]
        again = till.result("issue", {"sale": sale}, rid="till1-0001")  # the answer was lost: the POS retries
        assert again["repeated"] and again["global_no"] == first["global_no"] == 1
        assert journal_digest(device.box.journal) == before  # type: ignore[union-attr]
        assert till.result("status")["last_global_no"] == 1
        assert till.call("close_day")["error"]["code"] == "BOX_LINK_ROLE"

        job = operator.result("audit")["job"]
        link.join_jobs()
        assert operator.result("job", {"job": job})["result"]["clean"]
        job = operator.result("export_journal", {"first": 1, "last": 1})["job"]
        link.join_jobs()
        exported = operator.result("job", {"job": job})
        data = exported["data"]
        while len(data) < exported["size"]:
            exported = operator.result("job", {"job": job, "offset": len(data)})
            data += exported["data"]
        assert exported["state"] == "done" and data.startswith(b"{") and len(data) == exported["size"]
        operator.result("close_day")
    finally:
        link.join_jobs()
        link.close()
