"""A scripted device for the FDMS simulator's tests: its own key, CSR and certificate, signed receipts built
with firmware.core.fdms, counters and the close, over real HTTPS with its client certificate."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firmware.core import fdms, wire
from sim.fdms.server import FdmsSimulator

HARARE = ZoneInfo("Africa/Harare")
START = dt.datetime(2026, 3, 10, 8, 0, 0, tzinfo=HARARE).timestamp()
MODEL = {"DeviceModelName": "fiscalbox", "DeviceModelVersion": "1.0"}


class FakeClock:
    """Simulated time that moves only when a test moves it."""

    def __init__(self, start: float = START) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def code(self) -> str | None:
        return self.body.get("errorCode") if isinstance(self.body, dict) else None


def local(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, HARARE).strftime("%Y-%m-%dT%H:%M:%S")


def make_csr(
    key: ec.EllipticCurvePrivateKey, common_name: str, extra: list[x509.NameAttribute] | None = None
) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name), *(extra or [])])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def request(
    sim: FdmsSimulator,
    method: str,
    path: str,
    body: bytes | str | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    cert: tuple[Path, Path] | None = None,
    timeout: float = 10,
) -> Response:
    """One HTTPS call to the simulator, trusting its CA, with a client certificate when given."""
    context = ssl.create_default_context(cafile=str(sim.ca_cert_path))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    connection = http.client.HTTPSConnection("127.0.0.1", sim.port, context=context, timeout=timeout)
    try:
        data: bytes | None
        if isinstance(body, dict):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        sent = {"Content-Type": "application/json", **(headers if headers is not None else MODEL)}
        connection.request(method, path, body=data, headers=sent)
        answer = connection.getresponse()
        raw = answer.read()
        parsed = json.loads(raw) if raw else None
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, parsed)
    finally:
        connection.close()


@dataclass
class Device:
    """A device as FDMS sees it: registers, opens days, signs receipts in one chain, closes days."""

    sim: FdmsSimulator
    device_id: int
    workdir: Path
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    global_no: int = 0
    counter: int = 0
    day_no: int = 0
    day_opened: str = ""
    previous_hash: str | None = None
    counters: dict[Any, int] = field(default_factory=dict)
    last_date: float = 0.0
    cert_path: Path | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.key_path = self.workdir / f"{self.device_id}-key.pem"
        self.key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    @property
    def serial(self) -> str:
        device = self.sim.scenario.device(self.device_id)
        assert device is not None
        return device.serial

    @property
    def cert(self) -> tuple[Path, Path]:
        assert self.cert_path is not None, "register first"
        return self.cert_path, self.key_path

    def csr(self, common_name: str | None = None) -> str:
        return make_csr(self.key, common_name or fdms.csr_common_name(self.serial, self.device_id))

    def register(self, csr: str | None = None, key: str | None = None) -> Response:
        answer = request(
            self.sim,
            "POST",
            f"/Public/v1/{self.device_id}/RegisterDevice",
            {
                "activationKey": key or self.sim.activation_keys[self.device_id],
                "certificateRequest": csr or self.csr(),
            },
        )
        if answer.status == 200:
            self.install(answer.body["certificate"])
        return answer

    def install(self, pem: str) -> None:
        self.cert_path = self.workdir / f"{self.device_id}-cert-{time.monotonic_ns()}.pem"
        self.cert_path.write_text(pem)

    def call(
        self, method: str, name: str, body: Any = None, query: str = "", headers: dict[str, str] | None = None
    ) -> Response:
        path = f"/Device/v1/{self.device_id}/{name}" + (f"?{query}" if query else "")
        return request(self.sim, method, path, body, headers, cert=self.cert)

    # --- the day ------------------------------------------------------------------------------------------

    def open_day(self, day_no: int | None = None, shape: Callable[[Any], Any] = dict) -> Response:
        """OpenDay; `shape` turns the body into what is sent (a lenient client's form, say)."""
        now = self.sim.now()
        self.day_opened = local(now)
        self.last_date = max(self.last_date, now)
        body: dict[str, Any] = {"fiscalDayOpened": self.day_opened}
        if day_no is not None:
            body["fiscalDayNo"] = day_no
        answer = self.call("POST", "OpenDay", shape(body))
        if answer.status == 200:
            self.day_no = answer.body["fiscalDayNo"]
            self.counter = 0
            self.previous_hash = None
            self.counters = fdms.new_counters()
        return answer

    def receipt(
        self,
        price: str = "11.50",
        tax_id: int = 3,
        percent: str | None = "15",
        currency: str = "USD",
        sign_with: ec.EllipticCurvePrivateKey | None = None,
    ) -> dict[str, Any]:
        """The next receipt of the chain as SubmitReceipt's body, signed; the chain moves on."""
        self.global_no += 1
        self.counter += 1
        self.last_date = max(self.last_date + 1, self.sim.now() - 60)
        line: dict[str, Any] = {
            "receiptLineType": "Sale",
            "receiptLineName": "Bread",
            "receiptLineHSCode": "19059000",
            "receiptLinePrice": price,
            "receiptLineQuantity": "1",
            "taxID": tax_id,
        }
        if percent is not None:
            line["taxPercent"] = percent
        raw = {
            "receiptType": "FiscalInvoice",
            "receiptCurrency": currency,
            "receiptCounter": self.counter,
            "receiptGlobalNo": self.global_no,
            "invoiceNo": f"INV-{self.device_id}-{self.global_no}",
            "receiptDate": local(self.last_date),
            "receiptLinesTaxInclusive": True,
            "receiptLines": [line],
            "receiptPayments": [{"moneyTypeCode": "Cash", "paymentAmount": price}],
        }
        receipt, findings = fdms.prepare(raw)
        assert not fdms.blocking(findings), findings
        text = fdms.receipt_string(self.device_id, receipt, self.previous_hash)
        signature = (sign_with or self.key).sign(text.encode(), ec.ECDSA(hashes.SHA256()))
        receipt["receiptDeviceSignature"] = {
            "hash": fdms.hash_b64(text),
            "signature": base64.b64encode(signature).decode(),
        }
        self.previous_hash = fdms.hash_b64(text)
        fdms.update_counters(self.counters, receipt)
        body: dict[str, Any] = json.loads(wire.dumps({"receipt": fdms.receipt_wire(receipt)}))
        return body

    def submit(self, body: dict[str, Any]) -> Response:
        return self.call("POST", "SubmitReceipt", body)

    def close_body(self) -> dict[str, Any]:
        counters = fdms.day_counters(self.counters)
        text = fdms.day_string(self.device_id, self.day_no, self.day_opened[:10], counters)
        signature = self.key.sign(text.encode(), ec.ECDSA(hashes.SHA256()))
        return {
            "fiscalDayNo": self.day_no,
            "fiscalDayCounters": json.loads(wire.dumps(fdms.counters_wire(counters))),
            "fiscalDayDeviceSignature": {
                "hash": fdms.hash_b64(text),
                "signature": base64.b64encode(signature).decode(),
            },
            "receiptCounter": self.counter,
        }

    def close_day(self) -> Response:
        return self.call("POST", "CloseDay", self.close_body())

    def status(self) -> Response:
        return self.call("GET", "GetStatus")

    def wait_status(self, *statuses: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            answer = self.status()
            assert answer.status == 200, answer.body
            if answer.body["fiscalDayStatus"] in statuses or time.monotonic() > deadline:
                return dict(answer.body)
            time.sleep(0.05)
