"""The virtual box's cable: two pseudo-terminals joined, opened with pyserial as a host and a box would."""

from __future__ import annotations

from collections.abc import Iterator

import cbor2
import pytest
import serial

from firmware.core import smp
from sim.box import NullModem


@pytest.fixture
def modem() -> Iterator[NullModem]:
    cable = NullModem()
    yield cable
    cable.close()


def frame(op: int, group: int, command: int, sequence: int, body: dict[str, object]) -> bytes:
    payload = cbor2.dumps(body)
    return smp.header(op, group, sequence, command, len(payload)) + payload


def frames_read(port: serial.Serial, count: int) -> list[bytes]:
    decoder, got = smp.Decoder(), []
    for _ in range(200):
        got += decoder.feed(port.read(port.in_waiting or 1))
        if len(got) >= count:
            break
    return got


def test_what_one_end_writes_the_other_reads_both_ways(modem: NullModem) -> None:
    with (
        serial.Serial(modem.box_path, 115200, timeout=0.05) as box,
        serial.Serial(modem.host_path, 115200, timeout=0.05) as host,
    ):
        request = smp.encode(frame(smp.OP_READ, 64, 1, 7, {"req": b"x" * 300}))  # several lines
        host.write(request)
        assert frames_read(box, 1) == [frame(smp.OP_READ, 64, 1, 7, {"req": b"x" * 300})]
        box.write(b"\x00\xff binary too\n")
        assert host.read(16) == b"\x00\xff binary too\n"


def test_the_host_may_unplug_and_plug_again(modem: NullModem) -> None:
    with serial.Serial(modem.box_path, 115200, timeout=0.05) as box:
        with serial.Serial(modem.host_path, 115200, timeout=0.05) as host:
            host.write(b"before\n")
        assert box.read(7) == b"before\n"
        with serial.Serial(modem.host_path, 115200, timeout=0.05) as host:
            host.write(b"after\n")
            assert box.read(6) == b"after\n"
            box.write(b"still here\n")
            assert host.read(11) == b"still here\n"


def test_a_lost_answer_is_the_one_asked_for_and_no_other(modem: NullModem) -> None:
    status = frame(smp.OP_READ_ANSWER, 64, 1, 1, {"ok": {"a": 1}})
    issued = frame(smp.OP_WRITE_ANSWER, 64, 6, 2, {"cose": b"y" * 200})
    nonce = frame(smp.OP_READ_ANSWER, 64, 0, 3, {"nonce": b"n" * 16})
    modem.lose_answers(1, group=64, command=6)
    with (
        serial.Serial(modem.box_path, 115200, timeout=0.05) as box,
        serial.Serial(modem.host_path, 115200, timeout=0.05) as host,
    ):
        box.write(smp.encode(status) + smp.encode(issued) + smp.encode(nonce))
        assert frames_read(host, 2) == [status, nonce]
        box.write(smp.encode(issued))  # lost once only: the next one arrives
        assert frames_read(host, 1) == [issued]
