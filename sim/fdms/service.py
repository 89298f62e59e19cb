"""FDMS's behaviour, one method per endpoint, free of HTTP: the server (server.py) authenticates the caller,
applies faults and turns `ApiError`s into RFC 7807 problem bodies.

Decisions where the reference is silent (see also the module docstring of server.py):
- OpenDay with a fiscalDayNo other than the last day's + 1 (1 for the first day): 422 FISC01.
- CloseDay for a fiscalDayNo that is not the device's open day: 422 FISC04.
- CloseDay while the day holds a Grey (chain broken) or Red receipt: 422 FISC02 (a code the spec leaves
  unused between FISC01 and FISC03), the detail names the receipts; the day stays open.
- A receipt with a receiptGlobalNo already held under a different hash is answered (with a new receiptID
  and a server signature) with one validation error, RCPT012 Red, and is not held: the first one stays.
- A receipt resubmitted with the same receiptGlobalNo and hash gets its original answer even after its day
  has closed (a box replaying its outbox); any other receipt while no day is open is RCPT01.
- A receipt that fills a gap in the chain re-judges the later held receipts that were Grey.
- first_in_day (for the judge): the held receipt numbered one lower belongs to an earlier day, or, when it
  is not held, the receipt's counter is 1 and no lower-numbered receipt of the day is held.
- The close is judged `close_delay_seconds` (real time) after it was accepted, on a background thread, or
  earlier by GetStatus once that delay has passed; the server signs with the counters sorted as the spec
  sorts them (which, for a close that verified, is the order the device signed).
- Offline files: the body is the file's JSON text or base64 of it (3 MB = 3,145,728 bytes of JSON, either
  way: FILE01). Every receipt's structure is checked at upload (FILE02). A file for a day that does not
  exist yet opens it with the header's fiscalDayOpened. The day is closed with the server's time as
  fiscalDayClosed (as for an online close). Files wait for the previous fileSequence of their day without a
  time limit (no FileExceededAllowedWaitingTime).
- RegisterDevice may be repeated (a reinstalled box): each call issues a new current certificate. Every
  certificate issued to a device stays usable until it expires (IssueCertificate does not revoke the old).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from firmware.core import fdms, localtime, money
from firmware.core.errors import FiscalError
from sim.fdms import judge
from sim.fdms.ca import CertificateRequestError, TestCA
from sim.fdms.scenario import MODES, Scenario
from sim.fdms.state import DayRow, ReceiptRow, State, loads

log = logging.getLogger(__name__)

OPENED = "FiscalDayOpened"
CLOSED = "FiscalDayClosed"
CLOSE_INITIATED = "FiscalDayCloseInitiated"
CLOSE_FAILED = "FiscalDayCloseFailed"

FILE_IN_PROGRESS = "FileProcessingInProgress"
FILE_OK = "FileProcessingIsSuccessful"
FILE_ERRORS = "FileProcessingWithErrors"
FILE_WAITING = "WaitingForPreviousFile"

MAX_FILE_BYTES = 3 * 1024 * 1024

ERROR_TEXT = {
    "DEV01": "Device not found or not active",
    "DEV02": "Activation key is incorrect",
    "DEV03": "Certificate request is invalid",
    "DEV06": "Device model and version not registered in FDMS",
    "RCPT01": "Submitting receipt is not allowed: fiscal day is not opened or its close is initiated",
    "FISC01": "Open day is not allowed",
    "FISC02": "Closing is not allowed: the fiscal day has receipts with validation errors",
    "FISC03": "Closing is not allowed: fiscal day close is in progress",
    "FISC04": "Closing is not allowed: fiscal day is not opened",
    "FILE01": "File is too big",
    "FILE02": "File structure is invalid",
    "FILE03": "Device operating mode is not Offline",
    "FILE04": "File is sent for a fiscal day that is closed or closing",
    "FILE05": "Device ID in the file differs from the one in the address",
}


class ApiError(Exception):
    """An FDMS refusal: `status` 400 (with `errors`), 401, 404 or 422 (with `code`)."""

    def __init__(
        self,
        status: int,
        code: str | None = None,
        detail: str | None = None,
        errors: dict[str, list[str]] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail or (ERROR_TEXT.get(code or "", "") if code else "")
        self.errors = errors
        super().__init__(f"{status} {code or ''} {self.detail}")


def bad_request(
    errors: dict[str, list[str]], detail: str = "One or more validation errors occurred."
) -> ApiError:
    return ApiError(400, None, detail, errors)


def refuse(code: str, detail: str | None = None) -> ApiError:
    return ApiError(422, code, detail)


@dataclass
class Call:
    """One request as the service sees it."""

    endpoint: str
    device_id: int | None = None
    body: bytes = b""
    query: dict[str, str] = field(default_factory=dict)  # keys lower-cased
    model_name: str | None = None
    model_version: str | None = None
    client_cert: bytes | None = None  # DER of the TLS client certificate, when one was presented
    client_address: str = ""
    operation_id: str = ""
    cert_serial: str | None = None  # set by `authenticate`


class RealClock:
    def now(self) -> float:
        return time.time()


# ------------------------------------------------------------------------------------------------------------
# small helpers


def exact(value: Any) -> Any:
    """Parsed JSON with every decimal number (Decimal as `loads` reads it, or a float) turned into its decimal
    text, so that the core's exact parsers accept it (19.99 -> "19.99")."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exact(v) for v in value]
    return value


def json_number(units: int, places: int) -> int | float:
    """An exact fixed-point value as a JSON number: an int when whole, else the float whose shortest text is
    the exact decimal."""
    text = money.format_short(units, places)
    return int(text) if "." not in text else float(text)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 19:
        return int(value)
    return None


def _cents(value: Any) -> int | None:
    try:
        return money.parse_fixed(exact(value), money.AMOUNT_PLACES)
    except (FiscalError, TypeError, AttributeError):
        return None


def _datetime_ok(value: Any) -> bool:
    try:
        localtime.parse(value)
    except FiscalError:
        return False
    return True


def _receipt_type(value: Any) -> str | None:
    if isinstance(value, str):
        for name in fdms.RECEIPT_TYPES:
            if name.lower() == value.lower():
                return name
    return None


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise bad_request({"": ["A non-empty request body is required."]})
    try:
        return loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad_request({"$": [f"The JSON value could not be converted: {error}"]}) from None


