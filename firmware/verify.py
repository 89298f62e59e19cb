"""Checking the journal: the quick boot check and the full audit.

Both walk the same way. Every receipt row is re-linked into the journal chain, its FDMS hash is rebuilt from
the exact JSON stored, its indexed columns are compared with that JSON, numbering must be gapless, the
day's counters must equal a recomputation, and the audit log must be an unbroken chain whose entries agree
with the tables. The boot check starts at the last signed checkpoint and skips signatures; the audit starts
at the beginning and verifies every signature with the device key. Findings name the receipt and field.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from firmware.core import chain, fdms, money
from firmware.core.errors import FiscalError
from firmware.journal import CLOSE_INITIATED, OPENED, CounterKey, Journal, detail_json
from hardware.signatures import load_public_key
from hardware.signatures import verify as verify_signature

Progress = Callable[[int, int], None]
_decode = json.JSONDecoder(parse_float=str).decode  # built once: the audit decodes one body per receipt
PROGRESS_EVERY = 10_000


class Findings:
    """The problems found so far, each a code, a sentence, and where: receipt, day, field."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, code: str, message: str, **where: Any) -> None:
        self.items.append({"code": code, "message": message, **where})


class KeyRing:
    """The device's keys over time. Certificate renewal retires a key; each receipt verifies with the key
    that was in force when it was issued. Checkpoints and close requests verify with any of the device's keys
    (a retired private key is destroyed, so it can sign nothing new)."""

    def __init__(self, current: Any, retired: list[tuple[int, Any]] | None = None) -> None:
        self.current = current
        self.retired = retired or []  # (last global number it signed, public key), oldest first

    @classmethod
    def of(cls, journal: Journal, current: Any) -> KeyRing:
        if isinstance(current, KeyRing):
            return current
        retired = [
            (key["last_global_no"], load_public_key(key["public_key"].encode()))
            for key in journal.retired_keys()
        ]
        return cls(current, retired)

    def for_receipt(self, global_no: int) -> Any:
        for last, key in self.retired:
            if global_no <= last:
                return key
        return self.current

    def verify_any(self, data: bytes, signature: bytes) -> bool:
        keys = [self.current] + [key for _, key in reversed(self.retired)]
        return any(verify_signature(key, data, signature) for key in keys)


def signed_view(body: str) -> dict[str, Any]:
    """What the FDMS signature string and the counters need, read from the exact JSON stored.

    Lighter than a full parse (lines and buyer are covered by the journal chain, not by FDMS's hash).
    """
    raw = _decode(body)["receipt"]
    taxes = []
    for tax in raw["receiptTaxes"]:
        pct = tax.get("taxPercent")
        taxes.append(
            {
                "taxID": tax["taxID"],
                "taxCode": tax.get("taxCode"),
                "taxPercent": None if pct is None else money.percent(pct),
                "taxAmount": money.amount(tax["taxAmount"]),
                "salesAmountWithTax": money.amount(tax["salesAmountWithTax"]),
            }
        )
    return {
        "receiptType": raw["receiptType"],
        "receiptCurrency": raw["receiptCurrency"],
        "receiptGlobalNo": raw["receiptGlobalNo"],
        "receiptCounter": raw["receiptCounter"],
        "receiptDate": raw["receiptDate"],
        "receiptTotal": money.amount(raw["receiptTotal"]),
        "invoiceNo": raw["invoiceNo"],
        "creditDebitNote": raw.get("creditDebitNote"),
        "receiptTaxes": taxes,
        "receiptPayments": [
            {"moneyTypeCode": p["moneyTypeCode"], "paymentAmount": money.amount(p["paymentAmount"])}
            for p in raw["receiptPayments"]
        ],
        "receiptDeviceSignature": raw["receiptDeviceSignature"],
    }


