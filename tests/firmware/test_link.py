"""The link server (docs/link.md sections 2-7): every refusal changes nothing, roles, nonces, jobs, logs."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from box_rig import Rig, sale
from link_rig import Host, StandIn, command_of, journal_digest

from firmware import cose
from firmware.box import Box
from firmware.core import smp
from firmware.core.errors import FiscalError
from firmware.hosts import HostKeys
from firmware.link import CHUNK, COMMANDS, Link

AT = "2026-11-22T08:00:00"


@pytest.fixture
def link(box: Box, tmp_path: Path) -> Iterator[Link]:
    made = Link(StandIn(box, tmp_path), HostKeys(tmp_path / "hosts.json"))
    yield made
    made.join_jobs()
    made.close()


@pytest.fixture
def operator(link: Link) -> Host:
    host = Host(link)
    link.hosts.enroll(host.der, "operator", "office", AT)
    return host


@pytest.fixture
def pos(link: Link, operator: Host) -> Host:
    host = Host(link)
    link.hosts.enroll(host.der, "pos", "till 1", AT)
    return host


def state(link: Link) -> tuple[str, bytes]:
    """The journal's digest and the host keys file: a refusal changes neither."""
    path = link.hosts.path
    return journal_digest(link.device.box.journal), path.read_bytes() if path.exists() else b""


def refused(host: Host, code: str, name: str, body: dict[str, Any] | None = None, **options: Any) -> dict:
    """Send a request that must be refused with `code`, changing nothing; the error map."""
    before = state(host.link)
    with pytest.raises(FiscalError) as caught:
        host.result(name, body, **options)
    assert caught.value.code == code, caught.value
    assert state(host.link) == before
    return {"code": caught.value.code, "message": caught.value.message, "field": caught.value.field}


# ---------------------------------------------------------------------------------------------------------
# The table


def test_the_command_table_is_the_documented_one() -> None:
    text = (Path(__file__).parents[2] / "docs" / "link.md").read_text()
    for command in COMMANDS:
        if command.group:
            op = "read" if command.op == smp.OP_READ else "write"
            row = f"| {command.group} | {command.id} | {command.name} | {op} | {command.role} |"
            assert row in text, row
    assert len({(c.group, c.id) for c in COMMANDS}) == len(COMMANDS)


# ---------------------------------------------------------------------------------------------------------
# Reads, writes, signed answers


def test_the_nonce_is_read_unsigned_and_is_in_every_answer(link: Link, pos: Host) -> None:
    answer = pos.send(*command_of("nonce"), {})
    assert answer["nonce"] == answer["ok"]["nonce"] == link.nonce and len(link.nonce) == 16
    status = pos.call("status")
    assert status["nonce"] == link.nonce and status["ok"]["last_global_no"] == 0


def test_a_sale_is_issued_and_its_answer_is_signed_by_the_device_key(link: Link, pos: Host) -> None:
    before = link.nonce
    answer = pos.call("issue", {"sale": sale()}, rid="till1:0001")
    payload = answer["payload"]
    assert payload["g"] == 64 and payload["c"] == 6 and payload["rid"] == "till1:0001"
    assert payload["ok"]["global_no"] == 1 and payload["ok"]["repeated"] is False
    assert answer["nonce"] == link.nonce != before
    assert link.device.box.status()["last_global_no"] == 1


def test_without_a_device_key_a_write_is_answered_unsigned(link: Link, pos: Host) -> None:
    link.device.sign_answer = lambda payload: None  # a box before generate_key
    answer = pos.call("issue", {"sale": sale()})
    assert "cose" not in answer and answer["answer"]["ok"]["global_no"] == 1
    assert answer["answer"]["rid"] == "rid-1"


def test_a_refusal_of_the_device_is_passed_through_signed(link: Link, pos: Host) -> None:
    answer = pos.call("receipt", {"global_no": 9})
    assert answer["error"]["code"] == "BOX_NO_RECEIPT" and answer["error"]["field"] == "global_no"
    bad = pos.call("issue", {"sale": sale(receiptCurrency="EUR")})
    assert bad["payload"]["error"]["code"].startswith("RCPT")


def test_a_device_bug_is_box_internal_with_a_sentence_and_is_logged(
    link: Link, pos: Host, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="firmware.link"):
        answer = pos.call("x_report")
    assert answer["error"]["code"] == "BOX_INTERNAL"
    assert "Traceback" not in answer["error"]["message"] and "ZeroDivision" in answer["error"]["message"]
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


# ---------------------------------------------------------------------------------------------------------
# Every refusal of docs/link.md section 4, each changing nothing


