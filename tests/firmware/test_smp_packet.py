"""The box's SMP framer against the public `smp` package (smp.packet, smp.header), byte for byte, in CPython.

tests/core/test_smp.py runs the same framer under MicroPython from vectors; this checks that those vectors are
what the package writes, and that both read each other's packets for many frame sizes.
"""

import json
import random
from pathlib import Path

import cbor2
from smp import packet
from smp.header import OP, Flag, Header, Version

from firmware.core import smp

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "smp.json").read_text())


def _smp_decode(data: bytes) -> bytes:
    decoder = packet.decode()
    next(decoder)
    for line in data.splitlines(keepends=True):
        try:
            decoder.send(line)
        except StopIteration as done:
            return bytes(done.value)
    raise AssertionError("the smp package found no whole packet")


def test_the_vectors_are_what_the_smp_package_writes() -> None:
    for case in VECTORS["frames"]:
        frame = bytes.fromhex(case["frame"])
        assert b"".join(packet.encode(frame, line_length=128)).hex() == case["packet"], case["name"]
        assert b"".join(packet.encode(frame)).hex() == case["packet_120"], case["name"]
        if "header" in case:
            parsed = Header.loads(frame[: Header.SIZE])
            assert [
                parsed.version,
                parsed.op,
                parsed.flags,
                parsed.length,
                parsed.group_id,
                parsed.sequence,
                parsed.command_id,
            ] == case["header"], case["name"]


def test_encode_and_decode_agree_with_the_smp_package_for_every_size() -> None:
    rng = random.Random(11)
    sizes = list(range(0, 300)) + [rng.randrange(300, smp.MAX_FRAME + 1) for _ in range(40)] + [smp.MAX_FRAME]
    for size in sizes:
        frame = rng.randbytes(size)
        ours = smp.encode(frame)
        assert ours == b"".join(packet.encode(frame, line_length=128)), size
        assert _smp_decode(ours) == frame, size
        assert smp.Decoder().feed(b"".join(packet.encode(frame))) == [frame], size


def test_headers_agree_with_the_smp_package() -> None:
    rng = random.Random(12)
    for _ in range(500):
        op, group, seq, cmd = rng.randrange(4), rng.randrange(65536), rng.randrange(256), rng.randrange(256)
        body = cbor2.dumps({"d": "x" * rng.randrange(40)})
        theirs = Header(
            op=OP(op),
            version=Version.V2,
            flags=Flag(0),
            length=len(body),
            group_id=group,
            sequence=seq,
            command_id=cmd,
        )
        assert smp.header(op, group, seq, cmd, len(body)) == bytes(theirs)
        assert smp.parse_header(bytes(theirs) + body) == (1, op, 0, len(body), group, seq, cmd)