class Walk:
    """Where a walk over receipts starts: the row before the first one checked (or nothing at all)."""

    def __init__(
        self,
        global_no: int = 0,
        link: bytes = chain.GENESIS,
        day_no: int = 0,
        counter: int = 0,
        day_hash: str | None = None,
    ) -> None:
        self.global_no = global_no
        self.link = link
        self.day_no = day_no
        self.counter = counter
        self.day_hash = day_hash
        self.counters: dict[int, dict[CounterKey, int]] = {day_no: {}}  # recomputed, per day


SMALL_TABLES = ("settings", "days", "counters", "head", "print_log", "checkpoints")

RECEIPT_COLUMNS = (
    "global_no, day_no, counter, type, currency, date, total, invoice_no, note_of, body, hash, signature, "
    "qr_data, link"
)


def walk_receipts(
    journal: Journal,
    device_id: int,
    start: Walk,
    found: Findings,
    keys: KeyRing | None = None,
    progress: Progress | None = None,
    total: int = 0,
    last: int | None = None,
) -> Walk:
    """Check every receipt after `start` (up to `last`); returns where the walk ended, with the counters it
    recomputed."""
    last_no, last_link, last_day, last_counter, day_hash = (
        start.global_no,
        start.link,
        start.day_no,
        start.counter,
        start.day_hash,
    )
    counters = start.counters
    rows = journal.db.execute(
        f"SELECT {RECEIPT_COLUMNS} FROM receipts WHERE global_no > ? AND global_no <= ? ORDER BY global_no",
        (start.global_no, (1 << 63) - 1 if last is None else last),
    )
    checked = 0
    for row in rows:
        (
            global_no,
            day_no,
            counter,
            kind,
            currency,
            date,
            amount,
            invoice_no,
            note_of,
            body,
            hsh,
            sig,
            qr,
            link,
        ) = row
        if global_no != last_no + 1:
            found.add(
                "BOX_NUMBERING",
                f"Receipt {last_no + 1} is missing: the global numbers jump to {global_no}.",
                global_no=last_no + 1,
                field="global_no",
            )
        new_day = day_no != last_day
        if new_day and day_no < last_day:
            found.add(
                "BOX_NUMBERING",
                f"Receipt {global_no} belongs to an earlier day.",
                global_no=global_no,
                field="day_no",
            )
        want_counter = 1 if new_day else last_counter + 1
        if counter != want_counter:
            found.add(
                "BOX_NUMBERING",
                f"Receipt {global_no} has day counter {counter}; {want_counter} was due.",
                global_no=global_no,
                field="counter",
            )
        expect_link = chain.receipt_link(last_link, global_no, day_no, counter, body, hsh, sig)
        if expect_link != link:
            found.add(
                "BOX_TAMPER_CHAIN",
                f"Receipt {global_no} does not match its chain link: its stored content was changed.",
                global_no=global_no,
                field="link",
            )
        previous_hash = None if new_day else day_hash
        day_counters = counters.setdefault(day_no, {})
        try:
            view = signed_view(body)
        except (ValueError, KeyError, TypeError, FiscalError):
            found.add(
                "BOX_TAMPER_BODY",
                f"Receipt {global_no}'s stored JSON is not readable.",
                global_no=global_no,
                field="body",
            )
            view = None
        if view is not None:
            _check_columns(
                found,
                view,
                global_no,
                {
                    "counter": counter,
                    "type": kind,
                    "currency": currency,
                    "date": date,
                    "total": amount,
                    "invoice_no": invoice_no,
                    "hash": hsh,
                    "signature": sig,
                },
                note_of,
                device_id,
                journal.global_no_of,
            )
            text = fdms.receipt_string(device_id, view, previous_hash)
            if fdms.hash_b64(text) != hsh:
                found.add(
                    "BOX_TAMPER_HASH",
                    f"Receipt {global_no}'s hash does not match its stored JSON.",
                    global_no=global_no,
                    field="hash",
                )
            try:
                signature = binascii.a2b_base64(sig)
            except (binascii.Error, ValueError):
                signature = b""
            if fdms.qr_data(signature) != qr:
                found.add(
                    "BOX_TAMPER_QR",
                    f"Receipt {global_no}'s QR data does not match its signature.",
                    global_no=global_no,
                    field="qr_data",
                )
            if keys is not None and not verify_signature(
                keys.for_receipt(global_no), text.encode(), signature
            ):
                found.add(
                    "BOX_TAMPER_SIGNATURE",
                    f"Receipt {global_no}'s signature does not verify with the device key.",
                    global_no=global_no,
                    field="signature",
                )
            try:
                fdms.update_counters(day_counters, view)
            except (ValueError, KeyError):
                found.add(
                    "BOX_TAMPER_BODY",
                    f"Receipt {global_no} names an unknown type or money type.",
                    global_no=global_no,
                    field="body",
                )
        last_no, last_link, last_day, last_counter, day_hash = global_no, link, day_no, counter, hsh
        checked += 1
        if progress is not None and checked % PROGRESS_EVERY == 0:
            progress(checked, total)
    end = Walk(last_no, last_link, last_day, last_counter, day_hash)
    end.counters = counters
    return end


