"""The box's operations: the one place that combines the journal, the key store, the clock and the printer.

Each method is one thing a person or a POS can ask. It returns plain data or raises FiscalError with the
authority's code or a BOX_ code and a sentence; a refusal writes nothing. Printing and FDMS delivery come
after the journal's commit and never inside its transaction: a printer or network fault cannot undo a sale.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import apsw

from firmware import backup as backups
from firmware import export as exports
from firmware import verify
from firmware.core import fdms, layout, localtime, money, wire
from firmware.core.errors import FiscalError
from firmware.delivery import is_box_finding, read_state, signature_finding, state_path
from firmware.fdms_client import FdmsError
from firmware.journal import CLOSE_FAILED, CLOSE_INITIATED, CLOSED, OPENED, Head, Journal, NewReceipt
from hardware import ECDSA_P256, Clock, KeyStore, Printer
from hardware.signatures import load_public_key

REQUIRED_SETTINGS = ("device_id", "serial", "taxpayer_name", "taxpayer_tin", "taxes", "currencies", "qr_url")
OPTIONAL_SETTINGS = {
    "vat_number": None,
    "branch_name": "",
    "branch_address": "",
    "branch_email": "",
    "branch_phone": "",
    "day_max_hours": 24,
    "operating_mode": "Online",
    "certificate_valid_till": None,
    "day_end_notification_hours": 2,
}
FILE_LIMIT = 3_000_000  # bytes: FDMS refuses a SubmitFile file over 3 MB (FILE01)
UNPRINTED_BATCH = 100  # receipts read from the journal at a time by print_unprinted
STATUS_UNPRINTED = 20  # unprinted receipts status lists by number (it counts them all)
FLAG_SCAN = 5000  # flagged receipts status reads: FDMS's flags and the box's own findings together
CLOCK_SKEW_WARN_SECONDS = 120  # FDMS flags receipts dated too far ahead (RCPT031); its margin is unknown
# Boot findings that say the journal is not the one this box wrote (see backup.Anchor).
ANCHOR_CODES = ("BOX_JOURNAL_BEHIND", "BOX_JOURNAL_FOREIGN")
# Fields of a sale the box decides itself; a POS that sends them is told so rather than silently overruled.
BOX_FIELDS = ("receiptCounter", "receiptGlobalNo", "receiptDate", "receiptDeviceSignature")


def _refuse(code: str, message: str, field: str | None = None) -> FiscalError:
    return FiscalError(code, message, field)


def _serialized(method: Callable[..., Any]) -> Callable[..., Any]:
    """One operation at a time: the POS and the delivery worker share the box (and its one journal
    connection) from different threads."""

    @functools.wraps(method)
    def run(self: Box, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    return run


REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _sale_digest(request_id: str, sale: Any) -> str:
    """SHA-256 of the sale as the POS gave it (bare or wrapped alike), as compact sorted JSON: a retry is
    recognised by what it asks for, whatever order its keys came in."""
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise _refuse(
            "BOX_LINK_SCHEMA", "A request ID is 1 to 64 characters from A-Z a-z 0-9 . _ : -.", "rid"
        )
    try:
        text = json.dumps(fdms.unwrap_receipt(sale), sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        raise _refuse("RCPT02", "A sale must be JSON: text, numbers, lists and objects.", "receipt") from None
    return hashlib.sha256(text.encode()).hexdigest()


def settings_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """The box's settings from a GetConfig answer: taxpayer, branch, taxes, limits, QR URL."""
    address = config.get("deviceBranchAddress") or {}
    contacts = config.get("deviceBranchContacts") or {}
    parts = [address.get("houseNo"), address.get("street"), address.get("city"), address.get("province")]
    return {
        "taxpayer_name": config["taxPayerName"],
        "taxpayer_tin": config["taxPayerTIN"],
        "vat_number": config.get("vatNumber") or None,
        "branch_name": config.get("deviceBranchName") or "",
        "branch_address": ", ".join(str(p) for p in parts if p),
        "branch_email": contacts.get("email") or "",
        "branch_phone": contacts.get("phoneNo") or "",
        "taxes": config["applicableTaxes"],
        "qr_url": config["qrUrl"],
        "day_max_hours": int(config.get("taxPayerDayMaxHrs") or 24),
        "day_end_notification_hours": int(config.get("taxpayerDayEndNotificationHrs") or 2),
        "operating_mode": config.get("deviceOperatingMode") or "Online",
        "certificate_valid_till": config.get("certificateValidTill"),
    }


def device_key(keys: KeyStore) -> dict[str, Any] | None:
    """The device key's public half, so a host can check what the box signs (receipts, link answers)."""
    if keys.algorithm is None:
        return None
    return {"algorithm": keys.algorithm, "public_key": keys.public_key_pem().decode()}