def test_a_body_that_is_not_the_signed_shape_is_a_frame_error(link: Link, pos: Host) -> None:
    group, command = command_of("issue")
    before = state(link)
    nonce = link.nonce
    for body in ({}, {"req": "text"}, {"req": b"\x00"}, {"req": pos.signed("issue", {}), "x": 1}):
        answer = pos.send(group, command, body)
        assert answer["error"]["code"] == "BOX_LINK_FRAME", body
    not_a_map = cose.sign1(cbor2.dumps([1, 2]), cose.signer(pos.key)[1], cose.ES256, pos.kid)
    assert pos.send(group, command, {"req": not_a_map})["error"]["code"] == "BOX_LINK_FRAME"
    assert pos.send(*command_of("nonce"), {"d": 1})["error"]["code"] == "BOX_LINK_FRAME"
    assert state(link) == before and link.nonce == nonce


def test_an_unknown_key_is_refused(link: Link, pos: Host) -> None:
    stranger = Host(link)
    said = refused(stranger, "BOX_LINK_UNKNOWN_KEY", "issue", {"sale": sale()})
    assert "an operator enrolls it first" in said["message"]


def test_an_unknown_key_on_a_box_without_an_operator_is_told_to_enroll_as_the_first(link: Link) -> None:
    said = refused(Host(link), "BOX_LINK_UNKNOWN_KEY", "status")
    assert "enroll it as the first operator key (`fiscalbox keys enroll --role operator`)" in said["message"]


def test_a_signature_by_another_key_or_over_other_bytes_is_refused(link: Link, pos: Host) -> None:
    nonce = link.nonce
    forger = Host(link).key
    refused(pos, "BOX_LINK_SIGNATURE", "issue", {"sale": sale()}, key=forger)
    group, command = command_of("issue")
    request = bytearray(pos.signed("issue", {"sale": sale(total="2.30")}))
    at = request.find(b"2.30")
    request[at : at + 4] = b"9.30"  # the payload changed after signing
    before = state(link)
    assert pos.send(group, command, {"req": bytes(request)})["error"]["code"] == "BOX_LINK_SIGNATURE"
    assert state(link) == before and link.nonce == nonce  # a refused signature does not rotate the nonce


def test_a_revoked_key_is_refused(link: Link, pos: Host) -> None:
    link.hosts.revoke(pos.kid, AT)
    refused(pos, "BOX_LINK_REVOKED", "status")


def test_the_wrong_role_is_refused_and_does_not_rotate_the_nonce(link: Link, pos: Host) -> None:
    nonce = link.nonce
    for name in ("open_day", "close_day", "list", "audit", "provision"):
        refused(pos, "BOX_LINK_ROLE", name)
    said = refused(pos, "BOX_LINK_ROLE", "list")["message"]
    assert said == "A pos key may not ask for keys list: that needs an operator key."
    refused(pos, "BOX_LINK_ROLE", "enroll", {"public_key": Host(link).der, "role": "pos", "label": "x"})
    assert link.nonce == nonce


def test_g_and_c_are_bound_into_the_signature(link: Link, pos: Host) -> None:
    group, command = command_of("reprint")
    issue = pos.signed("issue", {"sale": sale()})  # signed for 64/6, sent as 64/7
    before = state(link)
    assert pos.send(group, command, {"req": issue})["error"]["code"] == "BOX_LINK_OP"
    assert state(link) == before
    refused(pos, "BOX_LINK_OP", "issue", {"sale": sale()}, gc=command_of("status"))


def test_a_stale_nonce_and_a_replayed_request_are_refused(link: Link, pos: Host) -> None:
    stale = link.nonce
    refused(pos, "BOX_LINK_NONCE", "status", nonce=os.urandom(16))
    group, command = command_of("issue")
    captured = {"req": pos.signed("issue", {"sale": sale()}, rid="once")}
    first = pos.send(group, command, captured)
    assert "cose" in first and link.nonce != stale
    before = state(link)
    replay = pos.send(group, command, captured)  # the same bytes again: the nonce moved on
    assert replay["error"]["code"] == "BOX_LINK_NONCE" and replay["nonce"] == link.nonce
    assert state(link) == before
    refused(pos, "BOX_LINK_NONCE", "issue", {"sale": sale()}, nonce=stale)
    assert link.device.box.status()["last_global_no"] == 1


