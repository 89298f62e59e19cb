"""Checking a journal export offline: `fiscalbox journal verify FILE --cert device.pem`.

The auditor brings the device's certificate or public key; the key inside the file is only compared with
it, never trusted. Every receipt is checked on its own terms: the file's signature, gapless numbering and
day counters, the journal chain from the stated start, the FDMS hash rebuilt from the exact JSON sent, the
device signature, and each day's counters against its signed close request when the file holds it.
"""

from __future__ import annotations

import binascii
import json
from typing import Any

from firmware.core import chain, fdms, wire
from firmware.core.errors import FiscalError
from hardware.signatures import load_public_key, verify
from host_tools.explain import load_json

FORMAT = "fiscalbox-journal/1"


def _signed_bytes(document: dict[str, Any]) -> bytes:
    rest = {key: value for key, value in document.items() if key != "signature"}
    return json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()


def _same_key(a: Any, b: Any) -> bool:
    from cryptography.hazmat.primitives import serialization

    def der(key: Any) -> bytes:
        return bytes(
            key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    return der(a) == der(b)


def _retired_keys(document: dict[str, Any], problem: Any) -> list[tuple[int, Any]]:
    """The retired keys the file lists (signed with it), oldest first; an unreadable one is a problem."""
    keys: list[tuple[int, Any]] = []
    for index, entry in enumerate(document.get("retired_keys") or []):
        try:
            keys.append((int(entry["last_global_no"]), load_public_key(entry["public_key"].encode())))
        except (KeyError, TypeError, ValueError, AttributeError, FiscalError):
            problem(
                "BOX_EXPORT_KEY", f"Retired key {index + 1} in the file is unreadable.", field="retired_keys"
            )
    return sorted(keys, key=lambda item: item[0])


def verify_export(document: Any, public_key: Any) -> dict[str, Any]:
    """A report {clean, problems, receipts, days, device_id, first, last}; problems name receipt and field."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise FiscalError("BOX_EXPORT_FORMAT", f"This is not a {FORMAT} file.", "format")
    problems: list[dict[str, Any]] = []

    def problem(code: str, message: str, **where: Any) -> None:
        problems.append({"code": code, "message": message, **where})

    try:
        other_key = not _same_key(load_public_key(document["public_key"].encode()), public_key)
    except (KeyError, ValueError, AttributeError, FiscalError):
        other_key = False  # nothing to compare with: every signature is checked with the given key
        problem("BOX_EXPORT_KEY", "The file's public key is unreadable.", field="public_key")
    if other_key:
        # Every signature would fail for this one cause; reporting each as tampering would hide it.
        problem(
            "BOX_EXPORT_KEY",
            "The file was signed by another device key than the certificate given, so no signature in it "
            "was checked. Give the device key that signed the export, the one in force when it was made "
            "(`fiscalbox keys device` over the link, `fiscalbox-device key show` on a box whose service is "
            "stopped, or the certificate FDMS issued it then); receipts signed before a renewal are checked "
            "with the retired keys the file lists.",
            field="public_key",
        )
    try:
        signature = binascii.a2b_base64(document.get("signature", ""))
    except (binascii.Error, ValueError):
        signature = b""
    if not other_key and not verify(public_key, _signed_bytes(document), signature):
        problem(
            "BOX_EXPORT_SIGNATURE",
            "The file's signature does not verify with the given key.",
            field="signature",
        )

    retired = [] if other_key else _retired_keys(document, problem)
    keys = [key for _, key in retired] + [public_key]

    def key_for(global_no: int) -> Any:
        """The key in force when receipt `global_no` was signed: a retired one up to its last receipt."""
        for last, key in retired:
            if global_no <= last:
                return key
        return public_key

    device_id = document["device_id"]
    start = document["start"]
    link = binascii.unhexlify(start["link"])
    last_no = document["first"] - 1
    day_no, counter, day_hash = start["day_no"], start["counter"], start["day_hash"]
    counters: dict[int, dict[Any, int]] = {}
    first_in_file: dict[int, int] = {}
    seen: dict[int, int] = {}
    for row in document["receipts"]:
        n = row["global_no"]
        if n != last_no + 1:
            problem(
                "BOX_NUMBERING",
                f"Receipt {last_no + 1} is missing: the numbers jump to {n}.",
                global_no=last_no + 1,
            )
        new_day = row["day_no"] != day_no
        want = 1 if new_day else counter + 1
        if row["counter"] != want and not (new_day and n == document["first"] and start["day_no"] is None):
            problem(
                "BOX_NUMBERING",
                f"Receipt {n} has day counter {row['counter']}; {want} was due.",
                global_no=n,
                field="counter",
            )
        expected = chain.receipt_link(
            link, n, row["day_no"], row["counter"], row["body"], row["hash"], row["signature"]
        )
        if expected.hex() != row["link"]:
            problem(
                "BOX_TAMPER_CHAIN", f"Receipt {n} does not match its chain link.", global_no=n, field="link"
            )
        try:
            receipt = fdms.parse_receipt(load_json(row["body"], "the body"))
        except FiscalError as error:
            problem(
                "BOX_TAMPER_BODY", f"Receipt {n}'s JSON is unreadable: {error}.", global_no=n, field="body"
            )
            receipt = None
        if receipt is not None:
            text = fdms.receipt_string(device_id, receipt, None if new_day else day_hash)
            if fdms.hash_b64(text) != row["hash"]:
                problem(
                    "BOX_TAMPER_HASH",
                    f"Receipt {n}'s hash does not match its JSON.",
                    global_no=n,
                    field="hash",
                )
            if not other_key and not verify(key_for(n), text.encode(), fdms.unb64(row["signature"])):
                problem(
                    "BOX_TAMPER_SIGNATURE",
                    f"Receipt {n}'s signature does not verify.",
                    global_no=n,
                    field="signature",
                )
            if receipt["receiptGlobalNo"] != n or receipt["receiptCounter"] != row["counter"]:
                problem(
                    "BOX_TAMPER_ROW",
                    f"Receipt {n}'s JSON carries other numbers.",
                    global_no=n,
                    field="global_no",
                )
            fdms.update_counters(counters.setdefault(row["day_no"], {}), receipt)
        first_in_file.setdefault(row["day_no"], row["counter"])
        seen[row["day_no"]] = seen.get(row["day_no"], 0) + 1
        last_no, day_no, counter, day_hash = n, row["day_no"], row["counter"], row["hash"]
        link = binascii.unhexlify(row["link"])
    if last_no != document["last"]:
        problem(
            "BOX_NUMBERING",
            f"The file says it ends at {document['last']} but ends at {last_no}.",
            field="last",
        )
    for day in document["days"]:
        _check_day(day, device_id, counters, first_in_file, seen, None if other_key else keys, problem)
    return {
        "clean": not problems,
        "signatures_checked": not other_key,
        "problems": problems,
        "device_id": device_id,
        "first": document["first"],
        "last": document["last"],
        "receipts": len(document["receipts"]),
        "days": [day["day_no"] for day in document["days"]],
    }


def _check_day(
    day: dict[str, Any],
    device_id: int,
    counters: dict[int, dict[Any, int]],
    first_in_file: dict[int, int],
    seen: dict[int, int],
    keys: list[Any] | None,
    problem: Any,
) -> None:
    """A day's signed close request must verify under one of the device's keys (unless `keys` is None: the
    file is not signed by the key given); when the file holds the whole day, its counters too."""
    if not day.get("close_request"):
        return
    n = day["day_no"]
    try:
        request = load_json(day["close_request"], "the close request")
    except FiscalError as error:
        problem(
            "BOX_TAMPER_BODY",
            f"Day {n}'s close request is unreadable: {error}.",
            day_no=n,
            field="close_request",
        )
        return
    ordered = fdms.day_counters(fdms.parse_counters(request["fiscalDayCounters"]))
    text = fdms.day_string(device_id, n, day["opened"][:10], ordered)
    signature = fdms.unb64(request["fiscalDayDeviceSignature"]["signature"])
    if keys is not None and not any(verify(key, text.encode(), signature) for key in keys):
        problem(
            "BOX_TAMPER_SIGNATURE",
            f"Day {n}'s close signature does not verify.",
            day_no=n,
            field="close_request",
        )
    whole_day = first_in_file.get(n) == 1 and request["receiptCounter"] == seen.get(n, 0)
    if whole_day and wire.dumps(fdms.counters_wire(fdms.day_counters(counters.get(n, {})))) != wire.dumps(
        fdms.counters_wire(ordered)
    ):
        problem(
            "BOX_COUNTERS",
            f"Day {n}'s receipts do not add up to its signed counters.",
            day_no=n,
            field="counters",
        )
