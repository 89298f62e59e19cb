"""The FDMS simulator as servers: HTTPS with mutual TLS for devices, plain HTTP on 127.0.0.1 for tests.

```python
with FdmsSimulator(Scenario.default(), state_dir=tmp_path / "fdms") as sim:
    sim.url            # "https://127.0.0.1:PORT"; the device trusts sim.ca_cert_path
    sim.activation_keys[10001]
    sim.set_faults("SubmitReceipt", rate=1.0, kinds=["lost"])
```

HTTPS (TLS 1.2+, stdlib `http.server` + `ssl`): the client certificate is requested but optional at the TLS
level; a certificate that does not chain to the simulator's root fails the handshake. `/Device/v1/{id}/...`
calls answer 401 unless the certificate was issued by the simulator to that device ID and is valid at the
simulated time (any certificate issued to the device, until it expires). `/Public/...` calls need none.
Routes match case-insensitively; a wrong method gets 405, an unknown path 404. Every answer carries `Date`
(the simulated time) and `operationId`; bodies are JSON with `operationID`, errors RFC 7807
`application/problem+json`. Request bodies are first bound as FDMS's ASP.NET binds them (binding.py: names in
any case, enums by index, numbers as strings).

Admin (plain HTTP, 127.0.0.1 only):
- GET /faults; PUT or POST /faults/{Endpoint} {rate, kinds, latency_ms, seed}; DELETE /faults[/{Endpoint}]
  (Endpoint: one the simulator serves, e.g. SubmitReceipt, or "*"; a misspelt one is refused with the list)
- POST /devices/{id}/mode {"mode": "Offline"}; GET /devices/{id} (summary); GET /devices/{id}/receipts;
  GET /devices/{id}/days/{no}; GET /devices/{id}/files
- GET /clock; POST /clock {"offset_seconds": N}: simulated time = the clock + N (it replaces the offset)
"""

from __future__ import annotations

import email.utils
import json
import logging
import secrets
import socket
import sqlite3
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from firmware.core.errors import FiscalError
from sim.fdms import binding
from sim.fdms.ca import TestCA
from sim.fdms.faults import Faults, reset_connection
from sim.fdms.scenario import FaultSpec, Scenario
from sim.fdms.service import ApiError, Call, Fdms, RealClock, file_row
from sim.fdms.state import State, dumps

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024  # bodies beyond this are refused unread (SubmitFile: FILE01)

PUBLIC_ROUTES = {
    "verifytaxpayerinformation": ("VerifyTaxpayerInformation", "POST"),
    "registerdevice": ("RegisterDevice", "POST"),
}
DEVICE_ROUTES = {
    "getconfig": ("GetConfig", "GET"),
    "getstatus": ("GetStatus", "GET"),
    "openday": ("OpenDay", "POST"),
    "submitreceipt": ("SubmitReceipt", "POST"),
    "closeday": ("CloseDay", "POST"),
    "issuecertificate": ("IssueCertificate", "POST"),
    "ping": ("Ping", "POST"),
    "submitfile": ("SubmitFile", "POST"),
    "submittedfilelist": ("SubmittedFileList", "GET"),
}
HANDLERS = {
    "VerifyTaxpayerInformation": "verify_taxpayer_information",
    "RegisterDevice": "register_device",
    "GetServerCertificate": "get_server_certificate",
    "GetConfig": "get_config",
    "GetStatus": "get_status",
    "OpenDay": "open_day",
    "SubmitReceipt": "submit_receipt",
    "CloseDay": "close_day",
    "IssueCertificate": "issue_certificate",
    "Ping": "ping",
    "SubmitFile": "submit_file",
    "SubmittedFileList": "submitted_file_list",
    "GetStockList": "get_stock_list",
}
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
}


