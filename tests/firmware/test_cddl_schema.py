"""firmware/link.cddl and link_schema.check: every command of docs/link.md has a rule, each rule takes a good
body and refuses a wrong one with BOX_LINK_SCHEMA naming the field, and pycddl's open maps are closed."""

import re
import tomllib
from pathlib import Path
from typing import Any

import cbor2
import pycddl
import pytest

from firmware import link_schema
from firmware.core.errors import FiscalError

ROOT = Path(__file__).resolve().parents[2]
N16 = bytes(range(16))
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

# name: (good bodies, [(wrong body, the field named, or None for the body itself)])
CASES = {
    "nonce": ([{}], [({"x": 1}, "x"), ([], None)]),
    "status": ([{}], [({"verbose": True}, "verbose")]),
    "receipt": (
        [{"global_no": 1}, {"global_no": 0}],
        [({}, "global_no"), ({"global_no": -1}, "global_no"), ({"global_no": "1"}, "global_no")],
    ),
    "outbox": ([{}, {"limit": 20}], [({"limit": "20"}, "limit"), ({"limt": 20}, "limt")]),
    "x_report": ([{}], [({"day": 1}, "day")]),
    "z_report": ([{"day": 3}], [({}, "day"), ({"day": 1.5}, "day")]),
    "issue": (
        [
            {"sale": {"receiptType": "FiscalInvoice", "receiptLines": [{"receiptLineName": "Bread"}]}},
            {"sale": {}},
        ],
        [
            ({}, "sale"),
            ({"sale": []}, "sale"),
            ({"sale": {1: "x"}}, "sale"),
            ({"sale": {}, "request_id": "a"}, "request_id"),
        ],
    ),
    "reprint": ([{"global_no": 7}], [({"global_no": None}, "global_no")]),
    "print_unprinted": ([{}], [({"all": True}, "all")]),
    "print_report": ([{}, {"day": 2}], [({"day": -2}, "day"), ({"days": 2}, "days")]),
    "open_day": ([{}], [({"day": 1}, "day")]),
    "close_day": ([{}], [({"force": True}, "force")]),
    "provision": (
        [
            {
                "values": {
                    "device_id": 4321,
                    "serial": "FB-1",
                    "model_name": "fiscalbox",
                    "model_version": "1.0",
                    "fdms_url": "https://fdms",
                    "fdms_ca": "",
                    "currencies": ["USD", "ZWG"],
                }
            },
            {"values": {}},
        ],
        [
            ({}, "values"),
            ({"values": {"device": 1}}, "values.device"),
            ({"values": {"currencies": ["USD", 3]}}, "values.currencies[1]"),
            ({"values": {"device_id": "4321"}}, "values.device_id"),
        ],
    ),
    "generate_key": (
        [{"algorithm": "ecdsa"}, {"algorithm": "rsa", "replace": True}],
        [
            ({"algorithm": "dsa"}, "algorithm"),
            ({"algorithm": "rsa", "replace": 1}, "replace"),
            ({"replace": False}, "algorithm"),
        ],
    ),
    "certificate_request": ([{}], [({"cn": "x"}, "cn")]),
    "install_certificate": ([{"certificate": PEM}], [({"certificate": PEM.encode()}, "certificate")]),
    "register": ([{"activation_key": "12345678"}], [({"activation_key": 12345678}, "activation_key")]),
    "renew_certificate": ([{}], [({"algorithm": "rsa"}, "algorithm")]),
    "audit": ([{}], [({"quick": True}, "quick")]),
    "backup": ([{}, {"retain": 7}], [({"retain": "7"}, "retain"), ({"dest": "/tmp"}, "dest")]),
    "export_journal": (
        [{"first": 1, "last": 9}],
        [({"first": 1}, "last"), ({"first": 1, "last": -9}, "last")],
    ),
    "replay": ([{"since": 3}], [({}, "since"), ({"since": "3"}, "since")]),
    "job": (
        [{"job": 1}, {"job": 1, "offset": 2048}],
        [({"offset": 0}, "job"), ({"job": 1, "offset": -1}, "offset")],
    ),
    "enroll": (
        [
            {"public_key": b"0Y0\x13", "role": "pos", "label": "till 1"},
            {"public_key": b"\x30", "role": "operator", "label": "office"},
        ],
        [
            ({"public_key": "PEM", "role": "pos", "label": "x"}, "public_key"),
            ({"public_key": b"0", "role": "admin", "label": "x"}, "role"),
            ({"public_key": b"0", "role": "pos"}, "label"),
        ],
    ),
    "list": ([{}], [({"all": True}, "all")]),
    "revoke": ([{"kid": N16}], [({"kid": N16[:15]}, "kid"), ({"kid": N16.hex()[:16]}, "kid"), ({}, "kid")]),
}


