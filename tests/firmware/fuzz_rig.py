"""The link's fuzzer: bad input of every kind the issue names, fed to a real Device behind a real Link,
through the framer in-process or over a pty to the running serve loop, counting how each kind was answered.

Shared by tests/firmware/test_link_fuzz.py (100,000 inputs in `make test`) and bench/link_fuzz.py (a million).
After every input a good echo frame follows on the same line, so each input is also a resync check; the
journal's tables and the host keys file are digested before and after: the fuzz must change neither.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import random
import select
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
from box_rig import StepClock, sale
from link_rig import Host, Served, command_of, journal_digest
from service_rig import ENV, make_box, write_config

from firmware import config as configuration
from firmware import cose
from firmware.core import smp
from firmware.hosts import HostKeys
from firmware.link import COMMANDS, Link
from firmware.service import Device

AT = "2026-11-22T08:00:00"
DROPPED = "dropped"  # no frame came out of the framer
NO_ANSWER = "no answer"  # a frame came out; the link answers nothing (an answer sent to it, too short)
UNANSWERED = "dropped or no answer"  # over the pty the two look the same: nothing comes back
_B64 = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_NOT_B64 = bytes(b for b in range(256) if b not in _B64 and b not in (0x0A, 0x06, 0x04))
_FIELDS = ("global_no", "limit", "day", "sale", "values", "algorithm", "replace", "certificate",
           "activation_key", "retain", "first", "last", "since", "job", "offset", "public_key", "role",
           "label", "kid")
# What each field of docs/link.md section 3 holds, and the fields of each command: the fuzzer's own judgement
# of a body, independent of link.cddl.
_WHOLE = ("global_no", "limit", "day", "retain", "first", "last", "since", "job", "offset")
_KINDS: dict[str, Any] = {
    **dict.fromkeys(_WHOLE, "whole"),
    "sale": "map", "values": "map", "algorithm": ("ecdsa", "rsa"), "replace": "bool",
    "certificate": "text", "activation_key": "text", "label": "text", "public_key": "bytes",
    "kid": "bytes16", "role": ("pos", "operator"),
}  # fmt: skip
_BODIES: dict[str, set[str]] = {
    "receipt": {"global_no"}, "outbox": {"limit"}, "z_report": {"day"}, "issue": {"sale"},
    "reprint": {"global_no"}, "print_report": {"day"}, "provision": {"values"},
    "generate_key": {"algorithm", "replace"}, "install_certificate": {"certificate"},
    "register": {"activation_key"}, "backup": {"retain"}, "export_journal": {"first", "last"},
    "replay": {"since"}, "job": {"job", "offset"}, "enroll": {"public_key", "role", "label"},
    "revoke": {"kid"},
}  # fmt: skip


_FITTING: dict[Any, Any] = {
    "whole": 1, "map": {}, "bool": True, "text": "x", "bytes": b"\x30", "bytes16": bytes(16),
    ("ecdsa", "rsa"): "ecdsa", ("pos", "operator"): "pos",
}  # fmt: skip


def _fits(kind: Any, value: Any) -> bool:
    """Whether `value` is of the kind a field wants (so a body made only of fitting values may be good)."""
    if isinstance(kind, tuple):
        return type(value) is str and value in kind
    return {
        "whole": type(value) is int and 0 <= value < 2**63,
        "map": type(value) is dict,
        "bool": type(value) is bool,
        "text": type(value) is str,
        "bytes": type(value) is bytes,
        "bytes16": type(value) is bytes and len(value) == 16,
    }[kind]


_ODD_VALUES: tuple[Any, ...] = (
    10**12, -1, 2**64, 2**63, 2**70, "x" * 70, b"\x00" * 3, b"\x00" * 16, [], {}, None, True, 1.5,
    {"a": [1]}, {"x": 1}, {1: 2}, [[[]]], ["ecdsa"], "", -(2**63), "rsa", b"ecdsa", "operator", [b"pos"],
)  # fmt: skip


class _Tracebacks(logging.Handler):
    """Counts the log records that carry a traceback: the link's last guard caught a bug."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