class Box:
    """A fiscal box over an open journal. The boot check runs on construction; issuing obeys its verdict."""

    def __init__(
        self,
        journal: Journal,
        keys: KeyStore,
        clock: Clock,
        zone: str = "Africa/Harare",
        day_warn_minutes: int = 60,
        future_skew_seconds: int = 300,
        anchor: backups.Anchor | None = None,
        checkpoint_every: int = 1000,
        printer: Printer | None = None,
        fdms_client: Any = None,
    ) -> None:
        self.journal = journal
        self.keys = keys
        self.clock = clock
        self.zone = ZoneInfo(zone)
        self.day_warn_minutes = day_warn_minutes
        self.future_skew_seconds = future_skew_seconds
        self.anchor = anchor
        self.checkpoint_every = checkpoint_every  # bounds what a restart re-walks: boot time stays flat
        self.printer = printer
        self.fdms = fdms_client  # firmware.fdms_client.FdmsClient, or None for a box not yet connected
        self.delivery: Any = None  # the Delivery worker, when one runs: status() reports its state
        self.lock = threading.RLock()
        self._settings: dict[str, Any] = {}
        self._taxes: list[dict[str, Any]] | None = None
        self._context: fdms.Context | None = None
        self._context_day = 0
        self._last_issued_at: str | None = None  # the clock at this process's last sale
        try:
            self._settings = journal.settings()
            self._taxes = fdms.parse_taxes(self._settings["taxes"]) if "taxes" in self._settings else None
            self.boot = self._boot_check()
        except (apsw.Error, FiscalError, ValueError, KeyError, TypeError) as error:
            # A journal too damaged to check is a finding too: the box starts, says so, and will not issue.
            if isinstance(error, FiscalError):
                problem = {"code": error.code, "message": error.message}
            else:
                problem = {"code": "BOX_JOURNAL_CORRUPT", "message": f"The journal cannot be read: {error}."}
            self.boot = {"clean": False, "problems": [problem]}

    # -----------------------------------------------------------------------------------------------------
    # Time and identity

    def now_local(self) -> str:
        """The box's local time as FDMS writes it: YYYY-MM-DDTHH:mm:ss in the configured zone."""
        moment = datetime.datetime.fromtimestamp(int(self.clock.now()), self.zone)
        return moment.strftime("%Y-%m-%dT%H:%M:%S")

    @property
    def device_id(self) -> int:
        self._require_settings()
        return int(self._settings["device_id"])

    def _require_settings(self) -> None:
        """The settings in force must be there: when the journal could not give them, say why."""
        if "device_id" not in self._settings:
            if not self.boot["clean"] and self.boot["problems"][0]["code"] == "BOX_JOURNAL_CORRUPT":
                raise _refuse("BOX_JOURNAL_CORRUPT", self.boot["problems"][0]["message"])
            raise _refuse(
                "BOX_NOT_PROVISIONED",
                "The box is not registered yet: register it first (`fiscalbox register` over the link when "
                "it runs as a service, `fiscalbox-device register` on the box otherwise).",
            )

    def _public_key(self) -> Any:
        return load_public_key(self.keys.public_key_pem())

    # -----------------------------------------------------------------------------------------------------
    # Boot check

    def _boot_check(self) -> dict[str, Any]:
        """Compare the journal with the anchor kept outside it, and verify what changed since the last
        checkpoint, all in one read snapshot; on any finding the box refuses to issue. Only a writer
        records the check (a read-only box writes nothing, however often it is opened)."""
        at = self.now_local()
        anchored = None if self.anchor is None else self.anchor.read()  # before the snapshot: see problems()
        with self.journal.reading():
            problems = [] if self.anchor is None else self.anchor.problems(self.journal, anchored)
            if self.keys.algorithm is None:
                skipped = "no device key is readable, so the signatures were not checked"
                return {"clean": not problems, "problems": problems, "skipped": skipped}
            result = verify.boot_check(self.journal, self._public_key(), self._settings.get("device_id", 0))
        result = {"clean": result["clean"] and not problems, "problems": problems + result["problems"]}
        if not self.journal.writable or problems:
            return result  # a journal that is not this box's own is not written to, not even the boot entry
        with self.journal.transaction():
            self.journal.log(at, "boot", {"clean": result["clean"], "problems": len(result["problems"])})
        if result["clean"]:
            self._checkpoint(at, "boot")
            self._advance_anchor()
        return result

    def _advance_anchor(self) -> None:
        """Move the anchor up to the journal's head: the device, the last receipt and its chain link."""
        if self.anchor is not None:
            head = self.journal.head()
            self.anchor.advance(head["last_global_no"], self._settings.get("device_id"), head["link"])

    def _checkpoint(self, at: str, reason: str) -> None:
        self.journal.add_checkpoint(at, self.keys.sign, reason)

    def _ensure_ours(self) -> None:
        """Refuse to act on a journal the anchor says is not this box's own (missing, behind, foreign)."""
        if not self.boot["clean"] and self.boot["problems"][0]["code"] in ANCHOR_CODES:
            first = self.boot["problems"][0]
            raise _refuse(first["code"], first["message"] + " Nothing was done.")

    def require_sound_journal(self) -> None:
        """Refuse (with the start-up check's finding) unless the journal passed its check: delivery asks
        before it sends anything, so a damaged or foreign journal never reaches FDMS."""
        self._ensure_sound()

    def _ensure_sound(self) -> None:
        if not self.boot["clean"]:
            first = self.boot["problems"][0]
            if first["code"] in ANCHOR_CODES:
                raise _refuse(first["code"], first["message"] + " The box will not issue until then.")
            raise _refuse(
                "BOX_JOURNAL_MISMATCH",
                "The journal failed its check at start-up (" + first["message"] + "); the box will not issue "
                "until it is investigated: run `fiscalbox-device audit --verbose`.",
            )

    # -----------------------------------------------------------------------------------------------------
    # Provisioning

    @_serialized
    def provision(self, values: dict[str, Any]) -> dict[str, Any]:
        """Store the identity and fiscal settings in force: taxpayer, taxes, currencies, QR URL, day limit."""
        unknown = sorted(set(values) - set(REQUIRED_SETTINGS) - set(OPTIONAL_SETTINGS))
        if unknown:
            raise _refuse("BOX_SETTINGS", f"Unknown setting {unknown[0]}.", unknown[0])
        merged = {**OPTIONAL_SETTINGS, **self._settings, **values}
        for key in REQUIRED_SETTINGS:
            if merged.get(key) in (None, "", []):
                raise _refuse("BOX_SETTINGS", f"The setting {key} is required.", key)
        device_id = merged["device_id"]
        if type(device_id) is not int or device_id <= 0:
            raise _refuse("BOX_SETTINGS", "device_id must be a positive whole number.", "device_id")
        if "device_id" in self._settings and self._settings["device_id"] != device_id:
            if self.journal.head()["last_global_no"]:
                raise _refuse(
                    "BOX_SETTINGS",
                    "This journal already holds receipts of device "
                    f"{self._settings['device_id']}; a box cannot change its device ID.",
                    "device_id",
                )
        hours = merged["day_max_hours"]
        if type(hours) is not int or not 1 <= hours <= 48:
            raise _refuse("BOX_SETTINGS", "day_max_hours must be between 1 and 48.", "day_max_hours")
        taxes = fdms.parse_taxes(merged["taxes"])  # refuses a malformed tax table with its field
        currencies = merged["currencies"]
        if not isinstance(currencies, list) or not all(
            isinstance(c, str) and len(c) == 3 for c in currencies
        ):
            raise _refuse("BOX_SETTINGS", "currencies must be a list of 3-letter codes.", "currencies")
        changed = {key: merged[key] for key in merged if self._settings.get(key, object()) != merged[key]}
        if changed:
            self.journal.save_settings(changed, self.now_local())
        self._settings = self.journal.settings()
        self._taxes = taxes
        self._context = None
        return dict(self._settings)

    def _ensure_provisioned(self) -> None:
        if self._taxes is None or "device_id" not in self._settings:
            raise _refuse(
                "BOX_NOT_PROVISIONED",
                "The box has no taxpayer settings yet: register it first (`fiscalbox register` over the link "
                "when it runs as a service, `fiscalbox-device register` on the box otherwise).",
            )
        if self.keys.algorithm is None:
            raise _refuse("BOX_KEY_MISSING", "The box has no device key yet: generate one first.")

    # -----------------------------------------------------------------------------------------------------
    # Days

    def open_day(self) -> dict[str, Any]:
        """Open the next fiscal day at the local time now, with the taxes and taxpayer data FDMS gives just
        before (GetConfig); when FDMS cannot be reached the day opens with the settings stored, and delivery
        reports the open once FDMS is back."""
        warnings: list[dict[str, Any]] = []
        if self.fdms is not None and self._settings.get("operating_mode", "Online") == "Online":
            try:
                self.refresh_config()
            except FiscalError as error:
                warnings.append(
                    {"code": error.code, "colour": "Yellow", "field": None, "message": error.message}
                )
        opened = self._open_day()
        return {**opened, "warnings": warnings}

    @_serialized
    def _open_day(self) -> dict[str, Any]:
        self._ensure_provisioned()
        self._ensure_sound()
        day = self.journal.current_day()
        if day is not None and day["status"] == OPENED:
            raise _refuse("BOX_DAY_OPEN", f"Fiscal day {day['day_no']} is still open: close it first.")
        failed = self._first_failed_close()
        if failed is not None:
            raise _refuse(
                "BOX_DAY_CLOSING",
                f"FDMS could not close fiscal day {failed['day_no']} ({failed['closing_error']}): "
                "close it again before the next day opens.",
            )
        # A day whose close is signed but not yet confirmed does not hold the shop up: the next day opens
        # now, and delivery sends its OpenDay only after FDMS has confirmed the close before it.
        day_no = 1 if day is None else day["day_no"] + 1
        opened = self.now_local()
        last = self.journal.head()["last_global_no"]
        if last:
            previous_date = self.journal.receipt(last)["date"]  # type: ignore[index]
            if opened <= previous_date:
                # The day closed within the second of its last receipt, or after a burst dated ahead of the
                # clock: the new day opens a second after that receipt, as a receipt would be dated.
                after = localtime.format_seconds(localtime.seconds(previous_date) + 1)
                if localtime.seconds(after) - localtime.seconds(opened) > self.future_skew_seconds:
                    raise _refuse(
                        "BOX_CLOCK",
                        f"The clock reads {opened}, not after the last receipt ({previous_date}): set the "
                        "time.",
                    )
                opened = after
        self.journal.open_day(day_no, opened, opened)
        self._checkpoint(opened, "day opened")
        return {"day_no": day_no, "opened": opened, "ends": localtime.add_hours(opened, self._max_hours())}

    def _first_failed_close(self) -> dict[str, Any] | None:
        """The oldest day FDMS could not close: FDMS closes days in order, so it comes before any other."""
        return next((d for d in self.journal.unfinished_days() if d["status"] == CLOSE_FAILED), None)

    def _max_hours(self) -> int:
        return int(self._settings.get("day_max_hours", 24))

    @_serialized
    def record_close(self, day_no: int, status: str, **values: Any) -> None:
        """What FDMS answered to the close (called by delivery): Closed or CloseFailed with its code."""
        day = self.journal.day(day_no)
        if day is None or day["status"] not in (CLOSE_INITIATED,):
            raise _refuse("BOX_DAY_STATE", f"Fiscal day {day_no} has no close in progress.")
        self.journal.set_day_status(day_no, status, self.now_local(), **values)

    @_serialized
    def close_day(self) -> dict[str, Any]:
        """Prepare and sign the CloseDay request from the incremental counters; the cost does not grow with
        the number of receipts. A day FDMS could not close comes first, signed again (with the key in use
        now): FDMS closes days in order, so the open day's close waits for it."""
        self._ensure_provisioned()
        self._ensure_sound()
        day = self._first_failed_close() or self.journal.current_day()
        if day is None or day["status"] not in (OPENED, CLOSE_FAILED):
            raise _refuse("BOX_DAY_NOT_OPEN", "No fiscal day is open, so there is nothing to close.")
        ordered = fdms.day_counters(self.journal.counters(day["day_no"]))
        text = fdms.day_string(self.device_id, day["day_no"], day["opened"][:10], ordered)
        signature = fdms.b64(self.keys.sign(text.encode()))
        request = {
            "fiscalDayNo": day["day_no"],
            "fiscalDayCounters": fdms.counters_wire(ordered),
            "fiscalDayDeviceSignature": {"hash": fdms.hash_b64(text), "signature": signature},
            "receiptCounter": self.journal.last_counter(day["day_no"]),
        }
        body = wire.dumps(request)
        at = self.now_local()
        self.journal.request_close(
            day["day_no"], body, request["fiscalDayDeviceSignature"]["hash"], signature, at
        )
        self._checkpoint(at, "close requested")
        self._advance_anchor()
        return json.loads(body, parse_float=str)

    # -----------------------------------------------------------------------------------------------------
    # Receipts

    def _day_context(self, head: Head, now: str) -> fdms.Context:
        """One validation context per day, moved along with each receipt (its tax index is built once)."""
        if self._context is None or self._context_day != head.day_no:
            self._context = fdms.Context(
                taxes=self._taxes,
                vat_payer=self._settings.get("vat_number") is not None,
                currencies=tuple(self._settings["currencies"]),
                day_opened=head.day_opened,
                day_max_hours=self._max_hours(),
                future_skew_seconds=self.future_skew_seconds,
                invoice_seen=self.journal.invoice_seen,
                original=self._original,
            )
            self._context_day = head.day_no
        ctx = self._context
        ctx.previous_in_day = head.previous
        ctx.first_in_day = head.previous is None
        ctx.last_global_no = head.global_no - 1
        ctx.last_receipt_date = head.last_date
        ctx.now = now
        return ctx

    def _original(self, note: dict[str, Any]) -> dict[str, Any] | None:
        """The invoice a credit or debit note refers to, when this box issued it: by its place (device, global
        number, day) or by the receiptID FDMS gave it on delivery."""
        if note.get("receiptID") is not None:
            global_no = self.journal.global_no_of(note["receiptID"])
            if global_no is None:
                return None
            note = {"receiptGlobalNo": global_no}
        if note.get("deviceID") not in (None, self.device_id) or note.get("receiptGlobalNo") is None:
            return None
        row = self.journal.receipt(note["receiptGlobalNo"])
        if row is None or row["type"] != "FiscalInvoice":
            return None
        if note.get("fiscalDayNo") is not None and note["fiscalDayNo"] != row["day_no"]:
            return None
        original = self._stored_receipt(row)
        return {"receipt": original, "notes_total": self.journal.notes_total(row["global_no"])}

    def _receipt_date(self, head: Head, now: str) -> str:
        """Now, or one second after the previous receipt when several come within a second (FDMS wants
        every receipt strictly later than the one before)."""
        if head.last_date is None or now > head.last_date:
            return now
        date = localtime.format_seconds(localtime.seconds(head.last_date) + 1)
        ahead = localtime.seconds(date) - localtime.seconds(now)
        if ahead > self.future_skew_seconds and (self._last_issued_at is None or now < self._last_issued_at):
            raise _refuse(
                "BOX_CLOCK",
                f"The clock reads {now}, behind the last receipt ({head.last_date}): set the time.",
            )
        if ahead > self.future_skew_seconds:  # the clock moved on since the last sale: a burst of sales
            wait = ahead - self.future_skew_seconds
            raise _refuse(
                "BOX_TOO_FAST",
                f"Receipts are coming faster than one a second: FDMS wants each one dated at least a second "
                f"after the one before, so the last receipt is already dated {head.last_date}, {ahead - 1} s "
                f"ahead of the clock ({now}). Wait {wait} s and send the sale again.",
            )
        return date

    @_serialized
    def issue(self, sale: dict[str, Any], request_id: str | None = None, host: str = "") -> dict[str, Any]:
        """Validate, number, chain, sign and commit one sale. Returns only after the commit is durable.

        `request_id` is the POS's own ID for the sale (docs/link.md section 6): the same ID with the same sale
        again returns the receipt already issued, marked repeated; with another sale it is refused. IDs are
        per `host` (the sending key's ID, in hex): another till's same ID is another request."""
        self._ensure_provisioned()
        request = None
        if request_id is not None:
            request = (host, request_id, _sale_digest(request_id, sale))
            done = self.journal.request(request_id, host)
            if done is not None:
                return self._repeated(request, *done)
        self._ensure_sound()
        if not isinstance(sale, dict):
            raise _refuse("RCPT02", "A sale must be a JSON object.", "receipt")
        sale = fdms.unwrap_receipt(sale)
        for key in BOX_FIELDS:
            if key in sale:
                raise _refuse("BOX_SALE_FIELD", f"The box sets {key} itself; leave it out of the sale.", key)
        now = self.now_local()
        warnings: list[dict[str, Any]] = []

        def make(head: Head) -> NewReceipt:
            date = self._receipt_date(head, now)
            ctx = self._day_context(head, now)
            if ctx.day_end is not None and date > ctx.day_end:
                raise _refuse(
                    "BOX_DAY_EXPIRED",
                    f"Fiscal day {head.day_no} passed its {self._max_hours()} hours at {ctx.day_end}: "
                    "close the day and open a new one.",
                )
            raw = dict(sale)
            raw["receiptCounter"] = head.counter
            raw["receiptGlobalNo"] = head.global_no
            raw["receiptDate"] = date
            receipt, findings = fdms.prepare(raw, ctx)
            red = fdms.blocking(findings)
            if red:
                raise _refuse(red[0]["code"], red[0]["message"], red[0]["field"])
            warnings.extend(findings)
            previous_hash = head.previous["hash"] if head.previous else None
            text = fdms.receipt_string(self.device_id, receipt, previous_hash)
            signature_bytes = self.keys.sign(text.encode())
            receipt_hash = fdms.hash_b64(text)
            signature = fdms.b64(signature_bytes)
            receipt["receiptDeviceSignature"] = {"hash": receipt_hash, "signature": signature}
            note = receipt["creditDebitNote"]
            return NewReceipt(
                body=wire.dumps({"receipt": fdms.receipt_wire(receipt)}),
                receipt_type=receipt["receiptType"],
                currency=receipt["receiptCurrency"],
                date=date,
                total=receipt["receiptTotal"],
                invoice_no=receipt["invoiceNo"],
                note_of=verify.note_of_receipt(note, self.device_id, self.journal.global_no_of),
                hash=receipt_hash,
                signature=signature,
                qr_data=fdms.qr_data(signature_bytes),
                counters=fdms.update_counters(fdms.new_counters(), receipt),
                request=request,
            )

        head, new = self.journal.commit_receipt(make, now)
        self._last_issued_at = now
        if head.global_no % self.checkpoint_every == 0:
            try:  # after the commit: the sale stands whatever happens here, so a failure is only a warning
                self._checkpoint(now, "periodic")
            except (FiscalError, apsw.Error) as error:
                warnings.append(
                    {
                        "code": "BOX_CHECKPOINT",
                        "colour": "Yellow",
                        "field": None,
                        "message": f"The periodic checkpoint failed ({error}); the next boot checks more.",
                    }
                )
        warnings.extend(self._day_warnings(head.day_opened, now))
        printed = False
        if self.printer is not None:
            try:  # the sale is committed: a printer fault is reported, and the receipt waits for a reprint
                self._print_receipt(head.global_no)
                printed = True
            except Exception as error:  # drivers raise FiscalError; nothing else may lose the sale's answer
                code, message = (
                    (error.code, error.message)
                    if isinstance(error, FiscalError)
                    else ("BOX_PRINTER_FAULT", f"Printing failed ({type(error).__name__}: {error}).")
                )
                warnings.append(
                    {
                        "code": code,
                        "colour": "Yellow",
                        "field": None,
                        "message": f"{message} Receipt {head.global_no} is committed but not printed: "
                        "reprint it once the printer is ready.",
                    }
                )
        return {
            "global_no": head.global_no,
            "counter": head.counter,
            "day_no": head.day_no,
            "date": new.date,
            "type": new.receipt_type,
            "currency": new.currency,
            "total": money.format_fixed(new.total, 2),
            "hash": new.hash,
            "signature": new.signature,
            "qr_url": fdms.qr_url(
                self._settings["qr_url"], self.device_id, new.date, head.global_no, new.qr_data
            ),
            "verification_code": fdms.verification_code(new.qr_data),
            "printed": printed,
            "warnings": warnings,
            "repeated": False,
        }

    def _repeated(self, request: tuple[str, str, str], stored_digest: str, global_no: int) -> dict[str, Any]:
        """The answer `issue` gave for a request ID already used, built from the stored receipt."""
        if stored_digest != request[2]:
            raise _refuse(
                "BOX_LINK_REQUEST_REUSED",
                f"Request ID {request[1]} was already used for another sale (receipt {global_no}): give this "
                "sale a new request ID; nothing was issued.",
                "rid",
            )
        stored = self.receipt(global_no)
        names = ("global_no", "counter", "day_no", "date", "type", "currency", "total", "hash", "signature")
        answer = {name: stored[name] for name in (*names, "qr_url", "verification_code")}
        answer.update(printed=stored["prints"]["completed"] > 0, warnings=[], repeated=True)
        return answer

    def _day_warnings(self, opened: str, now: str) -> list[dict[str, Any]]:
        end = localtime.add_hours(opened, self._max_hours())
        left = localtime.seconds(end) - localtime.seconds(now)
        if left <= self.day_warn_minutes * 60:
            message = (
                f"The fiscal day ends at {end} ({left // 60} min left): close it soon."
                if left > 0
                else f"The fiscal day ended at {end}: close it now, no receipt can be issued until then."
            )
            return [{"code": "BOX_DAY_ENDING", "colour": "Yellow", "field": None, "message": message}]
        return []

    # -----------------------------------------------------------------------------------------------------
    # Printing

    @_serialized
    def receipt_document(self, global_no: int, copy: bool = False, width: int = 48) -> layout.Document:
        """A committed receipt laid out for the configured printer (or `width` columns without one)."""
        self._require_settings()
        row = self.journal.receipt(global_no)
        if row is None:
            raise _refuse("BOX_NO_RECEIPT", f"There is no receipt {global_no}.", "global_no")
        receipt = self._stored_receipt(row)
        original = None
        if row["note_of"] is not None:
            first = self.journal.receipt(row["note_of"])
            if first is not None:
                original = {
                    "serial": self._settings["serial"],
                    "global_no": first["global_no"],
                    "date": first["date"],
                    "invoice_no": first["invoice_no"],
                }
        info = {"day_no": row["day_no"], "qr_data": row["qr_data"], "original": original}
        seller = {**self._settings, "taxes": self._taxes}
        if self.printer is not None:
            return layout.receipt_document(
                receipt, seller, info, self.printer.columns, copy, self.printer.legible
            )
        return layout.receipt_document(receipt, seller, info, width, copy)

    @_serialized
    def receipt(self, global_no: int) -> dict[str, Any]:
        """One committed receipt read back: the exact SubmitReceipt body sent to FDMS, its hash, signature
        and QR, the previous receipt's hash that its signature string chains to, and its delivery and
        print state."""
        row = self.journal.receipt(global_no)
        if row is None:
            last = self.journal.head()["last_global_no"]
            last_one = f"the last one is {last}" if last else "no receipt has been issued yet"
            raise _refuse("BOX_NO_RECEIPT", f"There is no receipt {global_no}; {last_one}.", "global_no")
        previous = self.journal.receipt(global_no - 1) if row["counter"] > 1 else None
        delivery = self.journal.delivery(global_no) or {}
        started, completed = self.journal.prints(global_no)
        return {
            "global_no": global_no,
            "device_id": self.device_id,
            "day_no": row["day_no"],
            "counter": row["counter"],
            "type": row["type"],
            "currency": row["currency"],
            "date": row["date"],
            "total": money.format_fixed(row["total"], 2),
            "invoice_no": row["invoice_no"],
            "hash": row["hash"],
            "signature": row["signature"],
            "previous_hash": None if previous is None else previous["hash"],
            "qr_url": fdms.qr_url(
                self._settings["qr_url"], self.device_id, row["date"], global_no, row["qr_data"]
            ),
            "verification_code": fdms.verification_code(row["qr_data"]),
            "body": row["body"],
            "delivery": {
                name: delivery.get(name)
                for name in ("state", "attempts", "receipt_id", "server_date", "server_signature", "errors")
            },
            "prints": {"started": started, "completed": completed},
        }

    @staticmethod
    def _stored_receipt(row: dict[str, Any]) -> dict[str, Any]:
        """A committed receipt read back from its exact stored JSON; damage is BOX_JOURNAL_CORRUPT."""
        try:
            return dict(fdms.parse_receipt(json.loads(row["body"], parse_float=str)))
        except (ValueError, TypeError, FiscalError):
            raise _refuse(
                "BOX_JOURNAL_CORRUPT",
                f"The journal is damaged: table receipts, row global_no {row['global_no']} is not the "
                "receipt the box wrote. Restore the latest backup.",
            ) from None

    def _require_printer(self) -> Printer:
        if self.printer is None:
            raise _refuse("BOX_NO_PRINTER", "No printer is configured: set [printer] in the configuration.")
        return self.printer

    def _print_receipt(self, global_no: int) -> bool:
        """Print a receipt; a COPY when any print of it began before. The start is recorded before the first
        byte goes out, so a receipt torn off half-printed is never printed again as an original."""
        printer = self._require_printer()
        printer.check()  # a printer that says it cannot print is refused before anything is recorded
        started, _ = self.journal.prints(global_no)
        document = self.receipt_document(global_no, copy=started > 0)
        self.journal.print_started(global_no, self.now_local())
        printer.print_document(document)
        self.journal.print_completed(global_no, self.now_local())
        return started > 0

    @_serialized
    def reprint(self, global_no: int) -> dict[str, Any]:
        """Print a committed receipt again, marked COPY when it was printed (or began printing) before. The
        fiscal content is the stored receipt's, never re-signed."""
        self._ensure_ours()
        if self.journal.receipt(global_no) is None:
            raise _refuse("BOX_NO_RECEIPT", f"There is no receipt {global_no}.", "global_no")
        copy = self._print_receipt(global_no)
        return {"global_no": global_no, "copy": copy, "prints": self.journal.prints(global_no)[1]}

    @_serialized
    def print_unprinted(self, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Print every receipt with no finished print, oldest first, read from the journal in batches;
        stops at the first printer fault. `progress(printed, total)` follows a long run; `remaining` counts
        the receipts still without a finished print at the end."""
        self._ensure_ours()
        total = self.journal.unprinted_count()
        done: list[int] = []
        stopped_at, failure, after = None, None, 0
        while failure is None and (batch := self.journal.unprinted(limit=UNPRINTED_BATCH, after=after)):
            for global_no in batch:
                try:
                    self._print_receipt(global_no)
                except FiscalError as error:
                    stopped_at, failure = global_no, error.as_dict()
                    break
                done.append(global_no)
                if progress is not None:
                    progress(len(done), total)
            after = batch[-1]
        remaining = self.journal.unprinted_count()
        return {"printed": done, "stopped_at": stopped_at, "error": failure, "remaining": remaining}

    @_serialized
    def report_document(self, day_no: int | None = None, width: int = 48) -> layout.Document:
        """The X report of the current day, or the Z report of a closed day."""
        self._require_settings()
        day = self.journal.current_day() if day_no is None else self._known_day(day_no)
        if day is None:
            raise _refuse("BOX_DAY_NOT_OPEN", "No fiscal day has been opened yet.", "day_no")
        seller = {**self._settings, "taxes": self._taxes}
        counters = self.journal.counters(day["day_no"])
        documents = self.journal.documents(day["day_no"])
        at = self.now_local()
        if self.printer is not None:
            return layout.report_document(
                day, counters, documents, seller, at, self.printer.columns, self.printer.legible
            )
        return layout.report_document(day, counters, documents, seller, at, width)

    @_serialized
    def print_report(self, day_no: int | None = None) -> dict[str, Any]:
        """Print the X report (the day so far) or, for a closed day, its Z report."""
        printer = self._require_printer()
        document = self.report_document(day_no)
        printer.check()
        printer.print_document(document)
        return {"day_no": day_no or self.journal.head()["day_no"], "title": document.lines[0].text}

    # -----------------------------------------------------------------------------------------------------
    # Status and reports

    @_serialized
    def status(self) -> dict[str, Any]:
        head = self.journal.head()
        day = self.journal.current_day()
        unfinished = self.journal.unfinished_days()
        flagged, security = self._findings(unfinished)
        counts = self.journal.outbox_counts()
        delivery = self._delivery_state(counts.get("pending", 0))
        info: dict[str, Any] = {
            "device_id": self._settings.get("device_id"),
            "serial": self._settings.get("serial"),
            "last_global_no": head["last_global_no"],
            "day": None,
            "outbox": counts,
            "unprinted": self.journal.unprinted(limit=STATUS_UNPRINTED),  # the oldest; the count is all
            "unprinted_count": self.journal.unprinted_count(),
            "journal": {
                "clean": self.boot["clean"],
                "problems": self.boot["problems"],
                "skipped": self.boot.get("skipped"),
            },
            "fdms": {
                "mode": self.operating_mode(),
                "certificate_valid_till": self.certificate_valid_till(),
                "flagged": flagged[:20],
                "security": security[:20],
                "delivery": delivery,
            },
            "warnings": [],
            "device_key": device_key(self.keys),
        }
        if day is not None:
            end = localtime.add_hours(day["opened"], self._max_hours())
            info["day"] = {
                "day_no": day["day_no"],
                "opened": day["opened"],
                "status": day["status"],
                "ends": end,
                "receipts": self.journal.last_counter(day["day_no"]),
            }
            if day["status"] == OPENED:
                info["warnings"] = self._day_warnings(day["opened"], self.now_local())
        info["days_waiting"] = [
            {"day_no": d["day_no"], "status": d["status"], "closing_error": d["closing_error"]}
            for d in unfinished
            if day is None or d["day_no"] != day["day_no"]
        ]
        info["warnings"] += self._close_warnings(unfinished, flagged)
        info["warnings"] += self._delivery_warnings(delivery, security, info["warnings"], self.now_local())
        skew = delivery.get("clock_skew_seconds")
        if skew is not None and abs(skew) > CLOCK_SKEW_WARN_SECONDS:
            way = "behind" if skew > 0 else "ahead of"
            info["warnings"].append(
                {
                    "code": "BOX_CLOCK_SKEW",
                    "colour": "Yellow",
                    "field": None,
                    "message": f"The box's clock is {abs(skew)} s {way} FDMS's: set the time. Receipts "
                    "already signed keep the dates they were signed with.",
                }
            )
        return info

    def _first_unfinished(self, unfinished: list[dict[str, Any]]) -> int:
        """The first day FDMS has not closed (the next day when all are): what delivery still works on."""
        return unfinished[0]["day_no"] if unfinished else self.journal.head()["day_no"] + 1

    def _findings(
        self, unfinished: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """What FDMS flagged on the receipts of the days it has not closed; and the box's own findings on
        FDMS's signatures (never FDMS's verdict) on those and on the receipts and close of the last day FDMS
        closed, which stay in view after the close. One read of the journal."""
        first_unfinished = self._first_unfinished(unfinished)
        last_closed = first_unfinished - 1
        # Receipts from this number on belong to days FDMS has not closed.
        since = min((d["first_global_no"] for d in unfinished if d["first_global_no"]), default=None)
        flags, found = [], []
        for row in self.journal.flagged(FLAG_SCAN, from_day=last_closed):
            errors = [e for e in row["errors"] if not is_box_finding(e)]
            if errors and since is not None and row["global_no"] >= since:
                flags.append({"global_no": row["global_no"], "errors": errors})
            found += [
                {"global_no": row["global_no"], "day_no": None, "code": e["code"], "message": e["message"]}
                for e in row["errors"]
                if is_box_finding(e)
            ]
        day = self.journal.day(last_closed) if last_closed > 0 else None
        if day is not None and day["status"] == CLOSED and str(day["closing_error"] or "").startswith("BOX_"):
            finding = signature_finding(day["closing_error"], f"the close of day {last_closed}")
            found.append({"global_no": None, "day_no": last_closed, **finding})
        return flags, found

    def _delivery_state(self, waiting: int) -> dict[str, Any]:
        """Delivery's state: the worker's in this process, else what the `deliver` process last wrote beside
        the journal (status usually runs in a process of its own); with the receipts still waiting."""
        if self.delivery is not None:
            state = dict(self.delivery.state())
        else:
            state = read_state(state_path(self.journal.path)) or {"problem": None}
        state["waiting"] = waiting
        return state

    @staticmethod
    def _delivery_warnings(
        delivery: dict[str, Any], security: list[dict[str, Any]], given: list[dict[str, Any]], now: str
    ) -> list[dict[str, Any]]:
        """Delivery's problem and the box's findings on FDMS's signatures, said once each."""
        warnings = []
        for code in dict.fromkeys(f["code"] for f in security):
            same = [f for f in security if f["code"] == code]
            first = same[0]
            day_no = first["day_no"]
            what = f"receipt {first['global_no']}" if day_no is None else f"the close of day {day_no}"
            if len(same) > 1:
                what += f" and {len(same) - 1} more"
            warnings.append({**signature_finding(code, what), "colour": "Yellow", "field": None})
        problem = delivery.get("problem")
        if problem and problem.get("code") not in {w["code"] for w in given}:
            when = [f"since {problem['since']}"] if problem.get("since") else []
            due = problem.get("next_attempt")
            if due and due >= now:
                when.append(f"next attempt {due}")
            elif due:
                when.append(f"next attempt was due {due}: is `fiscalbox-device deliver` running?")
            when.append(f"{delivery['waiting']} receipts waiting")
            warnings.append(
                {
                    "code": problem["code"],
                    "colour": "Red" if problem.get("needs_person") else "Yellow",
                    "field": problem.get("field"),
                    "message": f"Delivery to FDMS: {problem['message']} ({'; '.join(when)})",
                }
            )
        return warnings

    @staticmethod
    def _close_warnings(
        unfinished: list[dict[str, Any]], flagged: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """What stands between a day and FDMS's close, said so a person can act on it."""
        warnings = []
        for d in unfinished:
            if d["status"] == CLOSE_FAILED:
                warnings.append(
                    {
                        "code": "BOX_CLOSE_FAILED",
                        "colour": "Red",
                        "field": None,
                        "message": f"FDMS could not close day {d['day_no']} ({d['closing_error']}): "
                        "close the day again; if it fails again, ask ZIMRA to close it in the FDMS portal.",
                    }
                )
        for finding in flagged:
            worst = [e for e in finding["errors"] if e["colour"] in ("Red", "Grey")]
            if worst:
                warnings.append(
                    {
                        "code": "BOX_CLOSE_BLOCKED",
                        "colour": worst[0]["colour"],
                        "field": None,
                        "message": f"FDMS flagged receipt {finding['global_no']} {worst[0]['colour']} "
                        f"({worst[0]['code']}): its day cannot be closed by the box; ask ZIMRA for a "
                        "manual close in the FDMS portal.",
                    }
                )
                break
        return warnings

    @_serialized
    def outbox(self, limit: int = 20) -> dict[str, Any]:
        """What waits for FDMS: counts by state, the oldest undelivered receipts, the receipts FDMS flagged,
        the box's own findings on FDMS's signatures, the days not closed, and delivery's last problem."""
        pending = self.journal.pending(limit)
        for row in pending:
            row["total"] = money.format_fixed(row["total"], 2)
        unfinished = self.journal.unfinished_days()
        flagged, security = self._findings(unfinished)
        counts = self.journal.outbox_counts()
        return {
            "counts": counts,
            "oldest_pending": pending,
            "flagged": flagged[:limit],
            "security": security[:limit],
            "security_total": len(security),
            "days_waiting": [
                {"day_no": d["day_no"], "status": d["status"], "open_sent": d["open_sent_at"] is not None}
                for d in unfinished
            ],
            "problem": self._delivery_state(counts.get("pending", 0))["problem"],
        }

    @_serialized
    def x_report(self) -> dict[str, Any]:
        """The open day so far: counters per currency and tax, payments, and documents per type."""
        day = self.journal.current_day()
        if day is None:
            raise _refuse("BOX_DAY_NOT_OPEN", "No fiscal day has been opened yet.")
        return self._day_report(day)

    def _known_day(self, day_no: int) -> dict[str, Any]:
        """Fiscal day `day_no`; BOX_NO_DAY, naming the last one, when the box never opened it."""
        day = self.journal.day(day_no)
        if day is None:
            last = self.journal.head()["day_no"]
            raise _refuse(
                "BOX_NO_DAY",
                f"There is no fiscal day {day_no}: "
                + (f"the last day is {last}." if last else "no day has been opened yet."),
                "day_no",
            )
        return day

    @_serialized
    def z_report(self, day_no: int) -> dict[str, Any]:
        """A closed day's final counters and documents."""
        day = self._known_day(day_no)
        if day["status"] != CLOSED:
            raise _refuse("BOX_DAY_NOT_CLOSED", f"Fiscal day {day_no} is not closed, so it has no Z report.")
        return self._day_report(day)

    def _day_report(self, day: dict[str, Any]) -> dict[str, Any]:
        ordered = fdms.day_counters(self.journal.counters(day["day_no"]))
        documents = self.journal.documents(day["day_no"])
        for document in documents:
            document["total"] = money.format_fixed(document["total"], 2)
        return {
            "day_no": day["day_no"],
            "opened": day["opened"],
            "status": day["status"],
            "at": self.now_local(),
            "receipts": self.journal.last_counter(day["day_no"]),
            "documents": documents,
            "counters": json.loads(wire.dumps(fdms.counters_wire(ordered)), parse_float=str),
        }

    # -----------------------------------------------------------------------------------------------------
    # FDMS: registration, configuration, certificate renewal (the network calls are never inside a
    # journal transaction), and what delivery records

    def _require_fdms(self) -> Any:
        if self.fdms is None:
            raise _refuse("BOX_NO_FDMS", "No FDMS connection is configured: set [fdms] in the configuration.")
        return self.fdms

    def _use_certificate(self) -> None:
        """Point the FDMS client at the key store's current certificate and key for mutual TLS."""
        material = getattr(self.keys, "tls_key_material", None)
        if self.fdms is not None and material is not None and self.keys.certificate_pem() is not None:
            self.fdms.use_certificate(material())

    def register(
        self,
        device_id: int,
        serial: str,
        activation_key: str,
        currencies: list[str],
        algorithm: str = ECDSA_P256,
    ) -> dict[str, Any]:
        """VerifyTaxpayerInformation, a key in the key store, a CSR, RegisterDevice, the certificate stored,
        then GetConfig: the box is provisioned with what FDMS says. Where FDMS has no
        VerifyTaxpayerInformation (404) registration goes on with a warning; any other failure stops it."""
        client = self._require_fdms()
        self._ensure_sound()
        known = self._settings.get("device_id")
        if known is None and self.anchor is not None:
            known = self.anchor.read()["device_id"]
        if known not in (None, device_id):
            raise _refuse(
                "BOX_SETTINGS",
                f"This box is registered as device {known}; a box cannot become another device, so nothing "
                f"was changed. Check [device] id (it says {device_id}).",
                "device_id",
            )
        if self._settings.get("serial") not in (None, serial):
            raise _refuse(
                "BOX_SETTINGS",
                f"This box is registered with serial {self._settings['serial']}, not {serial}: check "
                "[device] serial; nothing was changed.",
                "serial",
            )
        warnings = []
        try:
            taxpayer = client.verify_taxpayer_information(activation_key, serial).body
        except FdmsError as error:
            if error.status != 404:
                raise
            # The check is optional in FDMS's flow; RegisterDevice below still checks the activation key.
            taxpayer = {}
            warnings.append(
                {
                    "code": "BOX_FDMS_NO_TAXPAYER_CHECK",
                    "colour": "Yellow",
                    "field": None,
                    "message": "FDMS has no VerifyTaxpayerInformation (404), so the taxpayer was not checked "
                    "before registering; check the taxpayer's name FDMS's configuration gave.",
                }
            )
        with self.lock:
            if self.keys.algorithm is None:
                self.keys.generate(algorithm)
            csr = self.keys.certificate_request(fdms.csr_common_name(serial, device_id))
        answer = client.register_device(activation_key, csr)
        with self.lock:
            self.keys.install_certificate(answer.body["certificate"].encode())
            self._use_certificate()
        config = self.refresh_config(
            {"device_id": device_id, "serial": serial, "currencies": list(currencies)}
        )
        if not taxpayer:
            taxpayer = {"taxPayerName": config["taxpayer_name"], "taxPayerTIN": config["taxpayer_tin"]}
        with self.lock:
            self._advance_anchor()  # from now on a missing journal is this device's, to be restored
            if self.boot.get("skipped"):  # opened before its key existed: check the journal now it has one
                self.boot = self._boot_check()
        return {"taxpayer": taxpayer, "config": config, "warnings": warnings}

    def refresh_config(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """GetConfig, and the settings it carries stored (taxes, taxpayer and branch data, limits)."""
        config = self._require_fdms().get_config().body
        with self.lock:
            settings = {**settings_from_config(config), **(extra or {})}
            return self.provision(settings)

    def certificate_valid_till(self) -> str | None:
        """certificateValidTill as FDMS last reported it (from GetConfig)."""
        return self._settings.get("certificate_valid_till")

    def renewal_waits_for(self) -> str | None:
        """What signed with the current key still waits for FDMS (a receipt, a close), or None when the key
        may change."""
        with self.lock:
            waiting = self.journal.next_pending()
            if waiting is not None:
                return f"receipt {waiting['global_no']}"
            closing = [d["day_no"] for d in self.journal.unfinished_days() if d["status"] == CLOSE_INITIATED]
            return f"day {closing[0]}'s close" if closing else None

    def renew_certificate(self, algorithm: str | None = None) -> dict[str, Any]:
        """A new key and certificate: the pending key's CSR goes out over TLS with the current certificate;
        the retired key is recorded in the journal before the key store switches, so every receipt keeps
        verifying with the key that signed it.

        FDMS checks a receipt or a close with the certificate it holds when they arrive, so the box renews
        only when nothing signed with the current key waits for FDMS, and holds its lock from that check to
        the switch: a sale in the meantime waits for the one IssueCertificate call instead of being signed
        with a key about to be retired."""
        client = self._require_fdms()
        self._ensure_provisioned()
        with self.lock:
            waiting = self.renewal_waits_for()
            if waiting is not None:
                raise _refuse(
                    "BOX_RENEWAL_WAIT",
                    f"Signed with the current key, {waiting} still waits for FDMS: deliver it first, then "
                    "renew the certificate.",
                )
            old_algorithm = self.keys.algorithm
            self.keys.begin_renewal(algorithm or old_algorithm or ECDSA_P256)
            csr = self.keys.renewal_request(fdms.csr_common_name(self._settings["serial"], self.device_id))
            try:
                answer = client.issue_certificate(csr)
            except FiscalError:
                self.keys.cancel_renewal()
                raise
            at = self.now_local()
            old_public = self.keys.public_key_pem().decode()
            self.journal.retire_key(str(old_algorithm), old_public, at)
            self.keys.install_certificate(answer.body["certificate"].encode())
            self._use_certificate()
            self._checkpoint(at, "key renewed")
        config = self.refresh_config()
        return {"renewed_at": at, "certificate_valid_till": config.get("certificate_valid_till")}

    def fiscal_day(self, day_no: int) -> dict[str, Any] | None:
        with self.lock:
            return self.journal.day(day_no)

    def next_pending(self) -> dict[str, Any] | None:
        with self.lock:
            return self.journal.next_pending()

    def unfinished_days(self) -> list[dict[str, Any]]:
        """Days FDMS has not yet confirmed closed, oldest first: delivery works through them in order."""
        with self.lock:
            return self.journal.unfinished_days()

    def pending_in_day(self, day_no: int) -> int:
        with self.lock:
            return self.journal.pending_in_day(day_no)

    def mark_open_sent(self, day_no: int) -> None:
        with self.lock:
            self.journal.mark_open_sent(day_no, self.now_local())

    def record_delivery(self, global_no: int, attempts: int, **answer: Any) -> None:
        with self.lock:
            self.journal.record_delivery(global_no, "delivered", attempts, self.now_local(), **answer)

    def operating_mode(self) -> str:
        return str(self._settings.get("operating_mode") or "Online")

    def day_files(self, day_no: int, limit: int = FILE_LIMIT) -> list[dict[str, Any]]:
        """The SubmitFile files of a day whose close was requested (offline mode; also for manual upload in
        the ZIMRA portal): header, the receipts exactly as signed, split under `limit` bytes, and the footer
        (the signed close) in the last file. A day closed again after FDMS failed its files goes again as
        new files, numbered on from the last one sent."""
        with self.lock:
            day = self._known_day(day_no)
            if day["close_request"] is None:
                raise _refuse("BOX_DAY_NOT_CLOSED", f"Day {day_no} has no signed close yet: close it first.")
            recorded = self.journal.files(day_no)
            this_close = [
                f["sequence"] for f in recorded if f["close_requested_at"] == day["close_requested_at"]
            ]
            first = min(this_close) if this_close else max((f["sequence"] for f in recorded), default=0) + 1
            request = day["close_request"]
            footer = (
                '{"fiscalDayClosed":'
                + wire.dumps(day["close_requested_at"])
                + ","
                + re.sub(r',"fiscalDayNo":\d+', "", request[1:], count=1)
            )
            prefix = '{"receipt":'
            receipts = [(row[0], row[7][len(prefix) : -1]) for row in self.journal.receipts(day_no=day_no)]

        def header(sequence: int) -> str:
            return wire.dumps(
                {
                    "deviceID": self.device_id,
                    "fiscalDayNo": day_no,
                    "fiscalDayOpened": day["opened"],
                    "fileSequence": sequence,
                }
            )

        files: list[dict[str, Any]] = []
        batch: list[tuple[int, str]] = []
        size = 0
        room = limit - len(footer) - 200  # the header and the JSON punctuation around it
        for global_no, text in receipts:
            if batch and size + len(text.encode()) + 1 > room:
                files.append(self._file(header(first + len(files)), batch, None))
                batch, size = [], 0
            batch.append((global_no, text))
            size += len(text.encode()) + 1
        files.append(self._file(header(first + len(files)), batch, footer))
        for sequence, item in enumerate(files, start=first):
            item["sequence"] = sequence
            item["close_requested_at"] = day["close_requested_at"]
        return files

    @staticmethod
    def _file(header: str, batch: list[tuple[int, str]], footer: str | None) -> dict[str, Any]:
        body = '{"header":' + header
        if batch:
            body += ',"content":{"receipts":[' + ",".join(text for _, text in batch) + "]}"
        if footer is not None:
            body += ',"footer":' + footer
        body += "}"
        return {
            "first_global_no": batch[0][0] if batch else None,
            "last_global_no": batch[-1][0] if batch else None,
            "has_footer": footer is not None,
            "body": body.encode(),
        }

    def record_file(self, day_no: int, item: dict[str, Any], operation_id: str | None) -> None:
        with self.lock:
            self.journal.record_file(
                day_no,
                item["sequence"],
                item["first_global_no"],
                item["last_global_no"],
                item["has_footer"],
                hashlib.sha256(item["body"]).hexdigest(),
                operation_id,
                self.now_local(),
                item["close_requested_at"],
            )

    def sent_files(self, day_no: int) -> list[dict[str, Any]]:
        """The files sent for the day's close in force (not those of a close FDMS failed before)."""
        with self.lock:
            day = self.journal.day(day_no)
            at = None if day is None else day["close_requested_at"]
            return [f for f in self.journal.files(day_no) if f["close_requested_at"] == at]

    def update_file(self, day_no: int, sequence: int, status: str, error: str | None) -> None:
        with self.lock:
            self.journal.update_file(day_no, sequence, status, error, self.now_local())

    def delivery_findings(self, day_no: int | None = None) -> list[dict[str, Any]]:
        """Receipts FDMS flagged (and the box's own findings), with their errors; FDMS's Grey and Red ones
        block the day's close, so all of a day's are read."""
        with self.lock:
            return self.journal.flagged(limit=-1, day_no=day_no)

    # -----------------------------------------------------------------------------------------------------
    # Audit, backup, export

    @_serialized
    def audit(self, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Verify everything; name the receipt and field of any tampering. A clean audit is a checkpoint
        (never signed onto a journal that is not the box's own: that is refused first)."""
        self._ensure_ours()
        if self.keys.algorithm is None:
            raise _refuse(
                "BOX_KEY_MISSING", "The box has no device key, so there is nothing signed to audit."
            )
        device_id = self._settings.get("device_id", 0)
        report = verify.full_audit(self.journal, self._public_key(), device_id, progress)
        at = self.now_local()
        with self.journal.transaction():
            self.journal.log(at, "audit", {"clean": report["clean"], "problems": len(report["problems"])})
        if report["clean"]:
            self._checkpoint(at, "audit")
        return report

    @_serialized
    def backup(
        self,
        dest: str | os.PathLike[str],
        retain: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """An online copy of the journal and its signed manifest; keeps the newest `retain` copies."""
        self._ensure_sound()
        self._ensure_provisioned()
        result = backups.make_backup(
            self.journal, self.keys, self.device_id, Path(dest), self.now_local(), retain, progress
        )
        self._advance_anchor()
        return result

    @_serialized
    def export_journal(
        self,
        first: int,
        last: int,
        dest: str | os.PathLike[str],
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """A portable, signed file of receipts first..last that the host tool checks offline."""
        self._ensure_sound()
        self._ensure_provisioned()
        return exports.write_export(
            self.journal, self.keys, self._settings, first, last, Path(dest), self.now_local(), progress
        )