def _table_names() -> list[str]:
    """The command names of docs/link.md's tables (sections 2 and 3): `| 64 | 6 | issue | write | ...`."""
    text = (ROOT / "docs" / "link.md").read_text()
    return re.findall(r"^\| 6[45] \| \d+ \| (\w+) \|", text, re.M)


def _refused(name: str, body: object) -> FiscalError:
    with pytest.raises(FiscalError) as caught:
        link_schema.check(name, body)
    error = caught.value
    assert error.code == "BOX_LINK_SCHEMA"
    assert error.message.endswith(".")
    assert "Traceback" not in error.message and "Integer(" not in error.message
    return error


def test_every_command_of_the_doc_has_a_rule_and_a_case() -> None:
    names = _table_names()
    assert len(names) == 26
    assert set(names) <= set(link_schema.rules())
    assert set(names) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_rule_takes_a_good_body_and_refuses_a_wrong_one(name: str) -> None:
    good, wrong = CASES[name]
    for body in good:
        link_schema.check(name, body)
    for body, field in wrong:
        error = _refused(name, body)
        assert error.field == field, (body, error)
        assert (field or "its body") in error.message, error.message


def test_maps_without_a_required_key_are_closed_too() -> None:
    # pycddl 0.6.4 alone accepts these: a map whose keys are all optional is left open there.
    assert _refused("nonce", {"a": 1}).field == "a"
    assert _refused("outbox", {"limit": 1, "x": 2}).field == "x"
    assert _refused("provision", {"values": {"colour": "red"}}).field == "values.colour"
    assert _refused("status", {7: 1}).field == "7"
    # ...and a `* tstr => any` map beside a required key may be empty.
    link_schema.check("issue", {"sale": {}})
    link_schema.check("request", {"g": 64, "c": 1, "nonce": N16, "rid": "r", "body": {}})


def test_controls_keep_their_base_type() -> None:
    # pycddl 0.6.4 alone lets a text through `bstr .size 16` and -1 through `uint .le 255`.
    assert "byte string" in _refused("revoke", {"kid": "0123456789abcdef"}).message
    assert _refused("request", {"g": 64, "c": -1, "nonce": N16, "rid": "r", "body": {}}).field == "c"
    assert _refused("request", {"g": 64, "c": 256, "nonce": N16, "rid": "r", "body": {}}).field == "c"
    assert _refused("receipt", {"global_no": 2**63}).message.endswith("at most 9223372036854775807.")
    link_schema.check("receipt", {"global_no": 2**63 - 1})


def test_what_pycddl_alone_gets_wrong_is_refused() -> None:
    # Each of these passes (or panics in) pycddl 0.6.4 checking the plain CDDL type; link.cddl's types and
    # link_schema's 64-bit check refuse them.
    cases = [
        ("register", {"activation_key": {"x": 1}}, "activation_key"),  # a map with text keys passes `tstr`
        ("receipt", {"global_no": {1: 2}}, "global_no"),  # a map with integer keys passes `uint`
        ("generate_key", {"algorithm": b"ecdsa"}, "algorithm"),  # bytes against a text literal: a panic
        ("generate_key", {"algorithm": ["ecdsa"]}, "algorithm"),  # a list passes a choice of literals
        ("enroll", {"public_key": b"0", "role": ["pos"], "label": "x"}, "role"),
        ("generate_key", {"algorithm": "rsa", "replace": 2**64}, "replace"),  # a bignum passes `bool`
        ("enroll", {"public_key": 2**64, "role": "pos", "label": "x"}, "public_key"),  # ...and `bstr`
        ("issue", {"sale": {"lines": [1, -(2**70)]}}, "sale.lines[1]"),
        ("provision", {"values": {"currencies": [{"a": 1}]}}, "values.currencies[0]"),
        ("install_certificate", {"certificate": ["PEM"]}, "certificate"),
    ]
    for name, body, field in cases:
        assert _refused(name, body).field == field, (name, body)
    outcome = {"g": 64, "c": 6, "rid": "r", "nonce": N16,
               "error": {"code": "X", "message": "m.", "field": ["a"]}}
    _refused("outcome", outcome)  # a list passed `tstr / null`