class Target:
    """A registered box with day 1 open and two sales, as the service runs it: Device, host keys, Link."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        make_box(root)
        clock = StepClock()
        clock.advance(3600)  # after make_box's sales
        self.device = Device(configuration.load(write_config(root), ENV), ENV, clock)
        self.hosts_path = root / "hosts.json"
        self.tracebacks = _Tracebacks()
        self.log = logging.getLogger("fiscalbox.fuzz.%d" % id(self))
        self.log.propagate = False
        self.log.setLevel(logging.WARNING)  # the link's one line a request is not wanted 200,000 times
        self.log.addHandler(self.tracebacks)
        (root / "work").mkdir(exist_ok=True)
        self.link = Link(self.device, HostKeys(self.hosts_path), self.log, work_dir=root / "work")
        self.operator = Host(self.link)
        self.pos = Host(self.link)
        self.stranger = Host(self.link)  # never enrolled
        self.link.hosts.enroll(self.operator.der, "operator", "office", AT)
        self.link.hosts.enroll(self.pos.der, "pos", "till 1", AT)
        # One real sale through the link: its request is replayed (stale nonce) and retried (same rid).
        self.issued_sale = sale("2.30")
        self.stale_issue = self.pos.signed("issue", {"sale": self.issued_sale}, rid="fuzz-sale-1")
        answer = self.pos.send(*command_of("issue"), {"req": self.stale_issue})
        assert "cose" in answer, answer

    def state(self) -> str:
        """The journal's every row and the host keys file, as one digest."""
        box = self.device.box
        assert box is not None
        hosts = self.hosts_path.read_bytes() if self.hosts_path.exists() else b""
        return hashlib.sha256(journal_digest(box.journal).encode() + hosts).hexdigest()

    def close(self) -> None:
        self.link.join_jobs()
        self.link.close()
        self.device.close()


# -- the kinds of bad input --------------------------------------------------------------------------------


def _packet(raw: bytes) -> bytes:
    """`raw` (length, frame, CRC as given) as base64 lines with their markers."""
    text = base64.b64encode(raw)
    out = []
    for at in range(0, len(text), smp.LINE_CHARS):
        out.append((smp.START if at == 0 else smp.CONTINUE) + text[at : at + smp.LINE_CHARS] + b"\n")
    return b"".join(out)


def _raw(frame: bytes, length: int | None = None, crc: int | None = None) -> bytes:
    length = len(frame) + 2 if length is None else length
    crc = smp.crc16_xmodem(frame) if crc is None else crc
    return length.to_bytes(2, "big") + frame + crc.to_bytes(2, "big")


def _frame(group: int, command: int, body: Any, op: int, sequence: int = 1) -> bytes:
    data = body if isinstance(body, bytes) else cbor2.dumps(body)
    return smp.header(op, group, sequence, command, len(data)) + data