def note_of_receipt(
    note: dict[str, Any] | None, device_id: int, by_receipt_id: Callable[[int], int | None]
) -> int | None:
    """The global number of the box's own invoice a credit or debit note refers to: by the receiptID FDMS
    gave it (which FDMS takes first), or by its place on this device; None for another device's."""
    if note is None:
        return None
    if note.get("receiptID") is not None:
        return by_receipt_id(note["receiptID"])
    return note.get("receiptGlobalNo") if note.get("deviceID") in (None, device_id) else None


def _check_columns(
    found: Findings,
    view: dict[str, Any],
    global_no: int,
    columns: dict[str, Any],
    note_of: Any,
    device_id: int,
    by_receipt_id: Callable[[int], int | None],
) -> None:
    """The indexed columns must say what the JSON says; name the first that does not."""
    signature = view["receiptDeviceSignature"] or {}
    from_json = {
        "counter": view["receiptCounter"],
        "type": view["receiptType"],
        "currency": view["receiptCurrency"],
        "date": view["receiptDate"],
        "total": view["receiptTotal"],
        "invoice_no": view["invoiceNo"],
        "hash": signature.get("hash"),
        "signature": signature.get("signature"),
    }
    if view["receiptGlobalNo"] != global_no:
        found.add(
            "BOX_TAMPER_ROW",
            f"Receipt {global_no}'s JSON carries global number {view['receiptGlobalNo']}.",
            global_no=global_no,
            field="global_no",
        )
    for name, value in columns.items():
        if from_json[name] != value:
            found.add(
                "BOX_TAMPER_ROW",
                f"Receipt {global_no}: the stored {name} does not match the JSON that was sent.",
                global_no=global_no,
                field=name,
            )
    if note_of_receipt(view["creditDebitNote"], device_id, by_receipt_id) != note_of:
        found.add(
            "BOX_TAMPER_ROW",
            f"Receipt {global_no}: the stored note_of does not match its JSON.",
            global_no=global_no,
            field="note_of",
        )


def _compare_counters(
    found: Findings, journal: Journal, day_no: int, expected: dict[CounterKey, int]
) -> None:
    stored = journal.counters(day_no)
    want = {key: value for key, value in expected.items() if value != 0}
    have = {key: value for key, value in stored.items() if value != 0}
    if want != have:
        keys = sorted(set(want) | set(have), key=str)
        first = next(key for key in keys if want.get(key) != have.get(key))
        found.add(
            "BOX_COUNTERS",
            f"Day {day_no}: counter {list(first)} is {have.get(first, 0)} in the journal but the receipts "
            f"add up to {want.get(first, 0)}.",
            day_no=day_no,
            field="counters",
        )