def test_a_panic_inside_pycddl_is_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CDDL avoids every panic the fuzz found; should another input reach one, it is still a refusal,
    # not a PanicException (which no `except Exception` catches) escaping into the link.
    class PanicException(BaseException):
        pass

    class Panicking:
        def validate_cbor(self, data: bytes) -> None:
            raise PanicException("called `Option::unwrap()` on a `None` value")

    monkeypatch.setitem(link_schema._schemas, "status", Panicking())
    error = _refused("status", {})
    assert "could not check" in error.message


def test_the_signed_payload_and_its_request_id() -> None:
    def payload(**change: object) -> dict:
        body = {"g": 64, "c": 6, "nonce": N16, "rid": "POS-1:2026-12-04_0001.a", "body": {"sale": {}}}
        body.update(change)
        return body

    link_schema.check("request", payload())
    link_schema.check("request", payload(rid="x" * 64))
    for rid in ("", "x" * 65, "a b", "a\n", "é", "a/b"):
        assert _refused("request", payload(rid=rid)).field == "rid", rid
    assert _refused("request", payload(rid=b"ab")).field == "rid"
    assert _refused("request", payload(nonce=N16[:8])).field == "nonce"
    assert _refused("request", payload(g=70000)).field == "g"
    assert _refused("request", payload(body=[])).field == "body"
    assert _refused("request", payload(extra=1)).field == "extra"
    missing = payload()
    del missing["nonce"]
    assert _refused("request", missing).field == "nonce"
    assert _refused("request", []).field is None
    link_schema.check("signed", {"req": b"\xd2\x84"})
    # A choice of two forms: pycddl's refusal names the key of the form not taken (the link's own check of
    # the body's shape, before this rule, has its own sentence; this rule is the documentation's).
    assert _refused("signed", {"req": "text"}).field in ("req", "zreq")
    link_schema.check("signed", {"zreq": b"\x03\x00"})  # the compressed form
    assert _refused("signed", {"zreq": "text"}).field in ("req", "zreq")
    _refused("signed", {"req": b"\xd2", "zreq": b"\x03\x00"})  # one or the other


def test_answers() -> None:
    link_schema.check("answer", {"nonce": N16, "ok": {"status": "open"}})
    link_schema.check("answer", {"nonce": N16, "error": {"code": "BOX_LINK_NONCE", "message": "Stale."}})
    link_schema.check("answer", {"nonce": N16, "cose": b"\xd2"})
    link_schema.check("answer", {"nonce": N16, "answer": {"g": 64, "c": 6, "rid": "r", "nonce": N16,
                                                          "ok": {}}})
    _refused("answer", {"nonce": N16})
    _refused("answer", {"nonce": N16, "ok": 1, "cose": b""})
    _refused("answer", {"nonce": N16, "error": {"code": "X"}})
    link_schema.check("answer", {"nonce": N16, "zok": b"\x03\x00"})
    link_schema.check("answer", {"nonce": N16, "zcose": b"\x03\x00"})
    _refused("answer", {"nonce": N16, "zcose": b"", "cose": b""})
    _refused("answer", {"nonce": N16, "zok": {"status": "open"}})
    link_schema.check("nonce_ok", {"nonce": N16, "deflate": True})
    link_schema.check("nonce_ok", {"nonce": N16})  # a box before the compressed form
    _refused("nonce_ok", {"nonce": N16, "deflate": "yes"})
    refusal = {"code": "X", "message": "m.", "field": "rid"}
    link_schema.check("outcome", {"g": 64, "c": 6, "rid": "r", "nonce": N16, "error": refusal})
    left_out = {**refusal, "field": None}  # a field is left out, never null
    _refused("outcome", {"g": 64, "c": 6, "rid": "r", "nonce": N16, "error": left_out})