def route(path: str) -> tuple[str, str, int | None, bool] | None:
    """(endpoint, method, device ID, needs a client certificate) for a path, matched case-insensitively."""
    parts = [p.lower() for p in path.strip("/").split("/")]
    if parts == ["public", "v1", "getservercertificate"]:
        return "GetServerCertificate", "GET", None, False
    if len(parts) != 4 or parts[1] != "v1" or not parts[2].isdigit() or len(parts[2]) > 10:
        return None
    if parts[0] == "productsstock" and parts[3] == "search":
        return "GetStockList", "GET", int(parts[2]), True
    table = {"public": PUBLIC_ROUTES, "device": DEVICE_ROUTES}.get(parts[0])
    if table is None or parts[3] not in table:
        return None
    name, method = table[parts[3]]
    return name, method, int(parts[2]), parts[0] == "device"


class _Dispatching(BaseHTTPRequestHandler):
    """HTTP/1.1, every method handed to `_dispatch`."""

    protocol_version = "HTTP/1.1"

    def _dispatch(self, method: str) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")


class _Handler(_Dispatching):
    server_version = "FdmsSimulator/1"
    # An answer goes out as two writes (headers, body): with Nagle's algorithm the body would wait for the
    # client's delayed ACK, some 40 ms a call.
    disable_nagle_algorithm = True
    timeout = 60  # an idle kept-alive connection is closed after this long
    server: _HttpsServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.client_address[0], *args)

    def date_time_string(self, timestamp: float | None = None) -> str:
        return email.utils.formatdate(self.server.sim.now() if timestamp is None else timestamp, usegmt=True)

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    # -----------------------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        sim = self.server.sim
        self.operation_id = sim.next_operation_id()
        url = urllib.parse.urlsplit(self.path)
        found = route(url.path)
        if found is None:
            self._drain()
            self._problem(ApiError(404, None, f"No endpoint at {url.path}."))
            return
        endpoint, allowed, device_id, device_route = found
        if method != allowed:
            self._drain()
            self._problem(ApiError(405, None, f"{endpoint} takes {allowed}."), [("Allow", allowed)])
            return
        body = self._body(endpoint)
        if body is None:
            return
        fault = sim.faults.draw(endpoint)
        if fault is not None:
            log.info("fault %s on %s", fault.kind, endpoint)
            if fault.kind == "latency":
                time.sleep(fault.latency_ms / 1000)
            elif fault.kind == "reset":
                self._reset()
                return
            elif fault.kind in ("404", "500", "502", "429"):
                status = int(fault.kind)
                extra = [("Retry-After", "1")] if status == 429 else []
                self._problem(ApiError(status, None, "Simulated fault."), extra)
                return
        query = {k.lower(): v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        call = Call(
            endpoint=endpoint,
            device_id=device_id,
            body=body,
            query=query,
            model_name=self.headers.get("DeviceModelName"),
            model_version=self.headers.get("DeviceModelVersion"),
            client_cert=self._client_cert(),
            client_address=self.client_address[0],
            operation_id=self.operation_id,
        )
        try:
            payload: dict[str, Any] | None = sim.call(call, device_route)
            error = None
        except ApiError as refused:
            payload, error = None, refused
        except Exception:
            log.exception("%s failed", endpoint)
            payload, error = None, ApiError(500, None, "Internal error.")
        if fault is not None and fault.kind == "lost":
            self._reset()  # the work is done and committed; the answer never arrives
            return
        if error is not None:
            self._problem(error)
        else:
            assert payload is not None
            self._json(200, {"operationID": self.operation_id, **payload}, "application/json")

    def _client_cert(self) -> bytes | None:
        connection = self.connection
        if isinstance(connection, ssl.SSLSocket):
            try:
                return connection.getpeercert(binary_form=True)
            except (ValueError, ssl.SSLError):
                return None
        return None

    def _body(self, endpoint: str) -> bytes | None:
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            self._problem(ApiError(400, None, "Send the body with Content-Length.", {"": ["No length."]}))
            return None
        try:
            length = int(length_text) if length_text else 0
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._problem(ApiError(400, None, "Bad Content-Length.", {"": ["Bad Content-Length."]}))
            return None
        if length > MAX_BODY:
            self.close_connection = True
            if endpoint == "SubmitFile":
                self._problem(ApiError(422, "FILE01", "File is too big"))
            else:
                self._problem(ApiError(400, None, "The body is too large.", {"": ["Too large."]}))
            return None
        return self.rfile.read(length) if length else b""

    def _drain(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if 0 < length <= MAX_BODY:
            self.rfile.read(length)
        elif length:
            self.close_connection = True

    def _reset(self) -> None:
        self.close_connection = True
        try:
            self.rfile.close()  # drops its reference, so that closing the socket really closes it now
        except OSError:
            pass
        reset_connection(self.connection)

    def _problem(self, error: ApiError, headers: list[tuple[str, str]] | None = None) -> None:
        body: dict[str, Any] = {
            "type": f"https://httpstatuses.io/{error.status}",
            "title": TITLES.get(error.status, "Error"),
            "status": error.status,
            "detail": error.detail,
            "instance": urllib.parse.urlsplit(self.path).path,
        }
        if error.code:
            body["errorCode"] = error.code
        if error.errors is not None:
            body["errors"] = error.errors
        body["operationID"] = self.operation_id
        self._json(error.status, body, "application/problem+json", headers)

    def _json(
        self,
        status: int,
        payload: dict[str, Any],
        content_type: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        data = dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("operationId", self.operation_id)
        for name, value in headers or []:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class _HttpsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext | None, sim: FdmsSimulator) -> None:
        self.context = context  # set once the CA is loaded: the port is bound before anything is written
        self.sim = sim
        self.live: set[socket.socket] = set()
        self.live_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS handshake in the connection's own thread, so a slow client never blocks the others."""
        request.settimeout(30)
        assert self.context is not None
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            log.info("TLS handshake with %s failed: %s", client_address[0], error)
            return
        with self.live_lock:
            self.live.add(tls)
        try:
            _Handler(tls, client_address, self)
        except (ssl.SSLError, OSError) as error:
            log.debug("connection from %s ended: %s", client_address[0], error)
        finally:
            with self.live_lock:
                self.live.discard(tls)
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("connection from %s failed", client_address[0])

    def drop_connections(self) -> None:
        with self.live_lock:
            live = list(self.live)
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _AdminHandler(_Dispatching):
    server: _AdminServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("admin " + format, *args)

    def _dispatch(self, method: str) -> None:
        sim = self.server.sim
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = [urllib.parse.unquote(p) for p in urllib.parse.urlsplit(self.path).path.strip("/").split("/")]
        try:
            body = _admin_body(raw)
            status, answer = 200, self._route(sim, method, parts, body)
        except LookupError as error:
            status, answer = 404, {"error": str(error)}
        except (ValueError, TypeError) as error:
            status, answer = 400, {"error": str(error)}
        except ApiError as error:
            status, answer = 404 if error.code == "DEV01" else 400, {"error": error.detail}
        data = dumps(answer).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    @staticmethod
    def _route(sim: FdmsSimulator, method: str, parts: list[str], body: dict[str, Any]) -> Any:
        if parts[0] == "faults":
            if method == "GET" and len(parts) == 1:
                return sim.faults_snapshot()
            if method in ("PUT", "POST") and len(parts) == 2:
                sim.set_faults(
                    _known_endpoint(parts[1]),
                    rate=_number(body, "rate", 1.0),
                    kinds=_kinds(body),
                    latency_ms=_whole(body, "latency_ms", 0),
                    seed=_whole(body, "seed", None),
                )
                return sim.faults_snapshot()
            if method == "DELETE":
                sim.clear_faults(parts[1] if len(parts) == 2 else None)
                return sim.faults_snapshot()
        if parts[0] == "devices" and len(parts) >= 2 and parts[1].isdigit():
            device_id = int(parts[1])
            if method == "POST" and parts[2:] == ["mode"]:
                sim.set_mode(device_id, str(body.get("mode")))
                return sim.device_summary(device_id)
            if method == "GET" and len(parts) == 2:
                return sim.device_summary(device_id)
            if method == "GET" and parts[2:] == ["receipts"]:
                return sim.held_receipts(device_id)
            if method == "GET" and parts[2:] == ["files"]:
                return sim.files(device_id)
            if method == "GET" and len(parts) == 4 and parts[2] == "days" and parts[3].isdigit():
                day = sim.day(device_id, int(parts[3]))
                if day is None:
                    raise LookupError("no such day")
                return day
        if parts == ["clock"]:
            if method == "POST":
                sim.set_clock_offset(_number(body, "offset_seconds", 0))
            if method in ("GET", "POST"):
                return {"offset_seconds": sim.clock_offset, "now": sim.now(), "local": sim.local_now()}
        raise LookupError(f"no admin route {method} /{'/'.join(parts)}")


def _admin_body(raw: bytes) -> dict[str, Any]:
    """An admin request's JSON object; anything else is refused in a sentence, not Python's own words."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError('The body is not JSON; send a JSON object, e.g. {"rate": 1}.') from None
    if not isinstance(body, dict):
        raise ValueError('The body must be a JSON object, e.g. {"rate": 1}.')
    return body


def _known_endpoint(name: str) -> str:
    """A fault for a misspelt endpoint would never fire: only the simulator's endpoint names, or "*"."""
    if name == "*":
        return name
    for known in HANDLERS:
        if known.lower() == name.lower():
            return known
    raise ValueError(f"No endpoint {name!r}; faults take one of: *, {', '.join(HANDLERS)}.")


def _number(body: dict[str, Any], key: str, default: Any) -> Any:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'{key} must be a JSON number, e.g. {{"{key}": 1}}; got {json.dumps(value)[:40]}.')
    return value


def _whole(body: dict[str, Any], key: str, default: Any) -> Any:
    value = body.get(key, default)
    if value is not default and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f'{key} must be a whole number, e.g. {{"{key}": 7}}; got {json.dumps(value)[:40]}.')
    return value


