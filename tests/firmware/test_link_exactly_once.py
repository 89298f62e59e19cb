"""Exactly once from the POS (docs/link.md section 6): each request ID is journalled with its receipt."""

from __future__ import annotations

import json

import pytest
from box_rig import SETTINGS, Rig, sale
from link_rig import journal_digest

from firmware import journal as journal_module
from firmware.box import Box
from firmware.core.errors import FiscalError
from firmware.journal import Journal

ISSUE_FIELDS = {
    "global_no", "counter", "day_no", "date", "type", "currency", "total", "hash", "signature", "qr_url",
    "verification_code", "printed", "warnings", "repeated",
}  # fmt: skip
SAME = ISSUE_FIELDS - {"repeated", "warnings"}


def test_the_same_request_id_and_sale_returns_the_receipt_already_issued(box: Box) -> None:
    one = sale()
    first = box.issue(one, request_id="pos-1:0001")
    assert first["repeated"] is False and set(first) == ISSUE_FIELDS
    before = journal_digest(box.journal)
    again = box.issue(json.loads(json.dumps(one)), request_id="pos-1:0001")
    assert again["repeated"] is True and set(again) == ISSUE_FIELDS
    assert {k: again[k] for k in SAME} == {k: first[k] for k in SAME}
    assert journal_digest(box.journal) == before
    assert box.status()["last_global_no"] == 1


def test_request_ids_are_kept_per_host_key(box: Box) -> None:
    """Till 2 sending till 1's sale under till 1's ID gets a receipt of its own, never till 1's."""
    one = sale("3.00")
    first = box.issue(one, request_id="0001", host="aa" * 16)
    with pytest.raises(FiscalError) as refused:  # a new sale to the box: its invoice number is taken
        box.issue(one, request_id="0001", host="bb" * 16)
    assert refused.value.code == "RCPT013"
    own = sale("3.00")  # till 2's own sale under the same ID: issued
    other = box.issue(own, request_id="0001", host="bb" * 16)
    assert other["repeated"] is False and other["global_no"] == first["global_no"] + 1
    assert box.issue(one, request_id="0001", host="aa" * 16)["global_no"] == first["global_no"]
    assert box.issue(own, request_id="0001", host="bb" * 16)["global_no"] == other["global_no"]
    with pytest.raises(FiscalError) as reused:
        box.issue(sale("4.00"), request_id="0001", host="bb" * 16)
    assert reused.value.code == "BOX_LINK_REQUEST_REUSED"
    assert box.journal.request("0001", "aa" * 16)[1] == first["global_no"]
    assert box.journal.request("0001") is None  # not sent over the link: a third space of IDs


def test_key_order_and_the_receipt_wrapper_do_not_make_another_sale(box: Box) -> None:
    one = sale()
    box.issue(one, request_id="r1")
    reordered = dict(reversed(list(one.items())))
    assert box.issue(reordered, request_id="r1")["repeated"]
    assert box.issue({"receipt": one}, request_id="r1")["repeated"]
    assert box.status()["last_global_no"] == 1


def test_another_sale_under_a_used_request_id_is_refused_and_writes_nothing(box: Box) -> None:
    one = sale()
    box.issue(one, request_id="r1")
    before = journal_digest(box.journal)
    with pytest.raises(FiscalError) as refused:
        box.issue({**one, "invoiceNo": "OTHER-1"}, request_id="r1")
    assert refused.value.code == "BOX_LINK_REQUEST_REUSED" and refused.value.field == "rid"
    assert journal_digest(box.journal) == before


def test_the_retry_finds_its_receipt_after_the_journal_is_reopened(rig: Rig, box: Box) -> None:
    one = sale()
    first = box.issue(one, request_id="after-power-cut")
    box.issue(sale(), request_id="another")
    reopened = rig.box()
    before = journal_digest(reopened.journal)
    again = reopened.issue(one, request_id="after-power-cut")
    assert again["repeated"] and {k: again[k] for k in SAME} == {k: first[k] for k in SAME}
    assert journal_digest(reopened.journal) == before
    with pytest.raises(FiscalError) as refused:
        reopened.issue(sale(), request_id="after-power-cut")
    assert refused.value.code == "BOX_LINK_REQUEST_REUSED"


def test_a_refused_sale_leaves_its_request_id_free(box: Box) -> None:
    bad = sale(receiptCurrency="EUR")
    with pytest.raises(FiscalError):
        box.issue(bad, request_id="r1")
    fixed = {**bad, "receiptCurrency": "USD"}
    assert box.issue(fixed, request_id="r1")["repeated"] is False


def test_a_retry_is_answered_even_after_the_day_closed(box: Box) -> None:
    one = sale()
    first = box.issue(one, request_id="late")
    box.close_day()
    again = box.issue(one, request_id="late")
    assert again["repeated"] and again["global_no"] == first["global_no"]


def test_a_sale_without_a_request_id_is_issued_every_time(box: Box) -> None:
    one = sale()
    assert box.issue(one)["global_no"] == 1
    assert box.issue({**one, "invoiceNo": "T-again"})["global_no"] == 2
    assert box.journal.db.execute("SELECT count(*) FROM requests").fetchone()[0] == 0


@pytest.mark.parametrize("rid", ["", "x" * 65, "with space", "é", 7])
def test_a_malformed_request_id_is_refused(box: Box, rid: object) -> None:
    with pytest.raises(FiscalError) as refused:
        box.issue(sale(), request_id=rid)  # type: ignore[arg-type]
    assert refused.value.code == "BOX_LINK_SCHEMA" and refused.value.field == "rid"
    assert box.status()["last_global_no"] == 0


def test_a_version_3_journal_gains_the_request_table(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "SCHEMA_VERSION", 3)
    old = rig.box()
    old.provision(SETTINGS)
    old.open_day()
    rig.clock.advance(60)
    old.issue(sale())
    rig.close()
    monkeypatch.undo()
    with Journal(rig.journal_path) as journal:
        assert journal.db.execute("PRAGMA user_version").fetchone()[0] == 4
        assert journal.request("r1") is None
    box = rig.box()
    assert box.boot["clean"]
    assert box.issue(sale(), request_id="r1")["global_no"] == 2
    assert box.audit()["clean"]