def _audit_entries(
    journal: Journal, after_seq: int, previous: bytes, found: Findings
) -> Iterator[tuple[int, str, str, str, bytes]]:
    """The audit log after `after_seq`, each entry re-linked; yields (seq, at, event, detail JSON, link)."""
    expected = after_seq + 1
    for seq, at, event, text, link in journal.db.execute(
        "SELECT seq, at, event, detail, link FROM audit_log WHERE seq > ? ORDER BY seq", (after_seq,)
    ):
        if seq != expected:
            found.add("BOX_AUDIT_LOG", f"Audit entry {expected} is missing.", audit_seq=expected, field="seq")
        expected = seq + 1
        if chain.audit_link(previous, seq, at, event, text) != link:
            found.add(
                "BOX_AUDIT_LOG", f"Audit entry {seq} ({event}) was changed.", audit_seq=seq, field="detail"
            )
        previous = link
        yield seq, at, event, text, link


def _check_head(
    found: Findings, journal: Journal, walk: Walk, audit_seq: int, audit_link: bytes | None
) -> None:
    head = journal.head()
    if head["last_global_no"] != walk.global_no:
        found.add(
            "BOX_HEAD",
            f"The journal head says receipt {head['last_global_no']} is the last; the receipts "
            f"end at {walk.global_no}.",
            field="last_global_no",
        )
    if head["link"] != walk.link:
        found.add("BOX_HEAD", "The journal's chain head does not match its last receipt.", field="link")
    if head["audit_seq"] != audit_seq or (audit_link is not None and head["audit_link"] != audit_link):
        found.add("BOX_HEAD", "The audit log's head does not match its last entry.", field="audit_link")


ISSUED_ROWS = (
    "SELECT r.global_no, r.hash, o.state, o.attempts, o.receipt_id, o.server_date, o.server_signature, "
    "o.errors, o.updated FROM receipts r LEFT JOIN outbox o USING (global_no) WHERE r.global_no > ? "
    "ORDER BY r.global_no"
)


class Replay:
    """What the tables must hold, rebuilt from the audit log's entries."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}
        self.days: dict[int, dict[str, Any]] = {}
        self.prints: dict[int, tuple[int, int, str]] = {}  # global_no -> (completed, started, last at)
        self.checkpoints: list[tuple[str, dict[str, Any]]] = []
        self.outbox_changed: list[int] = []  # rows that are no longer what issuing wrote
        self.outbox: dict[int, tuple[Any, ...]] = {}  # global_no -> the row delivery's entries say it holds

    def apply(self, at: str, event: str, detail: dict[str, Any]) -> None:
        if event == "settings":
            self.settings.update(detail)
        elif event == "day.opened":
            self.days[detail["day_no"]] = {
                "opened": detail["opened"],
                "status": OPENED,
                "close_hash": None,
                "close_requested_at": None,
                "request_sha256": None,
                "closed_at": None,
                "server_signature": None,
                "closing_error": None,
                "open_sent_at": None,
            }
        elif event == "day.close_requested" and detail.get("day_no") in self.days:
            self.days[detail["day_no"]].update(
                status=CLOSE_INITIATED,
                close_hash=detail["hash"],
                close_requested_at=at,
                request_sha256=detail["request_sha256"],
            )
        elif event == "day.open_sent" and detail.get("day_no") in self.days:
            self.days[detail["day_no"]]["open_sent_at"] = at
        elif event == "receipt.delivered":
            signature, errors = detail["server_signature"], detail["errors"]
            self.outbox[detail["global_no"]] = (
                detail["state"],
                detail["attempts"],
                detail["receipt_id"],
                detail["server_date"],
                None if signature is None else detail_json(signature),
                None if errors is None else detail_json(errors),
                at,
            )
        elif event == "file.submitted" and detail["first_global_no"] is not None:
            for global_no in range(detail["first_global_no"], detail["last_global_no"] + 1):
                if global_no not in self.outbox:
                    self.outbox[global_no] = ("filed", 1, None, None, None, None, at)
        elif event == "day.status" and detail.get("day_no") in self.days:
            self.days[detail["day_no"]].update({k: v for k, v in detail.items() if k != "day_no"})
        elif event in ("print.started", "print.completed", "receipt.printed"):
            # receipt.printed is schema version 1's single entry for a finished print
            completed, started, _ = self.prints.get(detail["global_no"], (0, 0, ""))
            if event != "print.completed":
                started += 1
            if event != "print.started":
                completed += 1
            self.prints[detail["global_no"]] = (completed, started, at)
        elif event == "checkpoint":
            self.checkpoints.append((at, detail))


def _check_issued(found: Findings, seq: int, at: str, text: str, row: Any, changed: list[int]) -> None:
    """A receipt.issued entry against the receipt and outbox rows it must match.

    The entry is compared as text with what issuing writes, and parsed only when it differs (the audit
    reads one such entry per receipt). An outbox row that delivery has moved on is noted in `changed`, to be
    checked against delivery's own entries once the whole log has been read."""
    if row is not None and text == detail_json({"global_no": row[0], "hash": row[1]}):
        if row[2:] != ("pending", 0, None, None, None, None, at):
            changed.append(row[0])
        return
    try:
        detail = json.loads(text)
    except ValueError:
        detail = {}
    if row is None or row[0] != detail.get("global_no"):
        found.add(
            "BOX_AUDIT_LOG",
            f"Audit entry {seq} records receipt {detail.get('global_no')}, which the journal does not hold "
            "in that place.",
            audit_seq=seq,
            global_no=detail.get("global_no"),
            field="global_no",
        )
        return
    global_no, receipt_hash, *outbox = row
    if receipt_hash != detail.get("hash"):
        found.add(
            "BOX_TAMPER_HASH",
            f"Receipt {global_no}'s hash differs from the one recorded when it was issued.",
            global_no=global_no,
            field="hash",
        )
    if outbox != ["pending", 0, None, None, None, None, at]:
        changed.append(global_no)


