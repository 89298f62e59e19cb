"""The SMP serial framer (firmware/core/smp.py), under pytest and under MicroPython (mp_runner.py).

The vectors in tests/vectors/smp.json were written by the public smp package; the rest feeds the decoder the
bad input a shared serial line carries and checks that each is dropped and the next good packet is understood.
"""

import binascii

from core_support import vectors

from firmware.core import smp

V = vectors("smp")
GOOD = smp.header(smp.OP_WRITE, 0, 9, 0, 8) + b"\xa1adegood"  # an echo {"d": "good"}


def _hex(text):
    return binascii.unhexlify(text)


def _packet(payload_bytes):
    """A packet around raw bytes (length and CRC as given), for building broken ones."""
    text = binascii.b2a_base64(payload_bytes)[:-1]
    out = b""
    marker = smp.START
    for at in range(0, len(text), smp.LINE_CHARS):
        out += marker + text[at : at + smp.LINE_CHARS] + b"\n"
        marker = smp.CONTINUE
    return out


def _raw(frame, length=None, crc=None):
    length = len(frame) + 2 if length is None else length
    crc = smp.crc16_xmodem(frame) if crc is None else crc
    return bytes([length >> 8, length & 255]) + frame + bytes([crc >> 8, crc & 255])


def _then_good(noise, dropped, frames_before=()):
    """Feed noise then a good packet, whole and a byte at a time: exactly the good frame comes out."""
    for step in (0, 1, 7):
        decoder = smp.Decoder()
        stream = noise + smp.encode(GOOD)
        if step:
            got = []
            for at in range(0, len(stream), step):
                got += decoder.feed(stream[at : at + step])
        else:
            got = decoder.feed(stream)
        assert got == list(frames_before) + [GOOD], (step, got)
        assert decoder.dropped == dropped, (step, decoder.dropped, dropped)


def test_crc_vectors():
    for case in V["crc"]:
        assert smp.crc16_xmodem(_hex(case["data"])) == case["crc"], case["name"]
    # Continued CRCs compose, and the table path (MicroPython's) agrees with the fast one.
    assert smp.crc16_xmodem(b"6789", smp.crc16_xmodem(b"12345")) == 0x31C3
    crc = 0
    for byte in b"123456789":
        crc = ((crc << 8) & 0xFFFF) ^ smp._TABLE[(crc >> 8) ^ byte]
    assert crc == 0x31C3


def test_encode_is_byte_for_byte_the_smp_package():
    for case in V["frames"]:
        packet = smp.encode(_hex(case["frame"]))
        assert packet == _hex(case["packet"]), case["name"]
        assert packet.count(b"\n") == case["lines"], case["name"]
        for line in packet.split(b"\n")[:-1]:
            assert len(line) + 1 <= smp.MAX_LINE, case["name"]


def test_decode_the_smp_package_packets():
    for case in V["frames"]:
        for key in ("packet", "packet_120"):
            decoder = smp.Decoder()
            assert decoder.feed(_hex(case[key])) == [_hex(case["frame"])], (case["name"], key)
            assert decoder.dropped == 0
    for case in V["decode_only"]:
        assert smp.Decoder().feed(_hex(case["packet"])) == [_hex(case["frame"])], case["name"]


def test_header_vectors():
    for case in V["frames"]:
        if "header" not in case:
            continue
        frame = _hex(case["frame"])
        version, op, flags, length, group, sequence, command = case["header"]
        assert smp.parse_header(frame) == tuple(case["header"]), case["name"]
        assert smp.header(op, group, sequence, command, length, flags, version) == frame[:8], case["name"]
        assert length == len(frame) - smp.HEADER_SIZE


def test_parse_header_refuses_a_short_frame():
    for frame in (b"", b"\x08\x00\x00\x00\x00\x00\x01"):
        try:
            smp.parse_header(frame)
        except ValueError:
            continue
        raise AssertionError("a short header was parsed")


