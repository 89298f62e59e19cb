"""The FDMS client against a real TLS server on loopback: a throwaway CA, a server certificate for 127.0.0.1,
a device certificate whose key is an encrypted PKCS#8 file (used through TlsKeyMaterial as the box does),
and a tiny scripted HTTP server that, like FDMS, wants the device certificate on /Device/ paths only."""

from __future__ import annotations

import base64
import datetime
import email.utils
import ipaddress
import json
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from firmware.core.errors import FiscalError
from firmware.fdms_client import Answer, FdmsClient, FdmsError, FdmsUnavailable
from hardware.keystores import TlsKeyMaterial

DEVICE_ID = 321
PASSWORD = b"correct horse battery"
MODEL = ("FiscalBox-Pi", "v1.0.3")
FIXED_DATE = "Tue, 01 Jul 2025 10:00:00 GMT"
FIXED_TS = 1751364000.0


# --- a throwaway PKI ---------------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name = issuer[0].subject if issuer else _name(subject)
    signer = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    elif server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Pki:
    ca_file: str  # the FDMS CA: signs the server and the device certificates
    server_cert: str
    server_key: str
    rogue_server_cert: str  # for 127.0.0.1 too, but from a CA the box does not trust
    rogue_server_key: str
    device: TlsKeyMaterial  # encrypted PKCS#8 key
    stranger: TlsKeyMaterial  # a device certificate from a CA the server does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write(name: str, data: bytes) -> str:
        (d / name).write_bytes(data)
        return str(d / name)

    def plain_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def encrypted_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSWORD),
        )

    ca_key, rogue_key = key(), key()
    ca = _issue("Test FDMS CA", ca_key, None, ca=True)
    rogue = _issue("Rogue CA", rogue_key, None, ca=True)
    server_key, rogue_server_key, device_key, stranger_key = key(), key(), key(), key()
    server = _issue("127.0.0.1", server_key, (ca, ca_key), server=True)
    rogue_server = _issue("127.0.0.1", rogue_server_key, (rogue, rogue_key), server=True)
    device = _issue(f"ZIMRA-SN001-{DEVICE_ID:010d}", device_key, (ca, ca_key))
    stranger = _issue("ZIMRA-SN999-0000000999", stranger_key, (rogue, rogue_key))
    device_keyfile = write("device.key", encrypted_key(device_key))
    assert b"ENCRYPTED PRIVATE KEY" in Path(device_keyfile).read_bytes()
    return Pki(
        ca_file=write("ca.pem", _pem(ca)),
        server_cert=write("server.pem", _pem(server)),
        server_key=write("server.key", plain_key(server_key)),
        rogue_server_cert=write("rogue-server.pem", _pem(rogue_server)),
        rogue_server_key=write("rogue-server.key", plain_key(rogue_server_key)),
        device=TlsKeyMaterial(write("device.pem", _pem(device)), device_keyfile, PASSWORD),
        stranger=TlsKeyMaterial(
            write("stranger.pem", _pem(stranger)),
            write("stranger.key", encrypted_key(stranger_key)),
            PASSWORD,
        ),
    )


# --- a scripted FDMS ---------------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_cn: str | None
    peer: tuple[str, int]


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: {"operationID": "op-1"})  # dict -> JSON; bytes as they are
    headers: dict[str, str] = field(default_factory=dict)


HANG = "hang"  # never answer (until the test ends)
RESET = "reset"  # read the request, then cut the connection with a TCP RST


