"""`fiscalbox-device register`, `deliver`, `status` and `day-files` against the FDMS simulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from firmware import config as configuration
from firmware.main import _with_box, main
from sim.fdms.scenario import Scenario
from sim.fdms.server import FdmsSimulator
from sim.shop import Shop


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FdmsSimulator]:
    monkeypatch.setenv("FISCALBOX_KEY_PASSPHRASE", PASSPHRASE)  # for the box opened without the CLI
    with FdmsSimulator(Scenario.default(), state_dir=tmp_path / "fdms") as running:
        yield running


PASSPHRASE = "cli pass phrase"


def box_config(tmp_path: Path, sim: FdmsSimulator, device_id: int) -> str:
    device = sim.scenario.device(device_id)
    assert device is not None
    where = tmp_path / f"box-{device_id}"
    path = where / "box.toml"
    where.mkdir()
    path.write_text(
        f'[device]\nid = {device_id}\nserial = "{device.serial}"\n\n'
        f'[keys]\ndirectory = "{where / "keys"}"\n\n'
        f'[journal]\npath = "{where / "journal.db"}"\nanchor = "{where / "anchor.json"}"\n\n'
        f'[backup]\ndir = "{where / "backups"}"\n\n'
        f'[fdms]\nurl = "{sim.url}"\nca_file = "{sim.ca_cert_path}"\n'
    )
    return str(path)


def run(config_path: str, *args: str, activation_key: str = "") -> Any:
    env = {"FISCALBOX_KEY_PASSPHRASE": PASSPHRASE, "FISCALBOX_ACTIVATION_KEY": activation_key}
    result = CliRunner().invoke(main, ["--config", config_path, *args], env=env)
    return result


def shop_day(config_path: str, device_id: int, sales: int) -> None:
    """What the POS does over the link (still to come): open the day, sell, close."""
    cfg = configuration.load(config_path, {})
    shop = Shop(seed=device_id, device_id=device_id)

    def work(box: Any) -> None:
        box.open_day()
        for _ in range(sales):
            sale = shop.next_sale()
            shop.issued(sale, box.issue(sale))
        box.close_day()

    _with_box(cfg, work)


def test_an_online_box_registers_delivers_and_fdms_closes_its_day(tmp_path: Path, sim: FdmsSimulator) -> None:
    path = box_config(tmp_path, sim, 10001)
    refused = run(path, "register", "--json", activation_key="WRONG123")
    assert refused.exit_code == 2 and "DEV02" in refused.output
    registered = run(path, "register", "--json", activation_key=sim.activation_keys[10001])
    assert registered.exit_code == 0, registered.output
    assert json.loads(registered.output)["taxpayer"] == sim.scenario.taxpayer.name
    shop_day(path, 10001, 4)
    waiting = json.loads(run(path, "outbox", "--json", "--limit", "3").output)
    assert waiting["counts"] == {"pending": 4} and [r["global_no"] for r in waiting["oldest_pending"]] == [
        1,
        2,
        3,
    ]
    assert waiting["days_waiting"] == [{"day_no": 1, "status": "FiscalDayCloseInitiated", "open_sent": False}]
    assert "waiting: #1 day 1" in run(path, "outbox").output
    delivered = run(path, "deliver", "--until-idle", "--json")
    assert delivered.exit_code == 0, delivered.output
    assert json.loads(delivered.output)["outbox"] == {"delivered": 4}
    assert [h["receiptGlobalNo"] for h in sim.held_receipts(10001)] == [1, 2, 3, 4]
    assert sim.day(10001, 1)["fiscalDayStatus"] == "FiscalDayClosed"  # type: ignore[index]
    status = json.loads(run(path, "status", "--json").output)
    assert status["day"]["status"] == "FiscalDayClosed" and status["days_waiting"] == []
    assert status["warnings"] == []
    after = json.loads(run(path, "outbox", "--json").output)
    assert (
        after["counts"] == {"delivered": 4} and after["oldest_pending"] == [] and after["days_waiting"] == []
    )


def test_an_offline_box_writes_its_day_files_and_delivers_them(tmp_path: Path, sim: FdmsSimulator) -> None:
    path = box_config(tmp_path, sim, 10004)
    assert run(path, "register", activation_key=sim.activation_keys[10004]).exit_code == 0
    early = run(path, "day-files", "1", str(tmp_path / "upload"))
    assert early.exit_code == 2 and "BOX_NO_DAY" in early.output
    shop_day(path, 10004, 3)
    written = run(path, "day-files", "1", str(tmp_path / "upload"), "--json")
    assert written.exit_code == 0, written.output
    files = json.loads(written.output)["files"]
    assert len(files) == 1 and files[0]["has_footer"]
    content = json.loads(Path(files[0]["file"]).read_bytes())
    assert list(content) == ["header", "content", "footer"]
    assert [r["receiptGlobalNo"] for r in content["content"]["receipts"]] == [1, 2, 3]
    assert run(path, "deliver", "--until-idle").exit_code == 0
    assert sim.day(10004, 1)["fiscalDayStatus"] == "FiscalDayClosed"  # type: ignore[index]
