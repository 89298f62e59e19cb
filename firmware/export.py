"""A portable, signed extract of the journal, for an auditor or the taxpayer's records.

One JSON file: the receipts of a global-number range with the exact JSON sent, their FDMS hashes and
signatures and journal links, the days they belong to, the link and day hash just before the range (so
the range can be checked on its own), the device's public key and the keys renewal retired before it, and a
signature over all of it.
`fiscalbox journal verify FILE` checks it offline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firmware.backup import write_atomically
from firmware.core import chain, fdms
from firmware.core.errors import FiscalError
from firmware.journal import Journal, detail_json
from hardware import KeyStore

FORMAT = "fiscalbox-journal/1"
DAY_FIELDS = (
    "day_no",
    "opened",
    "status",
    "close_request",
    "close_hash",
    "close_signature",
    "server_signature",
)


def signed_bytes(document: dict[str, Any]) -> bytes:
    """What the export's signature covers: every member but the signature, as sorted compact JSON."""
    return detail_json({key: value for key, value in document.items() if key != "signature"}).encode()


def write_export(
    journal: Journal,
    keys: KeyStore,
    settings: dict[str, Any],
    first: int,
    last: int,
    dest: Path,
    at: str,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    top = journal.head()["last_global_no"]
    if not 1 <= first <= last <= top:
        raise FiscalError(
            "BOX_EXPORT_RANGE",
            f"Choose a range of receipts within 1..{top} (asked for {first}..{last}).",
            "range",
        )
    before = journal.receipt(first - 1) if first > 1 else None
    receipts = []
    days: set[int] = set()
    for global_no, day_no, counter, _t, _c, _d, _total, body, hsh, sig, link in journal.receipts(first, last):
        days.add(day_no)
        receipts.append(
            {
                "global_no": global_no,
                "day_no": day_no,
                "counter": counter,
                "body": body,
                "hash": hsh,
                "signature": sig,
                "link": link.hex(),
            }
        )
        if progress is not None:  # receipts read of the range: the long part of an export
            progress(len(receipts), last - first + 1)
    first_day = receipts[0]["day_no"]
    document: dict[str, Any] = {
        "format": FORMAT,
        "device_id": settings["device_id"],
        "serial": settings.get("serial"),
        "created": at,
        "first": first,
        "last": last,
        "start": {
            "link": (before["link"] if before else chain.GENESIS).hex(),
            "day_no": before["day_no"] if before else None,
            "counter": before["counter"] if before else 0,
            "day_hash": before["hash"] if before and before["day_no"] == first_day else None,
        },
        "days": [{key: journal.day(n)[key] for key in DAY_FIELDS} for n in sorted(days)],  # type: ignore[index]
        "receipts": receipts,
        "public_key": keys.public_key_pem().decode(),
        # the keys certificate renewal retired, each with the last receipt it signed: the receipts before a
        # renewal verify with the key then in force, vouched for by this file's signature
        "retired_keys": [
            {"last_global_no": key["last_global_no"], "public_key": key["public_key"]}
            for key in journal.retired_keys()
        ],
    }
    document["signature"] = fdms.b64(keys.sign(signed_bytes(document)))
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(dest, (json.dumps(document, indent=1) + "\n").encode())
    with journal.transaction():
        journal.log(at, "export", {"first": first, "last": last, "file": dest.name})
    return {"file": str(dest), "receipts": len(receipts), "first": first, "last": last}