def _check_outbox(found: Findings, journal: Journal, state: Replay) -> None:
    """An outbox row is what issuing wrote, or what delivery's last entry for it says."""
    for global_no in state.outbox_changed:
        if global_no not in state.outbox:
            _outbox_differs(found, global_no)
    for global_no, want in state.outbox.items():
        row = journal.db.execute(
            "SELECT state, attempts, receipt_id, server_date, server_signature, errors, updated FROM outbox "
            "WHERE global_no = ?",
            (global_no,),
        ).fetchone()
        if row is None or tuple(row) != want:
            _outbox_differs(found, global_no)


def _outbox_differs(found: Findings, global_no: int) -> None:
    found.add(
        "BOX_OUTBOX",
        f"Receipt {global_no}'s outbox row differs from what the audit log recorded.",
        global_no=global_no,
        field="outbox",
    )


def _check_logs(
    found: Findings,
    journal: Journal,
    after_seq: int,
    previous: bytes,
    after_receipt: int,
    replay: bool,
    settings: dict[str, Any],
) -> tuple[int, bytes | None]:
    """Walk the audit log; every receipt issued since `after_receipt` must have its entry, with its hash
    and its outbox row. With `replay`, the tables must also equal a replay of every entry."""
    receipts = iter(journal.db.execute(ISSUED_ROWS, (after_receipt,)))
    last_seq, last_link = after_seq, previous
    state = Replay()
    state.settings = dict(settings)
    for seq, at, event, text, link in _audit_entries(journal, after_seq, previous, found):
        last_seq, last_link = seq, link
        if event == "receipt.issued":
            _check_issued(found, seq, at, text, next(receipts, None), state.outbox_changed)
            continue
        try:
            detail = json.loads(text)
        except ValueError:
            detail = {}
        if replay or event in ("settings", "receipt.delivered", "file.submitted"):
            try:
                state.apply(at, event, detail)
            except (KeyError, TypeError):
                found.add(
                    "BOX_AUDIT_LOG",
                    f"Audit entry {seq} ({event}) is malformed.",
                    audit_seq=seq,
                    field="detail",
                )
    extra = next(receipts, None)
    if extra is not None:
        found.add(
            "BOX_AUDIT_LOG",
            f"Receipt {extra[0]} has no audit entry: it was not written by the box.",
            global_no=extra[0],
            field="global_no",
        )
    _compare_settings(found, journal, state.settings)
    _check_outbox(found, journal, state)
    if replay:
        _compare_replay(found, journal, state)
    return last_seq, last_link