class Fuzzer:
    """Makes inputs (bytes for the line) of each kind, seeded, against one Target."""

    def __init__(self, target: Target, seed: int) -> None:
        self.t = target
        self.rng = random.Random(seed)
        self.kinds: dict[str, Callable[[], bytes]] = {
            "truncated": self.truncated,
            "bad CRC": self.bad_crc,
            "bad base64": self.bad_base64,
            "oversized length": self.oversized,
            "wrong header": self.wrong_header,
            "garbage CBOR": self.garbage_cbor,
            "deeply nested CBOR": self.deep_cbor,
            "huge map": self.huge_map,
            "right CBOR, wrong shape": self.wrong_shape,
            "bad signature": self.bad_signature,
            "replay": self.replay,
            "signed, wrong body": self.wrong_body,
            "line noise": self.line_noise,
            "zip bomb": self.zip_bomb,
            "truncated deflate": self.truncated_deflate,
            "garbage deflate": self.garbage_deflate,
            "compressed, not COSE": self.compressed_not_cose,
        }
        # Streams that inflate far beyond a frame (16 KB) but fit in one: zeros, a repeated request, text.
        self.bombs = [
            cose.deflate(bytes(size)) for size in (smp.MAX_FRAME + 1, 100_000, 1_000_000, 12_000_000)
        ] + [cose.deflate(b"\xd2\x84" + b"A" * 5_000_000), cose.deflate(self.signed_issue() * 400)]

    # frames a host could send
    def good_frame(self) -> bytes:
        rng = self.rng
        choice = rng.randrange(4)
        if choice == 0:
            return _frame(0, 0, {"d": "x" * rng.randrange(400)}, smp.OP_WRITE, rng.randrange(256))
        if choice == 1:
            return _frame(64, 0, {}, smp.OP_READ, rng.randrange(256))
        if choice == 2:
            return _frame(0, 6, {}, smp.OP_READ)
        return _frame(64, 1, {"req": self.signature_bytes(self.t.pos, "status", {})}, smp.OP_READ)

    def signature_bytes(self, host: Host, name: str, body: dict[str, Any], **options: Any) -> bytes:
        return host.signed(name, body, rid="fuzz-%d" % self.rng.randrange(10**6), **options)

    def truncated(self) -> bytes:
        packet = smp.encode(self.good_frame())
        return packet[: self.rng.randrange(1, len(packet) - 1)]

    def bad_crc(self) -> bytes:
        frame = self.good_frame()
        return _packet(_raw(frame, crc=smp.crc16_xmodem(frame) ^ self.rng.randrange(1, 65536)))

    def bad_base64(self) -> bytes:
        rng = self.rng
        packet = bytearray(smp.encode(self.good_frame()))
        at = rng.choice([i for i, byte in enumerate(packet) if byte in _B64 and byte != ord("=")])
        how = rng.randrange(3)
        if how == 0:
            packet[at] = rng.choice(_NOT_B64)  # outside the alphabet
        elif how == 1:
            del packet[at]  # a line no longer a multiple of four
        else:
            packet[at] = ord("=")  # padding inside the data (or one byte short, when it lands at the end)
        return bytes(packet)

    def oversized(self) -> bytes:
        rng = self.rng
        frame = rng.randbytes(rng.randrange(8, 200))
        length = rng.randrange(smp.MAX_FRAME + 3, 65536)
        return _packet(_raw(frame, length=length)) + b"".join(
            smp.CONTINUE + base64.b64encode(rng.randbytes(93)) + b"\n" for _ in range(rng.randrange(4))
        )

    def wrong_header(self) -> bytes:
        rng = self.rng
        how = rng.randrange(6)
        body = cbor2.dumps(rng.choice([{}, {"d": "x"}, {"req": b"\xd2"}, {"nonce": b""}]))
        if how == 0:
            return smp.encode(rng.randbytes(rng.randrange(0, smp.HEADER_SIZE)))  # shorter than a header
        group = rng.choice([0, 1, 2, 8, 9, 63, 64, 65, 66, 255, rng.randrange(65536)])
        command = rng.randrange(256) if how == 1 else rng.randrange(30)
        op = rng.randrange(8) if how == 2 else rng.choice([smp.OP_READ, smp.OP_WRITE])
        length = len(body) if how != 3 else rng.choice([0, len(body) + 1, 65535, rng.randrange(65536)])
        version = 1 if how != 4 else rng.choice([0, 2, 3])
        flags = 0 if how != 5 else rng.randrange(1, 256)
        head = smp.header(op, group, rng.randrange(256), command, length, flags, version)
        head = bytes([head[0] | (rng.randrange(8) << 5 if how == 4 else 0)]) + head[1:]
        return smp.encode(head + body)

    def _command(self) -> Any:
        return self.rng.choice(COMMANDS)

    def garbage_cbor(self) -> bytes:
        rng = self.rng
        command = self._command()
        body = rng.randbytes(rng.randrange(1, 300))
        if rng.randrange(2):
            body = bytes([0xA1, 0x63]) + b"req" + body  # a map that starts well
        return smp.encode(_frame(command.group, command.id, body, command.op))

    def _nested(self, depth: int) -> bytes:
        rng = self.rng
        opener = rng.choice([b"\x81", b"\xa1\x00", b"\x9f", b"\xbf\x00", b"\xd8\x18\x81"])
        return opener * depth + b"\x00" + (b"\xff" * depth if opener in (b"\x9f",) else b"")

    def deep_cbor(self) -> bytes:
        rng = self.rng
        depth = rng.choice([33, 100, 401, 1000, rng.randrange(2, 3000)])
        nested = self._nested(depth)
        where = rng.randrange(4)
        command = self._command()
        if where == 0:
            body = nested  # the SMP body itself
        elif where == 1:
            body = cbor2.dumps({"req": nested})  # the COSE bytes
        elif where == 2:
            inner = b"\xd2\x84" + cbor2.dumps(cbor2.dumps({1: -7, 4: self.t.pos.kid})) + nested
            body = cbor2.dumps({"req": inner})  # inside the COSE array
        else:
            payload = b"\xa5agm@bcm@enoncePbodyx" + nested  # a payload map that goes deep
            alg, sign = cose.signer(self.t.pos.key)
            body = cbor2.dumps({"req": cose.sign1(payload, sign, alg, self.t.pos.kid)})
        return smp.encode(_frame(command.group, command.id, body, command.op))

    def huge_map(self) -> bytes:
        rng = self.rng
        command = self._command()
        how = rng.randrange(4)
        if how == 0:
            count = rng.randrange(100, 1500)
            body = cbor2.dumps({"k%d" % n: n for n in range(count)})  # big and flat
        elif how == 1:
            body = bytes([0xBB]) + rng.randbytes(8) + b"\x00\x00"  # claims up to 2**64 entries
        elif how == 2:
            body = bytes([0xBA]) + (0xFFFFFFFF).to_bytes(4, "big") + b"\x61a\x00" * 50
        else:
            nonce = self.t.link.nonce
            big = {"k%d" % n: "v" for n in range(rng.randrange(100, 900))}
            request = self.signature_bytes(self.t.pos, "issue", {"sale": big}, nonce=nonce)
            if rng.randrange(2):
                request = request[:-1] + bytes([request[-1] ^ 1])
            return smp.encode(_frame(64, 6, {"req": request}, smp.OP_WRITE))
        return smp.encode(_frame(command.group, command.id, body, command.op))

    def wrong_shape(self) -> bytes:
        rng = self.rng
        pos = self.t.pos
        alg, sign = cose.signer(pos.key)
        good_payload = {"g": 64, "c": 1, "nonce": self.t.link.nonce, "rid": "r", "body": {}}
        shapes: list[Any] = [
            {"req": rng.choice([5, "text", None, [], {}, True, -1.5])},
            {"req": rng.randbytes(rng.randrange(60))},
            {"req": cbor2.dumps([1, 2, 3, 4])},
            {"req": cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"", b""]))},
            {"req": cbor2.dumps(cbor2.CBORTag(98, [b"", {}, b"", []]))},
            {"req": cose.sign1(cbor2.dumps([1, 2]), sign, alg, pos.kid)},  # payload not a map
            {"req": cose.sign1(b"\xff", sign, alg, pos.kid)},  # payload not CBOR
            {"req": cose.sign1(cbor2.dumps({**good_payload, "g": "64"}), sign, alg, pos.kid)},
            {"req": cose.sign1(cbor2.dumps({"g": 64, "c": 1}), sign, alg, pos.kid)},
            {"reqs": b"\xd2"},
            {"req": b"\xd2", "extra": 1},
            {"d": rng.randrange(100)},
            [1, 2, 3],
            "a text",
            {1: 2},
        ]
        body = rng.choice(shapes)
        command = rng.choice([c for c in COMMANDS if c.group in (64, 65) and c.name != "nonce"])
        if rng.randrange(5) == 0:
            nonce_body = rng.choice([{"x": 1}, {"req": b""}])
            return smp.encode(_frame(64, 0, nonce_body, smp.OP_READ))
        if rng.randrange(5) == 0:
            echo_body = rng.choice([{"d": 5}, {"d": "x", "e": 1}, {}])
            return smp.encode(_frame(0, 0, echo_body, smp.OP_WRITE))
        return smp.encode(_frame(command.group, command.id, body, command.op))

    def bad_signature(self) -> bytes:
        rng = self.rng
        t = self.t
        command = rng.choice([c for c in COMMANDS if c.group in (64, 65) and c.name != "nonce"])
        body: dict[str, Any] = rng.choice([{}, {"global_no": 1}, {"sale": sale()}, {"day": 1}])
        how = rng.randrange(5)
        if how == 4:
            request = self.signature_bytes(t.stranger, command.name, body)  # a key nobody enrolled
        else:
            host = rng.choice([t.pos, t.operator])
            request = self.signature_bytes(host, command.name, body)
            parts = list(cbor2.loads(request).value)
            signature = bytearray(parts[3])
            if how == 0:
                signature[rng.randrange(64)] ^= 1 << rng.randrange(8)
            elif how == 1:
                signature = bytearray(rng.randbytes(64))
            elif how == 2:
                signature = bytearray(signature[: rng.randrange(64)])
            else:
                parts[2] = parts[2][:-1] + bytes([parts[2][-1] ^ 1])  # the payload changed after signing
            parts[3] = bytes(signature)
            request = cbor2.dumps(cbor2.CBORTag(18, parts))
        return smp.encode(_frame(command.group, command.id, {"req": request}, command.op))

    def replay(self) -> bytes:
        rng = self.rng
        t = self.t
        how = rng.randrange(6)
        if how == 0:  # the sale already issued, its request sent again as it was: a stale nonce
            return smp.encode(_frame(64, 6, {"req": t.stale_issue}, smp.OP_WRITE))
        if how == 1:  # a request for one command sent as another
            request = self.signature_bytes(t.pos, "status", {})
            other = rng.choice([c for c in COMMANDS if c.group == 64 and c.id not in (0, 1)])
            return smp.encode(_frame(64, other.id, {"req": request}, other.op))
        if how == 2:  # a POS key asking what only an operator may
            name = rng.choice(["open_day", "close_day", "backup", "provision", "register", "list", "revoke"])
            group, command = command_of(name)
            op = next(c.op for c in COMMANDS if c.name == name)
            request = self.signature_bytes(t.pos, name, {})
            return smp.encode(_frame(group, command, {"req": request}, op))
        if how == 3:  # a nonce never issued
            request = self.signature_bytes(t.pos, "status", {}, nonce=rng.randbytes(16))
            return smp.encode(_frame(64, 1, {"req": request}, smp.OP_READ))
        if how == 4:  # the POS retrying the sale issued at setup, same rid, current nonce: the same receipt
            request = t.pos.signed("issue", {"sale": t.issued_sale}, rid="fuzz-sale-1")
            return smp.encode(_frame(64, 6, {"req": request}, smp.OP_WRITE))
        # a well-signed request whose body is not the command's: refused by the CDDL
        name = rng.choice(["issue", "receipt", "reprint", "outbox", "open_day"])
        group, command = command_of(name)
        op = next(c.op for c in COMMANDS if c.name == name)
        body: dict[str, Any] = rng.choice(
            [{"sale": []}, {"global_no": "7"}, {"limit": -1}, {"x": 1}, {"sale": {1: 2}}]
        )
        host = t.operator if name == "open_day" else t.pos
        return smp.encode(_frame(group, command, {"req": self.signature_bytes(host, name, body)}, op))

    def wrong_body(self) -> bytes:
        """A request well signed by an operator, with the current nonce, whose body is wrong by construction
        (judged here, not by link_schema): every field of the command with a fitting value but one that does
        not fit, or an extra key. Anything but BOX_LINK_SCHEMA in answer is a hole in the CDDL check."""
        rng = self.rng
        command = rng.choice([c for c in COMMANDS if c.group in (64, 65) and c.name != "nonce"])
        body: dict[str, Any] = {key: _FITTING[_KINDS[key]] for key in sorted(_BODIES.get(command.name, ()))}
        if body and rng.randrange(5):
            key = rng.choice(sorted(body))
            body[key] = rng.choice([v for v in _ODD_VALUES if not _fits(_KINDS[key], v)])
        else:
            body[rng.choice([f for f in _FIELDS if f not in body] + ["x", "@"])] = rng.choice(_ODD_VALUES)
        host = self.t.stranger if command.name == "enroll" and rng.randrange(4) == 0 else self.t.operator
        request = self.signature_bytes(host, command.name, body)
        return smp.encode(_frame(command.group, command.id, {"req": request}, command.op))

    # compressed bodies (docs/link.md section 4): each must be BOX_LINK_FRAME before anything is looked at
    def signed_issue(self) -> bytes:
        return self.signature_bytes(self.t.pos, "issue", {"sale": sale()})

    def _zreq(self, data: bytes) -> bytes:
        command = self.rng.choice([c for c in COMMANDS if c.group in (64, 65) and c.name != "nonce"])
        return smp.encode(_frame(command.group, command.id, {"zreq": data}, command.op))

    def zip_bomb(self) -> bytes:
        return self._zreq(self.rng.choice(self.bombs))

    def truncated_deflate(self) -> bytes:
        rng = self.rng
        host = rng.choice([self.t.pos, self.t.operator])
        name = rng.choice(["issue", "status", "open_day"])
        body: dict[str, Any] = {"sale": sale()} if name == "issue" else {}
        packed = cose.deflate(self.signature_bytes(host, name, body))
        group, command = command_of(name)
        op = next(c.op for c in COMMANDS if c.name == name)
        cut = packed[: rng.randrange(len(packed))]  # a stream without its end, down to nothing at all
        return smp.encode(_frame(group, command, {"zreq": cut}, op))

    def garbage_deflate(self) -> bytes:
        rng = self.rng
        how = rng.randrange(3)
        if how == 0:
            return self._zreq(rng.randbytes(rng.randrange(1, 400)))
        packed = bytearray(cose.deflate(self.signed_issue()))
        if how == 1:
            packed[0] |= 0x06  # block type 3: reserved, never valid DEFLATE
        else:
            packed += rng.randbytes(rng.randrange(1, 20))  # bytes after the stream's end
        return self._zreq(bytes(packed))

    def compressed_not_cose(self) -> bytes:
        rng = self.rng
        t = self.t
        choice = rng.randrange(5)
        if choice == 0:
            inner = rng.randbytes(rng.randrange(0, 300))  # not CBOR at all
        elif choice == 1:
            inner = cbor2.dumps({"req": self.signed_issue()})  # the plain body, compressed whole
        elif choice == 2:
            inner = cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"\xa0"]))  # three items, not four
        elif choice == 3:
            inner = cbor2.dumps(list(cbor2.loads(self.signed_issue()).value))  # untagged
        else:
            inner = cose.sign1(cbor2.dumps([1, 2]), cose.signer(t.pos.key)[1], cose.ES256, t.pos.kid)
        return self._zreq(cose.deflate(inner))

    def line_noise(self) -> bytes:
        rng = self.rng
        how = rng.randrange(3)
        if how == 0:
            return rng.randbytes(rng.randrange(1, 600))
        if how == 1:
            return b"[  12.345678] usb 1-1: new device\r\n" * rng.randrange(1, 5)
        return smp.CONTINUE + base64.b64encode(rng.randbytes(60)) + b"\n"  # a stray continuation line


