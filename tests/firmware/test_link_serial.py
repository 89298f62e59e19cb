"""The link over a real serial line (a pty pair): noise, resync, and the public smpclient as its peer."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import threading
import tty
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from box_rig import sale
from link_rig import Host, Served, StandIn, command_of

from firmware.box import Box
from firmware.core import smp
from firmware.core.errors import FiscalError
from firmware.hosts import HostKeys
from firmware.link import Link, open_port


@pytest.fixture
def link(box: Box, tmp_path: Path) -> Iterator[Link]:
    made = Link(StandIn(box, tmp_path), HostKeys(tmp_path / "hosts.json"))
    yield made
    made.close()


@pytest.fixture
def served(link: Link) -> Iterator[Served]:
    made = Served(link)
    yield made
    made.close()


def read_frame(fd: int, decoder: smp.Decoder) -> bytes:
    """The next whole frame from the host side of the line (blocking: the box answers every request)."""
    while True:
        select.select([fd], [], [])
        frames = decoder.feed(os.read(fd, 4096))
        if frames:
            assert len(frames) == 1
            return frames[0]


def test_noise_on_the_line_is_skipped_and_the_next_good_frame_answered(link: Link, served: Served) -> None:
    host = Host(link)
    link.hosts.enroll(host.der, "pos", "till", "2026-11-22T08:00:00")
    decoder = smp.Decoder()
    echo = smp.encode(host.frame(0, 0, {"d": "after noise"}))
    broken = bytearray(echo)
    broken[10] ^= 0x55  # a packet whose base64 or CRC is wrong: dropped
    os.write(served.slave, b"boot: console text\r\n\x06\x09AAA\n" + bytes(broken) + b"\x04\x14junk\n" + echo)
    answer = read_frame(served.slave, decoder)
    assert cbor2.loads(answer[smp.HEADER_SIZE :]) == {"r": "after noise"}
    issue = host.frame(*command_of("issue"), {"req": host.signed("issue", {"sale": sale()})})
    os.write(served.slave, smp.encode(issue))
    body = cbor2.loads(read_frame(served.slave, decoder)[smp.HEADER_SIZE :])
    assert "cose" in body and link.device.box.status()["last_global_no"] == 1


def test_smpclient_connects_reads_the_parameters_and_echoes_across_many_lines(
    link: Link, served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    from smpclient import SMPClient
    from smpclient.generics import success
    from smpclient.requests.os_management import EchoWrite
    from smpclient.transport.serial import SMPSerialTransport

    text = "".join(chr(ord("a") + n % 26) for n in range(3000))  # some 33 lines of base64 each way

    async def talk() -> str:
        async with SMPClient(SMPSerialTransport(), served.slave_path, timeout_s=5) as client:
            answer = await client.request(EchoWrite(d=text))
            assert success(answer)
            return str(answer.r)

    with caplog.at_level(logging.INFO):
        assert asyncio.run(talk()) == text
    requests = [r.fields for r in caplog.records if r.name == "firmware.link"]  # type: ignore[attr-defined]
    assert [(r["name"], r["outcome"]) for r in requests] == [("mcumgr_params", "ok"), ("echo", "ok")]
    assert not [r for r in caplog.records if r.name.startswith("smpclient") and r.levelno >= logging.WARNING]


def test_open_port_opens_urls_and_names_a_port_it_cannot_open(tmp_path: Path) -> None:
    port = open_port("loop://", 115200)
    try:
        port.write(b"\x06\x09")
        assert port.read(2) == b"\x06\x09"
    finally:
        port.close()
    with pytest.raises(FiscalError) as refused:
        open_port(str(tmp_path / "no-such-tty"))
    assert refused.value.code == "BOX_LINK_PORT" and refused.value.field == "link.port"


def test_the_serve_loop_on_a_tty_reads_a_packet_in_pieces_and_logs_after_answering(
    link: Link, caplog: pytest.LogCaptureFixture
) -> None:
    """The port as the service opens it (pyserial on a tty: its file descriptor read and written directly),
    a packet arriving in two pieces, noise between packets; each request's log line once it is answered."""
    master, slave = os.openpty()
    tty.setraw(slave)
    port = open_port(os.ttyname(slave))
    stop = threading.Event()
    thread = threading.Thread(target=link.serve, args=(port, stop), daemon=True)
    decoder = smp.Decoder()
    try:
        with caplog.at_level(logging.INFO, logger="firmware.link"):
            thread.start()
            echo = smp.encode(Host(link).frame(0, 0, {"d": "in two pieces"}))
            os.write(master, b"noise\r\n" + echo[:50])
            os.write(master, echo[50:])
            assert cbor2.loads(read_frame(master, decoder)[smp.HEADER_SIZE :]) == {"r": "in two pieces"}
            os.write(master, smp.encode(Host(link).frame(0, 6, {})))
            assert cbor2.loads(read_frame(master, decoder)[smp.HEADER_SIZE :])["buf_size"] == smp.MAX_FRAME
            stop.set()
            thread.join()
    finally:
        stop.set()
        port.close()
        os.close(master)
        os.close(slave)
    names = [r.fields["name"] for r in caplog.records if r.getMessage() == "link.request"]  # type: ignore[attr-defined]
    assert names == ["echo", "mcumgr_params"]
