"""A box against the FDMS simulator: register, open, issue, deliver, close; with faults and outages."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest
from fdms_site import Site

from firmware.core import fdms
from firmware.core.errors import FiscalError
from firmware.delivery import IDLE
from firmware.journal import CLOSED
from host_tools.journal_file import verify_export
from hardware.signatures import load_public_key
from hardware.signatures import verify as verify_signature
from sim.fdms.judge import Held, recompute_counters
from sim.shop import Shop


def issue_day(site: Site, box, delivery, shop: Shop, count: int, deliver_every: int = 25) -> list[dict]:
    results = []
    rng = random.Random(count)
    for n in range(1, count + 1):
        site.clock.advance(rng.randint(2, 40))
        sale = shop.next_sale()
        result = box.issue(sale)
        assert not [w for w in result["warnings"] if w["colour"] == "Red"]
        shop.issued(sale, result)
        results.append(result)
        if deliver_every and n % deliver_every == 0:
            site.settle(delivery)
    return results


def assert_day_closed_and_matching(site: Site, box, device_id: int, day_no: int, count: int) -> None:
    day = box.fiscal_day(day_no)
    assert day["status"] == CLOSED, day
    assert day["closing_error"] is None
    status = box.fdms.get_status().body
    assert status["fiscalDayStatus"] == "FiscalDayClosed"
    assert status["lastFiscalDayNo"] == day_no
    held = site.sim.held_receipts(device_id)
    numbers = [h["receiptGlobalNo"] for h in held]
    assert numbers == list(range(1, count + 1))  # each once, none missing
    assert all(not h["colours"] for h in held), [h["validationErrors"] for h in held if h["colours"]]
    mine = fdms.counters_wire(fdms.day_counters(box.journal.counters(day_no)))
    theirs = recompute_counters(
        [
            Held(h["receipt"], h["receiptID"], h["fiscalDayNo"], h["colours"])
            for h in held
            if h["fiscalDayNo"] == day_no
        ]
    )
    assert json.loads(json.dumps(mine, default=str)) == json.loads(json.dumps(theirs, default=str))
    for n in range(1, count + 1):
        row = box.journal.delivery(n)
        assert row["state"] == "delivered" and row["receipt_id"] is not None
        assert row["errors"] == [], row["errors"]  # includes the box's own check of FDMS's signature
    assert box.audit()["clean"]


def test_a_day_of_500_mixed_receipts_is_delivered_in_order_and_closes(site: Site) -> None:
    box, delivery = site.box(10001)
    box.open_day()
    shop = Shop(seed=5, device_id=10001)
    results = issue_day(site, box, delivery, shop, 500)
    kinds = {(r["type"], r["currency"]) for r in results}
    assert {"FiscalInvoice", "CreditNote", "DebitNote"} <= {k for k, _ in kinds}
    assert {"USD", "ZWG"} <= {c for _, c in kinds}
    box.close_day()
    site.settle(delivery)
    assert_day_closed_and_matching(site, box, 10001, 1, 500)
    assert delivery.step() in (IDLE, "pinged")


def test_with_30_percent_faults_every_receipt_arrives_once_in_order(site: Site) -> None:
    box, delivery = site.box(10002)
    for endpoint in ("SubmitReceipt", "OpenDay", "CloseDay", "GetStatus"):
        site.sim.set_faults(
            endpoint, rate=0.3, kinds=["500", "502", "429", "reset", "lost", "latency"], seed=3
        )
    box.open_day()
    shop = Shop(seed=9, device_id=10002)
    issue_day(site, box, delivery, shop, 150)
    box.close_day()
    site.settle(delivery)
    site.sim.clear_faults()
    assert_day_closed_and_matching(site, box, 10002, 1, 150)
    attempts = [box.journal.delivery(n)["attempts"] for n in range(1, 151)]
    assert sum(attempts) > 150 * 1.2  # the faults really struck: many receipts needed more than one call
    assert max(attempts) >= 3


def test_an_outage_across_the_day_limit_stops_nothing_and_both_days_close(site: Site) -> None:
    box, delivery = site.box(10003)
    box.open_day()
    shop = Shop(seed=11, device_id=10003)
    issue_day(site, box, delivery, shop, 10, deliver_every=10)
    site.sim.set_faults("*", rate=1.0, kinds=["reset", "500"], seed=1)
    for _ in range(28):  # 21 hours of sales with FDMS unreachable
        site.clock.advance(45 * 60)
        sale = shop.next_sale()
        shop.issued(sale, box.issue(sale))
        assert delivery.step() in ("waiting", "blocked")
    site.clock.advance(3 * 3600)  # the day's 24 hours are over
    box.close_day()
    opened = box.open_day()  # the shop goes on: day 2 opens before FDMS has even heard of day 1's close
    assert opened["day_no"] == 2 and opened["warnings"]
    for _ in range(12):
        site.clock.advance(120)
        sale = shop.next_sale()
        shop.issued(sale, box.issue(sale))
    assert box.journal.outbox_counts() == {"delivered": 10, "pending": 40}
    site.sim.clear_faults()
    site.settle(delivery)
    assert box.fiscal_day(1)["status"] == CLOSED
    assert box.fiscal_day(2)["status"] == "FiscalDayOpened" and box.fiscal_day(2)["open_sent_at"]
    assert box.journal.outbox_counts() == {"delivered": 50}
    held = site.sim.held_receipts(10003)
    assert [h["receiptGlobalNo"] for h in held] == list(range(1, 51))
    assert all("Red" not in h["colours"] and "Grey" not in h["colours"] for h in held)
    box.close_day()
    site.settle(delivery)
    assert box.fiscal_day(2)["status"] == CLOSED
    assert box.audit()["clean"]


def test_an_offline_mode_device_closes_its_day_through_submit_file(site: Site) -> None:
    box, delivery = site.box(10004)
    assert box.operating_mode() == "Offline"
    box.open_day()
    shop = Shop(seed=13, device_id=10004)
    issue_day(site, box, delivery, shop, 40, deliver_every=0)
    assert delivery.step() == IDLE  # an offline device reports a day once it is closed
    box.close_day()
    files = box.day_files(1)
    assert len(files) == 1 and files[0]["has_footer"]
    site.settle(delivery)
    assert box.fiscal_day(1)["status"] == CLOSED, box.fiscal_day(1)
    assert box.journal.outbox_counts() == {"filed": 40}
    assert [h["receiptGlobalNo"] for h in site.sim.held_receipts(10004)] == list(range(1, 41))
    assert site.sim.day(10004, 1)["fiscalDayStatus"] == "FiscalDayClosed"
    assert box.audit()["clean"]


def test_offline_files_split_under_the_size_limit_keep_the_footer_last(site: Site) -> None:
    box, _ = site.box(10004)
    box.open_day()
    shop = Shop(seed=17, device_id=10004)
    for _ in range(30):
        site.clock.advance(30)
        sale = shop.next_sale()
        shop.issued(sale, box.issue(sale))
    box.close_day()
    files = box.day_files(1, limit=8000)
    assert len(files) > 2
    assert all(len(f["body"]) <= 8000 for f in files)
    assert [f["has_footer"] for f in files] == [False] * (len(files) - 1) + [True]
    numbers = [n for f in files for n in range(f["first_global_no"], f["last_global_no"] + 1)]
    assert numbers == list(range(1, 31))
    parsed = [json.loads(f["body"]) for f in files]
    assert [p["header"]["fileSequence"] for p in parsed] == list(range(1, len(files) + 1))


def test_the_certificate_is_renewed_with_a_new_key_mid_life(site: Site) -> None:
    box, delivery = site.box(10001)
    before = box.keys.certificate_pem()
    old_key = box.keys.public_key_pem()
    box.open_day()
    shop = Shop(seed=19, device_id=10001)
    issue_day(site, box, delivery, shop, 5, deliver_every=0)
    delivery.renew_days_before = 400  # the certificate (365 days) is now due for renewal
    # What the old key signed goes first: FDMS checks each receipt with the certificate it holds on arrival.
    assert [delivery.step() for _ in range(7)] == ["opened"] + ["sent"] * 5 + ["renewed"]
    delivery.renew_days_before = 30
    assert box.keys.certificate_pem() != before and box.keys.public_key_pem() != old_key
    assert box.journal.retired_keys()[0]["last_global_no"] == 5
    issue_day(site, box, delivery, shop, 5, deliver_every=0)
    box.close_day()
    site.settle(delivery)
    assert_day_closed_and_matching(site, box, 10001, 1, 10)  # the audit verifies both keys' receipts
    # Offline too: an export after the renewal checks the older receipts with the retired key it lists.
    exported = site.root / "after-renewal.json"
    box.export_journal(1, 10, exported)
    report = verify_export(json.loads(exported.read_text()), load_public_key(box.keys.public_key_pem()))
    assert report["clean"] and report["signatures_checked"], report["problems"]


def test_the_last_ping_is_local_time_as_every_other_time_of_the_status(site: Site) -> None:
    box, delivery = site.box(10002)
    site.settle(delivery)
    pinged = box.status()["fdms"]["delivery"]["last_ping"]
    assert isinstance(pinged, str) and pinged == box.now_local()[: len(pinged)]


def test_a_box_clock_behind_fdms_is_reported_and_changes_no_receipt(site: Site) -> None:
    box, delivery = site.box(10002)
    box.open_day()
    shop = Shop(seed=23, device_id=10002)
    issue_day(site, box, delivery, shop, 3, deliver_every=0)
    site.settle(delivery)
    assert not [w for w in box.status()["warnings"] if w["code"] == "BOX_CLOCK_SKEW"]
    dates = [box.journal.receipt(n)["date"] for n in (1, 2, 3)]
    site.sim.set_clock_offset(900)  # FDMS's clock is now a quarter of an hour ahead of the box's
    issue_day(site, box, delivery, shop, 1, deliver_every=1)
    skew = [w for w in box.status()["warnings"] if w["code"] == "BOX_CLOCK_SKEW"]
    assert len(skew) == 1 and "900 s behind" in skew[0]["message"]
    assert [box.journal.receipt(n)["date"] for n in (1, 2, 3)] == dates
    assert box.audit()["clean"]


def test_a_note_may_name_its_original_by_fdms_receipt_id(site: Site) -> None:
    box, delivery = site.box(10002)
    box.open_day()
    shop = Shop(seed=29, device_id=10002)
    sale = shop.next_sale()
    while sale["receiptType"] != "FiscalInvoice":
        sale = shop.next_sale()
    shop.issued(sale, box.issue(sale))
    note = shop.next_sale()
    while note["receiptType"] != "CreditNote":
        note = shop.next_sale()
    note["creditDebitNote"] = {"receiptID": 999_999}  # FDMS has not given the invoice an ID yet
    site.clock.advance(5)
    with pytest.raises(FiscalError) as refused:
        box.issue(note)
    assert refused.value.code == "RCPT032"
    site.settle(delivery)
    note["creditDebitNote"] = {"receiptID": box.journal.delivery(1)["receipt_id"]}
    assert box.issue(note)["type"] == "CreditNote"
    # Notes by receiptID count against the invoice like notes by place: credit it again until nothing is left.
    for n in range(50):
        site.clock.advance(5)
        try:
            box.issue({**note, "invoiceNo": f"CN-again-{n}"})
        except FiscalError as error:
            assert error.code == "RCPT035"
            break
    else:
        raise AssertionError("the invoice was credited fifty times over")
    site.settle(delivery)
    held = site.sim.held_receipts(10002)
    assert [h["receiptGlobalNo"] for h in held] == list(range(1, 3 + n))
    assert not [h for h in held if h["colours"]]
    assert box.audit()["clean"]


def test_a_sale_during_renewal_waits_and_is_signed_with_the_new_key(site: Site) -> None:
    box, delivery = site.box(10003)
    box.open_day()
    shop = Shop(seed=31, device_id=10003)
    issue_day(site, box, delivery, shop, 2, deliver_every=0)
    before = box.keys.certificate_pem()
    with pytest.raises(FiscalError) as refused:
        box.renew_certificate()
    assert refused.value.code == "BOX_RENEWAL_WAIT" and "receipt 1" in refused.value.message
    assert box.keys.certificate_pem() == before  # nothing changed
    site.settle(delivery)
    site.sim.set_faults("IssueCertificate", rate=1.0, kinds=["latency"], latency_ms=600)
    renewal = threading.Thread(target=box.renew_certificate)
    renewal.start()
    time.sleep(0.2)  # IssueCertificate is on its way
    site.clock.advance(10)
    sale = shop.next_sale()
    result = box.issue(sale)  # waits for the switch
    renewal.join()
    assert box.keys.certificate_pem() != before
    row = box.journal.receipt(result["global_no"])
    previous = box.journal.receipt(result["global_no"] - 1)
    receipt = fdms.parse_receipt(json.loads(row["body"], parse_float=str))
    text = fdms.receipt_string(10003, receipt, previous["hash"])
    new_key = load_public_key(box.keys.public_key_pem())
    assert verify_signature(new_key, text.encode(), fdms.unb64(row["signature"]))
    site.sim.clear_faults()
    site.settle(delivery)
    held = site.sim.held_receipts(10003)
    assert [h["receiptGlobalNo"] for h in held] == [1, 2, 3] and not [h for h in held if h["colours"]]


def test_an_offline_day_fdms_failed_is_closed_again_with_new_files(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    box, delivery = site.box(10004)
    box.open_day()
    shop = Shop(seed=37, device_id=10004)
    issue_day(site, box, delivery, shop, 6, deliver_every=0)
    real_sign = box.keys.sign
    monkeypatch.setattr(box.keys, "sign", lambda data: real_sign(data + b"x"))  # a close FDMS cannot verify
    box.close_day()
    monkeypatch.setattr(box.keys, "sign", real_sign)
    site.settle(delivery)
    day = box.fiscal_day(1)
    assert (day["status"], day["closing_error"]) == ("FiscalDayCloseFailed", "BadCertificateSignature")
    assert [f["sequence"] for f in box.sent_files(1)] == [1]
    site.clock.advance(60)
    box.close_day()  # signed again, this time right
    assert [f["sequence"] for f in box.day_files(1)] == [2]  # numbered on from the file FDMS failed
    site.settle(delivery)
    assert box.fiscal_day(1)["status"] == CLOSED
    assert [f["fileSequence"] for f in site.sim.files(10004)] == [1, 2]
    assert [h["receiptGlobalNo"] for h in site.sim.held_receipts(10004)] == list(range(1, 7))
    assert site.sim.day(10004, 1)["fiscalDayStatus"] == "FiscalDayClosed"
