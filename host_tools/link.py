"""The POS API: `BoxClient` talks to a fiscal box over its USB link (docs/link.md); `fiscalbox` uses it.

    from host_tools.link import BoxClient
    with BoxClient("/dev/ttyACM0", open("pos.pem", "rb").read()) as box:
        receipt = box.issue(sale)                 # exactly once, even when retried after a lost answer

Every request is signed with the host key (ES256); every answer to a write is checked against the device key
before it is believed, and its COSE bytes are kept in `last_proof`. A lost line (a timeout, a pulled cable) is
retried on a reopened port only where that is safe: reads, `issue` (under the same request ID: the box returns
the receipt already issued) and the polling of a job (an export resumes from the last offset held).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import serial
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from firmware import cose
from firmware.core import smp
from firmware.core.errors import FiscalError

BAUD = 115200
FISCAL, HOSTS = 64, 65
READ, WRITE = smp.OP_READ, smp.OP_WRITE
POLL_SECONDS = 0.05  # how long one read of the port waits; also the pause between polls of a running job
SLOW_SECONDS = 90.0  # commands that wait for FDMS (register, renew, open_day) or make an RSA key
RETRIES = 3  # reopenings of the port for one idempotent call
RECONNECT_PAUSE = 0.25  # seconds before reopening a port that could not be opened, times the attempt
ANSWER_LIMIT = 1 << 20  # bytes a compressed answer may inflate to here: far more than any box answer holds
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_log = logging.getLogger("fiscalbox.link.client")

# name: (group, command, op), as docs/link.md section 3
COMMANDS: dict[str, tuple[int, int, int]] = {
    "nonce": (FISCAL, 0, READ),
    "status": (FISCAL, 1, READ),
    "receipt": (FISCAL, 2, READ),
    "outbox": (FISCAL, 3, READ),
    "x_report": (FISCAL, 4, READ),
    "z_report": (FISCAL, 5, READ),
    "issue": (FISCAL, 6, WRITE),
    "reprint": (FISCAL, 7, WRITE),
    "print_unprinted": (FISCAL, 8, WRITE),
    "print_report": (FISCAL, 9, WRITE),
    "open_day": (FISCAL, 10, WRITE),
    "close_day": (FISCAL, 11, WRITE),
    "provision": (FISCAL, 12, WRITE),
    "generate_key": (FISCAL, 13, WRITE),
    "certificate_request": (FISCAL, 14, READ),
    "install_certificate": (FISCAL, 15, WRITE),
    "register": (FISCAL, 16, WRITE),
    "renew_certificate": (FISCAL, 17, WRITE),
    "audit": (FISCAL, 18, WRITE),
    "backup": (FISCAL, 19, WRITE),
    "export_journal": (FISCAL, 20, WRITE),
    "replay": (FISCAL, 21, WRITE),
    "job": (FISCAL, 22, READ),
    "enroll": (HOSTS, 0, WRITE),
    "keys": (HOSTS, 1, READ),
    "revoke": (HOSTS, 2, WRITE),
}
NAMES = {(group, command): name for name, (group, command, _) in COMMANDS.items()}
SLOW = {"register", "renew_certificate", "open_day", "generate_key"}
REKEYING = {"generate_key", "renew_certificate"}  # their answer may come signed by the device's new key

Progress = Callable[[int, int], None]


class _Lost(Exception):
    """The line lost the exchange (a timeout, a port error); `error` is what the caller sees unretried.
    `absent`: the port could not even be opened (a USB device re-enumerating: worth a pause); `missing`: it
    does not exist (retried only after an exchange was lost, not when it never existed)."""

    def __init__(self, error: FiscalError, absent: bool = False, missing: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.absent = absent
        self.missing = missing


def new_request_id() -> str:
    return str(uuid.uuid4())


def new_key(path: str | os.PathLike[str], passphrase: bytes | None = None) -> bytes:
    """Make a host key (ECDSA P-256) in a new PEM file readable by its owner only; returns its key ID."""
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise FiscalError("BOX_FILE", f"{path} exists already: a key is never overwritten.", "file") from None
    except OSError as error:
        raise FiscalError("BOX_FILE", f"Cannot write {path}: {error.strerror}.", "file") from None
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    return cose.key_id(key.public_key())


def load_host_key(pem: bytes, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """The host's private key: ECDSA P-256 in PEM, as `new_key` writes it."""
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError:
        raise FiscalError(
            "BOX_KEY_PASSPHRASE",
            "The host key file is encrypted: give its passphrase (FISCALBOX_HOST_KEY_PASSPHRASE).",
            "key",
        ) from None
    except ValueError:
        raise FiscalError(
            "BOX_KEY_UNREADABLE", "The host key is not a PEM private key, or its passphrase is wrong.", "key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise FiscalError(
            "BOX_KEY_UNREADABLE", "A host key must be ECDSA P-256 (`fiscalbox keys new`).", "key"
        )
    return key