# -- answers -----------------------------------------------------------------------------------------------


def outcome(answer: bytes | None) -> str:
    """How the link answered one frame: an error code, SMP rc N, ok, or no answer."""
    if answer is None:
        return NO_ANSWER
    body = cbor2.loads(answer[smp.HEADER_SIZE :])
    if "err" in body:
        return "SMP rc %d" % body["err"]["rc"]
    if "rc" in body:
        return "SMP rc %d" % body["rc"]
    if "zcose" in body:
        body = cbor2.loads(cose.decode1(cose.inflate(body["zcose"], 1 << 20)).payload)
    elif "zok" in body:
        body = {"ok": cbor2.loads(cose.inflate(body["zok"], 1 << 20))}
    if "cose" in body:
        body = cbor2.loads(cose.decode1(body["cose"]).payload)
    elif "answer" in body:
        body = body["answer"]
    if "error" in body:
        return str(body["error"]["code"])
    if "ok" in body and isinstance(body["ok"], dict) and body["ok"].get("repeated"):
        return "ok (repeated)"
    return "ok"


class Report:
    """Per kind: inputs, and how they were answered."""

    def __init__(self) -> None:
        self.inputs: Counter[str] = Counter()
        self.answers: dict[str, Counter[str]] = {}
        self.crashes: list[str] = []
        self.resync_failures: list[str] = []
        self.resynced = 0
        self.seconds = 0.0

    def add(self, kind: str, outcomes: list[str], nothing: str = DROPPED) -> None:
        """One input of `kind` and what came back for it; `nothing` names the case of no answer at all."""
        self.inputs[kind] += 1
        counter = self.answers.setdefault(kind, Counter())
        for name in outcomes or [nothing]:
            counter[name] += 1

    @property
    def total(self) -> int:
        return sum(self.inputs.values())

    def table(self, title: str) -> str:
        lines = [title, "| kind | inputs | answered |", "|---|---|---|"]
        for kind in sorted(self.inputs, key=lambda k: -self.inputs[k]):
            answered = ", ".join("%s %d" % item for item in self.answers[kind].most_common())
            lines.append("| %s | %d | %s |" % (kind, self.inputs[kind], answered))
        lines.append(
            "| all | %d | crashes %d, resynced after %d of %d |"
            % (self.total, len(self.crashes), self.resynced, self.total)
        )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.total,
            "crashes": len(self.crashes),
            "crash_samples": self.crashes[:5],
            "resynced": self.resynced,
            "resync_failures": self.resync_failures[:5],
            "seconds": round(self.seconds, 2),
            "kinds": {k: {"inputs": self.inputs[k], "answered": dict(self.answers[k])} for k in self.inputs},
        }


