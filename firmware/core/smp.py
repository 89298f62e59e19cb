"""MCUmgr SMP over serial, sans-I/O: the 8-byte header, and packets as base64 lines (docs/link.md section 1).

Bytes in, frames out, so the same code serves a pty, the Pi's gadget serial and MicroPython. A bad packet
(noise, bad base64, a length beyond the buffer, a wrong CRC) is dropped silently, as MCUmgr does, and the
decoder resynchronises on the next start marker 0x06 0x09, so a console sharing the line never stops the link.
"""

import binascii
import struct

OP_READ = 0
OP_READ_ANSWER = 1
OP_WRITE = 2
OP_WRITE_ANSWER = 3
HEADER_SIZE = 8
MAX_FRAME = 16384

START = b"\x06\x09"
CONTINUE = b"\x04\x14"
MAX_LINE = 127  # bytes a line, markers and newline included
LINE_CHARS = 124  # base64 characters a line: 127 - 2 (marker) - 1 (newline)

_HEADER = ">BBHHBB"


def _crc_table():
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc_table()
# CPython's binascii.crc_hqx is this very CRC (poly 0x1021, not reflected) in C; MicroPython has none.
_CRC_HQX = getattr(binascii, "crc_hqx", None)


def crc16_xmodem(data, crc=0):
    """CRC-16/XMODEM: polynomial 0x1021, initial value 0, no reflection, no final XOR."""
    if _CRC_HQX is not None:
        return _CRC_HQX(data, crc)
    table = _TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


def header(op, group, sequence, command, length, flags=0, version=1):
    """The SMP v2 header: res:3 ver:2 op:3, flags, length, group, sequence, command (big-endian)."""
    return struct.pack(_HEADER, ((version & 3) << 3) | (op & 7), flags, length, group, sequence, command)


def parse_header(frame):
    """(version, op, flags, length, group, sequence, command) of a frame; ValueError if it is too short."""
    if len(frame) < HEADER_SIZE:
        raise ValueError("an SMP frame needs an 8-byte header, this one has %d bytes" % len(frame))
    first, flags, length, group, sequence, command = struct.unpack(_HEADER, bytes(frame[:HEADER_SIZE]))
    return ((first >> 3) & 3, first & 7, flags, length, group, sequence, command)


def encode(frame):
    """The packet of one frame: its lines, markers and newlines included, ready to write to the line."""
    body = bytes(frame)
    packet = struct.pack(">H", len(body) + 2) + body + struct.pack(">H", crc16_xmodem(body))
    text = binascii.b2a_base64(packet)[:-1]  # without its newline
    out = []
    marker = START
    for at in range(0, len(text), LINE_CHARS):
        out.append(marker)
        out.append(text[at : at + LINE_CHARS])
        out.append(b"\n")
        marker = CONTINUE
    return b"".join(out)


def _b64(chars):
    """The bytes of one line's base64, or None unless it is canonical standard base64 with padding."""
    if not chars or len(chars) % 4:
        return None
    try:
        data = binascii.a2b_base64(chars)
    except ValueError:
        return None
    # MicroPython's decoder skips characters outside the alphabet: encoding back catches them on both.
    if binascii.b2a_base64(data)[:-1] != chars:
        return None
    return data


class Decoder:
    """Bytes in, whole frames out. Drops bad packets (counted in `dropped`) and resyncs on 0x06 0x09."""

    def __init__(self, max_frame=MAX_FRAME):
        self.max_frame = max_frame
        self.dropped = 0
        self._pending = b""  # bytes not yet consumed: at most one line, or one byte of a marker
        self._packet = None  # bytearray of the packet being collected (length, frame, CRC), or None
        self._expect = 0  # the packet's length field once known (frame + CRC), else 0

    def _drop(self):
        if self._packet is not None:
            self.dropped += 1
        self._packet = None
        self._expect = 0

    def feed(self, data):
        """Take any bytes from the line; return the list of frames (bytes) completed by them."""
        buf = self._pending + bytes(data) if self._pending else bytes(data)
        frames = []
        at = 0
        end = len(buf)
        while at < end:
            if self._packet is None:
                # Hunting: everything up to the next start marker is noise (a console, garbage).
                found = buf.find(START, at)
                if found < 0:
                    at = end - 1 if buf[end - 1] == 6 else end
                    break
                at = found
            elif buf[at : at + 2] != CONTINUE and buf[at : at + 2] != START:
                if end - at < 2 and buf[at] in (4, 6):
                    break  # half a marker: wait for the next byte
                self._drop()  # a line that does not start with a marker
                continue
            # A line starts at `at` with a marker: it ends at a newline within MAX_LINE bytes.
            limit = at + MAX_LINE if at + MAX_LINE < end else end
            newline = buf.find(b"\n", at + 2, limit)
            restart = buf.find(START, at + 2, newline if newline >= 0 else limit)
            if restart >= 0:
                self._drop_line(buf, at)
                at = restart  # a new packet began inside this line: the old one was cut short
                continue
            if newline < 0:
                if limit - at >= MAX_LINE:
                    self._drop_line(buf, at)
                    at += 2  # a line too long is not SMP: hunt again after its marker
                    continue
                break  # the line is not complete yet: keep it for the next feed
            first = buf[at : at + 2] == START
            chars = buf[at + 2 : newline]
            at = newline + 1
            frame = self._line(first, chars)
            if frame is not None:
                frames.append(frame)
        self._pending = buf[at:end] if at < end else b""
        return frames

    def _drop_line(self, buf, at):
        if self._packet is None and buf[at : at + 2] == START:
            self._packet = bytearray()  # a packet had begun with this line: count it as dropped
        self._drop()

    def _line(self, first, chars):
        """Add one complete line; the frame when it completes a good packet, else None."""
        if first:
            self._drop()  # a new start marker ends any packet being collected
            self._packet = bytearray()
        data = _b64(chars)
        if data is None:
            self._drop()
            return None
        packet = self._packet
        packet.extend(data)
        if not self._expect and len(packet) >= 2:
            self._expect = (packet[0] << 8) | packet[1]
            if self._expect < 2 or self._expect - 2 > self.max_frame:
                self._drop()  # a length beyond the buffer: never collect it
                return None
        if not self._expect or len(packet) < self._expect + 2:
            return None
        if len(packet) > self._expect + 2:
            self._drop()
            return None
        frame = bytes(packet[2:-2])
        crc = (packet[-2] << 8) | packet[-1]
        self._packet = None
        self._expect = 0
        if crc16_xmodem(frame) != crc:
            self.dropped += 1
            return None
        return frame