def _kinds(body: dict[str, Any]) -> list[str]:
    kinds = body.get("kinds", ["500"])
    if not isinstance(kinds, list) or not all(isinstance(kind, str) for kind in kinds):
        raise ValueError(
            f'kinds must be a list of fault kinds, e.g. {{"kinds": ["500"]}}; got {json.dumps(kinds)[:40]}.'
        )
    return kinds


class _AdminServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: FdmsSimulator) -> None:
        self.sim = sim
        super().__init__(address, _AdminHandler)


class FdmsSimulator:
    """The simulator in-process: `start()` binds the ports and returns self; `stop()` (or leaving the `with`
    block) closes them. State lives in `state_dir` (default: the scenario's `server.state_dir`)."""

    def __init__(self, scenario: Scenario, state_dir: str | Path | None = None, clock: Any = None) -> None:
        self.scenario = scenario
        self.state_dir = scenario.state_path(state_dir)
        self.clock = clock if clock is not None else RealClock()
        self.faults = Faults(scenario.faults)
        self._ids = (secrets.token_hex(7).upper()[:13], 0)
        self._ids_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._work = threading.Event()
        self._https: _HttpsServer | None = None
        self._admin: _AdminServer | None = None
        self._service: Fdms | None = None
        self._state: State | None = None
        self._ca: TestCA | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> FdmsSimulator:
        """Binds both ports first, then opens the state directory, so that a start that fails (a port in use,
        a state directory that is a file) leaves nothing behind; FiscalError SIM_PORT / SIM_STATE_DIR."""
        settings = self.scenario.server
        https = self._bind(
            "HTTPS", settings.host, settings.port, "port", lambda a: _HttpsServer(a, None, self)
        )
        try:
            admin = self._bind("admin", "127.0.0.1", settings.admin_port, "admin_port", self._admin_server)
        except FiscalError:
            https.server_close()
            raise
        try:
            self._open_state()
            assert self._ca is not None
            https.context = self._ca.server_context()
        except BaseException:
            https.server_close()
            admin.server_close()
            if self._state is not None:
                self._state.close()
            self._state = self._service = None
            raise
        self._https, self._admin = https, admin
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._https.serve_forever, args=(0.1,), name="fdms-https", daemon=True),
            threading.Thread(target=self._admin.serve_forever, args=(0.1,), name="fdms-admin", daemon=True),
            threading.Thread(target=self._worker, name="fdms-worker", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._work.set()  # closes and files left from a previous run
        log.info("FDMS simulator on %s (admin %s), state in %s", self.url, self.admin_url, self.state_dir)
        return self

    def _admin_server(self, address: tuple[str, int]) -> _AdminServer:
        return _AdminServer(address, self)

    @staticmethod
    def _bind(what: str, host: str, port: int, key: str, make: Callable[[tuple[str, int]], Any]) -> Any:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise FiscalError(
                "SIM_PORT", f"The {what} port must be 0 to 65535 (0 = a free port), not {port}.", key
            )
        try:
            return make((host, port))
        except OSError as error:
            reason = error.strerror or str(error)
            raise FiscalError(
                "SIM_PORT", f"Cannot listen for {what} on {host}:{port}: {reason}; choose another port.", key
            ) from None

    def _open_state(self) -> None:
        directory = self.state_dir
        existing = next((p for p in (directory, *directory.parents) if p.exists()), directory)
        if not existing.is_dir():
            where = "it is a file" if existing == directory else f"{existing} is a file"
            raise FiscalError(
                "SIM_STATE_DIR", f"Cannot use {directory} as the state directory: {where}.", "state_dir"
            )
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._ca = TestCA(directory / "ca", hosts=(self.scenario.server.host,))
            self._state = State(directory / "fdms.sqlite3")
            self._service = Fdms(self.scenario, self._state, self._ca, self.clock)
        except (OSError, ValueError, sqlite3.Error) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise FiscalError(
                "SIM_STATE_DIR", f"Cannot use {directory} as the state directory: {reason}.", "state_dir"
            ) from None
        self._service.wakeup = self._work.set

    def stop(self) -> None:
        self._stop.set()
        self._work.set()
        for server in (self._https, self._admin):
            if server is not None:
                server.shutdown()
        if self._https is not None:
            self._https.drop_connections()
        for server in (self._https, self._admin):
            if server is not None:
                server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        if self._state is not None:
            self._state.close()
        self._https = self._admin = None
        self._service = None
        self._state = None

    def __enter__(self) -> FdmsSimulator:
        return self.start() if self._https is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _worker(self) -> None:
        """Judges accepted closes and processes uploaded files when they are due."""
        while not self._stop.is_set():
            service = self._service
            if service is None:
                return
            try:
                service.finish_due()
                service.process_files()
                wait = self._next_due() - time.time()
            except Exception:
                log.exception("background work failed")
                wait = 1.0
            self._work.wait(timeout=min(max(wait, 0.01), 1.0))
            self._work.clear()

    def _next_due(self) -> float:
        state = self.state
        times = [d.close_due or 0.0 for d in state.days_due()]
        times += [f.due for f in state.files_pending() if f.status == "FileProcessingInProgress"]
        return min(times) if times else time.time() + 1.0

    # --- parts ----------------------------------------------------------------------------------------------

    @property
    def service(self) -> Fdms:
        if self._service is None:
            raise RuntimeError("the simulator is not running")
        return self._service

    @property
    def state(self) -> State:
        if self._state is None:
            raise RuntimeError("the simulator is not running")
        return self._state

    @property
    def ca(self) -> TestCA:
        if self._ca is None:
            raise RuntimeError("the simulator has not started")
        return self._ca

    @property
    def port(self) -> int:
        if self._https is None:
            raise RuntimeError("the simulator is not running")
        return int(self._https.server_address[1])

    @property
    def admin_port(self) -> int:
        if self._admin is None:
            raise RuntimeError("the simulator is not running")
        return int(self._admin.server_address[1])

    @property
    def host(self) -> str:
        host = self.scenario.server.host
        return "127.0.0.1" if host in ("", "0.0.0.0") else host

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def ca_cert_path(self) -> Path:
        """The PEM file of the root CA a device must trust (it signed the server's TLS certificate)."""
        return self.ca.root_cert_path

    @property
    def certificate_thumbprint(self) -> str:
        return self.ca.thumbprint

    @property
    def activation_keys(self) -> dict[int, str]:
        return {device.id: device.activation_key for device in self.scenario.devices}

    def next_operation_id(self) -> str:
        with self._ids_lock:
            prefix, count = self._ids
            self._ids = (prefix, count + 1)
        return f"{prefix}:{count + 1:08X}"

    # --- one call -------------------------------------------------------------------------------------------

    def call(self, call: Call, device_route: bool) -> dict[str, Any]:
        """Run one endpoint (authentication, model headers, the endpoint's rules); raises ApiError."""
        service = self.service
        if device_route:
            service.authenticate(call)
            service.check_model(call, required=False)
        call.body = binding.bind(call.endpoint, call.body)  # names, enums, numbers as ASP.NET reads them
        handler: Callable[[Call], dict[str, Any]] = getattr(service, HANDLERS[call.endpoint])
        return handler(call)

    # --- control for tests and the admin port ---------------------------------------------------------------

    def now(self) -> float:
        """Simulated UNIX seconds."""
        return self.service.now() if self._service is not None else float(self.clock.now())

    def local_now(self) -> str:
        return self.service.local()

    @property
    def clock_offset(self) -> float:
        return self.service.clock_offset

    def set_clock_offset(self, seconds: float) -> None:
        """Simulated time = the clock + `seconds` (replacing any earlier offset)."""
        self.service.clock_offset = float(seconds)

    def set_faults(
        self,
        endpoint: str,
        rate: float = 1.0,
        kinds: list[str] | tuple[str, ...] = ("500",),
        latency_ms: int = 0,
        seed: int | None = None,
    ) -> None:
        """Faults for an endpoint name (e.g. "SubmitReceipt") or "*"; see faults.py for the kinds."""
        self.faults.set(endpoint, FaultSpec(rate=rate, kinds=list(kinds), latency_ms=latency_ms, seed=seed))

    def clear_faults(self, endpoint: str | None = None) -> None:
        self.faults.clear(endpoint)

    def faults_snapshot(self) -> dict[str, dict[str, object]]:
        return self.faults.snapshot()

    def set_mode(self, device_id: int, mode: str) -> None:
        self.service.set_mode(device_id, mode)

    def device_summary(self, device_id: int) -> dict[str, Any]:
        """Mode, registration, certificates, last day and its status, receipts held, non-empty colours."""
        return self.service.device_summary(device_id)

    def held_receipts(self, device_id: int, day_no: int | None = None) -> list[dict[str, Any]]:
        """The receipts held for a device (or one of its days), by global number, with their errors."""
        return [self.service.receipt_view(r) for r in self.state.held_receipts(device_id, day_no)]

    def day(self, device_id: int, day_no: int | None = None) -> dict[str, Any] | None:
        """One fiscal day (default: the device's last), or None."""
        row = self.state.last_day(device_id) if day_no is None else self.state.day(device_id, day_no)
        return None if row is None else self.service.day_view(row)

    def files(self, device_id: int) -> list[dict[str, Any]]:
        return [file_row(f) for f in self.state.files(device_id)]

    def process_pending(self) -> None:
        """Judge every accepted close and process every uploaded file now, without waiting for the delay."""
        self.service.finish_due(force=True)
        self.service.process_files(force=True)
