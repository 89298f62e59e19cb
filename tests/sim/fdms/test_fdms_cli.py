"""`fiscalbox-sim fdms` as a separate process: it prints where it listens, the CA and the devices' keys."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

SCENARIO = """
currencies = ["USD"]

[server]
state_dir = "state"
close_delay_seconds = 0.1

[taxpayer]
name = "CLI Test Shop"
tin = "2000999999"

[[taxes]]
id = 1
name = "Exempt"

[[devices]]
id = 321
serial = "SN-321"
activation_key = "Key00321"

[[devices]]
id = 322
serial = "SN-322"
activation_key = "Key00322"
mode = "Offline"
"""


def start(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    config = tmp_path / "scenario.toml"
    config.write_text(SCENARIO)
    command = [sys.executable, "-m", "sim.main", "fdms", "--config", str(config), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=10)
    assert process.returncode == 0


def test_the_cli_prints_its_url_ca_and_activation_keys_and_serves(tmp_path: Path) -> None:
    process = start(tmp_path, "--json")
    try:
        assert process.stdout is not None
        started = json.loads(process.stdout.readline())
        ca = Path(started["ca_cert"])
        assert ca.is_file() and ca.is_relative_to(tmp_path / "state")
        assert started["url"].startswith("https://127.0.0.1:") and started["admin_url"].startswith(
            "http://127.0.0.1:"
        )
        keys = {d["id"]: d["activation_key"] for d in started["devices"]}
        assert keys == {321: "Key00321", 322: "Key00322"}
        port = int(started["url"].rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=str(ca))
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        connection.request(
            "POST",
            "/Public/v1/321/VerifyTaxpayerInformation",
            json.dumps({"activationKey": "KEY00321", "deviceSerialNo": "SN-321"}),
        )
        answer = connection.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["taxPayerName"] == "CLI Test Shop"
        connection.close()
    finally:
        stop(process)


def test_the_cli_in_text_mode(tmp_path: Path) -> None:
    process = start(tmp_path)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(6)]
    finally:
        stop(process)
    assert lines[0].startswith("FDMS simulator on https://127.0.0.1:")
    assert lines[1].startswith("admin on http://127.0.0.1:")
    assert lines[2] == f"CA certificate: {tmp_path / 'state' / 'ca' / 'root.pem'}"
    assert "device 321 serial SN-321 (Online): activation key Key00321" in lines
    assert "device 322 serial SN-322 (Offline): activation key Key00322" in lines


def test_a_bad_scenario_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[taxpayer]\ntin = 'short'\n")
    done = subprocess.run(
        [sys.executable, "-m", "sim.main", "fdms", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "tin" in one_error_line(done, "SIM_SCENARIO")


def refused(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim.main", "fdms", *args], capture_output=True, text=True, timeout=30
    )


def one_error_line(done: subprocess.CompletedProcess[str], code: str) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error {code}: "), done.stderr
    return lines[0]


@pytest.mark.parametrize("option", ["--port", "--admin-port"])
def test_a_port_in_use_is_one_error_line_and_creates_nothing(tmp_path: Path, option: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_error_line(refused(option, str(port), "--state-dir", str(tmp_path / "state")), "SIM_PORT")
    assert str(port) in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--port", "--admin-port"])
def test_a_port_out_of_range_is_one_error_line(tmp_path: Path, option: str) -> None:
    line = one_error_line(refused(option, "99999", "--state-dir", str(tmp_path / "state")), "SIM_PORT")
    assert "99999" in line and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("inside", ["", "sub"])
def test_a_state_dir_that_is_a_file_is_one_error_line(tmp_path: Path, inside: str) -> None:
    plain = tmp_path / "plain"
    plain.write_text("not a directory")
    one_error_line(refused("--state-dir", str(plain / inside)), "SIM_STATE_DIR")
    assert list(tmp_path.iterdir()) == [plain] and plain.read_text() == "not a directory"


def test_a_missing_scenario_file_is_one_error_line(tmp_path: Path) -> None:
    one_error_line(refused("--config", str(tmp_path / "none.toml")), "SIM_SCENARIO")