def test_the_nonce_rotates_after_every_authenticated_write_whatever_its_outcome(
    link: Link, pos: Host
) -> None:
    seen = {link.nonce}
    pos.call("issue", {"sale": sale()})
    seen.add(link.nonce)
    pos.call("issue", {"sale": sale(receiptCurrency="EUR")})  # refused by the box
    seen.add(link.nonce)
    pos.call("issue", {"sale": "not a map"})  # refused by the schema
    seen.add(link.nonce)
    assert len(seen) == 4
    pos.call("status")  # reads do not rotate it
    pos.call("receipt", {"global_no": 1})
    assert link.nonce in seen and len(seen | {link.nonce}) == 4


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [("issue", {}, None), ("issue", {"sale": 5}, None), ("receipt", {"global_no": "one"}, None),
     ("status", {"extra": 1}, None), ("issue", {"sale": {}}, "rid")],
)  # fmt: skip
def test_a_body_that_does_not_match_the_schema_is_refused(
    link: Link, pos: Host, name: str, body: dict[str, Any], field: str | None
) -> None:
    rid = "bad rid!" if field == "rid" else "rid-1"
    error = refused(pos, "BOX_LINK_SCHEMA", name, body, rid=rid)
    assert error["field"] if field is None else error["field"] == field


def test_another_sale_under_a_used_request_id_is_refused(link: Link, pos: Host) -> None:
    pos.result("issue", {"sale": sale()}, rid="pos:42")
    refused(pos, "BOX_LINK_REQUEST_REUSED", "issue", {"sale": sale()}, rid="pos:42")


def test_an_unknown_job_is_refused(link: Link, operator: Host) -> None:
    refused(operator, "BOX_LINK_NO_JOB", "job", {"job": 12345})


# ---------------------------------------------------------------------------------------------------------
# Exactly once over the link (docs/link.md section 6)


def test_the_pos_retry_after_a_lost_answer_returns_the_same_receipt(rig: Rig, link: Link, pos: Host) -> None:
    one = sale()
    group, command = command_of("issue")
    lost = pos.link.handle(pos.frame(group, command, {"req": pos.signed("issue", {"sale": one}, rid="T1-7")}))
    assert lost is not None  # ... and never reaches the POS
    first = link.device.box.receipt(1)
    nonce = pos.send(*command_of("nonce"), {})["nonce"]
    again = pos.result("issue", {"sale": one}, rid="T1-7", nonce=nonce)
    assert again["repeated"] is True and again["global_no"] == 1 and again["hash"] == first["hash"]
    assert link.device.box.status()["last_global_no"] == 1
    # ... and after a power cut: the box and its link start again on the same journal
    reopened = Link(StandIn(rig.box(), rig.root), HostKeys(link.hosts.path))
    try:
        host = Host(reopened, pos.key)
        before = state(reopened)
        after = host.result("issue", {"sale": one}, rid="T1-7")
        assert after["repeated"] and after["global_no"] == 1 and after["signature"] == first["signature"]
        assert state(reopened) == before
    finally:
        reopened.close()


# ---------------------------------------------------------------------------------------------------------
# Host keys over the link (docs/link.md section 5)


def test_the_first_operator_enrolls_itself_on_a_new_box_and_only_then(link: Link) -> None:
    first = Host(link)
    body = {"public_key": first.der, "role": "operator", "label": "office"}
    entry = first.result("enroll", body)
    assert entry["kid"] == first.kid.hex() and entry["role"] == "operator"
    assert [e["kid"] for e in first.result("list")["keys"]] == [first.kid.hex()]
    second = Host(link)
    refused(second, "BOX_LINK_ENROLL", "enroll", {**body, "public_key": second.der})


def test_a_registered_box_takes_no_self_signed_enroll(link: Link) -> None:
    link.device.registered = True
    host = Host(link)
    refused(host, "BOX_LINK_ENROLL", "enroll", {"public_key": host.der, "role": "operator", "label": "x"})


def test_a_self_signed_enroll_must_enroll_its_own_key_as_operator(link: Link) -> None:
    host = Host(link)
    other = Host(link)
    refused(host, "BOX_LINK_ENROLL", "enroll", {"public_key": other.der, "role": "operator", "label": "x"})
    refused(host, "BOX_LINK_ENROLL", "enroll", {"public_key": host.der, "role": "pos", "label": "x"})
    refused(host, "BOX_LINK_ENROLL", "enroll", {"public_key": 2**62, "role": "operator", "label": "x"})