def _probe(sequence: int) -> tuple[bytes, dict[str, str]]:
    text = "resync %d" % sequence
    return smp.encode(_frame(0, 0, {"d": text}, smp.OP_WRITE, sequence % 256)), {"r": text}


def fuzz_in_process(
    target: Target, count: int, seed: int, progress: Callable[[int], None] | None = None
) -> Report:
    """`count` inputs through one Decoder and Link.handle, each followed by a good echo frame."""
    fuzzer = Fuzzer(target, seed)
    kinds = list(fuzzer.kinds.items())
    report = Report()
    decoder = smp.Decoder()
    started = time.perf_counter()
    for n in range(count):
        kind, make = kinds[n % len(kinds)]
        data = make()
        probe, echoed = _probe(n)
        outcomes: list[str] = []
        try:
            for frame in decoder.feed(data):
                outcomes.append(outcome(target.link.handle(frame)))
            probes = decoder.feed(probe)
            answers = [target.link.handle(frame) for frame in probes]
        except Exception as error:  # what must never happen: counted, reported, and the run goes on
            report.crashes.append("%s: %s: %r" % (kind, type(error).__name__, error))
            decoder = smp.Decoder()
            continue
        report.add(kind, outcomes)
        echo = answers[0] if len(answers) == 1 else None
        if echo is not None and cbor2.loads(echo[smp.HEADER_SIZE :]) == echoed:
            report.resynced += 1
        else:
            report.resync_failures.append("after %s: %r" % (kind, data[:80]))
        if progress is not None and (n + 1) % 10_000 == 0:
            progress(n + 1)
    report.seconds = time.perf_counter() - started
    report.crashes += ["traceback in the log: %s" % r.getMessage() for r in target.tracebacks.records]
    return report


