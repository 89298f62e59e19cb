"""A box against the FDMS simulator: register, open, issue, deliver, close; with faults and outages."""

from __future__ import annotations

import json
import random

from fdms_site import Site
from workload import Shop

from firmware.core import fdms
from firmware.delivery import IDLE
from firmware.journal import CLOSED
from sim.fdms.judge import Held, recompute_counters


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
        [Held(h["receipt"], h["receiptID"], h["fiscalDayNo"], h["colours"]) for h in held if h["fiscalDayNo"] == day_no]
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
        site.sim.set_faults(endpoint, rate=0.3, kinds=["500", "502", "429", "reset", "lost", "latency"], seed=3)
    box.open_day()
    shop = Shop(seed=9, device_id=10002)
    issue_day(site, box, delivery, shop, 150)
    box.close_day()
    site.settle(delivery)
    site.sim.clear_faults()
    assert_day_closed_and_matching(site, box, 10002, 1, 150)
