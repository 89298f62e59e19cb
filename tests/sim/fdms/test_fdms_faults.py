"""Fault injection and the admin port of the FDMS simulator."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
import urllib.request
from typing import Any

import pytest
from fdms_rig import Device, FakeClock

from sim.fdms.faults import Faults
from sim.fdms.scenario import FaultSpec, Scenario
from sim.fdms.server import FdmsSimulator

CONNECTION_LOST = (ConnectionError, http.client.RemoteDisconnected, ssl.SSLError, http.client.BadStatusLine)


def admin(sim: FdmsSimulator, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(sim.admin_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_500_and_502_answer_a_problem_and_change_nothing(sim: FdmsSimulator, device: Device) -> None:
    device.open_day()
    body = device.receipt()
    for kind in ("500", "502"):
        sim.set_faults("SubmitReceipt", rate=1.0, kinds=[kind])
        answer = device.submit(body)
        assert answer.status == int(kind)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.body["status"] == int(kind) and answer.body["operationID"]
        assert sim.held_receipts(10001) == []
    sim.clear_faults()
    assert device.submit(body).status == 200


def test_429_carries_retry_after(sim: FdmsSimulator, device: Device) -> None:
    sim.set_faults("closeday", kinds=["429"])  # endpoint names are case-insensitive
    device.open_day()
    answer = device.close_day()
    assert answer.status == 429 and answer.headers["retry-after"] == "1"
    assert device.status().body["fiscalDayStatus"] == "FiscalDayOpened"


def test_reset_drops_the_connection_before_any_work(sim: FdmsSimulator, device: Device) -> None:
    device.open_day()
    body = device.receipt()
    sim.set_faults("SubmitReceipt", kinds=["reset"])
    with pytest.raises(CONNECTION_LOST):
        device.submit(body)
    assert sim.held_receipts(10001) == []
    sim.clear_faults("SubmitReceipt")
    assert device.submit(body).status == 200


def test_reset_is_a_tcp_reset_not_a_clean_close(sim: FdmsSimulator) -> None:
    """Read the TCP stream under TLS: a reset ends in ECONNRESET, where a clean close would end in EOF."""
    sim.set_faults("GetServerCertificate", kinds=["reset"])
    context = ssl.create_default_context(cafile=str(sim.ca_cert_path))
    with socket.create_connection(("127.0.0.1", sim.port)) as raw:
        tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(b"GET /Public/v1/GetServerCertificate HTTP/1.1\r\nHost: fdms\r\n\r\n")
        with socket.socket(fileno=os.dup(tls.fileno())) as tcp:
            tcp.settimeout(5)
            with pytest.raises(ConnectionResetError):
                while tcp.recv(65536):
                    pass
        tls.close()


def test_a_lost_answer_was_committed_and_resubmission_returns_the_original(
    sim: FdmsSimulator, device: Device
) -> None:
    device.open_day()
    body = device.receipt()
    sim.set_faults("SubmitReceipt", kinds=["lost"])
    with pytest.raises(CONNECTION_LOST):
        device.submit(body)
    held = sim.held_receipts(10001)
    assert len(held) == 1
    sim.clear_faults()
    again = device.submit(body)
    assert again.status == 200 and again.body["receiptID"] == held[0]["receiptID"]
    assert again.body["receiptServerSignature"] == held[0]["receiptServerSignature"]
    # still answered after the day has closed: a box replaying its outbox gets the original answer
    assert device.close_day().status == 200
    device.wait_status("FiscalDayClosed")
    assert device.submit(body).body["receiptID"] == held[0]["receiptID"]
    assert device.submit(device.receipt()).code == "RCPT01"


def test_a_lost_close_still_closes_the_day(sim: FdmsSimulator, device: Device) -> None:
    device.open_day()
    device.submit(device.receipt())
    sim.set_faults("CloseDay", kinds=["lost"])
    with pytest.raises(CONNECTION_LOST):
        device.close_day()
    assert device.wait_status("FiscalDayClosed")["fiscalDayStatus"] == "FiscalDayClosed"


def test_latency_delays_the_answer(sim: FdmsSimulator, device: Device) -> None:
    sim.set_faults("Ping", kinds=["latency"], latency_ms=300)
    started = time.monotonic()
    assert device.call("POST", "Ping").status == 200
    assert time.monotonic() - started >= 0.3


def test_faults_are_deterministic_for_a_seed() -> None:
    def draws(seed: int) -> list[str | None]:
        faults = Faults({"SubmitReceipt": FaultSpec(rate=0.5, kinds=["500", "reset", "lost"], seed=seed)})
        out = []
        for _ in range(40):
            fault = faults.draw("SubmitReceipt")
            out.append(fault.kind if fault else None)
        return out

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert {None, "500", "reset", "lost"} == set(draws(7))
    assert Faults({"*": FaultSpec(rate=1.0)}).draw("Ping") is not None
    assert Faults({"Ping": FaultSpec(rate=0.0)}).draw("Ping") is None


def test_faults_from_the_scenario(scenario: Scenario, state_dir, clock: FakeClock, tmp_path) -> None:
    scenario.faults = {"GetServerCertificate": FaultSpec(rate=1.0, kinds=["502"])}
    with FdmsSimulator(scenario, state_dir=state_dir, clock=clock) as sim:
        from fdms_rig import request

        assert request(sim, "GET", "/Public/v1/GetServerCertificate").status == 502


def test_the_admin_port_controls_faults_mode_and_clock(sim: FdmsSimulator, device: Device) -> None:
    status, faults = admin(sim, "PUT", "/faults/SubmitReceipt", {"rate": 1, "kinds": ["500"], "seed": 3})
    assert status == 200 and faults["SubmitReceipt"]["kinds"] == ["500"]
    device.open_day()
    assert device.submit(device.receipt()).status == 500
    assert admin(sim, "GET", "/faults")[1]["SubmitReceipt"]["seed"] == 3
    assert admin(sim, "DELETE", "/faults") == (200, {})
    assert admin(sim, "PUT", "/faults/Ping", {"kinds": ["bogus"]})[0] == 400

    status, summary = admin(sim, "GET", "/devices/10001")
    assert status == 200 and summary["fiscalDayStatus"] == "FiscalDayOpened" and summary["receiptsHeld"] == 0
    assert admin(sim, "POST", "/devices/10001/mode", {"mode": "Offline"})[1]["mode"] == "Offline"
    assert device.status().code == "DEV01"
    assert admin(sim, "POST", "/devices/10001/mode", {"mode": "Sideways"})[0] == 400
    assert admin(sim, "GET", "/devices/999")[0] == 404
    assert admin(sim, "GET", "/devices/10001/days/1")[1]["fiscalDayStatus"] == "FiscalDayOpened"
    assert admin(sim, "GET", "/devices/10001/days/7")[0] == 404

    before = sim.local_now()
    status, clock = admin(sim, "POST", "/clock", {"offset_seconds": 3600})
    assert status == 200 and clock["offset_seconds"] == 3600
    assert clock["local"] == "2026-03-10T09:00:00" and before == "2026-03-10T08:00:00"
    assert admin(sim, "GET", "/nothing")[0] == 404


def admin_raw(sim: FdmsSimulator, method: str, path: str, data: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(sim.admin_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_admin_port_refuses_bad_input_in_a_sentence_naming_the_field(sim: FdmsSimulator) -> None:
    status, answer = admin_raw(sim, "PUT", "/faults/SubmitReceipt", b"notjson")
    assert status == 400 and answer["error"].startswith("The body is not JSON")
    status, answer = admin(sim, "POST", "/clock", {"offset_seconds": "x"})
    assert status == 400 and answer["error"].startswith("offset_seconds must be a JSON number")
    assert sim.clock_offset == 0
    status, answer = admin(sim, "PUT", "/faults/SubmitReceipt", {"rate": "1"})
    assert status == 400 and answer["error"].startswith("rate must be a JSON number")
    status, answer = admin(sim, "PUT", "/faults/SubmitReceipt", {"kinds": "500"})
    assert status == 400 and answer["error"].startswith("kinds must be a list")
    status, answer = admin(sim, "PUT", "/faults/NoSuch", {"rate": 1})
    assert status == 400 and "No endpoint 'NoSuch'" in answer["error"] and "SubmitReceipt" in answer["error"]
    assert admin(sim, "GET", "/faults") == (200, {})
    # A name in another case is the endpoint's, kept in its own spelling so the snapshot reads as the docs.
    assert admin(sim, "PUT", "/faults/submitreceipt", {"rate": 1})[1] == {
        "SubmitReceipt": {"rate": 1, "kinds": ["500"], "latency_ms": 0, "seed": None}
    }
