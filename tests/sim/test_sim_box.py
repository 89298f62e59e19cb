"""`fiscalbox-sim box` as a person runs it: one JSON line, a box ready to sell over its port, a clean stop on
SIGTERM, and a second start on the same state that resumes instead of registering again."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from firmware.core.errors import FiscalError
from host_tools.link import BoxClient
from sim.box import device_key_pem
from sim.fdms.scenario import Scenario
from sim.fdms.server import FdmsSimulator


def started(state: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "sim.main", "box", "--state-dir", str(state), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    if not first:
        process.wait(timeout=60)
        assert process.stderr is not None
        pytest.fail(f"fiscalbox-sim box did not start: {process.stderr.read()}")
    return process, json.loads(first)


def stopped(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


def test_the_virtual_box_comes_up_ready_to_sell_and_resumes_on_the_same_state(tmp_path: Path) -> None:
    state = tmp_path / "vbox"
    process, facts = started(state)
    try:
        assert facts["registered"] is True and facts["device_id"] == 10001 and facts["day"] is None
        assert facts["fdms"]["simulator"] is True and facts["fdms"]["url"].startswith("https://127.0.0.1:")
        for role in ("operator", "pos"):
            key = Path(facts["keys"][role])
            assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
        operator_pem, pos_pem = (Path(facts["keys"][r]).read_bytes() for r in ("operator", "pos"))
        sale = json.loads(Path(facts["example_sale"]).read_text())
        with BoxClient(facts["port"], pos_pem) as pos:
            with pytest.raises(FiscalError) as refused:
                pos.open_day()  # the POS key was enrolled as a POS key
            assert refused.value.code == "BOX_LINK_ROLE"
            pos.close()  # one program on the port at a time: the operator's turn
            with BoxClient(facts["port"], operator_pem) as operator:
                operator.open_day()
                device_key = device_key_pem(operator)
            issued = pos.issue(sale, request_id="sim-box-1")
            assert pos.verified is True  # a POS key checks the signed answer under the key status gives
        assert issued["global_no"] == 1 and issued["printed"] is True
        assert device_key == pos.status()["device_key"]["public_key"].encode()
    finally:
        code = stopped(process)
    assert code == 0
    assert "EXAMPLE-1" in (Path(facts["printer"]["out"]) / "0001.txt").read_text()

    process, again = started(state)
    try:
        assert again["registered"] is True and again["last_global_no"] == 1
        assert again["day"] == {"day_no": 1, "status": "FiscalDayOpened"}
        assert again["fdms"]["url"] == facts["fdms"]["url"]  # the URL the box was provisioned with
        assert again["port"] == facts["port"] == str(state / "link")  # one path across restarts
        with BoxClient(facts["port"], operator_pem) as operator:  # the path the first run gave still works
            assert device_key_pem(operator) == device_key  # not registered again: the same device key
            operator.close()
            with BoxClient(again["port"], pos_pem) as pos:
                repeated = pos.issue(sale, request_id="sim-box-1")
        assert repeated["global_no"] == 1 and repeated["repeated"] is True  # exactly once across restarts
        busy = subprocess.run(  # the same state twice at once: said in one line, the first one untouched
            [sys.executable, "-m", "sim.main", "box", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert busy.returncode == 2 and busy.stderr.startswith("error SIM_BUSY: ") and busy.stdout == ""
        assert len(busy.stderr.splitlines()) == 1 and "another fiscalbox-sim box" in busy.stderr
        with BoxClient(again["port"], pos_pem) as pos:
            assert pos.status()["last_global_no"] == 1
    finally:
        assert stopped(process) == 0


def test_the_virtual_box_registers_with_an_fdms_it_is_given(tmp_path: Path) -> None:
    with FdmsSimulator(Scenario.default(), state_dir=tmp_path / "fdms") as sim:
        process, facts = started(tmp_path / "vbox", "--fdms-url", sim.url, "--fdms-ca", str(sim.ca_cert_path))
        try:
            assert facts["fdms"] == {"url": sim.url, "ca": str(sim.ca_cert_path), "simulator": False}
            assert facts["registered"] is True and facts["device_id"] == 10001
            assert not (tmp_path / "vbox" / "fdms").exists()  # no simulator of its own
            with BoxClient(facts["port"], Path(facts["keys"]["operator"]).read_bytes()) as operator:
                opened = operator.open_day()
            deadline = time.monotonic() + 60  # delivery sends the OpenDay on its own time
            while sim.day(10001) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert (sim.day(10001) or {}).get("fiscalDayNo") == opened["day_no"]  # FDMS saw the OpenDay
            # a second start on the same state is refused before it writes anything of the running box's
            written = {name: (tmp_path / "vbox" / name).read_bytes() for name in ("box.toml", "service.log")}
            busy = subprocess.run(
                [sys.executable, "-m", "sim.main", "box", "--state-dir", str(tmp_path / "vbox")]
                + ["--fdms-url", sim.url, "--fdms-ca", str(sim.ca_cert_path)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert busy.returncode == 2 and busy.stderr.startswith("error SIM_BUSY: ")
            assert (tmp_path / "vbox" / "box.toml").read_bytes() == written["box.toml"]
            assert (tmp_path / "vbox" / "service.log").read_bytes().startswith(written["service.log"])
            for line in (tmp_path / "vbox" / "service.log").read_text().splitlines():
                json.loads(line)  # the running service's JSON lines only
            with BoxClient(facts["port"], Path(facts["keys"]["operator"]).read_bytes()) as operator:
                assert operator.status()["device_id"] == 10001  # the running box is untouched
        finally:
            assert stopped(process) == 0


@pytest.mark.parametrize(
    "args, code",
    [
        (["--state-dir", "{file}"], "SIM_STATE_DIR"),
        (["--state-dir", "{file}/box"], "SIM_STATE_DIR"),
        (["--fdms-ca", "ca.pem"], "SIM_ARGUMENT"),
        (["--fdms-url", "http://127.0.0.1:1", "--fdms-ca", "ca.pem"], "SIM_ARGUMENT"),
    ],
)
def test_a_start_that_cannot_go_on_is_one_error_line(tmp_path: Path, args: list[str], code: str) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    argv = ["box", *(a.format(file=plain) for a in args)]
    done = subprocess.run(
        [sys.executable, "-m", "sim.main", *argv], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error {code}: "), done.stderr
    assert done.stdout == ""
