"""Fiscal days on the FDMS simulator: open, receipts and their colours, the asynchronous close, restarts."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from fdms_rig import Device, FakeClock, request

from firmware.core import fdms
from sim.fdms.scenario import Scenario
from sim.fdms.server import FdmsSimulator


def server_key(sim: FdmsSimulator) -> rsa.RSAPublicKey:
    answer = request(sim, "GET", f"/Public/v1/GetServerCertificate?thumbprint={sim.certificate_thumbprint}")
    key = x509.load_pem_x509_certificate(answer.body["certificate"][0].encode()).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def verify(key: rsa.RSAPublicKey, text: str, signed: dict[str, str]) -> None:
    assert signed["hash"] == fdms.hash_b64(text)
    key.verify(base64.b64decode(signed["signature"]), text.encode(), padding.PKCS1v15(), hashes.SHA256())


def test_a_day_opens_takes_signed_receipts_and_closes_with_a_verifying_server_signature(
    sim: FdmsSimulator, device: Device, clock: FakeClock
) -> None:
    key = server_key(sim)
    assert device.open_day().body["fiscalDayNo"] == 1
    ids = []
    for price, tax_id, percent in (("11.50", 3, "15"), ("3.00", 1, None), ("7.75", 2, "0")):
        body = device.receipt(price, tax_id, percent)
        answer = device.submit(body)
        assert answer.status == 200 and "validationErrors" not in answer.body, answer.body
        signed = answer.body["receiptServerSignature"]
        assert signed["certificateThumbprint"] == sim.certificate_thumbprint
        device_signature = body["receipt"]["receiptDeviceSignature"]["signature"]
        verify(
            key,
            fdms.receipt_server_string(device_signature, answer.body["receiptID"], answer.body["serverDate"]),
            signed,
        )
        ids.append(answer.body["receiptID"])
        clock.advance(30)
    assert len(set(ids)) == 3
    close = device.close_body()
    accepted = device.call("POST", "CloseDay", close)
    assert accepted.status == 200 and set(accepted.body) == {"operationID"}
    status = device.wait_status("FiscalDayClosed", "FiscalDayCloseFailed")
    assert status["fiscalDayStatus"] == "FiscalDayClosed", status
    assert status["fiscalDayReconciliationMode"] == "Auto"
    assert status["lastReceiptGlobalNo"] == 3 and status["lastFiscalDayNo"] == 1
    assert status["fiscalDayDocumentQuantities"] == [
        {
            "receiptType": "FiscalInvoice",
            "receiptCurrency": "USD",
            "receiptQuantity": 3,
            "receiptTotalAmount": 22.25,
        }
    ]
    text = fdms.day_server_string(
        10001,
        1,
        device.day_opened[:10],
        status["fiscalDayClosed"],
        "AUTO",
        fdms.day_counters(device.counters),
        close["fiscalDayDeviceSignature"]["signature"],
    )
    verify(key, text, status["fiscalDayServerSignature"])
    assert sim.day(10001, 1)["fiscalDayStatus"] == "FiscalDayClosed"  # type: ignore[index]


def test_resubmitting_a_held_receipt_returns_the_original_answer(sim: FdmsSimulator, device: Device) -> None:
    device.open_day()
    body = device.receipt()
    first = device.submit(body)
    again = device.submit(body)
    assert again.status == 200
    for key in ("receiptID", "serverDate", "receiptServerSignature"):
        assert again.body[key] == first.body[key]
    assert again.body["operationID"] != first.body["operationID"]
    assert len(sim.held_receipts(10001)) == 1


def test_another_receipt_under_a_held_global_number_is_red_and_not_held(
    sim: FdmsSimulator, device: Device
) -> None:
    device.open_day()
    first = device.receipt()
    assert device.submit(first).status == 200
    device.global_no, device.counter = 0, 0
    device.previous_hash = None
    imposter = device.receipt(price="99.00")
    answer = device.submit(imposter)
    assert answer.status == 200
    assert [
        (e["validationErrorCode"], e["validationErrorColor"]) for e in answer.body["validationErrors"]
    ] == [("RCPT012", "Red")]
    assert answer.body["receiptID"] != sim.held_receipts(10001)[0]["receiptID"]
    held = sim.held_receipts(10001)
    assert len(held) == 1 and held[0]["hash"] == first["receipt"]["receiptDeviceSignature"]["hash"]


def test_a_bad_signature_is_red_rcpt020_and_blocks_the_close(sim: FdmsSimulator, device: Device) -> None:
    device.open_day()
    assert device.submit(device.receipt()).status == 200
    forged = device.receipt(sign_with=ec.generate_private_key(ec.SECP256R1()))
    answer = device.submit(forged)
    assert answer.status == 200 and answer.body["receiptID"]
    assert {"validationErrorCode": "RCPT020", "validationErrorColor": "Red"}.items() <= answer.body[
        "validationErrors"
    ][0].items()
    refused = device.close_day()
    assert (refused.status, refused.code) == (422, "FISC02")
    assert "2 (Red)" in refused.body["detail"]
    assert device.status().body["fiscalDayStatus"] == "FiscalDayOpened"
    assert sim.device_summary(10001)["colours"] == {"2": ["Red"]}


def test_a_receipt_after_a_gap_is_grey_until_the_gap_is_filled(sim: FdmsSimulator, device: Device) -> None:
    device.open_day()
    first, second, third = device.receipt(), device.receipt(), device.receipt()
    assert device.submit(first).status == 200
    late = device.submit(third)
    assert [e["validationErrorColor"] for e in late.body["validationErrors"]] == ["Grey"]
    assert device.close_day().code == "FISC02"
    assert device.submit(second).body.get("validationErrors") is None
    assert [r["colours"] for r in sim.held_receipts(10001)] == [[], [], []]
    assert device.close_day().status == 200
    assert (
        device.wait_status("FiscalDayClosed", "FiscalDayCloseFailed")["fiscalDayStatus"] == "FiscalDayClosed"
    )


def test_day_numbers_and_states_are_enforced(sim: FdmsSimulator, device: Device, scenario: Scenario) -> None:
    assert device.submit(device.receipt()).code == "RCPT01"  # no day open yet
    device.global_no = device.counter = 0
    assert device.close_day().code == "FISC04"
    assert device.open_day(day_no=2).code == "FISC01"  # the first day is 1
    assert device.open_day(day_no=1).status == 200
    assert device.open_day().code == "FISC01"  # already open
    assert device.submit(device.receipt()).status == 200
    scenario.server.close_delay_seconds = 30
    assert device.close_day().status == 200
    assert device.status().body["fiscalDayStatus"] == "FiscalDayCloseInitiated"
    assert device.close_day().code == "FISC03"
    assert device.submit(device.receipt()).code == "RCPT01"
    device.global_no -= 1
    device.counter -= 1
    sim.process_pending()
    assert device.status().body["fiscalDayStatus"] == "FiscalDayClosed"
    assert device.close_day().code == "FISC04"
    assert device.open_day(day_no=3).code == "FISC01"
    assert device.open_day().body["fiscalDayNo"] == 2
    second_day = device.submit(device.receipt())
    assert second_day.status == 200 and "validationErrors" not in second_day.body, second_day.body


def test_a_failed_close_says_why_and_can_be_sent_again(sim: FdmsSimulator, device: Device) -> None:
    device.open_day()
    device.submit(device.receipt())
    right = device.close_body()
    device.counters[next(iter(device.counters))] += 100  # a counter the receipts do not add up to
    wrong = device.close_body()
    assert device.call("POST", "CloseDay", wrong).status == 200
    failed = device.wait_status("FiscalDayClosed", "FiscalDayCloseFailed")
    assert failed["fiscalDayStatus"] == "FiscalDayCloseFailed"
    assert failed["fiscalDayClosingErrorCode"] == "CountersMismatch"
    forged = dict(right, fiscalDayDeviceSignature=wrong["fiscalDayDeviceSignature"])
    assert device.call("POST", "CloseDay", forged).status == 200
    assert (
        device.wait_status("FiscalDayCloseFailed")["fiscalDayClosingErrorCode"] == "BadCertificateSignature"
    )
    assert device.call("POST", "CloseDay", right).status == 200
    assert device.wait_status("FiscalDayClosed")["fiscalDayStatus"] == "FiscalDayClosed"


def test_offline_devices_get_dev01_on_online_calls(sim: FdmsSimulator, device: Device) -> None:
    sim.set_mode(10001, "Offline")
    assert device.open_day().code == "DEV01"
    assert device.status().code == "DEV01"
    assert device.call("POST", "Ping").status == 200


def test_the_state_survives_a_restart(
    scenario: Scenario, state_dir: Path, clock: FakeClock, new_device: Callable[[int], Device], tmp_path: Path
) -> None:
    first = FdmsSimulator(scenario, state_dir=state_dir, clock=clock).start()
    made = Device(first, 10001, tmp_path / "box")
    assert made.register().status == 200
    made.open_day()
    body = made.receipt()
    original = made.submit(body).body
    thumbprint = first.certificate_thumbprint
    first.set_mode(10002, "Offline")
    first.stop()

    second = FdmsSimulator(scenario, state_dir=state_dir, clock=clock).start()
    try:
        made.sim = second
        assert second.certificate_thumbprint == thumbprint
        again = made.submit(body).body
        assert (again["receiptID"], again["serverDate"]) == (original["receiptID"], original["serverDate"])
        nxt = made.submit(made.receipt())
        assert nxt.status == 200 and "validationErrors" not in nxt.body
        assert nxt.body["receiptID"] == original["receiptID"] + 1
        assert second.device_summary(10002)["mode"] == "Offline"
        assert made.close_day().status == 200
        assert made.wait_status("FiscalDayClosed")["lastReceiptGlobalNo"] == 2
    finally:
        second.stop()
