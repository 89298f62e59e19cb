"""Helpers of the link's tests: a small real Device over a real Box, a host that signs requests, and what a
journal holds as one digest (a refusal must leave it unchanged)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import select
import struct
import termios
import threading
import tty
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from firmware import cose
from firmware.box import Box
from firmware.core import smp
from firmware.core.errors import FiscalError
from firmware.journal import Journal
from firmware.link import BY_ID, Link


def journal_digest(journal: Journal) -> str:
    """SHA-256 over every row of every table, in order: equal digests mean nothing was written."""
    digest = hashlib.sha256()
    tables = journal.db.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
    for (table,) in list(tables):
        digest.update(table.encode())
        for row in journal.db.execute(f"SELECT * FROM {table} ORDER BY 1"):
            digest.update(repr(row).encode())
    return digest.hexdigest()


class StandIn:
    """The Device methods the link's tests call, over a real Box (the service's Device is tested on its
    own); `hold` makes audit wait, so a test sees a job running."""

    def __init__(self, box: Box, work: Path) -> None:
        self.box = box
        self.work = work
        self.registered = False
        self.hold: threading.Event | None = None
        self.calls: list[str] = []

    @property
    def keys(self) -> Any:
        return self.box.keys

    @property
    def ever_registered(self) -> bool:
        return self.registered

    def sign_answer(self, payload: bytes) -> tuple[int, bytes] | None:
        if self.box.keys.algorithm is None:
            return None
        return cose.ES256, cose.es256_raw(self.box.keys.sign(payload))

    def status(self) -> dict[str, Any]:
        return self.box.status()

    def receipt(self, global_no: int) -> dict[str, Any]:
        return self.box.receipt(global_no)

    def issue(self, sale: dict[str, Any], request_id: str | None = None, host: str = "") -> dict[str, Any]:
        self.calls.append("issue")
        return self.box.issue(sale, request_id, host)

    def open_day(self) -> dict[str, Any]:
        return self.box.open_day()

    def print_unprinted(self) -> dict[str, Any]:
        return self.box.print_unprinted()

    def close_day(self) -> dict[str, Any]:
        return self.box.close_day()

    def x_report(self) -> dict[str, Any]:
        raise ZeroDivisionError("a bug in the device")  # what a Device bug looks like on the link

    def audit(self, progress: Any) -> dict[str, Any]:
        if self.hold is not None:
            self.hold.wait()
        return self.box.audit(progress)

    def backup(self, progress: Any, retain: int | None = None) -> dict[str, Any]:
        return self.box.backup(self.work / "backups", retain)

    def export_journal(self, first: int, last: int, dest: str, progress: Any) -> dict[str, Any]:
        result = self.box.export_journal(first, last, dest)
        progress(last - first + 1, last - first + 1)
        return result


def public_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Host:
    """A host with its own P-256 key, speaking frames to a Link directly (no serial line)."""

    def __init__(self, link: Link, key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self.link = link
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        self.kid = cose.key_id(self.key)
        self.sequence = 0

    @property
    def der(self) -> bytes:
        return public_der(self.key)

    def frame(self, group: int, command: int, body: Any, op: int | None = None) -> bytes:
        """An SMP frame; `op` defaults to the command's own."""
        data = body if isinstance(body, bytes) else cbor2.dumps(body)
        self.sequence = (self.sequence + 1) % 256
        op = BY_ID[(group, command)].op if op is None else op
        return smp.header(op, group, self.sequence, command, len(data)) + data

    def signed(
        self,
        name: str,
        body: dict[str, Any],
        rid: str = "rid-1",
        nonce: bytes | None = None,
        gc: tuple[int, int] | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        """The `req` bytes of a signed request for command `name`."""
        group, command = command_of(name)
        g, c = gc or (group, command)
        payload = {
            "g": g,
            "c": c,
            "nonce": self.link.nonce if nonce is None else nonce,
            "rid": rid,
            "body": body,
        }
        alg, sign = cose.signer(key or self.key)
        return cose.sign1(cbor2.dumps(payload), sign, alg, self.kid)

    def send(self, group: int, command: int, body: Any, op: int | None = None) -> dict[str, Any]:
        answer = self.link.handle(self.frame(group, command, body, op))
        assert answer is not None
        version, answer_op, _flags, length, g, _sequence, c = smp.parse_header(answer)
        assert (g, c, length) == (group, command, len(answer) - smp.HEADER_SIZE)
        assert answer_op == (BY_ID[(group, command)].op if op is None else op) + 1 and version == 1
        return dict(cbor2.loads(answer[smp.HEADER_SIZE :]))

    def call(self, name: str, body: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
        """Sign and send `name`; the answer's SMP body (a write's cose payload decoded in `payload`)."""
        group, command = command_of(name)
        answer = self.send(group, command, {"req": self.signed(name, body or {}, **options)})
        if "cose" in answer:
            message = cose.decode1(answer["cose"])
            cose.verify1(message, self.link.device.keys.public_key_pem())
            answer["payload"] = cbor2.loads(message.payload)
        return answer

    def result(self, name: str, body: dict[str, Any] | None = None, **options: Any) -> Any:
        """What `name` answered, or the FiscalError it was refused with, raised."""
        answer = self.call(name, body, **options)
        outcome = answer.get("payload") or answer.get("answer") or answer
        if "error" in outcome:
            error = outcome["error"]
            raise FiscalError(error["code"], error["message"], error.get("field"))
        return outcome["ok"]


def command_of(name: str) -> tuple[int, int]:
    return next(key for key, command in BY_ID.items() if command.name == name)


class PtyPort:
    """The master side of a pseudo-terminal as the pyserial-like port Link.serve reads (a pty master has
    no path for pyserial to open; the host opens the slave by its path)."""

    def __init__(self, fd: int, timeout: float = 0.05) -> None:
        self.fd = fd
        self.timeout = timeout

    @property
    def in_waiting(self) -> int:
        return int(struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"))[0])

    def read(self, size: int) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        return os.read(self.fd, size) if ready else b""

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        return len(data)

    def flush(self) -> None:
        pass


class Served:
    """A Link serving the master side of a fresh pty pair in a thread; the host side is `slave_path`
    (raw, so the line discipline neither echoes nor rewrites a byte)."""

    def __init__(self, link: Link) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.slave_path = os.ttyname(self.slave)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=link.serve, args=(PtyPort(self.master), self.stop), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        os.close(self.slave)
        os.close(self.master)