def parse_object(body: bytes) -> dict[str, Any]:
    value = parse_json(body)
    if not isinstance(value, dict):
        raise bad_request({"$": ["The request body must be a JSON object."]})
    return value


def _require(errors: dict[str, list[str]], obj: dict[str, Any], key: str, kind: str, where: str = "") -> Any:
    value = obj.get(key)
    name = where + key
    if value is None:
        errors.setdefault(name, []).append(f"The {key} field is required.")
        return None
    ok = {
        "int": _as_int(value) is not None,
        "str": isinstance(value, str) and value != "",
        "list": isinstance(value, list),
        "object": isinstance(value, dict),
        "datetime": _datetime_ok(value),
    }[kind]
    if not ok:
        errors.setdefault(name, []).append(f"The {key} field is not a valid {kind}.")
        return None
    return value


def _signature_errors(errors: dict[str, list[str]], obj: dict[str, Any], key: str, where: str = "") -> None:
    sig = _require(errors, obj, key, "object", where)
    if sig is None:
        return
    for part in ("hash", "signature"):
        value = _require(errors, sig, part, "str", where + key + ".")
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                errors.setdefault(where + key + "." + part, []).append("Must be base64.")


def _counter_errors(errors: dict[str, list[str]], obj: dict[str, Any], where: str = "") -> None:
    counters = _require(errors, obj, "fiscalDayCounters", "list", where)
    if counters is None:
        return
    try:
        fdms.parse_counters(exact(counters))
    except FiscalError as error:
        errors.setdefault(where + (error.field or "fiscalDayCounters"), []).append(error.message)


def sorted_counters(raw: list[Any]) -> list[dict[str, Any]]:
    """The submitted counters as the core's sorted, non-zero list (for the day strings)."""
    result: list[dict[str, Any]] = fdms.day_counters(fdms.parse_counters(exact(raw)))
    return result


# ------------------------------------------------------------------------------------------------------------