def _link_of(journal: Journal, seq: int) -> bytes | None:
    row = journal.db.execute("SELECT link FROM audit_log WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else row[0]


def _compare_settings(found: Findings, journal: Journal, settings: dict[str, Any]) -> None:
    stored = {key: value for key, value in journal.db.execute("SELECT key, value FROM settings")}
    for key in sorted(set(stored) | set(settings)):
        if key not in settings or stored.get(key) != detail_json(settings[key]):
            found.add(
                "BOX_TAMPER_SETTINGS",
                f"The setting {key} differs from the one recorded in the audit log.",
                field=key,
            )


def _compare_replay(found: Findings, journal: Journal, state: Replay) -> None:
    firsts = dict(journal.db.execute("SELECT day_no, min(global_no) FROM receipts GROUP BY day_no"))
    days = journal.days()
    for day in days:
        n = day["day_no"]
        want = state.days.get(n)
        if want is None:
            found.add(
                "BOX_TAMPER_DAY", f"Day {n} has no opening entry in the audit log.", day_no=n, field="day_no"
            )
            continue
        request = day["close_request"]
        have = dict(
            day, request_sha256=None if request is None else hashlib.sha256(request.encode()).hexdigest()
        )
        for name, value in want.items():
            if have.get(name) != value:
                found.add(
                    "BOX_TAMPER_DAY", f"Day {n}'s {name} differs from the audit log.", day_no=n, field=name
                )
        if day["first_global_no"] != firsts.get(n):
            found.add(
                "BOX_TAMPER_DAY",
                f"Day {n}'s first receipt number is wrong.",
                day_no=n,
                field="first_global_no",
            )
    if len(days) != len(state.days):
        found.add("BOX_TAMPER_DAY", "The days table and the audit log list different days.", field="day_no")
    head_day = journal.head()["day_no"]
    if head_day != max(state.days, default=0):
        found.add("BOX_HEAD", "The journal head names the wrong current day.", field="day_no")
    prints = dict(state.prints)
    for global_no, completed, started, last_at in journal.db.execute(
        "SELECT global_no, completed, started, last_at FROM print_log"
    ):
        if (completed, started, last_at) != prints.pop(global_no, None):
            found.add(
                "BOX_TAMPER_PRINT",
                f"Receipt {global_no}'s print record differs from the audit log.",
                global_no=global_no,
                field="print_log",
            )
    for global_no in prints:
        found.add(
            "BOX_TAMPER_PRINT",
            f"Receipt {global_no} was printed but has no print-log row.",
            global_no=global_no,
            field="print_log",
        )
    rows = journal.checkpoints()
    if len(rows) != len(state.checkpoints):
        found.add(
            "BOX_TAMPER_CHECKPOINT",
            "Checkpoints and their audit entries differ in number.",
            field="checkpoint",
        )
    for n, (checkpoint, (at, detail)) in enumerate(zip(rows, state.checkpoints, strict=False), start=1):
        recorded = (n, at, detail.get("global_no"), detail.get("audit_seq"))
        if (checkpoint.seq, checkpoint.at, checkpoint.global_no, checkpoint.audit_seq) != recorded:
            found.add(
                "BOX_TAMPER_CHECKPOINT",
                f"Checkpoint {checkpoint.seq} differs from the audit log.",
                field="checkpoint",
            )


def _check_checkpoint(found: Findings, journal: Journal, checkpoint: Any, keys: KeyRing) -> bool:
    ok = keys.verify_any(checkpoint.signed_text(), checkpoint.signature)
    row = journal.db.execute(
        "SELECT link FROM receipts WHERE global_no = ?", (checkpoint.global_no,)
    ).fetchone()
    if checkpoint.global_no and (row is None or row[0] != checkpoint.link):
        ok = False
    audit = _link_of(journal, checkpoint.audit_seq)
    if checkpoint.audit_seq and audit != checkpoint.audit_link:
        ok = False
    if not ok:
        found.add(
            "BOX_TAMPER_CHECKPOINT",
            f"Checkpoint {checkpoint.seq} does not match the journal or its signature.",
            field="checkpoint",
        )
    return ok


def _close_requests(
    found: Findings,
    journal: Journal,
    device_id: int,
    keys: KeyRing,
    counters: dict[int, dict[CounterKey, int]],
    days: list[dict[str, Any]] | None = None,
) -> None:
    """Every signed CloseDay request (of `days`, or of every day) must carry the day's counters as
    recomputed and a valid signature."""
    for day in journal.days() if days is None else days:
        if day["close_request"] is None:
            if day["close_signature"] is not None:
                found.add(
                    "BOX_TAMPER_DAY",
                    f"Day {day['day_no']} has a close signature but no close request.",
                    day_no=day["day_no"],
                    field="close_signature",
                )
            continue
        n = day["day_no"]
        try:
            request = json.loads(day["close_request"], parse_float=str)
            ordered = fdms.day_counters(fdms.parse_counters(request["fiscalDayCounters"]))
        except (ValueError, KeyError, FiscalError):
            found.add(
                "BOX_TAMPER_DAY", f"Day {n}'s close request is not readable.", day_no=n, field="close_request"
            )
            continue
        text = fdms.day_string(device_id, n, day["opened"][:10], ordered)
        if (
            fdms.hash_b64(text) != day["close_hash"]
            or request["fiscalDayDeviceSignature"]["hash"] != day["close_hash"]
        ):
            found.add(
                "BOX_TAMPER_DAY",
                f"Day {n}'s close request does not match its hash.",
                day_no=n,
                field="close_request",
            )
        signature = fdms.unb64(day["close_signature"] or "")
        if not keys.verify_any(text.encode(), signature):
            found.add(
                "BOX_TAMPER_SIGNATURE",
                f"Day {n}'s close signature does not verify.",
                day_no=n,
                field="close_signature",
            )
        recomputed = fdms.day_counters(counters.get(n, {}))
        if ordered != recomputed:
            found.add(
                "BOX_COUNTERS",
                f"Day {n}'s close request counters differ from its receipts.",
                day_no=n,
                field="close_request",
            )


def _structure(found: Findings, journal: Journal, full: bool) -> bool:
    """SQLite's own check: the whole file in the audit; at boot, the small state tables only.

    A whole-file quick_check reads every page: 1.2 s warm and about 15 s cold for a million receipts, too
    long for a box restarting at the counter. The receipts written since the last checkpoint are read by
    the walk anyway, and SQLite reports a damaged page it reads, so boot checks the tables that are not
    walked and the audit checks the whole file."""
    result = journal.integrity_check() if full else journal.quick_check(SMALL_TABLES)
    if result != ["ok"]:
        found.add(
            "BOX_JOURNAL_CORRUPT",
            "SQLite reports damage in the journal file: " + "; ".join(result[:3]),
            field="file",
        )
        return False
    return True


def _unreadable(error: Exception) -> tuple[str, str]:
    """A failure no check foresaw, as a finding: a FiscalError keeps its own code and sentence."""
    if isinstance(error, FiscalError):
        return error.code, error.message
    return "BOX_JOURNAL_CORRUPT", f"The journal could not be read: {error}."


def boot_check(journal: Journal, public_key: Any, device_id: int) -> dict[str, Any]:
    """Quick: the file's structure, then everything written since the last signed checkpoint."""
    found = Findings()
    try:
        if _structure(found, journal, full=False):
            keys = KeyRing.of(journal, public_key)
            checkpoint = journal.last_checkpoint()
            start = Walk()
            audit_seq, audit_link = 0, chain.GENESIS
            settings: dict[str, Any] = {}
            if checkpoint is not None and _check_checkpoint(found, journal, checkpoint, keys):
                settings = checkpoint.settings
                row = journal.receipt(checkpoint.global_no) if checkpoint.global_no else None
                if row is not None:
                    start = Walk(
                        checkpoint.global_no, checkpoint.link, row["day_no"], row["counter"], row["hash"]
                    )
                start.counters = {checkpoint.day_no: dict(checkpoint.counters)}
                audit_seq, audit_link = checkpoint.audit_seq, checkpoint.audit_link
            _awaiting_fdms(found, journal, device_id, keys, start.global_no)
            end = walk_receipts(journal, device_id, start, found)
            for day_no, counters in end.counters.items():
                if day_no:
                    _compare_counters(found, journal, day_no, counters)
            seq, link = _check_logs(
                found, journal, audit_seq, audit_link, start.global_no, replay=False, settings=settings
            )
            _check_head(found, journal, end, seq, link)
    except Exception as error:  # a damaged file can fail in ways no check foresaw; that is a finding too
        found.add(*_unreadable(error), field="file")
    return {"clean": not found.items, "problems": found.items}


def _awaiting_fdms(
    found: Findings, journal: Journal, device_id: int, keys: KeyRing, checked_from: int
) -> None:
    """What the box will read back and send before FDMS confirms it, checked at boot however old: the
    receipts still waiting in the outbox from before the last checkpoint (the walk covers those after it),
    and the signed close requests of days FDMS has not closed."""
    pending = journal.next_pending()
    if pending is not None and pending["global_no"] <= checked_from:
        first = pending["global_no"]
        before = journal.receipt(first - 1) if first > 1 else None
        start = (
            Walk()
            if before is None
            else Walk(first - 1, before["link"], before["day_no"], before["counter"], before["hash"])
        )
        walk_receipts(journal, device_id, start, found, last=checked_from)
    closing = [day for day in journal.unfinished_days() if day["close_request"] is not None]
    stored = {day["day_no"]: journal.counters(day["day_no"]) for day in closing}
    _close_requests(found, journal, device_id, keys, stored, closing)


def full_audit(
    journal: Journal,
    public_key: Any,
    device_id: int,
    progress: Progress | None = None,
    signatures: bool = True,
) -> dict[str, Any]:
    """Everything from the first receipt: chain, hashes, signatures, counters, numbering, logs."""
    found = Findings()
    total = journal.head()["last_global_no"]
    checked = {"receipts": 0, "days": 0, "audit_entries": 0, "checkpoints": 0, "signatures": signatures}
    try:
        if _structure(found, journal, full=True):
            keys = KeyRing.of(journal, public_key)
            end = walk_receipts(
                journal, device_id, Walk(), found, keys if signatures else None, progress, total
            )
            checked["receipts"] = end.global_no
            days = journal.days()
            checked["days"] = len(days)
            for day in days:
                _compare_counters(found, journal, day["day_no"], end.counters.get(day["day_no"], {}))
            _close_requests(found, journal, device_id, keys, end.counters)
            seq, link = _check_logs(found, journal, 0, chain.GENESIS, 0, replay=True, settings={})
            checked["audit_entries"] = seq
            _check_head(found, journal, end, seq, link)
            for checkpoint in journal.checkpoints():
                _check_checkpoint(found, journal, checkpoint, keys)
                checked["checkpoints"] += 1
    except Exception as error:  # see boot_check
        found.add(*_unreadable(error), field="file")
    return {"clean": not found.items, "problems": found.items, "checked": checked}


__all__ = ["boot_check", "full_audit", "signed_view"]