def test_an_operator_enrolls_lists_and_revokes_keys(link: Link, operator: Host) -> None:
    till = Host(link)
    entry = operator.result("enroll", {"public_key": till.der, "role": "pos", "label": "till 2"})
    assert entry["role"] == "pos" and entry["revoked_at"] is None
    assert till.result("status")["last_global_no"] == 0
    refused(till, "BOX_LINK_ROLE", "revoke", {"kid": operator.kid})
    revoked = operator.result("revoke", {"kid": till.kid})
    assert revoked["revoked_at"] is not None
    listed = {e["kid"]: e for e in operator.result("list")["keys"]}
    assert listed[till.kid.hex()]["revoked_at"] == revoked["revoked_at"]
    refused(till, "BOX_LINK_REVOKED", "status")
    refused(operator, "BOX_LINK_KEY", "enroll", {"public_key": b"\x30\x00", "role": "pos", "label": "x"})
    refused(operator, "BOX_LINK_LAST_OPERATOR", "revoke", {"kid": operator.kid})


# ---------------------------------------------------------------------------------------------------------
# Jobs (docs/link.md section 7)


def test_an_audit_runs_as_a_job(link: Link, operator: Host) -> None:
    started = operator.result("audit")
    assert set(started) == {"job", "total"}
    link.join_jobs()
    done = operator.result("job", {"job": started["job"]})
    assert done["state"] == "done" and done["result"]["clean"] is True


def test_a_second_job_of_a_kind_waits_for_the_first(link: Link, operator: Host) -> None:
    import threading

    link.device.hold = threading.Event()
    job = operator.result("audit")["job"]
    assert operator.result("job", {"job": job})["state"] == "running"
    refused(operator, "BOX_BUSY", "audit")
    link.device.hold.set()
    link.join_jobs()
    assert operator.result("job", {"job": job})["state"] == "done"


def test_an_export_is_read_in_chunks_and_resumed_from_an_offset(
    link: Link, operator: Host, pos: Host
) -> None:
    for _ in range(12):
        pos.result("issue", {"sale": sale()}, rid=f"r{_}")
    job = operator.result("export_journal", {"first": 1, "last": 12})["job"]
    link.join_jobs()
    data = b""
    while True:
        answer = operator.result("job", {"job": job, "offset": len(data)})
        assert answer["state"] == "done" and len(answer["data"]) <= CHUNK
        if not answer["data"]:
            break
        data += answer["data"]
    assert len(data) == answer["size"] > 2 * CHUNK
    assert answer["result"]["sha256"] == __import__("hashlib").sha256(data).hexdigest()
    resumed = operator.result("job", {"job": job, "offset": CHUNK + 5})  # the cable was pulled there
    assert resumed["data"] == data[CHUNK + 5 : 2 * CHUNK + 5]
    files = list(link.work_dir.iterdir())
    newer = operator.result("export_journal", {"first": 1, "last": 2})["job"]
    link.join_jobs()
    assert not any(f.exists() for f in files)  # the older export's file went with it
    refused(operator, "BOX_LINK_NO_JOB", "job", {"job": job})
    assert operator.result("job", {"job": newer})["size"] < len(data)


def test_a_failed_job_says_why(link: Link, operator: Host) -> None:
    job = operator.result("export_journal", {"first": 5, "last": 9})["job"]  # no such receipts
    link.join_jobs()
    answer = operator.result("job", {"job": job})
    assert answer["state"] == "failed" and answer["error"]["code"].startswith("BOX_")


# ---------------------------------------------------------------------------------------------------------
# OS group and SMP-level errors (docs/link.md section 2)


def test_echo_and_mcumgr_parameters(link: Link) -> None:
    host = Host(link)
    assert host.send(0, 0, {"d": "hello " * 300}) == {"r": "hello " * 300}
    assert host.send(0, 6, {}) == {"buf_size": smp.MAX_FRAME, "buf_count": 4}


def test_smp_level_refusals_are_answered_the_smp_way(link: Link) -> None:
    host = Host(link)
    assert host.send(0, 5, {}, op=smp.OP_WRITE) == {"err": {"group": 0, "rc": 8}}  # no such command
    assert host.send(66, 0, {}, op=smp.OP_READ) == {"err": {"group": 66, "rc": 8}}  # no such group
    assert host.send(0, 0, {"d": "x"}, op=smp.OP_READ) == {"err": {"group": 0, "rc": 8}}  # a write as a read
    assert host.send(64, 1, b"\x83\x01\x02\x03") == {"err": {"group": 64, "rc": 3}}  # not a map
    assert host.send(64, 1, b"\xa0\x00") == {"err": {"group": 64, "rc": 3}}  # bytes after the map
    assert host.send(0, 0, {"d": 5}) == {"err": {"group": 0, "rc": 3}}
    short = smp.header(smp.OP_READ, 0, 1, 6, 9) + b"\xa0"  # the header claims more than it carries
    assert cbor2.loads(link.handle(short)[8:]) == {"err": {"group": 0, "rc": 3}}  # type: ignore[index]
    v1 = smp.header(smp.OP_READ, 66, 1, 0, 1, version=0) + b"\xa0"
    assert cbor2.loads(link.handle(v1)[8:]) == {"rc": 8}  # type: ignore[index]
    assert link.handle(b"\x00\x01") is None  # not even a header
    assert link.handle(smp.header(smp.OP_READ_ANSWER, 0, 1, 6, 1) + b"\xa0") is None  # an answer


