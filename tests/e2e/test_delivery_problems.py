"""Delivery a person can follow, against the FDMS simulator on the injected clock: a close FDMS did not make
(in either form an FDMS reports it) is retried a few times, never in a loop; the box's own check of FDMS's
signatures is its finding, not FDMS's verdict; an unreachable FDMS is waited for only so long."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fdms_site import Site
from test_fdms_delivery import issue_day

from firmware.delivery import CLOSE_ATTEMPTS, blocks_close, read_state, state_path
from firmware.journal import CLOSE_FAILED, CLOSED
from sim.fdms.scenario import Scenario
from sim.shop import Shop


def calls(caplog: pytest.LogCaptureFixture, endpoint: str) -> int:
    """How many calls the box made to `endpoint` (the FDMS client logs one line per call)."""
    lines = [r.fields for r in caplog.records if r.name == "firmware.fdms_client"]  # type: ignore[attr-defined]
    return sum(1 for line in lines if line.get("endpoint") == endpoint)


@pytest.fixture
def failing_site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    scenario = Scenario.default()
    scenario.server.failed_close_status = request.param
    scenario.server.close_delay_seconds = 0  # the close is judged by the next GetStatus: calls are countable
    made = Site(tmp_path, scenario)
    yield made
    made.close()


@pytest.mark.parametrize("failing_site", ["FiscalDayOpened", "FiscalDayCloseFailed"], indirect=True)
def test_a_failed_close_in_either_form_is_sent_a_few_times_under_back_off_then_recorded(
    failing_site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    site = failing_site
    box, delivery = site.box(10001)
    box.open_day()
    issue_day(site, box, delivery, Shop(seed=41, device_id=10001), 4, deliver_every=0)
    site.settle(delivery)
    real_sign = box.keys.sign
    monkeypatch.setattr(box.keys, "sign", lambda data: real_sign(data + b"x"))  # a close FDMS cannot verify
    box.close_day()
    monkeypatch.setattr(box.keys, "sign", real_sign)
    seen: list[dict[str, Any] | None] = []
    shown: list[dict[str, Any]] = []  # what `status` says at each change

    def told(problem: dict[str, Any] | None) -> None:
        seen.append(problem)
        shown.append(box.status())

    delivery.on_problem = told
    caplog.set_level(logging.INFO, logger="firmware.fdms_client")
    started = site.clock.now()
    site.settle(delivery, max_steps=200)  # a loop would run out of steps here
    # One GetStatus before the first CloseDay, one after each, one before each CloseDay sent again.
    assert calls(caplog, "CloseDay") == CLOSE_ATTEMPTS
    assert calls(caplog, "GetStatus") == 2 * CLOSE_ATTEMPTS
    assert site.clock.now() - started >= 0.5 * 0.5 * (1 + 2)  # the sends again waited out the back-off
    day = box.fiscal_day(1)
    assert (day["status"], day["closing_error"]) == (CLOSE_FAILED, "BadCertificateSignature")
    assert [p and p["code"] for p in seen] == ["BOX_CLOSE_FAILED"] * CLOSE_ATTEMPTS
    assert all("BadCertificateSignature" in p["message"] for p in seen if p)
    assert "attempt 1 of 3" in seen[0]["message"] and "after 3 attempts" in seen[-1]["message"]  # type: ignore[index]
    # While the close is being sent again the journal's day still reads CloseInitiated; status names the code.
    assert shown[0]["day"]["status"] == "FiscalDayCloseInitiated"
    [retrying] = [w for w in shown[0]["warnings"] if w["code"] == "BOX_CLOSE_FAILED"]
    assert "BadCertificateSignature" in retrying["message"] and "next attempt" in retrying["message"]
    assert delivery.stopped is not None and delivery.stopped["code"] == "BOX_CLOSE_FAILED"
    status = box.status()
    assert status["day"]["status"] == CLOSE_FAILED
    failed = [w for w in status["warnings"] if w["code"] == "BOX_CLOSE_FAILED"]
    assert len(failed) == 1 and "BadCertificateSignature" in failed[0]["message"]
    # Nothing more goes to FDMS for this close, however long delivery runs: a person closes the day again.
    for _ in range(20):
        site.clock.advance(600)
        delivery.step()
    assert calls(caplog, "CloseDay") == CLOSE_ATTEMPTS
    box.close_day()  # signed again, this time right
    site.settle(delivery)
    assert box.fiscal_day(1)["status"] == CLOSED and delivery.stopped is None
    assert box.status()["warnings"] == []


def test_a_server_signature_the_box_cannot_verify_is_its_own_finding_and_blocks_no_close(
    site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    box, delivery = site.box(10002)
    real_sign = site.sim.ca.sign
    # Another FDMS: it signs its receipts and closes over a string other than the one the box builds.
    monkeypatch.setattr(site.sim.ca, "sign", lambda text: real_sign(text + "|"))
    caplog.set_level(logging.WARNING, logger="firmware.delivery")
    box.open_day()
    issue_day(site, box, delivery, Shop(seed=43, device_id=10002), 5, deliver_every=0)
    box.close_day()
    site.settle(delivery)
    day = box.fiscal_day(1)
    assert (day["status"], day["closing_error"]) == (CLOSED, "BOX_SERVER_SIGNATURE")  # FDMS closed it
    assert delivery.stopped is None
    assert all(not h["colours"] for h in site.sim.held_receipts(10002))  # FDMS flagged nothing
    for n in range(1, 6):
        [finding] = box.journal.delivery(n)["errors"]
        assert (finding["code"], finding["source"], finding["colour"]) == (
            "BOX_SERVER_SIGNATURE",
            "box",
            None,
        )
    status = box.status()
    assert status["fdms"]["flagged"] == []
    assert [(f["global_no"], f["day_no"]) for f in status["fdms"]["security"]] == [
        (1, None),
        (2, None),
        (3, None),
        (4, None),
        (5, None),
        (None, 1),
    ]
    [warning] = status["warnings"]
    assert warning["code"] == "BOX_SERVER_SIGNATURE"
    assert "box's own check" in warning["message"] and "receipt 1 and 5 more" in warning["message"]
    assert "not FDMS's verdict" in warning["message"]
    outbox = box.outbox()
    assert outbox["flagged"] == [] and len(outbox["security"]) == 6
    logged = [r for r in caplog.records if r.name == "firmware.delivery"]
    assert [r.fields["what"] for r in logged if r.getMessage() == "delivery.server_signature"] == [  # type: ignore[attr-defined]
        "receipt 1",
        "receipt 2",
        "receipt 3",
        "receipt 4",
        "receipt 5",
        "the close of day 1",
    ]
    assert box.audit()["clean"]  # the findings are in the journal's log as they are in its tables
    # An older box recorded the same finding as a Red flag: it blocks no close either.
    assert not blocks_close({"code": "BOX_SERVER_SIGNATURE", "colour": "Red", "message": "..."})
    assert blocks_close({"code": "RCPT020", "colour": "Red", "message": "..."})


def test_a_close_answered_without_a_server_signature_is_shown(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    box, delivery = site.box(10003)
    box.open_day()
    issue_day(site, box, delivery, Shop(seed=47, device_id=10003), 3, deliver_every=0)
    site.settle(delivery)
    assert not state_path(box.journal.path).exists()  # all went well: delivery wrote nothing
    monkeypatch.setattr(site.sim.ca, "sign", lambda text: {})  # FDMS closes the day and signs nothing
    box.close_day()
    site.settle(delivery)
    day = box.fiscal_day(1)
    assert (day["status"], day["closing_error"]) == (CLOSED, "BOX_SERVER_SIGNATURE_MISSING")
    [warning] = box.status()["warnings"]
    assert warning["code"] == "BOX_SERVER_SIGNATURE_MISSING" and "the close of day 1" in warning["message"]
    assert box.outbox()["security"][0]["day_no"] == 1


def test_an_unreachable_fdms_is_waited_for_only_as_long_as_asked_and_said_for_status(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    box, delivery = site.box(10001)
    box.open_day()
    issue_day(site, box, delivery, Shop(seed=53, device_id=10001), 3, deliver_every=0)
    site.sim.set_faults("*", rate=1.0, kinds=["reset"])
    caplog.set_level(logging.INFO, logger="firmware.fdms_client")
    started, began = site.clock.now(), box.now_local()
    site.settle(delivery, max_steps=1000, max_wait=600)
    assert 600 <= site.clock.now() - started <= 600 + 1
    stopped = delivery.stopped
    assert stopped is not None and stopped["code"] == "BOX_FDMS_UNAVAILABLE"
    assert "Nothing was delivered for 600 s" in stopped["message"]
    assert calls(caplog, "OpenDay") < 30  # the back-off (at most 60 s here), not a loop
    # The state is where a `status` in another process finds it, with when it began and what comes next.
    written = read_state(state_path(box.journal.path))
    assert written is not None and written["problem"]["code"] == "BOX_FDMS_UNAVAILABLE"
    assert written["problem"]["since"] == began and written["problem"]["next_attempt"] > box.now_local()
    box.delivery = None  # as `status` sees it: no worker in its process
    info = box.status()
    assert info["fdms"]["delivery"]["problem"]["code"] == "BOX_FDMS_UNAVAILABLE"
    assert info["fdms"]["delivery"]["waiting"] == 3
    [warning] = [w for w in info["warnings"] if w["code"] == "BOX_FDMS_UNAVAILABLE"]
    assert "3 receipts waiting" in warning["message"] and "next attempt" in warning["message"]
    site.clock.advance(3600)  # and nobody runs delivery any more
    [stale] = [w for w in box.status()["warnings"] if w["code"] == "BOX_FDMS_UNAVAILABLE"]
    assert "was due" in stale["message"] and "is `fiscalbox-device deliver` running?" in stale["message"]
    box.delivery = delivery
    site.sim.clear_faults()
    site.settle(delivery)
    assert delivery.stopped is None and box.journal.outbox_counts() == {"delivered": 3}
    assert read_state(state_path(box.journal.path))["problem"] is None  # type: ignore[index]
    box.delivery = None
    assert box.status()["fdms"]["delivery"]["problem"] is None


def test_a_device_certificate_fdms_refuses_stops_delivery_for_a_person(tmp_path: Path) -> None:
    scenario = Scenario.default()
    scenario.server.certificate_days = 0.001  # about 86 s
    site = Site(tmp_path, scenario)
    try:
        box, delivery = site.box(10001)
        box.open_day()
        issue_day(site, box, delivery, Shop(seed=59, device_id=10001), 2, deliver_every=0)
        site.clock.advance(600)  # the certificate expired before anything went out
        site.settle(delivery, max_steps=50)
        stopped = delivery.stopped
        assert stopped is not None and stopped["code"] == "BOX_FDMS_AUTH" and stopped["needs_person"]
        [warning] = [w for w in box.status()["warnings"] if w["code"] == "BOX_FDMS_AUTH"]
        assert warning["colour"] == "Red" and "2 receipts waiting" in warning["message"]
    finally:
        site.close()
