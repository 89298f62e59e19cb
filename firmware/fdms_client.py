"""ZIMRA FDMS over HTTPS: one thin, exact call per endpoint, with the device certificate (mutual TLS).

What it does and does not do:
- Paths in the Swagger casing, the device ID as a plain integer; `DeviceModelName`, `DeviceModelVersion`,
  `Content-Type` and `Accept` headers on every call. HTTPS only, TLS 1.2 or newer, the host name checked.
- Request bodies it builds itself go through `firmware.core.wire` (the box's exact JSON); bodies the box has
  stored (a receipt, a close, a file) are sent byte for byte as given.
- Answers are parsed with decimals kept as strings (`parse_float=str`), so no amount passes through a float.
- The device certificate is presented only on `/Device/` calls; `/Public/` calls go without it.
- One kept-alive connection per client, reused between calls and dropped after any error, after a long idle
  spell, when the peer has closed it, or when the next call needs the other TLS identity. Calls are
  serialised by a lock, so one client may be shared between threads (they simply take turns).
- It never retries: the caller (delivery) owns retries, ordering and exactly-once. An error says whether
  the request can have reached FDMS (`FdmsUnavailable.request_sent`).
- One log line per call (endpoint, status, milliseconds); never a body, key, password or certificate.

Errors:
- `FdmsError`: FDMS answered and refused. Code: the `errorCode` of a 422 (DEV01, RCPT01, FISC01, FILE0x ...);
  BOX_FDMS_AUTH on 401 (and on 403 without an errorCode, and when the server's TLS layer rejects the device
  certificate); BOX_FDMS_REQUEST on 400; BOX_FDMS_PROTOCOL on 404, 405, any other unexpected status and on
  answers that are not the JSON the endpoint promises. `status` is 0 when there was no HTTP answer.
- `FdmsUnavailable`: worth trying again later: no connection, reset, timeout, a TLS failure, 408, 429 and
  5xx. Code BOX_FDMS_UNAVAILABLE, BOX_FDMS_BUSY on 429, and BOX_FDMS_TLS when the server's certificate is not
  trusted. An untrusted server certificate is "unavailable", not a refusal: nothing was sent, the usual causes
  (a wrong box clock, a network that intercepts HTTPS, a CA bundle not yet updated) are outside the receipt
  and may pass, and retrying costs nothing; the distinct code lets the status page name it.
- Local mistakes (an http:// URL, a key that does not load, a body that is not JSON) are plain `FiscalError`s
  raised before anything goes on the wire.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import http.client
import json
import logging
import re
import select
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from firmware.core import wire
from firmware.core.errors import FiscalError
from hardware import Clock
from hardware.keystores import TlsKeyMaterial

_log = logging.getLogger(__name__)

_PUBLIC = "Public"
_DEVICE = "Device"
_MAX_ANSWER = 16 * 1024 * 1024  # far above any FDMS answer (a file list page holds at most 100 rows)
_MAX_IDLE = 50.0  # seconds; a kept-alive connection idle longer is reopened (mobile NATs forget quietly)
_MAX_MESSAGE = 240
_THUMBPRINT = re.compile(r"[0-9A-Fa-f]{40}")
_LOCAL_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")

# TLS alerts with which a server refuses the certificate the box presented.
_CERT_ALERTS = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    }
)

# Sentences for FDMS's own codes, used when its answer carries no `detail`.
_MEANINGS = {
    "DEV01": "the device is not found or not active (or is in Offline mode)",
    "DEV02": "the activation key is incorrect",
    "DEV03": "the certificate request is invalid",
    "DEV04": "the device model is blacklisted",
    "DEV05": "the taxpayer is not active",
    "DEV06": "the device model and version are not registered in FDMS",
    "RCPT01": "receipts are not accepted: the fiscal day is closed or closing",
    "RCPT02": "the receipt structure is invalid",
    "FISC01": "a fiscal day cannot be opened now",
    "FISC03": "the day cannot be closed: a close is in progress",
    "FISC04": "the day cannot be closed: it is not open",
    "FILE01": "the file is too big (3 MB at most)",
    "FILE02": "the file structure is invalid",
    "FILE03": "the device is not in Offline mode",
    "FILE04": "the file is for a day already closed or closing",
    "FILE05": "the device ID in the file differs from the one in the address",
}


class FdmsError(FiscalError):
    """FDMS answered and refused; trying the same request again will get the same answer."""

    def __init__(self, code: str, message: str, status: int, problem: Mapping[str, Any] | None = None):
        super().__init__(code, message)
        self.status = status
        self.problem: dict[str, Any] = dict(problem or {})


class FdmsUnavailable(FiscalError):
    """FDMS could not be asked or could not answer now; worth trying again later.

    `retry_after`: seconds from a Retry-After header, when FDMS sent one. `status`: the HTTP status, or None
    when no answer came. `request_sent`: False means the request certainly did not reach FDMS; True means it
    may have been received (and acted on) even though no answer came back.
    """

    def __init__(
        self,
        code: str,
        message: str,
        retry_after: float | None = None,
        status: int | None = None,
        request_sent: bool = True,
    ):
        super().__init__(code, message)
        self.retry_after = retry_after
        self.status = status
        self.request_sent = request_sent


@dataclass
class Answer:
    """A successful FDMS answer."""

    body: dict[str, Any]  # parsed JSON: decimals as str, integers as int
    status: int
    date: str | None  # the HTTP Date header as received
    operation_id: str | None  # the operationId header, or the body's operationID


class _SystemClock:
    def now(self) -> float:
        return time.time()


def _shorten(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000": UTC with no claim about the local zone
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON FDMS sends")


def _parse_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"), parse_float=str, parse_constant=_reject_constant)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_object_text(text: str, what: str, key: str | None = None) -> bytes:
    """The stored JSON text as bytes, after checking it is a JSON object (and holds `key`)."""
    if not isinstance(text, str):
        raise FiscalError("BOX_FDMS_BODY", f"The {what} to send must be JSON text.")
    try:
        value = json.loads(text, parse_float=str, parse_constant=_reject_constant)
    except ValueError as exc:
        raise FiscalError("BOX_FDMS_BODY", f"The stored {what} is not valid JSON; nothing was sent.") from exc
    if not isinstance(value, dict) or (key is not None and key not in value):
        shape = f"a JSON object with {key!r}" if key else "a JSON object"
        raise FiscalError("BOX_FDMS_BODY", f"The stored {what} is not {shape}; nothing was sent.")
    return text.encode("utf-8")


def _header_value(value: str, name: str) -> str:
    if not isinstance(value, str) or not value or not value.isprintable() or value != value.strip():
        raise FiscalError("BOX_CONFIG", f"The {name} must be non-empty printable text.", name)
    return value


class FdmsClient:
    """The FDMS Fiscal Device Gateway API for one device."""

    def __init__(
        self,
        base_url: str,
        device_id: int,
        model_name: str,
        model_version: str,
        ca_file: str | None = None,
        tls: TlsKeyMaterial | None = None,
        timeout: float = 30.0,
        clock: Clock | None = None,
        file_encoding: str = "json",
    ):
        parts = urllib.parse.urlsplit(base_url) if isinstance(base_url, str) else None
        if parts is None or parts.scheme.lower() != "https" or not parts.hostname:
            raise FiscalError(
                "BOX_CONFIG",
                "The FDMS address must be an https:// URL (FDMS accepts nothing else).",
                "fdms.base_url",
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise FiscalError(
                "BOX_CONFIG", "The FDMS address must be a plain https://host[:port] URL.", "fdms.base_url"
            )
        try:
            port = parts.port or 443
        except ValueError as exc:
            raise FiscalError("BOX_CONFIG", "The FDMS address has an invalid port.", "fdms.base_url") from exc
        if not _is_int(device_id) or device_id <= 0:
            raise FiscalError("BOX_CONFIG", "The device ID must be a positive whole number.", "device.id")
        if file_encoding not in ("json", "base64"):
            raise FiscalError("BOX_CONFIG", "file_encoding must be 'json' or 'base64'.", "fdms.file_encoding")
        if not timeout > 0:
            raise FiscalError("BOX_CONFIG", "The FDMS timeout must be a positive number of seconds.")
        self._host = parts.hostname
        self._port = port
        self._prefix = parts.path.rstrip("/")
        self._device_id = device_id
        self._headers = {
            "DeviceModelName": _header_value(model_name, "device model name"),
            "DeviceModelVersion": _header_value(model_version, "device model version"),
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._ca_file = ca_file
        self._timeout = float(timeout)
        self._clock: Clock = clock if clock is not None else _SystemClock()
        self._file_encoding = file_encoding
        self._lock = threading.Lock()
        self._public_context = self._context(None)
        self._device_context: ssl.SSLContext | None = self._context(tls) if tls is not None else None
        self._conn: http.client.HTTPSConnection | None = None
        self._conn_kind: str | None = None
        self._last_used = 0.0
        self._clock_skew: float | None = None

    # --- TLS -----------------------------------------------------------------------------------------------

    def _context(self, tls: TlsKeyMaterial | None) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self._ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise FiscalError(
                "BOX_CONFIG",
                "The FDMS CA file could not be read as PEM certificates; check fdms.ca_file.",
                "fdms.ca_file",
            ) from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        if tls is not None:
            try:
                context.load_cert_chain(tls.certfile, tls.keyfile, tls.password)
            except (OSError, ssl.SSLError, ValueError) as exc:
                # The reason names the failing step, never the password or key.
                reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
                raise FiscalError(
                    "BOX_FDMS_CERT",
                    f"The device certificate or its key could not be loaded for TLS ({reason}); check that "
                    "the certificate matches the key and the key passphrase is right.",
                ) from exc
        return context

    def use_certificate(self, tls: TlsKeyMaterial | None) -> None:
        """Present this certificate from now on (after registration or renewal); None: none yet."""
        context = self._context(tls) if tls is not None else None
        with self._lock:
            self._device_context = context
            self._drop()

    def close(self) -> None:
        """Close the kept-alive connection (a later call opens a new one)."""
        with self._lock:
            self._drop()

    @property
    def clock_skew(self) -> float | None:
        """Server Date minus the local clock (seconds) at the last answer that carried one; only reported."""
        return self._clock_skew

    # --- endpoints -----------------------------------------------------------------------------------------

    def verify_taxpayer_information(self, activation_key: str, serial_no: str) -> Answer:
        body = wire.dumps({"activationKey": activation_key, "deviceSerialNo": serial_no})
        return self._call(
            "POST",
            _PUBLIC,
            "VerifyTaxpayerInformation",
            body.encode(),
            required={"taxPayerName": str, "taxPayerTIN": str},
        )

    def register_device(self, activation_key: str, csr_pem: bytes) -> Answer:
        body = wire.dumps({"activationKey": activation_key, "certificateRequest": _pem_text(csr_pem)})
        return self._call("POST", _PUBLIC, "RegisterDevice", body.encode(), required={"certificate": str})

    def get_server_certificate(self, thumbprint: str | None = None) -> Answer:
        query = None
        if thumbprint is not None:
            if not isinstance(thumbprint, str) or not _THUMBPRINT.fullmatch(thumbprint):
                raise FiscalError("BOX_FDMS_BODY", "A certificate thumbprint is 40 hexadecimal digits.")
            query = {"thumbprint": thumbprint}
        return self._call(
            "GET", _PUBLIC, "GetServerCertificate", None, query, required={"certificate": list}, with_id=False
        )

    def get_config(self) -> Answer:
        return self._call(
            "GET",
            _DEVICE,
            "GetConfig",
            None,
            required={
                "taxPayerName": str,
                "taxPayerTIN": str,
                "deviceOperatingMode": str,
                "taxPayerDayMaxHrs": int,
                "applicableTaxes": list,
                "qrUrl": str,
            },
        )

    def get_status(self) -> Answer:
        return self._call("GET", _DEVICE, "GetStatus", None, required={"fiscalDayStatus": str})

    def open_day(self, fiscal_day_opened: str, fiscal_day_no: int | None = None) -> Answer:
        if not isinstance(fiscal_day_opened, str) or not _LOCAL_DATETIME.fullmatch(fiscal_day_opened):
            raise FiscalError("BOX_FDMS_BODY", "The day-open time must be local time as YYYY-MM-DDTHH:MM:SS.")
        request: dict[str, Any] = {"fiscalDayOpened": fiscal_day_opened}
        if fiscal_day_no is not None:
            if not _is_int(fiscal_day_no) or fiscal_day_no <= 0:
                raise FiscalError("BOX_FDMS_BODY", "The fiscal day number must be a positive whole number.")
            request["fiscalDayNo"] = fiscal_day_no
        return self._call(
            "POST", _DEVICE, "OpenDay", wire.dumps(request).encode(), required={"fiscalDayNo": int}
        )

    def submit_receipt(self, receipt_body: str) -> Answer:
        """`receipt_body`: the exact stored JSON text `{"receipt": {...}}`, sent byte for byte."""
        body = _json_object_text(receipt_body, "receipt", "receipt")
        return self._call(
            "POST",
            _DEVICE,
            "SubmitReceipt",
            body,
            required={"receiptID": int, "receiptServerSignature": dict},
        )

    def close_day(self, request_body: str) -> Answer:
        """`request_body`: the exact stored JSON text of the CloseDay request, sent byte for byte."""
        return self._call("POST", _DEVICE, "CloseDay", _json_object_text(request_body, "close-day request"))

    def issue_certificate(self, csr_pem: bytes) -> Answer:
        body = wire.dumps({"certificateRequest": _pem_text(csr_pem)})
        return self._call("POST", _DEVICE, "IssueCertificate", body.encode(), required={"certificate": str})

    def ping(self) -> Answer:
        return self._call("POST", _DEVICE, "Ping", b"", required={"reportingFrequency": int})

    def submit_file(self, file_body: bytes) -> Answer:
        """The offline file's JSON bytes: raw (application/json) or base64 (text/plain), per file_encoding.

        The reference (section 11) cannot tell which one FDMS wants; the switch is `file_encoding`.
        """
        if not isinstance(file_body, bytes | bytearray):
            raise FiscalError("BOX_FDMS_BODY", "The file to send must be bytes.")
        try:
            value = _parse_json(bytes(file_body))
        except ValueError as exc:
            raise FiscalError(
                "BOX_FDMS_BODY", "The offline file is not valid JSON; nothing was sent."
            ) from exc
        if not isinstance(value, dict) or "header" not in value:
            raise FiscalError("BOX_FDMS_BODY", "The offline file has no header; nothing was sent.")
        if self._file_encoding == "base64":
            return self._call(
                "POST", _DEVICE, "SubmitFile", base64.b64encode(file_body), content_type="text/plain"
            )
        return self._call("POST", _DEVICE, "SubmitFile", bytes(file_body))

    def submitted_file_list(
        self,
        uploaded_from: str,
        uploaded_till: str,
        offset: int = 0,
        limit: int = 100,
        operation_id: str | None = None,
    ) -> Answer:
        if not _is_int(offset) or offset < 0 or not _is_int(limit) or not 1 <= limit <= 100:
            raise FiscalError("BOX_FDMS_BODY", "Offset must be 0 or more and limit between 1 and 100.")
        query: dict[str, str] = {
            "FileUploadedFrom": uploaded_from,
            "FileUploadedTill": uploaded_till,
            "Offset": str(offset),
            "Limit": str(limit),
        }
        if operation_id is not None:
            query["OperationID"] = operation_id
        return self._call(
            "GET", _DEVICE, "SubmittedFileList", None, query, required={"total": int, "rows": list}
        )

    # --- the one call --------------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        area: str,
        name: str,
        body: bytes | None,
        query: Mapping[str, str] | None = None,
        required: Mapping[str, type] | None = None,
        with_id: bool = True,
        content_type: str = "application/json",
    ) -> Answer:
        path = f"{self._prefix}/{area}/v1/" + (f"{self._device_id}/" if with_id else "") + name
        if query:
            path += "?" + urllib.parse.urlencode(query)
        headers = dict(self._headers)
        headers["Content-Type"] = content_type
        if body is not None:
            headers["Content-Length"] = str(len(body))
        started = time.monotonic()
        with self._lock:
            try:
                status, answer_headers, data = self._exchange(method, area, path, headers, body, started)
            except FiscalError as error:
                _log_call(name, error.code, started)
                raise
            _log_call(name, status, started)
            return self._answer(name, status, answer_headers, data, required or {})

    def _exchange(
        self,
        method: str,
        area: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None,
        started: float,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request on the kept-alive connection; any failure drops the connection."""
        deadline = started + self._timeout
        before = self._conn
        conn = self._connection(area, deadline)
        fresh = conn is not before  # opened for this call (first, or after an idle or dropped one)
        sent = False
        try:
            self._arm(conn, deadline)
            sent = True
            try:
                conn.request(method, path, body=body, headers=headers)
            except (OSError, http.client.HTTPException):
                if fresh:
                    _raise_pending_alert(conn)
                raise
            self._arm(conn, deadline)
            response = conn.getresponse()
            chunks: list[bytes] = []
            size = 0
            while True:
                self._arm(conn, deadline)
                chunk = response.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > _MAX_ANSWER:
                    raise FdmsError(
                        "BOX_FDMS_PROTOCOL",
                        "FDMS sent an answer far larger than any it should.",
                        response.status,
                    )
                chunks.append(chunk)
            if response.will_close:
                self._drop()
            else:
                self._last_used = time.monotonic()
            return response.status, response.msg, b"".join(chunks)
        except BaseException as exc:
            self._drop()
            if isinstance(exc, FiscalError):
                raise
            if isinstance(exc, OSError | http.client.HTTPException):
                raise _transport_error(exc, sent, self._timeout) from exc
            raise

    def _connection(self, area: str, deadline: float) -> http.client.HTTPSConnection:
        if area == _DEVICE:
            context = self._device_context
            if context is None:
                raise FiscalError(
                    "BOX_CERT_MISSING", "This box has no FDMS certificate yet; register the device first."
                )
        else:
            context = self._public_context
        if self._conn is not None and (self._conn_kind != area or self._stale(self._conn)):
            self._drop()
        if self._conn is not None:
            return self._conn
        conn = http.client.HTTPSConnection(
            self._host, self._port, timeout=max(0.001, deadline - time.monotonic()), context=context
        )
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _transport_error(exc, False, self._timeout) from exc
        self._conn, self._conn_kind = conn, area
        return conn

    def _stale(self, conn: http.client.HTTPSConnection) -> bool:
        """True when a kept-alive connection should not be reused: idle too long, or closed by the peer."""
        sock = conn.sock
        if sock is None or time.monotonic() - self._last_used > _MAX_IDLE:
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        # Between answers nothing should arrive; anything readable is a close (or junk): start afresh.
        return bool(readable)

    def _arm(self, conn: http.client.HTTPSConnection, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the call's time ran out")
        if conn.sock is not None:
            conn.sock.settimeout(remaining)

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
        self._conn, self._conn_kind = None, None

    # --- answers -------------------------------------------------------------------------------------------

    def _answer(
        self,
        name: str,
        status: int,
        headers: http.client.HTTPMessage,
        data: bytes,
        required: Mapping[str, type],
    ) -> Answer:
        date = headers.get("Date")
        server_time = _http_date(date)
        if server_time is not None:
            self._clock_skew = server_time - self._clock.now()
        operation_id = headers.get("operationId")
        if 200 <= status < 300:
            try:
                body = _parse_json(data)
            except ValueError as exc:
                raise FdmsError(
                    "BOX_FDMS_PROTOCOL", f"FDMS answered {name} with something that is not JSON.", status
                ) from exc
            if not isinstance(body, dict):
                raise FdmsError(
                    "BOX_FDMS_PROTOCOL", f"FDMS answered {name} with JSON that is not an object.", status
                )
            for field, kind in required.items():
                value = body.get(field)
                if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                    raise FdmsError(
                        "BOX_FDMS_PROTOCOL",
                        f"FDMS answered {name} without a valid {field}; the answer cannot be used.",
                        status,
                        body,
                    )
            if operation_id is None and isinstance(body.get("operationID"), str):
                operation_id = body["operationID"]
            return Answer(body=body, status=status, date=date, operation_id=operation_id)
        problem = _problem(data)
        raise _status_error(name, status, problem, headers.get("Retry-After"), server_time, self._clock)


def _log_call(name: str, outcome: int | str, started: float) -> None:
    """One line per call: which endpoint, what came of it, how long it took. Never a body or a secret."""
    ms = round((time.monotonic() - started) * 1000)
    _log.info("fdms_call", extra={"fields": {"endpoint": name, "status": outcome, "ms": ms}})


def _pem_text(pem: bytes) -> str:
    try:
        text = bytes(pem).decode("ascii")
    except (TypeError, UnicodeDecodeError) as exc:
        raise FiscalError("BOX_FDMS_BODY", "The certificate request must be PEM text.") from exc
    if "-----BEGIN CERTIFICATE REQUEST-----" not in text:
        raise FiscalError("BOX_FDMS_BODY", "The certificate request must be a PEM CERTIFICATE REQUEST.")
    return text


def _problem(data: bytes) -> dict[str, Any]:
    try:
        value = _parse_json(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _retry_after(value: str | None, server_time: float | None, clock: Clock) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    moment = _http_date(value)
    if moment is None:
        return None
    return max(0.0, moment - (server_time if server_time is not None else clock.now()))


def _detail(problem: Mapping[str, Any]) -> str:
    for key in ("detail", "title"):
        value = problem.get(key)
        if isinstance(value, str) and value.strip():
            return _shorten(value)
    return ""


def _status_error(
    name: str,
    status: int,
    problem: dict[str, Any],
    retry_header: str | None,
    server_time: float | None,
    clock: Clock,
) -> FiscalError:
    try:
        reason = http.client.responses[status]
    except KeyError:
        reason = "an unknown status"
    said = f"{status} {reason}"
    detail = _detail(problem)
    code = problem.get("errorCode")
    if (
        isinstance(code, str)
        and code.strip()
        and status != 401
        and 400 <= status < 500
        and status not in (408, 429)
    ):
        meaning = detail or _MEANINGS.get(code, "no reason given")
        return FdmsError(code, _shorten(f"FDMS refused {name}: {meaning} ({code})."), status, problem)
    if status == 400:
        errors = problem.get("errors")
        if isinstance(errors, dict) and errors:
            listed = "; ".join(
                f"{field}: {' '.join(str(m) for m in messages) if isinstance(messages, list) else messages}"
                for field, messages in errors.items()
            )
        else:
            listed = detail or "no details given"
        return FdmsError(
            "BOX_FDMS_REQUEST",
            _shorten(f"FDMS found the {name} request malformed: {listed}."),
            status,
            problem,
        )
    if status == 401:
        return FdmsError(
            "BOX_FDMS_AUTH",
            f"FDMS did not accept the device certificate ({said}); it may be expired, revoked or issued to "
            "another device: renew it or have ZIMRA reset the device.",
            status,
            problem,
        )
    if status == 403:
        return FdmsError(
            "BOX_FDMS_AUTH",
            f"FDMS refused this device ({said}); check the device model name and version "
            "registered with ZIMRA.",
            status,
            problem,
        )
    if status == 422:
        return FdmsError(
            "BOX_FDMS_PROTOCOL",
            _shorten(f"FDMS refused {name} without an error code: {detail or 'no reason given'}."),
            status,
            problem,
        )
    if status == 429:
        wait = _retry_after(retry_header, server_time, clock)
        later = f"in {wait:g} s" if wait is not None else "later"
        return FdmsUnavailable(
            "BOX_FDMS_BUSY", f"FDMS is busy ({said}); the box will try again {later}.", wait, status
        )
    if status == 408 or 500 <= status < 600:
        wait = _retry_after(retry_header, server_time, clock)
        return FdmsUnavailable(
            "BOX_FDMS_UNAVAILABLE",
            f"FDMS could not handle {name} now ({said}), a fault on its side; the box will try again later.",
            wait,
            status,
        )
    return FdmsError(
        "BOX_FDMS_PROTOCOL",
        _shorten(
            f"FDMS answered {name} with {said}{': ' + detail if detail else ''}; this box cannot use it."
        ),
        status,
        problem,
    )


def _raise_pending_alert(conn: http.client.HTTPSConnection) -> None:
    """Under TLS 1.3 the server judges the device certificate after the client's handshake has finished,
    so its refusal can arrive as an alert that the first write trips over as a cut connection. Read the
    alert, if one is waiting, so the refusal is reported as what it is."""
    sock = conn.sock
    if not isinstance(sock, ssl.SSLSocket):
        return
    try:
        sock.settimeout(0.5)
        sock.recv(1)
    except ssl.SSLError as alert:
        if alert.reason in _CERT_ALERTS:
            raise alert
    except OSError:
        return


def _transport_error(exc: BaseException, sent: bool, timeout: float) -> FiscalError:
    """A failure below HTTP as the error the caller acts on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or "not trusted"
        return FdmsUnavailable(
            "BOX_FDMS_TLS",
            f"The FDMS server's certificate was not accepted ({why}); check the box's date and time and its "
            "FDMS CA file, or whether this network intercepts HTTPS. Nothing was sent.",
            request_sent=False,
        )
    if isinstance(exc, ssl.SSLError) and exc.reason in _CERT_ALERTS:
        return FdmsError(
            "BOX_FDMS_AUTH",
            f"The FDMS server refused the device certificate during the TLS handshake ({exc.reason}); "
            "renew the certificate or have ZIMRA reset the device.",
            0,
        )
    if isinstance(exc, TimeoutError):
        what = f"FDMS did not answer within {timeout:g} s"
    elif isinstance(exc, ConnectionRefusedError):
        what = "FDMS refused the connection"
    elif isinstance(exc, ConnectionError | http.client.RemoteDisconnected | ssl.SSLEOFError):
        what = "the connection to FDMS was cut"
    elif isinstance(exc, ssl.SSLError):
        what = f"the secure connection to FDMS failed ({exc.reason or 'TLS error'})"
    elif isinstance(exc, http.client.IncompleteRead):
        what = "the FDMS answer was cut short"
    elif isinstance(exc, http.client.HTTPException):
        return FdmsError("BOX_FDMS_PROTOCOL", "FDMS answered with something that is not HTTP.", 0)
    elif isinstance(exc, OSError) and exc.strerror:
        what = f"FDMS could not be reached ({exc.strerror})"
    else:
        what = f"FDMS could not be reached ({type(exc).__name__})"
    return FdmsUnavailable(
        "BOX_FDMS_UNAVAILABLE", f"{what}; the box will try again later.", request_sent=sent
    )