def test_no_frame_crashes_the_link_or_changes_anything(link: Link, pos: Host) -> None:
    import random

    chooser = random.Random(11)
    good = pos.frame(*command_of("issue"), {"req": pos.signed("issue", {"sale": sale()})})
    before = state(link)
    for _ in range(400):
        frame = bytearray(good)
        # Bytes of the body, each really changed (the header's sequence and flags change nothing), or the
        # frame cut short.
        for at in chooser.sample(range(smp.HEADER_SIZE, len(frame)), chooser.randint(1, 6)):
            frame[at] ^= chooser.randrange(1, 256)
        cut = good[: chooser.randrange(len(good))] if chooser.random() < 0.3 else frame
        link.handle(bytes(cut))
    assert state(link) == before
    assert "cose" in pos.call("issue", {"sale": sale()})  # the link still answers a good frame


# ---------------------------------------------------------------------------------------------------------
# The log


def test_one_json_line_a_request_and_never_a_body(
    link: Link, pos: Host, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="firmware.link"):
        pos.call("issue", {"sale": sale(invoice="SECRET-INVOICE-77")}, rid="till:9")
        pos.call("open_day")
    records = [r for r in caplog.records if r.name == "firmware.link"]
    assert {r.getMessage() for r in records} == {"link.request"}
    lines = [json.loads(json.dumps(r.fields)) for r in records]  # type: ignore[attr-defined]
    assert [(x["name"], x["rid"], x["key"], x["role"], x["outcome"]) for x in lines] == [
        ("issue", "till:9", "till 1", "pos", "ok"),
        ("open_day", "rid-1", "till 1", "pos", "BOX_LINK_ROLE"),
    ]
    assert all(x["group"] == 64 and isinstance(x["ms"], float) for x in lines)
    assert not any("SECRET-INVOICE" in line or "Bread" in line for line in map(json.dumps, lines))


def test_an_rsa_device_key_signs_answers_rs256(link: Link, pos: Host) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    device_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    alg, sign = cose.signer(device_key)
    link.device.sign_answer = lambda payload: (alg, sign(payload))  # the box's key store holds RSA-2048
    group, command = command_of("issue")
    for n in range(2):
        answer = pos.send(group, command, {"req": pos.signed("issue", {"sale": sale()}, rid=f"rsa-{n}")})
        message = cose.decode1(answer["cose"])
        assert message.alg == cose.RS256
        cose.verify1(message, device_key.public_key())
        assert cbor2.loads(message.payload)["ok"]["global_no"] == n + 1


def test_a_restart_forgets_its_jobs_and_their_files(link: Link, operator: Host, box: Box) -> None:
    box.issue(sale())
    job = operator.result("export_journal", {"first": 1, "last": 1})["job"]
    link.join_jobs()
    assert list(link.work_dir.glob("export-*.json"))
    restarted = Link(link.device, link.hosts, work_dir=link.work_dir)
    assert not list(link.work_dir.glob("export-*.json"))
    refused(Host(restarted, operator.key), "BOX_LINK_NO_JOB", "job", {"job": job})


def test_exports_are_kept_beside_the_host_keys_and_removed_on_close(
    link: Link, operator: Host, box: Box
) -> None:
    assert link.work_dir == link.hosts.path.parent / "link-exports"
    box.issue(sale())
    operator.result("export_journal", {"first": 1, "last": 1})
    link.join_jobs()
    assert len(list(link.work_dir.glob("export-*.json"))) == 1
    link.close()
    assert not list(link.work_dir.glob("export-*.json"))


def test_without_a_folder_for_exports_a_temporary_one_is_used(box: Box, tmp_path: Path) -> None:
    made = Link(StandIn(box, tmp_path), HostKeys(tmp_path / "not-made" / "hosts.json"))
    assert made.work_dir.is_dir() and not made.work_dir.is_relative_to(tmp_path)
    made.close()
    assert not made.work_dir.exists()
