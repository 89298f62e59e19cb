"""Offline devices: SubmitFile and SubmittedFileList on the FDMS simulator."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fdms_rig import Device, FakeClock, local, request

from firmware.core import fdms
from sim.fdms.server import FdmsSimulator

OFFLINE = 10004
IN_PROGRESS = "FileProcessingInProgress"


@pytest.fixture
def box(sim: FdmsSimulator, new_device: Callable[[int], Device]) -> Device:
    made = new_device(OFFLINE)
    assert made.register().status == 200
    return made


def begin_day(box: Device, day_no: int = 1) -> None:
    box.day_no = day_no
    box.day_opened = local(box.sim.now() - 3600)
    box.last_date = box.sim.now() - 3000
    box.counter = 0
    box.previous_hash = None
    box.counters = fdms.new_counters()


def file_body(
    box: Device,
    receipts: list[dict[str, Any]],
    footer: bool = True,
    sequence: int = 1,
    day_no: int | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "header": {
            "deviceID": box.device_id,
            "fiscalDayNo": day_no or box.day_no,
            "fiscalDayOpened": box.day_opened,
            "fileSequence": sequence,
        }
    }
    if receipts:
        data["content"] = {"receipts": [r["receipt"] for r in receipts]}
    if footer:
        close = box.close_body()
        data["footer"] = {
            "fiscalDayCounters": close["fiscalDayCounters"],
            "fiscalDayDeviceSignature": close["fiscalDayDeviceSignature"],
            "receiptCounter": close["receiptCounter"],
            "fiscalDayClosed": local(box.sim.now()),
        }
    return data


def upload(box: Device, data: dict[str, Any] | bytes, encoding: str = "json") -> Any:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    if encoding == "base64":
        raw = base64.b64encode(raw)
    return box.call(
        "POST", "SubmitFile", raw, headers={"DeviceModelName": "fiscalbox", "DeviceModelVersion": "1.0"}
    )


def file_list(box: Device, query: str = "") -> dict[str, Any]:
    answer = box.call("GET", "SubmittedFileList", query=query)
    assert answer.status == 200, answer.body
    return dict(answer.body)


def wait_files(box: Device, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = file_list(box)["rows"]
        done = all(r["fileProcessingStatus"] not in (IN_PROGRESS, "WaitingForPreviousFile") for r in rows)
        if done or time.monotonic() > deadline:
            return list(rows)
        time.sleep(0.05)


def test_a_file_with_receipts_and_footer_closes_the_day(sim: FdmsSimulator, box: Device) -> None:
    begin_day(box)
    receipts = [box.receipt(), box.receipt("3.00", 1, None), box.receipt("20.00", 517, "15.5")]
    accepted = upload(box, file_body(box, receipts))
    assert accepted.status == 200 and set(accepted.body) == {"operationID"}
    rows = wait_files(box)
    assert len(rows) == 1
    row = rows[0]
    assert row["fileProcessingStatus"] == "FileProcessingIsSuccessful", row
    assert row["hasFooter"] is True and row["dayNo"] == 1 and row["fileSequence"] == 1
    assert row["operationId"] == accepted.body["operationID"] and row["deviceId"] == OFFLINE
    assert row["invoiceWithValidationErrors"] == [] and row["ipAddress"] == "127.0.0.1"
    day = sim.day(OFFLINE, 1)
    assert day is not None and day["fiscalDayStatus"] == "FiscalDayClosed"
    assert day["fiscalDayOpened"] == box.day_opened
    assert [r["colours"] for r in sim.held_receipts(OFFLINE)] == [[], [], []]
    # sending the same file again is refused: the day is closed
    assert upload(box, file_body(box, receipts)).code == "FILE04"


def test_base64_files_wait_for_the_previous_sequence(sim: FdmsSimulator, box: Device) -> None:
    begin_day(box)
    first = [box.receipt(), box.receipt()]
    second = [box.receipt()]
    assert upload(box, file_body(box, second, footer=True, sequence=2), "base64").status == 200
    sim.process_pending()
    assert [r["fileProcessingStatus"] for r in file_list(box)["rows"]] == ["WaitingForPreviousFile"]
    assert sim.held_receipts(OFFLINE) == []
    assert upload(box, file_body(box, first, footer=False, sequence=1), "base64").status == 200
    rows = wait_files(box)
    assert {r["fileSequence"]: r["fileProcessingStatus"] for r in rows} == {
        1: "FileProcessingIsSuccessful",
        2: "FileProcessingIsSuccessful",
    }
    assert sim.day(OFFLINE, 1)["fiscalDayStatus"] == "FiscalDayClosed"  # type: ignore[index]
    assert len(sim.held_receipts(OFFLINE)) == 3


def test_receipts_already_held_are_skipped_and_red_ones_are_reported(sim: FdmsSimulator, box: Device) -> None:
    begin_day(box)
    good = box.receipt()
    assert upload(box, file_body(box, [good], footer=False)).status == 200
    wait_files(box)
    forged = box.receipt(sign_with=ec.generate_private_key(ec.SECP256R1()))
    assert upload(box, file_body(box, [good, forged], sequence=2)).status == 200
    rows = wait_files(box)
    latest = rows[0]
    assert latest["fileSequence"] == 2 and latest["fileProcessingStatus"] == "FileProcessingWithErrors"
    assert latest["fileProcessingError"] == "ReceiptsWithValidationErrors"
    [invalid] = latest["invoiceWithValidationErrors"]
    assert (
        invalid["receiptGlobalNo"] == 2 and invalid["validationErrors"][0]["validationErrorCode"] == "RCPT020"
    )
    assert len(sim.held_receipts(OFFLINE)) == 2
    day = sim.day(OFFLINE, 1)
    assert day is not None and day["fiscalDayStatus"] == "FiscalDayCloseFailed"
    assert day["fiscalDayClosingErrorCode"] == "ReceiptsWithValidationErrors"


def test_file_refusals(sim: FdmsSimulator, box: Device, device: Device) -> None:
    begin_day(box)
    body = file_body(box, [box.receipt()])
    assert upload(device, body).code == "FILE03"  # device 10001 is Online
    assert device.call("GET", "SubmittedFileList").code == "FILE03"
    huge = dict(body, content={"receipts": [body["content"]["receipts"][0]] * 6000})
    assert len(json.dumps(huge)) > 3 * 1024 * 1024
    assert upload(box, huge).code == "FILE01"
    assert upload(box, b"this is neither JSON nor base64!").code == "FILE02"
    assert upload(box, {"footer": body["footer"], "header": body["header"]}).code == "FILE02"
    no_sequence = {"header": {k: v for k, v in body["header"].items() if k != "fileSequence"}}
    assert upload(box, no_sequence).code == "FILE02"
    broken = json.loads(json.dumps(body))
    del broken["content"]["receipts"][0]["receiptGlobalNo"]
    assert upload(box, broken).code == "FILE02"
    assert upload(box, dict(body, header=dict(body["header"], deviceID=10001))).code == "FILE05"
    assert sim.files(OFFLINE) == []


def test_submitted_file_list_pages_and_filters(sim: FdmsSimulator, clock: FakeClock, box: Device) -> None:
    begin_day(box)
    for sequence in (1, 2, 3):
        assert upload(box, file_body(box, [box.receipt()], footer=False, sequence=sequence)).status == 200
        clock.advance(3600)
    wait_files(box)
    everything = file_list(box)
    assert everything["total"] == 3 and [r["fileSequence"] for r in everything["rows"]] == [3, 2, 1]
    page = file_list(box, "Offset=1&Limit=1&Order=asc")
    assert page["total"] == 3 and [r["fileSequence"] for r in page["rows"]] == [2]
    window = file_list(box, "FileUploadedFrom=2026-03-10T08:30:00&FileUploadedTill=2026-03-10T09:30:00")
    assert [r["fileSequence"] for r in window["rows"]] == [2]
    too_long = box.call(
        "GET",
        "SubmittedFileList",
        query="FileUploadedFrom=2025-01-01T00:00:00&FileUploadedTill=2026-01-01T00:00:00",
    )
    assert too_long.status == 400
    one = file_list(box, f"OperationID={everything['rows'][0]['operationId']}")
    assert [r["fileSequence"] for r in one["rows"]] == [3]
    assert request(sim, "GET", f"/Device/v1/{OFFLINE}/SubmittedFileList").status == 401