def test_a_frame_of_the_largest_size_over_many_lines_whole_and_byte_by_byte():
    size = smp.MAX_FRAME - smp.HEADER_SIZE
    frame = smp.header(smp.OP_WRITE, 64, 1, 6, size) + bytes([i & 255 for i in range(size)])
    packet = smp.encode(frame)
    assert packet.count(b"\n") > 170
    assert smp.Decoder().feed(packet) == [frame]
    decoder = smp.Decoder()
    got = []
    for at in range(0, len(packet), 61):
        got += decoder.feed(packet[at : at + 61])
    assert got == [frame] and decoder.dropped == 0


def test_one_byte_more_than_the_buffer_is_dropped_then_the_next_is_read():
    big = bytes(smp.MAX_FRAME + 1)
    _then_good(smp.encode(big), 1)
    small = smp.Decoder(max_frame=64)
    assert small.feed(smp.encode(bytes(65)) + smp.encode(bytes(64))) == [bytes(64)]
    assert small.dropped == 1


def test_several_packets_in_one_feed():
    other = smp.header(smp.OP_READ, 0, 1, 6, 1) + b"\xa0"
    stream = smp.encode(GOOD) + smp.encode(other) + smp.encode(GOOD)
    assert smp.Decoder().feed(stream) == [GOOD, other, GOOD]


def test_garbage_before_and_between_packets():
    _then_good(b"console text with no newline ", 0)
    _then_good(b"boot: ok\r\n\x00\xff\x04\x14QUJD\n\x04", 0)  # a stray continuation line is noise too
    long_noise = bytes([i * 7 & 255 for i in range(3000)]).replace(b"\x06", b"")
    _then_good(long_noise, 0)
    _then_good(smp.encode(GOOD) + b"\r\nlogin: ", 0, [GOOD])


def test_noise_that_holds_a_start_marker():
    _then_good(b"\x06\x09 not base64 \n", 1)
    _then_good(b"\x06\x09" + b"A" * 200, 1)  # a line far too long: dropped, not collected
    _then_good(b"\x06\x06\x09\x09\x06", 1)  # one packet begun, so one dropped


def test_bad_crc():
    frame = GOOD
    _then_good(_packet(_raw(frame, crc=smp.crc16_xmodem(frame) ^ 1)), 1)
    flipped = bytearray(smp.encode(frame))
    flipped[5] = ord("B") if flipped[5] != ord("B") else ord("C")
    _then_good(bytes(flipped), 1)


def test_bad_base64():
    packet = smp.encode(GOOD)
    _then_good(packet[:6] + b"*" + packet[7:], 1)  # a character outside the alphabet
    _then_good(packet[:6] + packet[7:], 1)  # a line not a multiple of four
    _then_good(packet[:-3] + b"==\n", 1)  # padding where there was data
    _then_good(b"\x06\x09AAB=\n", 1)  # non-canonical: padding bits set
    _then_good(packet[:-1] + b"\r\n", 1)  # a CR is not base64


def test_lengths_that_cannot_be():
    _then_good(_packet(_raw(GOOD, length=0)), 1)
    _then_good(_packet(_raw(GOOD, length=1)), 1)
    _then_good(_packet(_raw(GOOD, length=0xFFFF)), 1)
    _then_good(_packet(_raw(GOOD, length=len(GOOD))), 1)  # one byte too short: the rest is extra
    # A length longer than what came: the next start marker ends it.
    _then_good(_packet(_raw(GOOD, length=len(GOOD) + 40)), 1)


def test_truncated_packets():
    frame = bytes(500)
    packet = smp.encode(frame)
    lines = packet.split(b"\n")
    assert len(lines) > 3
    _then_good(b"\n".join(lines[:2]) + b"\n", 1)  # whole lines missing at the end
    _then_good(packet[:200], 1)  # cut inside a line
    _then_good(packet[:2], 1)  # only the marker
    _then_good(lines[0] + b"\n" + b"\n".join(lines[2:]), 1)  # a line missing in the middle
    _then_good(lines[0] + b"\nnoise\n" + b"\n".join(lines[1:]), 1)  # a line without a marker inside


def test_each_packet_read_once_and_nothing_left_over():
    decoder = smp.Decoder()
    packet = smp.encode(GOOD)
    assert decoder.feed(packet[:-1]) == []
    assert decoder.feed(b"\n") == [GOOD]
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n\n") == []
    assert decoder._pending == b"" and decoder._packet is None