def test_a_key_called_at_and_values_cbor_cannot_carry_are_refused() -> None:
    assert _refused("issue", {"sale": {"@": 1}}).field == "sale.@"
    assert _refused("issue", {"sale": {"lines": [{"@": 1}]}}).field == "sale.lines[0].@"
    assert _refused("issue", {"sale": {"x": [[], [{"a": {"@": 1}}]]}}).field == "sale.x[1][0].a.@"
    _refused("issue", {"sale": {"x": object()}})
    _refused("no_such_command", {})


def test_each_rule_is_compiled_with_only_the_rules_it_uses() -> None:
    assert link_schema._needed("issue") == ["issue"]
    assert link_schema._needed("provision") == [
        "whole", "string", "name64", "url", "currency", "provision", "identity"
    ]
    assert set(link_schema._needed("answer")) == {"answer", "outcome", "error", "rid", "id16", "group_id",
                                                   "command_id", "string", "octets"}


def test_the_cddl_ships_with_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "*.cddl" in config["tool"]["setuptools"]["package-data"]["*"]
    assert link_schema.SOURCE.parent == ROOT / "firmware"


def test_what_grows_in_an_answer_is_capped_in_its_request() -> None:
    """outbox's limit, the identity's texts and a key's label: each answer holding them fits a frame."""
    link_schema.check("outbox", {"limit": 1000})
    assert _refused("outbox", {"limit": 1001}).field == "limit"
    link_schema.check("provision", {"values": {"serial": "S" * 64, "fdms_url": "https://" + "a" * 2000,
                                               "currencies": ["USD", "ZWG"]}})
    for values in ({"serial": "S" * 65}, {"model_name": "m" * 65}, {"model_version": "v" * 65},
                   {"fdms_url": "u" * 2049}, {"currencies": ["USD"] * 17}, {"currencies": ["DOLLARS!!"]}):
        assert _refused("provision", {"values": values}).field.startswith("values.")
    link_schema.check("enroll", {"public_key": b"k", "role": "pos", "label": "L" * 64})
    for label in ("L" * 65, ""):
        assert _refused("enroll", {"public_key": b"k", "role": "pos", "label": label}).field == "label"


def _whole_verdict(name: str, body: Any) -> str:
    """pycddl's verdict on the whole marked message, nothing left out: what check() must agree with."""
    try:
        link_schema._schema(name).validate_cbor(cbor2.dumps(link_schema._marked(body)))
    except pycddl.ValidationError:
        return "refused"
    return "taken"


@pytest.mark.parametrize(
    "body",
    [
        {"sale": {"receiptType": "FiscalInvoice", "receiptLines": [{"a": 1, "b": [1.5, None, b"x"]}]}},
        {"sale": {}},
        {"sale": {"a": {"b": {"c": [[], {"d": True}]}}}},
        {"sale": {1: 2}},
        {"sale": {"a": 1, 2: "b"}},
        {"sale": {b"k": 1}},
        {"sale": []},
        {"sale": "text"},
        {"sale": {"a": 1}, "x": 2},
        {},
    ],
)
def test_the_values_under_any_left_out_of_pycddl_give_its_own_verdict(body: Any) -> None:
    """issue's sale is `{* tstr => any}`: pycddl gets its keys with null values (link_schema._OPAQUE), and
    answers as it does on the whole sale."""
    try:
        link_schema.check("issue", body)
        verdict = "taken"
    except FiscalError as error:
        assert error.code == "BOX_LINK_SCHEMA"
        verdict = "refused"
    assert verdict == _whole_verdict("issue", body)
    assert link_schema._OPAQUE["issue"] == ("sale",)