class FakeFdms(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.context = context
        self.seen: list[Seen] = []
        self.script: list[Reply | str] = []
        self.released = threading.Event()
        self.failures: list[BaseException] = []

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        # The handshake runs in the handler's thread, so a stuck client never blocks the accept loop.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        self.failures.append(sys.exc_info()[1])  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as FDMS
    server: FakeFdms

    def setup(self) -> None:
        self.request.settimeout(10)
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        cert = self.connection.getpeercert()  # type: ignore[attr-defined]
        cn = None
        if cert:
            cn = next(v for rdn in cert["subject"] for k, v in rdn if k == "commonName")
        self.server.seen.append(
            Seen(self.command, self.path, dict(self.headers.items()), body, cn, self.client_address)
        )
        if self.path.lower().startswith("/device/") and cn is None:
            action: Reply | str = Reply(401, {"title": "Unauthorized", "status": 401})
        else:
            action = self.server.script.pop(0) if self.server.script else Reply()
        if action == HANG:
            self.server.released.wait(10)
            self.close_connection = True
            return
        if action == RESET:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        assert isinstance(action, Reply)
        data = action.body if isinstance(action.body, bytes) else json.dumps(action.body).encode()
        self.send_response_only(action.status)
        headers = {"Date": self.date_time_string(), "Content-Type": "application/json", **action.headers}
        headers["Content-Length"] = str(len(data))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _server_context(pki: Pki, rogue: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if rogue:
        context.load_cert_chain(pki.rogue_server_cert, pki.rogue_server_key)
    else:
        context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca_file)
    context.verify_mode = ssl.CERT_OPTIONAL  # FDMS wants the device certificate on /Device/ paths only
    return context


@pytest.fixture
def serve(pki: Pki) -> Iterator[Callable[..., FakeFdms]]:
    servers: list[FakeFdms] = []

    def start(rogue: bool = False) -> FakeFdms:
        server = FakeFdms(_server_context(pki, rogue))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.released.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def fdms(serve: Callable[..., FakeFdms]) -> FakeFdms:
    return serve()


class FixedClock:
    def __init__(self, now: float):
        self.value = now

    def now(self) -> float:
        return self.value


def client(
    server: FakeFdms, pki: Pki, tls: TlsKeyMaterial | None = None, with_cert: bool = True, **kwargs: Any
) -> FdmsClient:
    return FdmsClient(
        server.url,
        DEVICE_ID,
        *MODEL,
        ca_file=pki.ca_file,
        tls=(tls or pki.device) if with_cert else None,
        timeout=kwargs.pop("timeout", 5.0),
        **kwargs,
    )


RECEIPT_ANSWER = {
    "operationID": "op-9",
    "receiptID": 9007199254740993,
    "serverDate": "2025-07-01T10:00:00",
    "receiptServerSignature": {"hash": "aGFzaA==", "signature": "c2ln", "certificateThumbprint": "AB" * 20},
}


# --- what goes on the wire ---------------------------------------------------------------------------------


def test_headers_path_and_the_exact_receipt_bytes_arrive(fdms: FakeFdms, pki: Pki) -> None:
    stored = (
        '{"receipt":{"receiptTotal":10.50,"receiptType":"FiscalInvoice","buyer":"Ñandú \\u00e9","a":1.0e2}}'
    )
    answer_text = json.dumps(RECEIPT_ANSWER)[:-1] + ',"total":12.30}'
    fdms.script.append(Reply(200, answer_text.encode(), {"operationId": "0HMPH9AF0QKKE:00000005"}))
    answer = client(fdms, pki).submit_receipt(stored)
    (seen,) = fdms.seen
    assert (seen.method, seen.path) == ("POST", f"/Device/v1/{DEVICE_ID}/SubmitReceipt")
    assert seen.body == stored.encode("utf-8")
    assert seen.headers["DeviceModelName"] == MODEL[0] and seen.headers["DeviceModelVersion"] == MODEL[1]
    assert seen.headers["Content-Type"] == "application/json" and seen.headers["Accept"] == "application/json"
    assert seen.client_cn == f"ZIMRA-SN001-{DEVICE_ID:010d}"
    assert isinstance(answer, Answer) and answer.status == 200
    assert answer.body["receiptID"] == 9007199254740993 and answer.body["total"] == "12.30"
    assert answer.operation_id == "0HMPH9AF0QKKE:00000005" and answer.date


def test_bodies_the_client_builds_use_the_exact_wire_json(fdms: FakeFdms, pki: Pki) -> None:
    c = client(fdms, pki)
    fdms.script.append(Reply(200, {"operationID": "op-2", "fiscalDayNo": 5}))
    assert c.open_day("2025-07-01T08:00:00", 5).body["fiscalDayNo"] == 5
    fdms.script.append(Reply(200, {"operationID": "op-3", "fiscalDayNo": 6}))
    c.open_day("2025-07-02T08:00:00")
    close = '{"fiscalDayNo":5,"fiscalDayCounters":[],"receiptCounter":0,"fiscalDayDeviceSignature":{}}'
    c.close_day(close)
    fdms.script.append(Reply(200, {"operationID": "op-4", "reportingFrequency": 5}))
    c.ping()
    assert [(s.method, s.path.rsplit("/", 1)[1], s.body) for s in fdms.seen] == [
        ("POST", "OpenDay", b'{"fiscalDayNo":5,"fiscalDayOpened":"2025-07-01T08:00:00"}'),
        ("POST", "OpenDay", b'{"fiscalDayOpened":"2025-07-02T08:00:00"}'),
        ("POST", "CloseDay", close.encode()),
        ("POST", "Ping", b""),
    ]
    assert fdms.seen[0].path == f"/Device/v1/{DEVICE_ID}/OpenDay"


def test_the_device_certificate_goes_on_device_calls_only(fdms: FakeFdms, pki: Pki) -> None:
    csr = b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
    c = client(fdms, pki, with_cert=False)  # before registration
    fdms.script.append(Reply(200, {"operationID": "op", "taxPayerName": "Shop", "taxPayerTIN": "1234567890"}))
    c.verify_taxpayer_information("ABCD1234", "SN001")
    fdms.script.append(Reply(200, {"operationID": "op", "certificate": "PEM"}))
    assert c.register_device("ABCD1234", csr).body["certificate"] == "PEM"
    with pytest.raises(FiscalError) as missing:
        c.get_status()
    assert missing.value.code == "BOX_CERT_MISSING"
    c.use_certificate(pki.device)
    fdms.script.append(Reply(200, {"operationID": "op", "fiscalDayStatus": "FiscalDayClosed"}))
    c.get_status()
    fdms.script.append(Reply(200, {"operationID": "op", "certificate": ["PEM1", "PEM2"]}))
    c.get_server_certificate("ab" * 20)
    assert [(s.path, s.client_cn) for s in fdms.seen] == [
        (f"/Public/v1/{DEVICE_ID}/VerifyTaxpayerInformation", None),
        (f"/Public/v1/{DEVICE_ID}/RegisterDevice", None),
        (f"/Device/v1/{DEVICE_ID}/GetStatus", f"ZIMRA-SN001-{DEVICE_ID:010d}"),
        ("/Public/v1/GetServerCertificate?thumbprint=" + "ab" * 20, None),
    ]
    assert json.loads(fdms.seen[1].body) == {"activationKey": "ABCD1234", "certificateRequest": csr.decode()}
    assert json.loads(fdms.seen[0].body) == {"activationKey": "ABCD1234", "deviceSerialNo": "SN001"}


def test_offline_file_encodings_and_the_file_list_query(fdms: FakeFdms, pki: Pki) -> None:
    file_body = b'{"header":{"deviceID":321,"fiscalDayNo":5},"content":{"receipts":[]}}'
    client(fdms, pki).submit_file(file_body)
    client(fdms, pki, file_encoding="base64").submit_file(file_body)
    fdms.script.append(Reply(200, {"total": 0, "rows": []}))
    client(fdms, pki).submitted_file_list("2025-07-01T00:00:00", "2025-07-02T00:00:00", 0, 50, "op-7")
    raw, b64, listing = fdms.seen
    assert raw.body == file_body and raw.headers["Content-Type"] == "application/json"
    assert base64.b64decode(b64.body) == file_body and b64.headers["Content-Type"] == "text/plain"
    assert listing.method == "GET" and listing.path == (
        f"/Device/v1/{DEVICE_ID}/SubmittedFileList?FileUploadedFrom=2025-07-01T00%3A00%3A00"
        "&FileUploadedTill=2025-07-02T00%3A00%3A00&Offset=0&Limit=50&OperationID=op-7"
    )


# --- refusals ----------------------------------------------------------------------------------------------


def test_a_422_problem_becomes_an_fdms_error_with_its_code(fdms: FakeFdms, pki: Pki) -> None:
    problem = {
        "errorCode": "RCPT01",
        "type": "https://httpstatuses.io/422",
        "title": "Unprocessable Entity",
        "status": 422,
        "detail": "Fiscal day is closed",
        "operationID": "0HMPDRRQL1C0G:00000005",
    }
    fdms.script.append(Reply(422, problem, {"Content-Type": "application/problem+json"}))
    with pytest.raises(FdmsError) as caught:
        client(fdms, pki).submit_receipt('{"receipt":{}}')
    assert caught.value.code == "RCPT01" and caught.value.status == 422 and caught.value.problem == problem
    assert "Fiscal day is closed" in caught.value.message


def test_400_401_404_405_and_unusable_answers(fdms: FakeFdms, pki: Pki) -> None:
    c = client(fdms, pki)
    errors = {"receipt.receiptTotal": ["The field is required."], "receipt.invoiceNo": ["x" * 500]}
    fdms.script += [
        Reply(400, {"title": "One or more validation errors occurred.", "status": 400, "errors": errors}),
        Reply(401, {"status": 401}),
        Reply(404, b""),
        Reply(405, b""),
        Reply(200, b"<html>captive portal</html>"),
        Reply(200, {"operationID": "op"}),  # no receiptID
        Reply(422, {"status": 422, "detail": "no code"}),
    ]
    codes = []
    for _ in range(7):
        with pytest.raises(FdmsError) as caught:
            c.submit_receipt('{"receipt":{}}')
        codes.append((caught.value.code, caught.value.status))
        if caught.value.status == 400:
            assert "receipt.receiptTotal: The field is required." in caught.value.message
            assert len(caught.value.message) <= 240 and caught.value.problem["errors"] == errors
    assert codes == [
        ("BOX_FDMS_REQUEST", 400),
        ("BOX_FDMS_AUTH", 401),
        ("BOX_FDMS_PROTOCOL", 404),
        ("BOX_FDMS_PROTOCOL", 405),
        ("BOX_FDMS_PROTOCOL", 200),
        ("BOX_FDMS_PROTOCOL", 200),
        ("BOX_FDMS_PROTOCOL", 422),
    ]


def test_a_device_certificate_fdms_does_not_know_is_refused_as_auth(fdms: FakeFdms, pki: Pki) -> None:
    with pytest.raises(FdmsError) as caught:
        client(fdms, pki, tls=pki.stranger).get_status()  # the TLS layer refuses it (unknown CA alert)
    assert caught.value.code == "BOX_FDMS_AUTH"


# --- worth retrying ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_faults_are_unavailable(fdms: FakeFdms, pki: Pki, status: int) -> None:
    fdms.script.append(Reply(status, b"oops"))
    with pytest.raises(FdmsUnavailable) as caught:
        client(fdms, pki).submit_receipt('{"receipt":{}}')
    assert (caught.value.code, caught.value.status, caught.value.retry_after) == (
        "BOX_FDMS_UNAVAILABLE",
        status,
        None,
    )


def test_429_and_503_carry_retry_after(fdms: FakeFdms, pki: Pki) -> None:
    c = client(fdms, pki)
    later = email.utils.formatdate(FIXED_TS + 120, usegmt=True)
    fdms.script += [
        Reply(429, b"", {"Retry-After": "7"}),
        Reply(503, b"", {"Retry-After": later, "Date": FIXED_DATE}),
        Reply(503, b""),
    ]
    found = []
    for _ in range(3):
        with pytest.raises(FdmsUnavailable) as caught:
            c.close_day("{}")
        found.append((caught.value.code, caught.value.status, caught.value.retry_after))
    assert found == [
        ("BOX_FDMS_BUSY", 429, 7.0),
        ("BOX_FDMS_UNAVAILABLE", 503, 120.0),
        ("BOX_FDMS_UNAVAILABLE", 503, None),
    ]


def test_a_reset_connection_is_unavailable_and_the_next_call_reconnects(fdms: FakeFdms, pki: Pki) -> None:
    c = client(fdms, pki)
    fdms.script += [Reply(200, {"reportingFrequency": 5}), RESET, Reply(200, {"reportingFrequency": 5})]
    c.ping()
    with pytest.raises(FdmsUnavailable) as caught:
        c.ping()
    assert caught.value.code == "BOX_FDMS_UNAVAILABLE" and caught.value.request_sent
    c.ping()
    first, cut, after = (s.peer for s in fdms.seen)
    assert first == cut and after != cut  # kept alive until the error, then a fresh connection


def test_a_server_that_never_answers_times_out(fdms: FakeFdms, pki: Pki) -> None:
    fdms.script.append(HANG)
    started = time.monotonic()
    with pytest.raises(FdmsUnavailable) as caught:
        client(fdms, pki, timeout=0.5).get_status()
    assert 0.4 < time.monotonic() - started < 3
    assert caught.value.code == "BOX_FDMS_UNAVAILABLE" and "0.5 s" in caught.value.message


def test_nobody_listening_is_unavailable_and_nothing_was_sent(pki: Pki) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = FdmsClient(f"https://127.0.0.1:{port}", DEVICE_ID, *MODEL, ca_file=pki.ca_file, tls=pki.device)
    with pytest.raises(FdmsUnavailable) as caught:
        c.ping()
    assert caught.value.code == "BOX_FDMS_UNAVAILABLE" and not caught.value.request_sent


def test_an_untrusted_server_certificate_is_unavailable_with_its_own_code(
    serve: Callable[..., FakeFdms], pki: Pki
) -> None:
    rogue = serve(rogue=True)
    with pytest.raises(FdmsUnavailable) as caught:
        client(rogue, pki).submit_receipt('{"receipt":{}}')
    assert caught.value.code == "BOX_FDMS_TLS" and not caught.value.request_sent
    assert "date and time" in caught.value.message
    assert rogue.seen == []


# --- the connection, the clock, the log --------------------------------------------------------------------


def test_one_kept_alive_connection_per_identity(fdms: FakeFdms, pki: Pki) -> None:
    c = client(fdms, pki)
    c.close_day("{}")
    c.close_day("{}")
    fdms.script.append(Reply(200, {"certificate": []}))
    c.get_server_certificate()  # public: goes without the certificate, so on its own connection
    c.close_day("{}")
    peers = [s.peer for s in fdms.seen]
    assert peers[0] == peers[1] and len({peers[1], peers[2], peers[3]}) == 3


def test_calls_from_several_threads_take_turns(fdms: FakeFdms, pki: Pki) -> None:
    c = client(fdms, pki)
    fdms.script += [Reply(200, {"reportingFrequency": 5}) for _ in range(8)]
    results: list[Answer] = []
    threads = [threading.Thread(target=lambda: results.append(c.ping())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 8 and len({s.peer for s in fdms.seen}) == 1


def test_clock_skew_is_the_server_date_minus_the_local_clock(fdms: FakeFdms, pki: Pki) -> None:
    c = client(fdms, pki, clock=FixedClock(FIXED_TS - 7.5))
    assert c.clock_skew is None
    fdms.script.append(Reply(200, {"operationID": "op"}, {"Date": FIXED_DATE}))
    assert c.close_day("{}").date == FIXED_DATE
    assert c.clock_skew == 7.5


def test_one_log_line_per_call_without_secrets(
    fdms: FakeFdms, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="firmware.fdms_client")
    c = client(fdms, pki)
    fdms.script += [
        Reply(200, {"operationID": "op", "certificate": "PEM"}),
        Reply(422, {"errorCode": "DEV02"}),
    ]
    csr = b"-----BEGIN CERTIFICATE REQUEST-----\nSECRETCSR\n-----END CERTIFICATE REQUEST-----\n"
    c.register_device("SECRET12", csr)
    with pytest.raises(FdmsError):
        c.register_device("SECRET12", csr)
    assert {r.getMessage() for r in caplog.records} == {"fdms_call"}  # the facts are fields, not text
    lines = [r.fields for r in caplog.records]  # type: ignore[attr-defined]
    assert [(line["endpoint"], line["status"]) for line in lines] == [
        ("RegisterDevice", 200),
        ("RegisterDevice", 422),
    ]
    assert all(isinstance(line["ms"], int) for line in lines)
    text = caplog.text
    for secret in ("SECRET12", "SECRETCSR", PASSWORD.decode(), "BEGIN"):
        assert secret not in text


# --- local refusals: nothing goes on the wire --------------------------------------------------------------


def test_http_and_bad_settings_are_refused(pki: Pki) -> None:
    for url in ("http://fdmsapitest.zimra.co.zw", "fdmsapitest.zimra.co.zw", "https://", "https://h/?x=1"):
        with pytest.raises(FiscalError) as caught:
            FdmsClient(url, DEVICE_ID, *MODEL)
        assert caught.value.code == "BOX_CONFIG"
    with pytest.raises(FiscalError) as caught:
        FdmsClient("https://127.0.0.1", DEVICE_ID, "Model\r\nX-Evil: 1", "v1")
    assert caught.value.code == "BOX_CONFIG"


def test_a_wrong_key_password_is_a_clear_error_that_does_not_leak_it(pki: Pki) -> None:
    wrong = TlsKeyMaterial(pki.device.certfile, pki.device.keyfile, b"not the password")
    with pytest.raises(FiscalError) as caught:
        FdmsClient("https://127.0.0.1", DEVICE_ID, *MODEL, ca_file=pki.ca_file, tls=wrong)
    assert caught.value.code == "BOX_FDMS_CERT" and "not the password" not in str(caught.value)


def test_bodies_that_are_not_what_they_claim_are_refused_before_sending(fdms: FakeFdms, pki: Pki) -> None:
    c = client(fdms, pki)
    attempts: list[Callable[[], Any]] = [
        lambda: c.submit_receipt('{"receiptTotal": 1}'),
        lambda: c.submit_receipt("{not json"),
        lambda: c.close_day("[]"),
        lambda: c.submit_file(b'{"content":{}}'),
        lambda: c.open_day("2025-07-01 08:00"),
        lambda: c.get_server_certificate("xyz"),
        lambda: c.register_device("ABCD1234", b"not a csr"),
    ]
    for attempt in attempts:
        with pytest.raises(FiscalError) as caught:
            attempt()
        assert caught.value.code == "BOX_FDMS_BODY"
    assert fdms.seen == []
