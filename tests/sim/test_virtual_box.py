"""The virtual box in-process, as the demo and the HIL lane use it: a sale whose answer the cable loses is
retried by the client under its request ID and issued once."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from host_tools.cli import main
from host_tools.link import BoxClient
from sim.box import EXAMPLE_SALE, VirtualBox


def test_a_sale_whose_answer_is_lost_on_the_line_is_issued_once(tmp_path: Path) -> None:
    with VirtualBox(tmp_path / "vbox") as vbox:
        assert vbox.modem is not None
        checked = vbox.status()["journal"]  # the running service checked its journal with its new key
        assert checked["clean"] is True and checked["skipped"] is None
        pos_key = str(vbox.keys["pos"])
        shown = CliRunner().invoke(main, ["--port", vbox.port, "--key", pos_key, "keys", "device", "--json"])
        assert shown.exit_code == 0, shown.output  # a POS key reads it from the status
        assert json.loads(shown.stdout)["public_key"] == vbox.status()["device_key"]["public_key"]
        with vbox.client("operator") as operator:
            operator.open_day()
        vbox.modem.lose_answers(1, group=64, command=6)  # the issue's answer, nothing else
        with BoxClient(vbox.port, vbox.key_pem("pos"), timeout=1) as pos:
            answer = pos.issue(EXAMPLE_SALE, request_id="lost-1")  # times out once, sent again inside
            assert answer["global_no"] == 1 and answer["repeated"] is True
            assert pos.status()["last_global_no"] == 1
        [page] = vbox.save_pages("lost")  # printed once, by the first send
        assert "EXAMPLE-1" in page.read_text()
        assert json.loads((tmp_path / "vbox" / "vbox.json").read_text())["registered"] is True


def test_a_box_left_to_set_up_by_hand_says_the_simulators_device_to_register_as(tmp_path: Path) -> None:
    with VirtualBox(tmp_path / "vbox", setup=False) as vbox:
        facts = vbox.facts()
    assert facts["registered"] is False and facts["port"] == str(tmp_path / "vbox" / "link")
    assert facts["fdms_device"] == {"device_id": 10001, "serial": "FB-0001", "activation_key": "ABCD1234"}