def _read_until(fd: int, decoder: smp.Decoder, echoed: dict[str, str], patience: float) -> list[bytes] | None:
    """Frames from the host side of the pty up to and including the probe's echo; None if it never comes."""
    frames: list[bytes] = []
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        for frame in decoder.feed(os.read(fd, 65536)):
            frames.append(frame)
            if cbor2.loads(frame[smp.HEADER_SIZE :]) == echoed:
                return frames
    return None


def fuzz_over_pty(target: Target, count: int, seed: int, patience: float = 60.0) -> Report:
    """`count` inputs written to a pty that Link.serve reads in its thread, each followed by an echo the
    loop must answer; the answers read back on the host side."""
    fuzzer = Fuzzer(target, seed)
    kinds = list(fuzzer.kinds.items())
    report = Report()
    served = Served(target.link)
    decoder = smp.Decoder()
    lock = threading.Lock()
    started = time.perf_counter()
    try:
        for n in range(count):
            kind, make = kinds[n % len(kinds)]
            with lock:
                data = make()
            probe, echoed = _probe(n)
            os.write(served.slave, data)
            os.write(served.slave, probe)
            frames = _read_until(served.slave, decoder, echoed, patience)
            if frames is None:
                report.resync_failures.append("after %s: no echo" % kind)
                break
            report.add(kind, [outcome(frame) for frame in frames[:-1]], UNANSWERED)
            report.resynced += 1
    finally:
        served.close()
    report.seconds = time.perf_counter() - started
    report.crashes += ["traceback in the log: %s" % r.getMessage() for r in target.tracebacks.records]
    return report
