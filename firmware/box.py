"""The box's operations: the one place that combines the journal, the key store, the clock and the printer.

Each method is one thing a person or a POS can ask. It returns plain data or raises FiscalError with the
authority's code or a BOX_ code and a sentence; a refusal writes nothing. Printing and FDMS delivery come
after the journal's commit and never inside its transaction: a printer or network fault cannot undo a sale.
"""

from __future__ import annotations

import datetime
import json
import os
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
from firmware.journal import CLOSE_INITIATED, CLOSED, OPENED, Head, Journal, NewReceipt
from hardware import Clock, KeyStore, Printer
from hardware.signatures import load_public_key

REQUIRED_SETTINGS = ("device_id", "serial", "taxpayer_name", "taxpayer_tin", "taxes", "currencies", "qr_url")
OPTIONAL_SETTINGS = {
    "vat_number": None,
    "branch_name": "",
    "branch_address": "",
    "branch_email": "",
    "branch_phone": "",
    "day_max_hours": 24,
}
# Fields of a sale the box decides itself; a POS that sends them is told so rather than silently overruled.
BOX_FIELDS = ("receiptCounter", "receiptGlobalNo", "receiptDate", "receiptDeviceSignature")


def _refuse(code: str, message: str, field: str | None = None) -> FiscalError:
    return FiscalError(code, message, field)


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
        self._settings: dict[str, Any] = {}
        self._taxes: list[dict[str, Any]] | None = None
        self._context: fdms.Context | None = None
        self._context_day = 0
        try:
            self._settings = journal.settings()
            self._taxes = fdms.parse_taxes(self._settings["taxes"]) if "taxes" in self._settings else None
            self.boot = self._boot_check()
        except (apsw.Error, FiscalError, ValueError, KeyError, TypeError) as error:
            # A journal too damaged to check is a finding too: the box starts, says so, and will not issue.
            message = error.message if isinstance(error, FiscalError) else str(error)
            problem = {"code": "BOX_JOURNAL_CORRUPT", "message": f"The journal cannot be read: {message}"}
            self.boot = {"clean": False, "problems": [problem]}

    # -----------------------------------------------------------------------------------------------------
    # Time and identity

    def now_local(self) -> str:
        """The box's local time as FDMS writes it: YYYY-MM-DDTHH:mm:ss in the configured zone."""
        moment = datetime.datetime.fromtimestamp(int(self.clock.now()), self.zone)
        return moment.strftime("%Y-%m-%dT%H:%M:%S")

    @property
    def device_id(self) -> int:
        return int(self._settings["device_id"])

    def _public_key(self) -> Any:
        return load_public_key(self.keys.public_key_pem())

    # -----------------------------------------------------------------------------------------------------
    # Boot check

    def _boot_check(self) -> dict[str, Any]:
        """Verify what changed since the last checkpoint; on a mismatch the box refuses to issue."""
        at = self.now_local()
        if self.keys.algorithm is None:
            return {"clean": True, "problems": [], "skipped": "no device key yet"}
        result = verify.boot_check(self.journal, self._public_key(), self._settings.get("device_id", 0))
        with self.journal.transaction():
            self.journal.log(at, "boot", {"clean": result["clean"], "problems": len(result["problems"])})
        if result["clean"]:
            self._checkpoint(at, "boot")
            if self.anchor is not None:
                self.anchor.advance(self.journal.head()["last_global_no"])
        return result

    def _checkpoint(self, at: str, reason: str) -> None:
        self.journal.add_checkpoint(at, self.keys.sign, reason)

    def _ensure_sound(self) -> None:
        if not self.boot["clean"]:
            first = self.boot["problems"][0]
            raise _refuse(
                "BOX_JOURNAL_MISMATCH",
                "The journal failed its check at start-up (" + first["message"] + "); the box will not issue "
                "until it is investigated: run `fiscalbox-device audit --verbose`.",
            )

    # -----------------------------------------------------------------------------------------------------
    # Provisioning

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
            raise _refuse("BOX_NOT_PROVISIONED", "The box has no taxpayer settings yet: provision it first.")
        if self.keys.algorithm is None:
            raise _refuse("BOX_KEY_MISSING", "The box has no device key yet: generate one first.")

    # -----------------------------------------------------------------------------------------------------
    # Days

    def open_day(self) -> dict[str, Any]:
        """Open the next fiscal day at the local time now."""
        self._ensure_provisioned()
        self._ensure_sound()
        day = self.journal.current_day()
        if day is not None and day["status"] == OPENED:
            raise _refuse("BOX_DAY_OPEN", f"Fiscal day {day['day_no']} is still open: close it first.")
        if day is not None and day["status"] != CLOSED:
            raise _refuse(
                "BOX_DAY_CLOSING",
                f"Fiscal day {day['day_no']} is not closed yet ({day['status']}): "
                "the next day opens once FDMS has confirmed the close.",
            )
        day_no = 1 if day is None else day["day_no"] + 1
        opened = self.now_local()
        last = self.journal.head()["last_global_no"]
        if last:
            previous_date = self.journal.receipt(last)["date"]  # type: ignore[index]
            if opened <= previous_date:
                raise _refuse(
                    "BOX_CLOCK",
                    f"The clock reads {opened}, not after the last receipt ({previous_date}): set the time.",
                )
        self.journal.open_day(day_no, opened, opened)
        self._checkpoint(opened, "day opened")
        return {"day_no": day_no, "opened": opened, "ends": localtime.add_hours(opened, self._max_hours())}

    def _max_hours(self) -> int:
        return int(self._settings.get("day_max_hours", 24))

    def record_close(self, day_no: int, status: str, **values: Any) -> None:
        """What FDMS answered to the close (called by delivery): Closed or CloseFailed with its code."""
        day = self.journal.day(day_no)
        if day is None or day["status"] not in (CLOSE_INITIATED,):
            raise _refuse("BOX_DAY_STATE", f"Fiscal day {day_no} has no close in progress.")
        self.journal.set_day_status(day_no, status, self.now_local(), **values)

    def close_day(self) -> dict[str, Any]:
        """Prepare and sign the CloseDay request from the incremental counters; the cost does not grow with
        the number of receipts."""
        self._ensure_provisioned()
        self._ensure_sound()
        day = self.journal.current_day()
        if day is None or day["status"] != OPENED:
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
        if self.anchor is not None:
            self.anchor.advance(self.journal.head()["last_global_no"])
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
        """The invoice a credit or debit note refers to, when this box issued it (FDMS receipt IDs come with
        delivery)."""
        if note.get("deviceID") not in (None, self.device_id) or note.get("receiptGlobalNo") is None:
            return None
        row = self.journal.receipt(note["receiptGlobalNo"])
        if row is None or row["type"] != "FiscalInvoice":
            return None
        if note.get("fiscalDayNo") is not None and note["fiscalDayNo"] != row["day_no"]:
            return None
        original = fdms.parse_receipt(json.loads(row["body"], parse_float=str))
        return {"receipt": original, "notes_total": self.journal.notes_total(row["global_no"])}

    def _receipt_date(self, head: Head, now: str) -> str:
        """Now, or one second after the previous receipt when several come within a second (FDMS wants
        every receipt strictly later than the one before)."""
        if head.last_date is None or now > head.last_date:
            return now
        date = localtime.format_seconds(localtime.seconds(head.last_date) + 1)
        if localtime.seconds(date) > localtime.seconds(now) + self.future_skew_seconds:
            raise _refuse(
                "BOX_CLOCK",
                f"The clock reads {now}, behind the last receipt ({head.last_date}): set the time.",
            )
        return date

    def issue(self, sale: dict[str, Any]) -> dict[str, Any]:
        """Validate, number, chain, sign and commit one sale. Returns only after the commit is durable."""
        self._ensure_provisioned()
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
                note_of=None
                if note is None or note["deviceID"] not in (None, self.device_id)
                else note["receiptGlobalNo"],
                hash=receipt_hash,
                signature=signature,
                qr_data=fdms.qr_data(signature_bytes),
                counters=fdms.update_counters(fdms.new_counters(), receipt),
            )

        head, new = self.journal.commit_receipt(make, now)
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
            except FiscalError as error:
                warnings.append(
                    {
                        "code": error.code,
                        "colour": "Yellow",
                        "field": None,
                        "message": f"{error.message} Receipt {head.global_no} is committed but not printed: "
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
        }

    def _day_warnings(self, opened: str, now: str) -> list[dict[str, Any]]:
        end = localtime.add_hours(opened, self._max_hours())
        left = localtime.seconds(end) - localtime.seconds(now)
        if left <= self.day_warn_minutes * 60:
            minutes = max(left, 0) // 60
            return [
                {
                    "code": "BOX_DAY_ENDING",
                    "colour": "Yellow",
                    "field": None,
                    "message": f"The fiscal day ends at {end} ({minutes} min left): close it soon.",
                }
            ]
        return []

    # -----------------------------------------------------------------------------------------------------
    # Printing

    def receipt_document(self, global_no: int, copy: bool = False, width: int = 48) -> layout.Document:
        """A committed receipt laid out for the configured printer (or `width` columns without one)."""
        row = self.journal.receipt(global_no)
        if row is None:
            raise _refuse("BOX_NO_RECEIPT", f"There is no receipt {global_no}.", "global_no")
        receipt = fdms.parse_receipt(json.loads(row["body"], parse_float=str))
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

    def reprint(self, global_no: int) -> dict[str, Any]:
        """Print a committed receipt again, marked COPY when it was printed (or began printing) before. The
        fiscal content is the stored receipt's, never re-signed."""
        if self.journal.receipt(global_no) is None:
            raise _refuse("BOX_NO_RECEIPT", f"There is no receipt {global_no}.", "global_no")
        copy = self._print_receipt(global_no)
        return {"global_no": global_no, "copy": copy, "prints": self.journal.prints(global_no)[1]}

    def print_unprinted(self) -> dict[str, Any]:
        """Print every receipt with no finished print, oldest first; stops at the first printer fault."""
        done: list[int] = []
        for global_no in self.journal.unprinted():
            try:
                self._print_receipt(global_no)
            except FiscalError as error:
                return {"printed": done, "stopped_at": global_no, "error": error.as_dict()}
            done.append(global_no)
        return {"printed": done, "stopped_at": None, "error": None}

    def report_document(self, day_no: int | None = None, width: int = 48) -> layout.Document:
        """The X report of the current day, or the Z report of a closed day."""
        day = self.journal.current_day() if day_no is None else self.journal.day(day_no)
        if day is None:
            raise _refuse("BOX_DAY_NOT_OPEN", "No such fiscal day.", "day_no")
        seller = {**self._settings, "taxes": self._taxes}
        counters = self.journal.counters(day["day_no"])
        documents = self.journal.documents(day["day_no"])
        at = self.now_local()
        if self.printer is not None:
            return layout.report_document(
                day, counters, documents, seller, at, self.printer.columns, self.printer.legible
            )
        return layout.report_document(day, counters, documents, seller, at, width)

    def print_report(self, day_no: int | None = None) -> dict[str, Any]:
        """Print the X report (the day so far) or, for a closed day, its Z report."""
        printer = self._require_printer()
        document = self.report_document(day_no)
        printer.check()
        printer.print_document(document)
        return {"day_no": day_no or self.journal.head()["day_no"], "title": document.lines[0].text}

    # -----------------------------------------------------------------------------------------------------
    # Status and reports

    def status(self) -> dict[str, Any]:
        head = self.journal.head()
        day = self.journal.current_day()
        info: dict[str, Any] = {
            "device_id": self._settings.get("device_id"),
            "serial": self._settings.get("serial"),
            "last_global_no": head["last_global_no"],
            "day": None,
            "outbox": self.journal.outbox_counts(),
            "unprinted": self.journal.unprinted(),
            "journal": {"clean": self.boot["clean"], "problems": self.boot["problems"]},
            "warnings": [],
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
        return info

    def x_report(self) -> dict[str, Any]:
        """The open day so far: counters per currency and tax, payments, and documents per type."""
        day = self.journal.current_day()
        if day is None:
            raise _refuse("BOX_DAY_NOT_OPEN", "No fiscal day has been opened yet.")
        return self._day_report(day)

    def z_report(self, day_no: int) -> dict[str, Any]:
        """A closed day's final counters and documents."""
        day = self.journal.day(day_no)
        if day is None or day["status"] != CLOSED:
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
    # Audit, backup, export

    def audit(self, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Verify everything; name the receipt and field of any tampering. A clean audit is a checkpoint."""
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

    def backup(self, dest: str | os.PathLike[str], retain: int | None = None) -> dict[str, Any]:
        """An online copy of the journal and its signed manifest; keeps the newest `retain` copies."""
        self._ensure_provisioned()
        result = backups.make_backup(
            self.journal, self.keys, self.device_id, Path(dest), self.now_local(), retain
        )
        if self.anchor is not None:
            self.anchor.advance(result["manifest"]["last_global_no"])
        return result

    def export_journal(self, first: int, last: int, dest: str | os.PathLike[str]) -> dict[str, Any]:
        """A portable, signed file of receipts first..last that the host tool checks offline."""
        self._ensure_provisioned()
        return exports.write_export(
            self.journal, self.keys, self._settings, first, last, Path(dest), self.now_local()
        )