class Fdms:
    """The simulated FDMS over one State, one CA and one clock."""

    def __init__(self, scenario: Scenario, state: State, ca: TestCA, clock: Any) -> None:
        self.scenario = scenario
        self.state = state
        self.ca = ca
        self.clock = clock
        self.zone = ZoneInfo(scenario.server.zone)
        self.clock_offset = 0.0
        self._locks: dict[int, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        self.wakeup: Callable[[], None] = lambda: None  # set by the server: work became due
        for device in scenario.devices:
            state.ensure_device(device.id, device.serial, device.mode)

    # --- time -----------------------------------------------------------------------------------------------

    def now(self) -> float:
        """Simulated UNIX seconds: the clock plus the admin's offset."""
        return float(self.clock.now()) + self.clock_offset

    def local(self, seconds: float | None = None) -> str:
        moment = dt.datetime.fromtimestamp(self.now() if seconds is None else seconds, self.zone)
        return moment.strftime("%Y-%m-%dT%H:%M:%S")

    def device_lock(self, device_id: int) -> threading.RLock:
        with self._locks_guard:
            lock = self._locks.get(device_id)
            if lock is None:
                lock = self._locks[device_id] = threading.RLock()
            return lock

    # --- checks every call goes through ---------------------------------------------------------------------

    def check_model(self, call: Call, required: bool) -> None:
        if call.model_name is None and call.model_version is None and not required:
            return
        if call.model_name is None or call.model_version is None:
            raise refuse("DEV06", f"{ERROR_TEXT['DEV06']}: send both DeviceModelName and DeviceModelVersion")
        if not self.scenario.knows_model(call.model_name, call.model_version):
            known = ", ".join(f"{m.name!r} {m.version!r}" for m in self.scenario.models)
            raise refuse(
                "DEV06",
                f"{ERROR_TEXT['DEV06']}: received DeviceModelName {call.model_name!r}, DeviceModelVersion"
                f" {call.model_version!r}; this simulator knows {known}",
            )

    def authenticate(self, call: Call) -> None:
        """401 unless the TLS client certificate was issued by this CA to the device in the path, is recorded
        for it, and is valid now (simulated time)."""
        if call.client_cert is None:
            raise ApiError(401, None, "A client certificate is required.")
        identity = self.ca.client_identity(call.client_cert)
        if identity is None:
            raise ApiError(401, None, "The client certificate was not issued by FDMS.")
        device_id, serial, not_before, not_after = identity
        if device_id != call.device_id:
            raise ApiError(401, None, "The client certificate was not issued to this device.")
        recorded = self.state.certificate(serial)
        if recorded is None or recorded.device_id != device_id:
            raise ApiError(401, None, "The client certificate is not known for this device.")
        now = self.now()
        if now > not_after:
            raise ApiError(401, None, "The client certificate has expired.")
        if now < not_before:
            raise ApiError(401, None, "The client certificate is not valid yet.")
        call.cert_serial = serial

    def _device(self, device_id: int | None) -> tuple[Any, Any]:
        scenario_device = self.scenario.device(device_id) if device_id is not None else None
        row = self.state.device(device_id) if device_id is not None else None
        if scenario_device is None or row is None:
            raise refuse("DEV01")
        return scenario_device, row

    def _online(self, device_id: int) -> None:
        row = self.state.device(device_id)
        if row is None or row.mode != "Online":
            raise refuse("DEV01", "Device not found or not active (the device is in Offline mode)")

    # --- admin ----------------------------------------------------------------------------------------------

    def set_mode(self, device_id: int, mode: str) -> None:
        if mode not in MODES:
            raise ValueError("mode must be Online or Offline")
        self._device(device_id)
        self.state.update_device(device_id, mode=mode)

    # --- public endpoints ---------------------------------------------------------------------------------

    def _activated(self, call: Call, other: str) -> tuple[Any, Any]:
        """The device a public call names, once its body carries the right activationKey (compared without
        case: DEV02 otherwise), with the body's other required text field."""
        body = parse_object(call.body)
        errors: dict[str, list[str]] = {}
        key = _require(errors, body, "activationKey", "str")
        value = _require(errors, body, other, "str")
        if errors:
            raise bad_request(errors)
        device, _ = self._device(call.device_id)
        if str(key).upper() != device.activation_key.upper():
            raise refuse("DEV02")
        return device, value

    def verify_taxpayer_information(self, call: Call) -> dict[str, Any]:
        self.check_model(call, required=False)
        device, serial = self._activated(call, "deviceSerialNo")
        if serial != device.serial:
            raise refuse("DEV01", "Device not found or not active (the serial number differs)")
        answer: dict[str, Any] = {
            "taxPayerName": self.scenario.taxpayer.name,
            "taxPayerTIN": self.scenario.taxpayer.tin,
        }
        if self.scenario.taxpayer.vat_number:
            answer["vatNumber"] = self.scenario.taxpayer.vat_number
        answer.update(self._branch())
        return answer

    def register_device(self, call: Call) -> dict[str, Any]:
        self.check_model(call, required=True)
        device, csr = self._activated(call, "certificateRequest")
        pem = self._issue(device.id, device.serial, csr)
        self.state.update_device(device.id, registered_at=self.local())
        log.info("device %s registered", device.id)
        return {"certificate": pem}

    def _issue(self, device_id: int, serial: str, csr: Any) -> str:
        try:
            settings = self.scenario.server
            issued = self.ca.issue_device(
                csr, serial, device_id, self.now(), settings.certificate_days, settings.strict_csr_subject
            )
        except CertificateRequestError as error:
            raise refuse("DEV03", f"Certificate request is invalid: {error}") from None
        self.state.add_certificate(
            device_id, issued.serial, issued.pem, issued.not_before, issued.not_after, self.local()
        )
        return issued.pem

    def get_server_certificate(self, call: Call) -> dict[str, Any]:
        self.check_model(call, required=False)
        wanted = call.query.get("thumbprint")
        if wanted and wanted.upper() != self.ca.thumbprint:
            raise ApiError(404, None, "No certificate with this thumbprint.")
        return {
            "certificate": self.ca.chain_pem(),
            "certificateValidTill": self.local(self.ca.signing_cert.not_valid_after_utc.timestamp()),
        }

    # --- device endpoints ---------------------------------------------------------------------------------

    def applicable_taxes(self) -> list[dict[str, Any]]:
        """GetConfig's applicableTaxes: taxPercent a JSON number, absent for exempt."""
        taxes = []
        for tax in self.scenario.taxes:
            item: dict[str, Any] = {"taxID": tax.id, "taxName": tax.name}
            if tax.percent is not None:
                value = Decimal(tax.percent)
                item["taxPercent"] = int(value) if value == value.to_integral() else float(value)
            item["validFrom"] = _full_datetime(tax.valid_from)
            if tax.valid_till:
                item["validTill"] = _full_datetime(tax.valid_till, end=True)
            taxes.append(item)
        return taxes

    def _branch(self) -> dict[str, Any]:
        branch = self.scenario.branch
        address = {
            "province": branch.province,
            "city": branch.city,
            "street": branch.street,
            "houseNo": branch.house_no,
        }
        if branch.district:
            address["district"] = branch.district
        contacts = {}
        if branch.phone:
            contacts["phoneNo"] = branch.phone
        if branch.email:
            contacts["email"] = branch.email
        answer: dict[str, Any] = {"deviceBranchName": branch.name, "deviceBranchAddress": address}
        if contacts:
            answer["deviceBranchContacts"] = contacts
        return answer

    def get_config(self, call: Call) -> dict[str, Any]:
        device, row = self._device(call.device_id)
        taxpayer = self.scenario.taxpayer
        answer: dict[str, Any] = {"taxPayerName": taxpayer.name, "taxPayerTIN": taxpayer.tin}
        if taxpayer.vat_number:
            answer["vatNumber"] = taxpayer.vat_number
        answer["deviceSerialNo"] = device.serial
        answer.update(self._branch())
        answer.update(
            {
                "deviceOperatingMode": row.mode,
                "taxPayerDayMaxHrs": taxpayer.day_max_hours,
                "taxpayerDayEndNotificationHrs": taxpayer.day_end_notification_hours,
                "applicableTaxes": self.applicable_taxes(),
                "qrUrl": self.scenario.server.qr_url,
            }
        )
        cert = self.state.current_certificate(device.id)
        if cert is not None:
            answer["certificateValidTill"] = self.local(cert.not_after)
        return answer

    def ping(self, call: Call) -> dict[str, Any]:
        device, _ = self._device(call.device_id)
        self.state.update_device(device.id, last_ping=self.local())
        return {"reportingFrequency": self.scenario.taxpayer.reporting_frequency_minutes}

    def issue_certificate(self, call: Call) -> dict[str, Any]:
        device, _ = self._device(call.device_id)
        body = parse_object(call.body)
        errors: dict[str, list[str]] = {}
        csr = _require(errors, body, "certificateRequest", "str")
        if errors:
            raise bad_request(errors)
        pem = self._issue(device.id, device.serial, csr)
        log.info("device %s got a new certificate", device.id)
        return {"certificate": pem}

    def get_status(self, call: Call) -> dict[str, Any]:
        device, _ = self._device(call.device_id)
        self._online(device.id)
        self.finish_due(device.id)
        day = self.state.last_day(device.id)
        answer: dict[str, Any] = {"fiscalDayStatus": day.status if day else CLOSED}
        if day is not None:
            if day.status == CLOSED:
                answer["fiscalDayReconciliationMode"] = day.reconciliation or "Auto"
                if day.server_signature:
                    answer["fiscalDayServerSignature"] = day.server_signature
                if day.closed_at:
                    answer["fiscalDayClosed"] = day.closed_at
            if day.status == CLOSE_FAILED:
                answer["fiscalDayStatus"] = self.scenario.server.failed_close_status
                if day.closing_error:
                    answer["fiscalDayClosingErrorCode"] = day.closing_error
        last = self.state.last_global_no(device.id)
        if last is not None:
            answer["lastReceiptGlobalNo"] = last
        if day is not None:
            answer["lastFiscalDayNo"] = day.day_no
            answer["fiscalDayDocumentQuantities"] = self._quantities(device.id, day.day_no)
        return answer

    def _quantities(self, device_id: int, day_no: int) -> list[dict[str, Any]]:
        groups: dict[tuple[int, str], list[int]] = {}
        for receipt in self.state.held_receipts(device_id, day_no):
            kind = _receipt_type(receipt.receipt_type)
            if kind is None or receipt.currency is None:
                continue
            group = groups.setdefault((fdms.RECEIPT_TYPES.index(kind), receipt.currency), [0, 0])
            group[0] += 1
            group[1] += receipt.total_cents or 0
        return [
            {
                "receiptType": fdms.RECEIPT_TYPES[kind],
                "receiptCurrency": currency,
                "receiptQuantity": count,
                "receiptTotalAmount": json_number(total, 2),
            }
            for (kind, currency), (count, total) in sorted(groups.items())
        ]

    def open_day(self, call: Call) -> dict[str, Any]:
        device, _ = self._device(call.device_id)
        self._online(device.id)
        body = parse_object(call.body)
        errors: dict[str, list[str]] = {}
        opened = _require(errors, body, "fiscalDayOpened", "datetime")
        day_no = None
        if body.get("fiscalDayNo") is not None:
            day_no = _require(errors, body, "fiscalDayNo", "int")
        if errors:
            raise bad_request(errors)
        with self.device_lock(device.id):
            last = self.state.last_day(device.id)
            if last is not None and last.status != CLOSED:
                raise refuse("FISC01", f"Open day is not allowed: fiscal day {last.day_no} is {last.status}")
            expected = last.day_no + 1 if last else 1
            if day_no is not None and _as_int(day_no) != expected:
                raise refuse("FISC01", f"Open day is not allowed: the next fiscal day is {expected}")
            self.state.add_day(device.id, expected, str(opened), OPENED)
        log.info("device %s opened day %s", device.id, expected)
        return {"fiscalDayNo": expected}

    # --- receipts -----------------------------------------------------------------------------------------

    def submit_receipt(self, call: Call) -> dict[str, Any]:
        device, _ = self._device(call.device_id)
        body = parse_object(call.body)
        problems = judge.check_structure(body)
        if not problems:
            problems = _own_structure(body)
        if problems:
            raise bad_request(problems)
        self._online(device.id)
        receipt = body["receipt"]
        with self.device_lock(device.id):
            held = self.state.held_receipt(device.id, int(_as_int(receipt["receiptGlobalNo"]) or 0))
            if held is not None and held.hash == receipt["receiptDeviceSignature"]["hash"]:
                # the same receipt again (its answer was lost): the original answer, whatever the day's state
                outcome = Outcome(held.receipt_id, held.server_date, held.server_signature, held.errors, True)
            else:
                day = self.state.last_day(device.id)
                if day is None or day.status not in (OPENED, CLOSE_FAILED):
                    raise refuse("RCPT01")
                outcome = self.accept_receipt(device.id, day, receipt, call.cert_serial, self.local())
        answer: dict[str, Any] = {
            "receiptID": outcome.receipt_id,
            "serverDate": outcome.server_date,
            "receiptServerSignature": outcome.server_signature,
        }
        if outcome.errors:
            answer["validationErrors"] = outcome.errors
        return answer

    def accept_receipt(
        self,
        device_id: int,
        day: DayRow,
        receipt: dict[str, Any],
        cert_serial: str | None,
        now_local: str,
        file_id: int | None = None,
    ) -> Outcome:
        """Judge and hold one structurally valid receipt of `day` (the caller holds the device lock)."""
        global_no = int(_as_int(receipt["receiptGlobalNo"]) or 0)
        signature = receipt["receiptDeviceSignature"]
        held = self.state.held_receipt(device_id, global_no)
        if held is not None and held.hash == signature["hash"]:
            return Outcome(held.receipt_id, held.server_date, held.server_signature, held.errors, True)
        if held is not None:
            colour, text = fdms.RULES["RCPT012"]
            errors = [
                {
                    "validationErrorCode": "RCPT012",
                    "validationErrorColor": colour,
                    "validationErrorDescription": f"{text}: receipt {global_no} is already held"
                    " with another hash",
                }
            ]
        else:
            errors = self._judge(device_id, day.day_no, day.opened, receipt, cert_serial, now_local, None)
        original = None if held is not None else self._original_row(receipt.get("creditDebitNote"), None)
        fields = {
            "device_id": device_id,
            "global_no": global_no,
            "day_no": day.day_no,
            "counter": _as_int(receipt.get("receiptCounter")),
            "hash": signature["hash"],
            "signature": signature["signature"],
            "invoice_no": receipt.get("invoiceNo") if isinstance(receipt.get("invoiceNo"), str) else None,
            "receipt_type": _receipt_type(receipt.get("receiptType")),
            "currency": str(receipt.get("receiptCurrency", "")).upper() or None,
            "total_cents": _cents(receipt.get("receiptTotal")),
            "receipt_date": receipt.get("receiptDate")
            if isinstance(receipt.get("receiptDate"), str)
            else None,
            "receipt": receipt,
            "errors": errors,
            "cert_serial": cert_serial,
            "submitted_at": now_local,
            "original_id": original.receipt_id if original is not None else None,
            "held": held is None,
            "file_id": file_id,
        }

        def sign(receipt_id: int) -> tuple[str, dict[str, str]]:
            server_date = self.local()
            text = fdms.receipt_server_string(signature["signature"], receipt_id, server_date)
            return server_date, self.ca.sign(text)

        receipt_id = self.state.add_receipt(fields, sign)
        stored = self.state.receipt(receipt_id)
        assert stored is not None
        if held is None:
            self._rejudge_after(device_id, global_no)
            log.info(
                "device %s receipt %s held as %s (%s)",
                device_id,
                global_no,
                receipt_id,
                ",".join(f"{e['validationErrorCode']}/{e['validationErrorColor']}" for e in errors)
                or "clean",
            )
        return Outcome(receipt_id, stored.server_date, stored.server_signature, errors, False)

    def _judge(
        self,
        device_id: int,
        day_no: int,
        day_opened: str,
        receipt: dict[str, Any],
        cert_serial: str | None,
        now_local: str,
        self_id: int | None,
    ) -> list[dict[str, Any]]:
        global_no = int(_as_int(receipt["receiptGlobalNo"]) or 0)
        previous_row = self.state.held_receipt(device_id, global_no - 1)
        if previous_row is not None:
            first_in_day = previous_row.day_no != day_no
        else:
            first_in_day = _as_int(receipt.get("receiptCounter")) == 1 and not self.state.has_lower_in_day(
                device_id, day_no, global_no
            )
        facts = self.facts(device_id, day_no, day_opened, now_local, cert_serial)
        return judge.judge_receipt(
            receipt,
            facts,
            _held(previous_row) if previous_row is not None else None,
            first_in_day,
            self.state.last_global_before_day(device_id, day_no),
            lambda invoice_no: self.state.invoice_seen(invoice_no, self_id),
            lambda note: self._original(note, self_id),
        )

    def facts(
        self, device_id: int, day_no: int, day_opened: str, now_local: str, cert_serial: str | None
    ) -> judge.Facts:
        cert = self.state.certificate(cert_serial) if cert_serial else None
        if cert is None:
            cert = self.state.current_certificate(device_id)
        return judge.Facts(
            device_id=device_id,
            vat_payer=bool(self.scenario.taxpayer.vat_number),
            taxes=self.applicable_taxes(),
            currencies=tuple(self.scenario.currencies),
            day_no=day_no,
            day_opened=day_opened,
            day_max_hours=self.scenario.taxpayer.day_max_hours,
            now=now_local,
            allowed_skew_seconds=self.scenario.server.allowed_skew_seconds,
            certificate_pem=cert.pem.encode("ascii") if cert is not None else b"",
        )

    def _original_row(self, note: Any, self_id: int | None) -> ReceiptRow | None:
        if not isinstance(note, dict):
            return None
        receipt_id = _as_int(note.get("receiptID"))
        if receipt_id is not None:
            row = self.state.receipt(receipt_id)
            return row if row is not None and row.held and row.receipt_id != self_id else None
        device_id = _as_int(note.get("deviceID"))
        global_no = _as_int(note.get("receiptGlobalNo"))
        day_no = _as_int(note.get("fiscalDayNo"))
        if device_id is None or global_no is None or day_no is None:
            return None
        row = self.state.held_by_place(device_id, global_no, day_no)
        return row if row is not None and row.receipt_id != self_id else None

    def _original(self, note: Any, self_id: int | None) -> tuple[judge.Held, int] | None:
        row = self._original_row(note, self_id)
        if row is None:
            return None
        return _held(row), self.state.notes_total(row.receipt_id, self_id)

    def _rejudge_after(self, device_id: int, global_no: int) -> None:
        """Receipts held after `global_no` that were Grey (their previous receipt was missing) are judged
        again, in order: the chain may now be whole."""
        for row in self.state.held_after(device_id, global_no):
            if "Grey" not in row.colours:
                continue
            day = self.state.day(device_id, row.day_no)
            if day is None:
                continue
            errors = self._judge(
                device_id,
                row.day_no,
                day.opened,
                row.receipt,
                row.cert_serial,
                row.submitted_at,
                row.receipt_id,
            )
            if errors != row.errors:
                self.state.update_receipt(row.receipt_id, errors=errors)
                log.info("device %s receipt %s judged again", device_id, row.global_no)

    # --- closing ------------------------------------------------------------------------------------------

    def close_day(self, call: Call) -> dict[str, Any]:
        device, _ = self._device(call.device_id)
        body = parse_object(call.body)
        errors = _close_errors(body)
        if errors:
            raise bad_request(errors)
        self._online(device.id)
        with self.device_lock(device.id):
            day = self.state.last_day(device.id)
            if day is None or day.status == CLOSED:
                raise refuse("FISC04")
            if day.status == CLOSE_INITIATED:
                raise refuse("FISC03")
            if _as_int(body["fiscalDayNo"]) != day.day_no:
                raise refuse(
                    "FISC04", f"Closing is not allowed: fiscal day {body['fiscalDayNo']} is not open"
                )
            blocking = [
                r for r in self.state.held_receipts(device.id, day.day_no) if {"Grey", "Red"} & set(r.colours)
            ]
            if blocking:
                names = ", ".join(
                    f"{r.global_no} ({'/'.join(sorted(set(r.colours) & {'Grey', 'Red'}))})"
                    for r in blocking[:20]
                )
                raise refuse("FISC02", f"{ERROR_TEXT['FISC02']}: receipts {names}")
            request = {
                "fiscalDayNo": day.day_no,
                "fiscalDayCounters": body["fiscalDayCounters"],
                "fiscalDayDeviceSignature": body["fiscalDayDeviceSignature"],
                "receiptCounter": body["receiptCounter"],
            }
            self.state.update_day(
                device.id,
                day.day_no,
                status=CLOSE_INITIATED,
                close_request=request,
                close_cert=call.cert_serial,
                close_due=time.time() + self.scenario.server.close_delay_seconds,
                close_file=None,
                closing_error=None,
            )
        log.info("device %s day %s close initiated", device.id, day.day_no)
        self.wakeup()
        return {}

    def finish_due(self, device_id: int | None = None, force: bool = False) -> None:
        """Judge the closes that are due (all of them with `force`), for one device or all."""
        for day in self.state.days_due():
            if device_id is not None and day.device_id != device_id:
                continue
            if force or (day.close_due or 0) <= time.time():
                self._finish_close(day.device_id, day.day_no)

    def _finish_close(self, device_id: int, day_no: int) -> str | None:
        with self.device_lock(device_id):
            day = self.state.day(device_id, day_no)
            if day is None or day.status != CLOSE_INITIATED or day.close_request is None:
                return None
            return self._judge_close(day, day.close_request, day.close_cert)

    def _judge_close(self, day: DayRow, request: dict[str, Any], cert_serial: str | None) -> str | None:
        """Judge a close; the day ends FiscalDayClosed (returns None) or FiscalDayCloseFailed (returns the
        fiscalDayClosingErrorCode)."""
        now_local = self.local()
        facts = self.facts(day.device_id, day.day_no, day.opened, now_local, cert_serial)
        held = [_held(r) for r in self.state.held_receipts(day.device_id, day.day_no)]
        try:
            code = judge.judge_close(request, facts, held)
        except Exception:  # a judge bug must not leave the day stuck in CloseInitiated
            log.exception("judging the close of device %s day %s failed", day.device_id, day.day_no)
            code = "InternalError"
        if code is not None:
            self.state.update_day(
                day.device_id, day.day_no, status=CLOSE_FAILED, closing_error=code, close_request=request
            )
            log.info("device %s day %s close failed: %s", day.device_id, day.day_no, code)
            return code
        device_signature = request["fiscalDayDeviceSignature"]
        text = fdms.day_server_string(
            day.device_id,
            day.day_no,
            day.opened[:10],
            now_local,
            "AUTO",
            sorted_counters(request["fiscalDayCounters"]),
            device_signature["signature"],
        )
        self.state.update_day(
            day.device_id,
            day.day_no,
            status=CLOSED,
            closing_error=None,
            closed_at=now_local,
            reconciliation="Auto",
            server_signature=self.ca.sign(text),
            device_signature={"hash": device_signature["hash"], "signature": device_signature["signature"]},
            close_request=request,
        )
        log.info("device %s day %s closed", day.device_id, day.day_no)
        return None

    # --- offline files ------------------------------------------------------------------------------------

    def submit_file(self, call: Call) -> dict[str, Any]:
        device, row = self._device(call.device_id)
        if row.mode != "Offline":
            raise refuse("FILE03")
        text = _file_text(call.body)
        try:
            data = loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise refuse("FILE02", f"File structure is invalid: not JSON ({error})") from None
        header = _file_structure(data)
        if header["deviceID"] != device.id:
            raise refuse("FILE05")
        day_no = header["fiscalDayNo"]
        with self.device_lock(device.id):
            day = self.state.day(device.id, day_no)
            if day is not None and day.status in (CLOSED, CLOSE_INITIATED):
                raise refuse("FILE04", f"{ERROR_TEXT['FILE04']}: fiscal day {day_no} is {day.status}")
            pending = [
                f
                for f in self.state.files_pending()
                if f.device_id == device.id
                and f.day_no == day_no
                and f.has_footer
                and f.sequence < header["fileSequence"]
            ]
            if pending:
                raise refuse("FILE04", f"{ERROR_TEXT['FILE04']}: its closing file is being processed")
            now_local = self.local()
            self.state.add_file(
                {
                    "device_id": device.id,
                    "file_name": f"{device.id}-{day_no}-{header['fileSequence']}-{call.operation_id}.json",
                    "upload_date": now_local,
                    "upload_seconds": self.now(),
                    "day_no": day_no,
                    "day_opened": header["fiscalDayOpened"],
                    "sequence": header["fileSequence"],
                    "status": FILE_IN_PROGRESS,
                    "has_footer": "footer" in data,
                    "operation_id": call.operation_id,
                    "ip_address": call.client_address,
                    "body": text.decode("utf-8"),
                    "cert_serial": call.cert_serial,
                    "due": time.time() + self.scenario.server.close_delay_seconds,
                }
            )
        log.info(
            "device %s file for day %s (sequence %s) accepted", device.id, day_no, header["fileSequence"]
        )
        self.wakeup()
        return {}

    def process_files(self, force: bool = False) -> None:
        """Process the uploaded files that are due, each day's files in fileSequence order."""
        progress = True
        while progress:
            progress = False
            for item in self.state.files_pending():
                if not force and item.due > time.time():
                    continue
                with self.device_lock(item.device_id):
                    current = self.state.file(item.file_id)
                    if current is None or current.status not in (FILE_IN_PROGRESS, FILE_WAITING):
                        continue
                    if not self._previous_file_done(current.device_id, current.day_no, current.sequence):
                        if current.status != FILE_WAITING:
                            self.state.update_file(current.file_id, status=FILE_WAITING)
                        continue
                    self._process_file(current.file_id)
                    progress = True

    def _previous_file_done(self, device_id: int, day_no: int, sequence: int) -> bool:
        if sequence <= 1:
            return True
        for other in self.state.files(device_id):
            if other.day_no == day_no and other.sequence == sequence - 1:
                if other.status in (FILE_OK, FILE_ERRORS):
                    return True
        return False

    def _process_file(self, file_id: int) -> None:
        item = self.state.file(file_id)
        assert item is not None
        data = loads(item.body)
        now_local = self.local()
        day = self.state.day(item.device_id, item.day_no)
        if day is None:
            self.state.add_day(item.device_id, item.day_no, item.day_opened or now_local, OPENED)
            day = self.state.day(item.device_id, item.day_no)
            assert day is not None
        if day.status in (CLOSED, CLOSE_INITIATED):
            self.state.update_file(
                file_id, status=FILE_ERRORS, error="FileSentForClosedDay", processing_date=now_local
            )
            return
        invalid = []
        colours: set[str] = set()
        receipts = (data.get("content") or {}).get("receipts") or []
        for receipt in sorted(receipts, key=lambda r: _as_int(r.get("receiptGlobalNo")) or 0):
            outcome = self.accept_receipt(item.device_id, day, receipt, item.cert_serial, now_local, file_id)
            if outcome.duplicate:
                continue
            if outcome.errors:
                colours |= {str(e.get("validationErrorColor")) for e in outcome.errors}
                invalid.append(
                    {
                        "receiptCounter": _as_int(receipt.get("receiptCounter")),
                        "receiptGlobalNo": _as_int(receipt.get("receiptGlobalNo")),
                        "validationErrors": outcome.errors,
                    }
                )
        error = None
        footer = data.get("footer")
        if footer is not None:
            request = {
                "fiscalDayNo": item.day_no,
                "fiscalDayCounters": footer["fiscalDayCounters"],
                "fiscalDayDeviceSignature": footer["fiscalDayDeviceSignature"],
                "receiptCounter": footer["receiptCounter"],
            }
            self.state.update_day(item.device_id, item.day_no, close_file=file_id)
            error = self._judge_close(day, request, item.cert_serial)
        elif "Grey" in colours:
            error = "MissingReceipts"
        elif "Red" in colours:
            error = "ReceiptsWithValidationErrors"
        self.state.update_file(
            file_id,
            status=FILE_ERRORS if error else FILE_OK,
            error=error,
            processing_date=self.local(),
            invalid=invalid,
        )
        log.info("device %s file %s processed: %s", item.device_id, file_id, error or "successful")

    def get_stock_list(self, call: Call) -> dict[str, Any]:
        """ProductsStock Search: the taxpayer's goods, filtered by HS code (prefix) and name (contains,
        case-insensitive), sorted by hsCode, goodName or quantity, paged by offset and limit (at most 100)."""
        self._device(call.device_id)
        query = call.query
        errors: dict[str, list[str]] = {}
        offset = _query_int(query, "offset", "Offset", 0, errors)
        limit = _query_int(query, "limit", "Limit", 100, errors)
        if limit is not None and not 1 <= limit <= 100:
            errors.setdefault("Limit", []).append("Limit must be between 1 and 100.")
        sort = query.get("sort") or "hsCode"
        keys = {"hscode": "hs_code", "goodname": "name", "quantity": "quantity"}
        if sort.lower() not in keys:
            errors.setdefault("Sort", []).append("Sort by hsCode, goodName or quantity.")
        if errors:
            raise bad_request(errors)
        hs_code = query.get("hscode") or ""
        name = (query.get("goodname") or "").lower()
        rows = [
            item
            for item in self.scenario.stock
            if item.hs_code.startswith(hs_code) and name in item.name.lower()
        ]
        key = keys[sort.lower()]
        if key == "quantity":
            rows.sort(key=lambda item: money.quantity(item.quantity))
        else:
            rows.sort(key=lambda item: str(getattr(item, key)))
        if (query.get("order") or "asc").lower() == "desc":
            rows.reverse()
        page = rows[(offset or 0) : (offset or 0) + (limit or 100)]
        taxpayer = self.scenario.taxpayer
        return {
            "total": len(rows),
            "rows": [
                {
                    "hsCode": item.hs_code,
                    "goodName": item.name,
                    "quantity": json_number(money.quantity(item.quantity), 6),
                    "taxPayerId": int(taxpayer.tin),
                    "taxPayerName": taxpayer.name,
                    "branchName": self.scenario.branch.name,
                }
                for item in page
            ],
        }

    def submitted_file_list(self, call: Call) -> dict[str, Any]:
        device, row = self._device(call.device_id)
        if row.mode != "Offline":
            raise refuse("FILE03")
        query = call.query
        errors: dict[str, list[str]] = {}
        since = _query_time(query, "fileuploadedfrom", "FileUploadedFrom", errors, self.zone)
        till = _query_time(query, "fileuploadedtill", "FileUploadedTill", errors, self.zone)
        offset = _query_int(query, "offset", "Offset", 0, errors)
        limit = _query_int(query, "limit", "Limit", 100, errors)
        if since is not None and till is not None and till - since > 100 * 86400:
            errors.setdefault("FileUploadedTill", []).append("The interval must be at most 100 days.")
        if limit is not None and not 1 <= limit <= 100:
            errors.setdefault("Limit", []).append("Limit must be between 1 and 100.")
        if errors:
            raise bad_request(errors)
        operation = query.get("operationid")
        rows = [
            f
            for f in self.state.files(device.id)
            if (since is None or f.upload_seconds >= since)
            and (till is None or f.upload_seconds <= till)
            and (not operation or f.operation_id == operation)
        ]
        if (query.get("order") or "desc").lower() != "asc":
            rows.reverse()
        page = rows[(offset or 0) : (offset or 0) + (limit or 100)]
        return {"total": len(rows), "rows": [file_row(f) for f in page]}

    # --- views for tests and the admin port -----------------------------------------------------------------

    def device_summary(self, device_id: int) -> dict[str, Any]:
        _, row = self._device(device_id)
        day = self.state.last_day(device_id)
        cert = self.state.current_certificate(device_id)
        return {
            "deviceID": device_id,
            "serial": row.serial,
            "mode": row.mode,
            "registered": row.registered_at is not None,
            "lastPing": row.last_ping,
            "certificateValidTill": self.local(cert.not_after) if cert else None,
            "certificates": len(self.state.certificates(device_id)),
            "lastFiscalDayNo": day.day_no if day else None,
            "fiscalDayStatus": day.status if day else CLOSED,
            "fiscalDayClosingErrorCode": day.closing_error if day else None,
            "lastReceiptGlobalNo": self.state.last_global_no(device_id),
            "receiptsHeld": len(self.state.held_receipts(device_id)),
            "receiptsInDay": len(self.state.held_receipts(device_id, day.day_no)) if day else 0,
            "colours": {str(r.global_no): r.colours for r in self.state.held_receipts(device_id) if r.errors},
        }

    def receipt_view(self, row: ReceiptRow) -> dict[str, Any]:
        return {
            "receiptID": row.receipt_id,
            "deviceID": row.device_id,
            "receiptGlobalNo": row.global_no,
            "fiscalDayNo": row.day_no,
            "receiptCounter": row.counter,
            "hash": row.hash,
            "serverDate": row.server_date,
            "receiptServerSignature": row.server_signature,
            "validationErrors": row.errors,
            "colours": row.colours,
            "receipt": row.receipt,
        }

    def day_view(self, day: DayRow) -> dict[str, Any]:
        return {
            "deviceID": day.device_id,
            "fiscalDayNo": day.day_no,
            "fiscalDayOpened": day.opened,
            "fiscalDayStatus": day.status,
            "fiscalDayClosingErrorCode": day.closing_error,
            "fiscalDayClosed": day.closed_at,
            "fiscalDayReconciliationMode": day.reconciliation,
            "fiscalDayServerSignature": day.server_signature,
            "fiscalDayDeviceSignature": day.device_signature,
            "closeRequest": day.close_request,
            "receipts": len(self.state.held_receipts(day.device_id, day.day_no)),
        }


@dataclass
class Outcome:
    receipt_id: int
    server_date: str
    server_signature: dict[str, str]
    errors: list[dict[str, Any]]
    duplicate: bool


def _held(row: ReceiptRow) -> judge.Held:
    return judge.Held(receipt=row.receipt, receipt_id=row.receipt_id, day_no=row.day_no, colours=row.colours)


def _full_datetime(text: str, end: bool = False) -> str:
    if len(text) == 10:
        return text + ("T23:59:59" if end else "T00:00:00")
    return text


def _own_structure(body: dict[str, Any]) -> dict[str, list[str]]:
    """What the simulator itself relies on, in case the judge lets it through."""
    errors: dict[str, list[str]] = {}
    receipt = _require(errors, body, "receipt", "object")
    if receipt is None:
        return errors
    global_no = _require(errors, receipt, "receiptGlobalNo", "int", "receipt.")
    if global_no is not None and _as_int(global_no) == 0:
        errors.setdefault("receipt.receiptGlobalNo", []).append("Must be 1 or more.")
    _signature_errors(errors, receipt, "receiptDeviceSignature", "receipt.")
    return errors


def _close_errors(body: dict[str, Any]) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    _require(errors, body, "fiscalDayNo", "int")
    _counter_errors(errors, body)
    _signature_errors(errors, body, "fiscalDayDeviceSignature")
    if body.get("receiptCounter") is None:
        errors.setdefault("receiptCounter", []).append("The receiptCounter field is required.")
    elif _as_int(body.get("receiptCounter")) is None:
        errors.setdefault("receiptCounter", []).append("The receiptCounter field is not a valid int.")
    return errors


def _file_text(body: bytes) -> bytes:
    """The file's JSON bytes from a body that is the JSON itself, or base64 of it (optionally as a JSON
    string); FILE01 when it is over 3 MB, FILE02 when it is neither."""
    stripped = body.strip()
    if len(stripped) > MAX_FILE_BYTES * 4 // 3 + 4:
        raise refuse("FILE01", f"File is too big: more than {MAX_FILE_BYTES} bytes")
    if stripped.startswith(b'"') and stripped.endswith(b'"'):
        stripped = stripped[1:-1]
    if stripped.startswith(b"{"):
        text = stripped
    else:
        try:
            text = base64.b64decode(b"".join(stripped.split()), validate=True)
        except (binascii.Error, ValueError):
            raise refuse("FILE02", "File structure is invalid: neither JSON nor base64 of JSON") from None
    if not text.strip():
        raise refuse("FILE02", "File structure is invalid: the file is empty")
    if len(text) > MAX_FILE_BYTES:
        raise refuse("FILE01", f"File is too big: {len(text)} bytes, at most {MAX_FILE_BYTES}")
    return text


def _file_structure(data: Any) -> dict[str, Any]:
    """FILE02 unless the file is {header, content?, footer?} in that order with the mandatory fields."""

    def bad(why: str) -> ApiError:
        return refuse("FILE02", f"File structure is invalid: {why}")

    if not isinstance(data, dict) or not data:
        raise bad("the file must be a JSON object")
    keys = list(data)
    if keys[0] != "header" or any(k not in ("header", "content", "footer") for k in keys):
        raise bad("the parts must be header, content (optional), footer (optional), in this order")
    if keys != [k for k in ("header", "content", "footer") if k in data]:
        raise bad("the parts must be header, content (optional), footer (optional), in this order")
    raw = data["header"]
    if not isinstance(raw, dict):
        raise bad("header must be an object")
    device = raw.get("deviceID", raw.get("deviceId"))
    header: dict[str, Any] = {
        "deviceID": _as_int(device),
        "fiscalDayNo": _as_int(raw.get("fiscalDayNo")),
        "fiscalDayOpened": raw.get("fiscalDayOpened"),
        "fileSequence": _as_int(raw.get("fileSequence")),
    }
    for key, value in header.items():
        if value is None:
            raise bad(f"header.{key} is missing or not valid")
    if not _datetime_ok(header["fiscalDayOpened"]):
        raise bad("header.fiscalDayOpened must be YYYY-MM-DDTHH:mm:ss")
    if header["fiscalDayNo"] < 1 or header["fileSequence"] < 1:
        raise bad("header.fiscalDayNo and header.fileSequence start at 1")
    content = data.get("content")
    if content is not None:
        if not isinstance(content, dict) or not isinstance(content.get("receipts", []), list):
            raise bad("content must be an object with a receipts list")
        for i, receipt in enumerate(content.get("receipts", [])):
            problems = judge.check_structure({"receipt": receipt}) or _own_structure({"receipt": receipt})
            if problems:
                field_name, messages = next(iter(problems.items()))
                raise bad(f"content.receipts[{i}]: {field_name}: {'; '.join(messages)}")
    if "footer" in data:
        footer = data["footer"]
        if not isinstance(footer, dict):
            raise bad("footer must be an object")
        errors = _close_errors({"fiscalDayNo": header["fiscalDayNo"], **footer})
        if footer.get("fiscalDayClosed") is not None and not _datetime_ok(footer.get("fiscalDayClosed")):
            errors.setdefault("fiscalDayClosed", []).append("Must be YYYY-MM-DDTHH:mm:ss.")
        if errors:
            field_name, messages = next(iter(errors.items()))
            raise bad(f"footer.{field_name}: {'; '.join(messages)}")
    return header


def file_row(item: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "fileName": item.file_name,
        "fileUploadDate": item.upload_date,
        "deviceId": item.device_id,
        "dayNo": item.day_no,
        "fiscalDayOpenedAt": item.day_opened,
        "fileSequence": item.sequence,
    }
    if item.processing_date:
        row["fileProcessingDate"] = item.processing_date
    row["fileProcessingStatus"] = item.status
    if item.error:
        row["fileProcessingError"] = item.error
    row.update(
        {
            "hasFooter": item.has_footer,
            "operationId": item.operation_id,
            "ipAddress": item.ip_address,
            "invoiceWithValidationErrors": item.invalid,
        }
    )
    return row


def _query_time(
    query: dict[str, str], key: str, name: str, errors: dict[str, list[str]], zone: ZoneInfo
) -> float | None:
    text = query.get(key)
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        errors.setdefault(name, []).append("Must be a date and time, YYYY-MM-DDTHH:mm:ss.")
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.timestamp()


def _query_int(
    query: dict[str, str], key: str, name: str, default: int, errors: dict[str, list[str]]
) -> int | None:
    text = query.get(key)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        errors.setdefault(name, []).append("Must be a whole number.")
        return None
    if value < 0:
        errors.setdefault(name, []).append("Must not be negative.")
        return None
    return value