def public_key_der(key: Any) -> bytes:
    """SubjectPublicKeyInfo DER of a key given as an object, PEM (public, private or certificate) or DER."""
    if isinstance(key, str):
        key = key.encode()
    if isinstance(key, bytes):
        key = _load_public(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_public(data: bytes) -> Any:
    loaders: list[Callable[[bytes], Any]] = [
        serialization.load_pem_public_key,
        lambda d: x509.load_pem_x509_certificate(d).public_key(),
        lambda d: serialization.load_pem_private_key(d, password=None).public_key(),
        serialization.load_der_public_key,
    ]
    for load in loaders:
        try:
            return load(data)
        except (ValueError, TypeError):
            continue
    raise FiscalError(
        "BOX_KEY_UNREADABLE", "This is not a public key, certificate or private key.", "public_key"
    )


def device_public_key(status: dict[str, Any]) -> Any:
    """The device key's public half as the box's status gives it (PEM text), or None when it has none yet."""
    for holder in (status.get("device_key"), status.get("key"), status):
        if isinstance(holder, dict) and isinstance(holder.get("public_key"), str):
            return _load_public(holder["public_key"].encode())
    return None


def _unproven(name: str | None, rid: str, why: FiscalError) -> FiscalError:
    """A write reached the box, but its answer cannot be trusted: it may have been done, so the host must
    not take it as refused (a sale sent again under a new request ID would be issued twice)."""
    check = (
        f"send the sale again with the same request ID {rid} (the box never issues it twice)"
        if name == "issue"
        else "check with `fiscalbox status` before asking again"
    )
    return FiscalError(
        "BOX_LINK_UNVERIFIED",
        f"The box answered {name or 'the request'}, but the answer could not be checked "
        f"({why.message.rstrip('.')}), so it may have been done: {check}. If the device key changed (a "
        "certificate renewal), give the new one (`fiscalbox keys device`).",
    )


class BoxClient:
    """One host's connection to one box. Thread-safe: calls are serialised."""

    def __init__(
        self,
        port: str,
        key_pem: bytes,
        timeout: float = 10.0,
        *,
        passphrase: bytes | None = None,
        device_key: Any = None,
        retries: int = RETRIES,
        strict: bool = False,
        compress: bool = True,
    ) -> None:
        """`port`: a device path, a pty path or a pyserial URL. `key_pem`: the host key (ECDSA P-256).
        `device_key`: the device's public key (PEM or object) when the caller already knows it; otherwise
        it is learnt from the box on the first signed answer and pinned for this client's life. `strict`:
        refuse an answer that cannot be checked (the device key unknown) rather than take it unchecked.
        `compress`: send requests DEFLATE-compressed when the box takes them (False: always plain `req`)."""
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self._key = load_host_key(key_pem, passphrase)
        self.kid = cose.key_id(self._key.public_key())
        self._alg, self._sign = cose.signer(self._key)
        self.compress = compress
        self.deflate = False  # whether requests go compressed: learnt from the box's nonce answer
        if isinstance(device_key, str):
            device_key = device_key.encode()
        self._device_key = _load_public(device_key) if isinstance(device_key, bytes) else device_key
        self.strict = strict
        self._learnt = self._device_key is not None
        self._given = self._device_key is not None  # the caller's key is never replaced by one learnt
        self.verified: bool | None = None  # was the last write's answer checked against the device key?
        self._serial: Any = None
        self._decoder = smp.Decoder()
        self._frames: list[bytes] = []
        self._nonce: bytes | None = None
        self._sequence = int.from_bytes(os.urandom(1), "big")
        self._lock = threading.RLock()
        self.last_proof: bytes | None = None  # the COSE_Sign1 bytes of the last answer to a write
        self.last_request_id: str | None = None

    # --------------------------------------------------------------------------------------------------
    # The port

    def __enter__(self) -> BoxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let go of the port (the next call opens it again)."""
        with self._lock:
            port, self._serial = self._serial, None
            if port is not None:
                try:
                    port.close()
                except OSError:
                    pass

    def _open(self) -> Any:
        if self._serial is None or not self._serial.is_open:
            # a device path is locked (flock) so a second program gets a clear refusal, not a garbled line
            how = {} if "://" in self.port else {"exclusive": True}
            try:
                self._serial = serial.serial_for_url(
                    self.port, baudrate=BAUD, timeout=POLL_SECONDS, write_timeout=self.timeout, **how
                )
            except (OSError, ValueError) as error:
                self._serial = None
                code = getattr(error, "errno", None)
                why = os.strerror(code) if isinstance(code, int) else str(error)
                if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise FiscalError(
                        "BOX_LINK_PORT",
                        f"{self.port} is in use by another program (another fiscalbox command or the POS): "
                        "let it finish or close it, then try again.",
                        "port",
                    ) from None
                refusal = FiscalError(
                    "BOX_LINK_PORT",
                    f"Cannot open the box's port {self.port}: {why}. Is the box plugged in?",
                    "port",
                )
                raise _Lost(refusal, absent=True, missing=code == errno.ENOENT) from None
            self._decoder = smp.Decoder()
            self._frames = []
            self._nonce = None  # another host may have written meanwhile
        return self._serial

    def _lost_port(self, error: Exception) -> _Lost:
        self.close()
        self._nonce = None
        return _Lost(
            FiscalError("BOX_LINK_PORT", f"The line to the box on {self.port} failed: {error}.", "port")
        )

    # --------------------------------------------------------------------------------------------------
    # One exchange

    def _exchange(
        self, op: int, group: int, command: int, body: dict[str, Any], wait: float
    ) -> dict[str, Any]:
        """Send one frame, return the body of the answer with the same sequence number."""
        port = self._open()
        self._sequence = (self._sequence + 1) & 0xFF
        sequence = self._sequence
        payload = cbor2.dumps(body)
        frame = smp.header(op, group, sequence, command, len(payload)) + payload
        try:
            # One write of the whole packet, no flush(): pyserial's is tcdrain, which waits until the box has
            # read the request before this side starts reading the answer.
            port.write(smp.encode(frame))
        except (OSError, serial.SerialTimeoutException) as error:
            raise self._lost_port(error) from None
        deadline = time.monotonic() + wait
        while True:
            while self._frames:
                answer = self._frames.pop(0)
                try:
                    _, a_op, _, _, a_group, a_sequence, a_command = smp.parse_header(answer)
                except ValueError:
                    continue
                if (a_op, a_group, a_sequence, a_command) != (op + 1, group, sequence, command):
                    continue  # a late answer to an earlier request, or noise
                try:
                    decoded = cbor2.loads(answer[smp.HEADER_SIZE :])
                except Exception:  # cbor2 raises several kinds on garbage; a bad answer is a lost one
                    continue
                if isinstance(decoded, dict):
                    return decoded
            if time.monotonic() >= deadline:
                self._nonce = None  # the box may have rotated it meanwhile
                raise _Lost(
                    FiscalError(
                        "BOX_LINK_TIMEOUT",
                        f"The box did not answer on {self.port} within {wait:g} s: is it plugged in and on?",
                        "port",
                    )
                )
            try:
                data = port.read(port.in_waiting or 1)
            except (OSError, TypeError) as error:  # TypeError: pyserial reading a port closed under it
                raise self._lost_port(error) from None
            if data:
                self._frames += self._decoder.feed(data)

    def _fetch_nonce(self, wait: float) -> None:
        group, command, op = COMMANDS["nonce"]
        answer = self._exchange(op, group, command, {}, wait)
        nonce = answer.get("nonce")
        if not isinstance(nonce, bytes):
            raise FiscalError("BOX_LINK_FRAME", "The box answered the nonce request without a nonce.")
        self._nonce = nonce
        ok = answer.get("ok")
        self.deflate = self.compress and isinstance(ok, dict) and ok.get("deflate") is True

    def _signed(self, group: int, command: int, body: dict[str, Any], rid: str) -> dict[str, Any]:
        """The request's SMP body: the COSE_Sign1, DEFLATE-compressed (`zreq`) when the box said it takes
        that (docs/link.md section 4), else as it is (`req`)."""
        assert self._nonce is not None
        payload = cbor2.dumps({"g": group, "c": command, "nonce": self._nonce, "rid": rid, "body": body})
        signed = cose.sign1(payload, self._sign, self._alg, self.kid)
        return {"zreq": cose.deflate(signed)} if self.deflate else {"req": signed}

    # --------------------------------------------------------------------------------------------------
    # The general call

    def call(
        self,
        group: int,
        command: int,
        body: dict[str, Any] | None = None,
        request_id: str | None = None,
        *,
        retry: bool | None = None,
        wait: float | None = None,
    ) -> Any:
        """Sign `body` for command `group`/`command`, send it, check the answer, return its `ok` or raise the
        box's refusal as FiscalError. `retry`: whether a lost exchange may be sent again (default: reads)."""
        name = NAMES.get((group, command))
        op = COMMANDS[name][2] if name else WRITE
        rid = request_id if request_id is not None else new_request_id()
        if not REQUEST_ID.fullmatch(rid):
            raise FiscalError(
                "BOX_LINK_SCHEMA", "A request ID is 1 to 64 characters of A-Z a-z 0-9 . _ : -", "request_id"
            )
        if retry is None:
            retry = op == READ
        if wait is None:
            wait = max(self.timeout, SLOW_SECONDS) if name in SLOW else self.timeout
        with self._lock:
            if op == WRITE:
                self.last_request_id = rid
            lost = 0
            nonce_refused = False
            started = time.monotonic()
            while True:
                try:
                    if self._nonce is None:
                        self._fetch_nonce(self.timeout)
                    sent = self._nonce
                    answer = self._exchange(
                        op, group, command, self._signed(group, command, body or {}, rid), wait
                    )
                except _Lost as error:
                    self.close()
                    if not retry or lost >= self.retries or (error.missing and not lost):
                        raise _waited(error.error, self.port, lost + 1, time.monotonic() - started) from None
                    lost += 1
                    _log.warning(
                        json.dumps(
                            {"event": "link.retry", "command": name, "rid": rid, "why": error.error.code}
                        )
                    )
                    if error.absent:
                        time.sleep(RECONNECT_PAUSE * lost)
                    continue
                nonce = answer.get("nonce")
                self._nonce = nonce if isinstance(nonce, bytes) else None
                refusal = answer.get("error")
                if (
                    isinstance(refusal, dict)
                    and refusal.get("code") == "BOX_LINK_NONCE"
                    and not nonce_refused
                ):
                    nonce_refused = True  # another host wrote in between: sign again, same request ID
                    continue
                return self._result(answer, op, group, command, rid, name, sent)

    def _result(
        self,
        answer: dict[str, Any],
        op: int,
        group: int,
        command: int,
        rid: str,
        name: str | None,
        sent: bytes | None = None,
    ) -> Any:
        smp_error = answer.get("err")
        if isinstance(smp_error, dict):  # refused at the SMP level: the box does not know this command
            raise FiscalError(
                "BOX_LINK_UNSUPPORTED",
                f"The box does not support this request (SMP group {smp_error.get('group')}, rc "
                f"{smp_error.get('rc')}): is its firmware older than this tool?",
            )
        if "error" in answer:
            raise _refusal(answer["error"])
        if op == READ:
            if "zok" in answer:
                return cose.loads(cose.inflate(answer["zok"], ANSWER_LIMIT))
            if "ok" not in answer:
                raise FiscalError("BOX_LINK_FRAME", "The box's answer holds neither a result nor an error.")
            return answer["ok"]
        try:
            payload = self._write_outcome(answer, name, (group, command, rid, sent))
        except FiscalError as error:
            if error.code not in ("BOX_LINK_SIGNATURE", "BOX_LINK_FRAME"):
                raise
            raise _unproven(name, rid, error) from None
        if "error" in payload:
            raise _refusal(payload["error"])
        result = payload.get("ok")
        if name in REKEYING and not self._given:
            self._device_key, self._learnt = None, False  # the device key changed: learn it again
        return result

    def _write_outcome(
        self, answer: dict[str, Any], name: str | None, request: tuple[Any, ...]
    ) -> dict[str, Any]:
        """The signed outcome of a write, checked: signed by the device key and naming this very request."""
        if "cose" in answer or "zcose" in answer:
            proof = answer["cose"] if "cose" in answer else cose.inflate(answer["zcose"], ANSWER_LIMIT)
            message = cose.decode1(proof)
            self._verify(message, name)
            self.last_proof = proof
            payload = cose.loads(message.payload)
        elif "answer" in answer:
            if self._device_key is not None or self.strict:
                raise FiscalError(
                    "BOX_LINK_SIGNATURE",
                    "The box answered unsigned, and this client believes only answers signed by the device "
                    "key (the box's log says whether its key failed to sign).",
                )
            payload = answer["answer"]
            self.last_proof = None
            self.verified = False
        else:
            raise FiscalError(
                "BOX_LINK_FRAME", "The box's answer to a write holds neither `cose` nor `answer`."
            )
        if not isinstance(payload, dict) or (
            payload.get("g"),
            payload.get("c"),
            payload.get("rid"),
            payload.get("nonce"),
        ) != request:
            raise FiscalError("BOX_LINK_SIGNATURE", "The box's signed answer is for another request.")
        return payload

    def _verify(self, message: Any, name: str | None) -> None:
        """Check a signed answer under the pinned device key. The first time, the key is learnt (status, or
        for an operator key the device's own CSR) and pinned for this client's life; a box whose key cannot
        be learnt so leaves the answer unchecked (`verified` False) unless the client is `strict`."""
        if self._device_key is None and not self._learnt:
            self._learn_device_key()
        if self._device_key is None:
            if self.strict:
                raise FiscalError(
                    "BOX_LINK_SIGNATURE",
                    "The box's answers are signed but its device key is unknown here: give the device's "
                    "certificate or public key (device_key).",
                )
            self.verified = False
            return
        try:
            cose.verify1(message, self._device_key)
        except FiscalError:
            if name in REKEYING and self._given:
                raise FiscalError(
                    "BOX_LINK_SIGNATURE",
                    f"The box answered {name} signed by another key than the device key given here: its "
                    "device key changed (the request may have been carried out), or the answer is forged. "
                    "Check the new key (fiscalbox status) and give it (--device-key / FISCALBOX_DEVICE_KEY) "
                    "before trusting the box's answers.",
                ) from None
            if name not in REKEYING:
                raise
            self._learn_device_key()  # a new device key signed its own answer
            if self._device_key is None:
                raise
            cose.verify1(message, self._device_key)
        self.verified = True

    def device_key(self) -> Any:
        """The device's public key this client checks answers with (learnt now if need be), or None when
        the box has none yet or this host key may not learn it. For `fiscalbox journal verify --cert`."""
        with self._lock:
            if self._device_key is None and not self._learnt:
                self._learn_device_key()
            return self._device_key

    def _learn_device_key(self) -> None:
        group, command, _ = COMMANDS["status"]
        key = device_public_key(self.call(group, command, {}))
        if key is None:
            group, command, _ = COMMANDS["certificate_request"]
            try:
                csr = x509.load_pem_x509_csr(self.call(group, command, {})["csr"].encode())
            except FiscalError:  # a POS key may not ask for it
                pass
            except (ValueError, KeyError, TypeError, AttributeError):
                raise FiscalError("BOX_LINK_FRAME", "The box's certificate request is not a CSR.") from None
            else:
                if csr.is_signature_valid:  # made by the key it names
                    key = csr.public_key()
        self._device_key = key
        self._learnt = True  # tried once; again only after the device key changes

    # --------------------------------------------------------------------------------------------------
    # One method per command of docs/link.md section 3

    def _do(
        self, name: str, body: dict[str, Any] | None = None, request_id: str | None = None, **how: Any
    ) -> Any:
        group, command, _ = COMMANDS[name]
        return self.call(group, command, body or {}, request_id, **how)

    def status(self) -> dict[str, Any]:
        return self._do("status")  # type: ignore[no-any-return]

    def receipt(self, global_no: int) -> dict[str, Any]:
        return self._do("receipt", {"global_no": global_no})  # type: ignore[no-any-return]

    def outbox(self, limit: int | None = None) -> dict[str, Any]:
        return self._do("outbox", {} if limit is None else {"limit": limit})  # type: ignore[no-any-return]

    def x_report(self) -> dict[str, Any]:
        return self._do("x_report")  # type: ignore[no-any-return]

    def z_report(self, day: int) -> dict[str, Any]:
        return self._do("z_report", {"day": day})  # type: ignore[no-any-return]

    def issue(self, sale: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
        """Issue one receipt for `sale` (docs/sale.md), exactly once under `request_id` (made when None, and
        kept in `last_request_id`): retried after a lost answer, the box returns the receipt already issued,
        marked `"repeated": true`."""
        rid = request_id if request_id is not None else new_request_id()
        return self._do("issue", {"sale": sale}, rid, retry=True)  # type: ignore[no-any-return]

    def reprint(self, global_no: int) -> dict[str, Any]:
        return self._do("reprint", {"global_no": global_no})  # type: ignore[no-any-return]

    def print_unprinted(self) -> dict[str, Any]:
        return self._do("print_unprinted")  # type: ignore[no-any-return]

    def print_report(self, day: int | None = None) -> dict[str, Any]:
        return self._do("print_report", {} if day is None else {"day": day})  # type: ignore[no-any-return]

    def open_day(self) -> dict[str, Any]:
        return self._do("open_day")  # type: ignore[no-any-return]

    def close_day(self) -> dict[str, Any]:
        return self._do("close_day")  # type: ignore[no-any-return]

    def provision(self, values: dict[str, Any]) -> dict[str, Any]:
        return self._do("provision", {"values": values})  # type: ignore[no-any-return]

    def generate_key(self, algorithm: str = "ecdsa", replace: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"algorithm": algorithm}
        if replace:
            body["replace"] = True
        return self._do("generate_key", body)  # type: ignore[no-any-return]

    def certificate_request(self) -> dict[str, Any]:
        return self._do("certificate_request")  # type: ignore[no-any-return]

    def install_certificate(self, pem: str | bytes) -> dict[str, Any]:
        text = pem.decode() if isinstance(pem, bytes) else pem
        return self._do("install_certificate", {"certificate": text})  # type: ignore[no-any-return]

    def register(self, activation_key: str) -> dict[str, Any]:
        return self._do("register", {"activation_key": activation_key})  # type: ignore[no-any-return]

    def renew_certificate(self) -> dict[str, Any]:
        return self._do("renew_certificate")  # type: ignore[no-any-return]

    def replay(self, since: int) -> dict[str, Any]:
        return self._do("replay", {"since": since})  # type: ignore[no-any-return]

    def enroll(self, public_key: Any, role: str, label: str) -> dict[str, Any]:
        """Enroll a host key (PEM, DER or key object). A new box's first operator key enrolls itself:
        `client.enroll(client_public_key, "operator", label)`, signed by that very key."""
        body = {"public_key": public_key_der(public_key), "role": role, "label": label}
        return self._do("enroll", body)  # type: ignore[no-any-return]

    def enroll_self(self, role: str = "operator", label: str = "operator") -> dict[str, Any]:
        return self.enroll(self._key.public_key(), role, label)

    def keys(self) -> dict[str, Any]:
        return self._do("keys")  # type: ignore[no-any-return]

    def revoke(self, kid: bytes | str) -> dict[str, Any]:
        if isinstance(kid, str):
            try:
                kid = bytes.fromhex(kid)
            except ValueError:
                raise FiscalError("BOX_LINK_SCHEMA", "A key ID is 32 hexadecimal digits.", "kid") from None
        return self._do("revoke", {"kid": kid})  # type: ignore[no-any-return]

    # --------------------------------------------------------------------------------------------------
    # Jobs (docs/link.md section 7)

    def _run_job(self, name: str, body: dict[str, Any], progress: Progress | None) -> dict[str, Any]:
        job = self._do(name, body)["job"]
        while True:
            state = self._do("job", {"job": job})
            if progress is not None:
                progress(state.get("done", 0), state.get("total", 0))
            if state["state"] == "failed":
                raise _refusal(state.get("error"))
            if state["state"] == "done":
                return state.get("result") or {}
            time.sleep(POLL_SECONDS)

    def audit(self, progress: Progress | None = None) -> dict[str, Any]:
        """Verify the box's whole journal; `progress(done, total)` in receipts checked."""
        return self._run_job("audit", {}, progress)

    def backup(self, progress: Progress | None = None, retain: int | None = None) -> dict[str, Any]:
        return self._run_job("backup", {} if retain is None else {"retain": retain}, progress)

    def export_journal(
        self, first: int, last: int, out_path: str | os.PathLike[str], progress: Progress | None = None
    ) -> dict[str, Any]:
        """Receipts first..last as the signed export file at `out_path` (for `fiscalbox journal verify`).
        The file arrives in chunks into OUT.part; a lost line resumes from the last offset held, and so does
        a later call for the same receipts after this one gave up (OUT.part.job names the box's job). The
        file is put in place only once its SHA-256 matches the box's. `progress(bytes received, size)`."""
        out = Path(out_path)
        part = out.with_name(out.name + ".part")
        marker = out.with_name(out.name + ".part.job")
        wanted = {"first": first, "last": last}
        job, offset = self._held_export(part, marker, wanted)
        restarted = False
        try:
            file = part.open("r+b" if job is not None else "wb")
        except OSError as error:
            raise FiscalError("BOX_FILE", f"Cannot write {part}: {error.strerror}.", "out") from None
        with file:
            file.truncate(offset)
            file.seek(offset)
            if job is None:
                job = self._start_export(marker, wanted)
            while True:
                try:
                    state = self._do("job", {"job": job, "offset": offset})
                except FiscalError as error:
                    if error.code != "BOX_LINK_NO_JOB" or restarted:
                        raise
                    restarted = True  # the box restarted and forgot the job: once more from the start
                    job = self._start_export(marker, wanted)
                    offset = 0
                    file.seek(0)
                    file.truncate()
                    continue
                if state["state"] == "failed":
                    marker.unlink(missing_ok=True)
                    raise _refusal(state.get("error"))
                data = state.get("data") or b""
                if data:
                    file.write(data)
                    file.flush()
                    offset += len(data)
                size = state.get("size")
                if progress is not None and size is not None:
                    progress(offset, size)
                elif progress is not None:
                    progress(state.get("done", 0), state.get("total", 0))
                if state["state"] == "done" and size is not None and offset >= size:
                    result = state.get("result") or {}
                    break
                if not data:
                    time.sleep(POLL_SECONDS)
        digest = hashlib.sha256(part.read_bytes()).hexdigest()
        expected = result.get("sha256")
        marker.unlink(missing_ok=True)
        if offset != size or (isinstance(expected, str) and expected.lower() != digest):
            part.unlink(missing_ok=True)
            raise FiscalError(
                "BOX_LINK_EXPORT",
                "The export file arrived damaged (its SHA-256 differs): export it again.",
                "out",
            )
        os.replace(part, out)
        return {**result, "first": first, "last": last, "file": str(out), "size": offset, "sha256": digest}

    @staticmethod
    def _held_export(part: Path, marker: Path, wanted: dict[str, int]) -> tuple[int | None, int]:
        """The job and offset an earlier call left for the same receipts, or (None, 0)."""
        try:
            held = json.loads(marker.read_text())
            if {k: held.get(k) for k in wanted} == wanted and isinstance(held.get("job"), int):
                return held["job"], part.stat().st_size
        except (OSError, ValueError, AttributeError):
            pass
        return None, 0

    def _start_export(self, marker: Path, wanted: dict[str, int]) -> int:
        job = int(self._do("export_journal", wanted)["job"])
        try:
            marker.write_text(json.dumps({**wanted, "job": job}))
        except OSError as error:
            raise FiscalError("BOX_FILE", f"Cannot write {marker}: {error.strerror}.", "out") from None
        return job


def _waited(error: FiscalError, port: str, tries: int, seconds: float) -> FiscalError:
    """A timeout after retries says how long it really waited in all, not one try's wait."""
    if error.code != "BOX_LINK_TIMEOUT" or tries == 1:
        return error
    return FiscalError(
        error.code,
        f"The box did not answer on {port} in {round(seconds, 1):g} s ({tries} tries): "
        "is it plugged in and on?",
        error.field,
    )


def _refusal(error: Any) -> FiscalError:
    if not isinstance(error, dict):
        return FiscalError("BOX_LINK_FRAME", "The box refused without saying why.")
    field = error.get("field")
    return FiscalError(
        str(error.get("code")), str(error.get("message")), field if isinstance(field, str) else None
    )
