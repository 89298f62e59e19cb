"""The virtual printer against the bytes real drivers send: python-escpos, the Adafruit library, pyserial."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import qrcode
import serial
import zxingcpp
from adafruit_thermal_printer import JUSTIFY_CENTER, JUSTIFY_LEFT, JUSTIFY_RIGHT, SIZE_LARGE, SIZE_SMALL
from adafruit_thermal_printer import thermal_printer as adafruit_268
from escpos.escpos import Escpos
from escpos.printer import Dummy
from PIL import Image

from sim.printer import QrCode, Raster, TextLine, VirtualPrinter
from sim.pty_port import serve_on_pty

NATIVE_QR = "https://fdms.zimra.co.zw/verify?d=ABC123&n=0042"
RASTER_QR = "RASTER-QR-0042"


class VirtualEscpos(Escpos):
    """python-escpos talking to the virtual printer, so its status helpers read real replies."""

    def __init__(self, printer: VirtualPrinter) -> None:
        super().__init__(profile="TM-T88V")
        self.printer = printer

    def _raw(self, msg: bytes) -> None:
        self.printer.write(msg)

    def _read(self) -> bytes:
        return self.printer.read()


def decoded(image: Image.Image) -> list[str]:
    return sorted(result.text for result in zxingcpp.read_barcodes(image))


def receipt_tm_t88v() -> bytes:
    printer = Dummy(profile="TM-T88V")
    printer.set(align="center", bold=True, double_width=True, double_height=True)
    printer.textln("FISCAL RECEIPT")
    printer.set(normal_textsize=True, bold=False, align="left")
    printer.textln("Café Ñandú")
    printer.charcode("CP858")
    printer.textln("Total € 12.50")
    printer.charcode("AUTO")
    printer.set(align="right")
    printer.textln("Paid")
    printer.set(align="center")
    printer.ln()
    printer.qr(NATIVE_QR, native=True, size=6, ec=1)
    printer.ln()
    printer.set(align="left")
    printer.qr(RASTER_QR, size=4)
    printer.textln("Thank you")
    printer.cut()
    return bytes(printer.output)


def test_python_escpos_receipt_is_one_page_with_exact_text_and_decodable_qr_codes() -> None:
    data = receipt_tm_t88v()
    assert b"\x1bt\x13" in data  # python-escpos selected CP858 as Epson page 19 for the euro sign
    printer = VirtualPrinter(dots=512)  # the TM-T88V profile's width: 42 columns of font A
    printer.write(data)

    assert len(printer.pages) == 1 and printer.unknown == []
    page = printer.pages[0]
    assert not page.incomplete
    assert page.text() == (
        "       F I S C A L   R E C E I P T\n"
        "Café Ñandú\n"
        "Total € 12.50\n"
        "                                      Paid\n"
        "\n"
        "[QR https://fdms.zimra.co.zw/verify?d=ABC123&n=0042]\n"
        "\n"
        "\n"
        "[image 96x92]\n"
        "\n"
        "\n"
        "Thank you\n"
    )
    title = page.lines[0]
    assert isinstance(title, TextLine) and title.align == "center"
    assert all(cell.style.bold and cell.style.width == 2 and cell.style.height == 2 for cell in title.cells)
    qr = next(block for block in page.lines if isinstance(block, QrCode))
    assert (qr.module_size, qr.error_correction, qr.align) == (6, "M", "center")
    assert page.qr_payloads == [NATIVE_QR]

    image = page.image()
    assert image.width == 512
    assert decoded(image) == sorted([NATIVE_QR, RASTER_QR])


@pytest.mark.parametrize("impl", ["bitImageRaster", "graphics", "bitImageColumn"])
def test_every_python_escpos_image_mode_keeps_the_bits(impl: str) -> None:
    rng = random.Random(7)
    source = Image.new("1", (37, 50), 1)
    for y in range(50):
        for x in range(37):
            if rng.random() < 0.4:
                source.putpixel((x, y), 0)
    escpos = Dummy(profile="TM-T88V")
    escpos.image(source, impl=impl)
    escpos.cut()
    printer = VirtualPrinter(dots=512)
    printer.write(escpos.output)

    [raster] = [block for block in printer.pages[0].lines if isinstance(block, Raster)]
    assert raster.image.crop((0, 0, 37, 50)).tobytes() == source.tobytes()
    padding = raster.image.crop((37, 0, raster.image.width, raster.image.height))
    below = raster.image.crop((0, 50, raster.image.width, raster.image.height))
    assert padding.histogram()[0] == below.histogram()[0] == 0  # the padding prints white
    assert printer.unknown == []


@pytest.mark.parametrize(
    "code_page", ["CP437", "CP850", "CP852", "CP858", "CP860", "CP863", "CP865", "CP866"]
)
def test_code_page_numbers_match_python_escpos_profiles(code_page: str) -> None:
    samples = {
        "CP437": "Café Ñandú ½",
        "CP850": "Café Ñandú Àç",
        "CP852": "Łódź Žluťoučký",
        "CP858": "Café Ñandú € 5",
        "CP860": "Pão Açúcar Ã",
        "CP863": "Café Québec À",
        "CP865": "Smørbrød Æble Å",
        "CP866": "Чек № 5 итого",
    }
    text = samples[code_page]
    escpos = Dummy(profile="TM-T88V")
    escpos.charcode(code_page)
    escpos.textln(text)
    escpos.cut()
    printer = VirtualPrinter(dots=576)
    printer.write(escpos.output)
    assert printer.pages[0].text() == text + "\n"


def adafruit_qr_bitmap(payload: str, scale: int = 4) -> bytes:
    """DC2 * commands for a QR code, chunked as the Adafruit library chunks bitmaps (256 bytes at most)."""
    code = qrcode.QRCode(box_size=1, border=4)
    code.add_data(payload)
    code.make(fit=True)
    matrix = code.get_matrix()
    width = len(matrix) * scale
    row_bytes = (width + 7) // 8
    rows: list[bytes] = []
    for matrix_row in matrix:
        bits = [dark for dark in matrix_row for _ in range(scale)] + [False] * (row_bytes * 8 - width)
        row = bytes(sum(0x80 >> i for i in range(8) if bits[byte * 8 + i]) for byte in range(row_bytes))
        rows.extend([row] * scale)
    per_chunk = 256 // row_bytes
    commands = b""
    for start in range(0, len(rows), per_chunk):
        chunk = rows[start : start + per_chunk]
        commands += b"\x12*" + bytes([len(chunk), row_bytes]) + b"".join(chunk)
    return commands


def test_adafruit_library_text_bitmap_and_paper_sensor() -> None:
    printer = VirtualPrinter(dots=384)
    adafruit = adafruit_268.ThermalPrinter(printer, byte_delay_s=0, dot_feed_s=0, dot_print_s=0)
    adafruit.set_defaults()
    adafruit.justify = JUSTIFY_CENTER
    adafruit.bold = True
    adafruit.print("SHOP 42")
    adafruit.bold = False
    adafruit.size = SIZE_LARGE
    adafruit.print("TOTAL")
    adafruit.size = SIZE_SMALL
    adafruit.justify = JUSTIFY_RIGHT
    adafruit.print("12.50")
    adafruit.justify = JUSTIFY_LEFT
    adafruit.double_width = True
    adafruit.print("wide")
    adafruit.double_width = False
    adafruit.print("a\tb")
    printer.write(adafruit_qr_bitmap("ADAFRUIT-QR-0042"))
    adafruit.feed(3)
    assert adafruit.has_paper() is True
    page = printer.end_page()

    assert page is not None and printer.pages == [page] and printer.unknown == []
    assert page.text() == (
        "            SHOP 42\n"
        "           T O T A L\n"
        "                           12.50\n"
        "w i d e\n"
        "a   b\n"
        "[image 120x116]\n"
    )
    assert decoded(page.image()) == ["ADAFRUIT-QR-0042"]
    assert printer.end_page() is None  # nothing printed since

    printer.paper_out = True
    assert adafruit.has_paper() is False
    printer.load_paper()
    assert adafruit.has_paper() is True


STATES = {
    "normal": ({}, True, 2, b"\x12\x12\x12\x12"),
    "paper out": ({"paper_out": True}, False, 0, b"\x1a\x32\x12\x7e"),
    "paper near end": ({"paper_near_end": True}, True, 1, b"\x12\x12\x12\x1e"),
    "cover open": ({"cover_open": True}, False, 2, b"\x1a\x16\x12\x12"),
    "offline": ({"offline": True}, False, 2, b"\x1a\x12\x12\x12"),
}


@pytest.mark.parametrize("state", STATES)
def test_dle_eot_status_through_python_escpos(state: str) -> None:
    faults, online, paper, replies = STATES[state]
    printer = VirtualPrinter()
    for name, value in faults.items():
        setattr(printer, name, value)
    escpos = VirtualEscpos(printer)

    assert escpos.is_online() is online
    assert escpos.paper_status() == paper
    assert b"".join(escpos.query_status(b"\x10\x04" + bytes([n])) for n in (1, 2, 3, 4)) == replies
    printer.write(b"\x1dr\x01\x1bv\x00")  # GS r 1 and the CSN-A2's ESC v: paper end is bits 2-3
    expected_sensor = {"paper out": 0x0F, "paper near end": 0x03}.get(state, 0x00)
    assert printer.read(2) == bytes([expected_sensor] * 2)
    assert printer.read() == b""


def test_paper_running_out_mid_page_cuts_the_receipt_short() -> None:
    printer = VirtualPrinter(paper_lines=3)
    escpos = VirtualEscpos(printer)
    escpos.set(align="center")
    for number in range(1, 4):
        escpos.textln("line %d" % number)
    assert printer.paper_lines == 0 and escpos.paper_status() == 0  # the sensor trips with the last line
    for number in range(4, 11):
        escpos.textln("line %d" % number)
    escpos.cut()

    assert printer.paper_out and printer.pages == []
    assert escpos.paper_status() == 0 and not escpos.is_online()
    page = printer.current_page
    assert page.incomplete
    assert page.text().splitlines() == [" " * 21 + "line %d" % n for n in (1, 2, 3)] + ["[paper out]"]

    printer.load_paper()
    assert printer.pages == [page]
    assert escpos.paper_status() == 2 and escpos.is_online()
    escpos.textln("reprint")
    escpos.cut()
    assert len(printer.pages) == 2
    assert printer.pages[1].text() == "                    reprint\n" and not printer.pages[1].incomplete


def test_cover_open_drops_print_data_until_closed() -> None:
    printer = VirtualPrinter()
    printer.write(b"\x1b@first\n")
    printer.cover_open = True
    printer.write(b"lost\n\x1dV\x00\x10\x04\x02")
    assert printer.read() == b"\x16" and printer.pages == []
    printer.cover_open = False
    printer.write(b"next receipt\n\x1dV\x00")
    assert [page.text() for page in printer.pages] == ["first\n[cover open]\n", "next receipt\n"]


def test_bytes_split_anywhere_print_the_same() -> None:
    data = receipt_tm_t88v()
    whole = VirtualPrinter(dots=512)
    whole.write(data)
    trickled = VirtualPrinter(dots=512)
    for index in range(len(data)):
        trickled.write(data[index : index + 1])
    assert [page.text() for page in trickled.pages] == [page.text() for page in whole.pages]
    assert trickled.pages[0].image().tobytes() == whole.pages[0].image().tobytes()


def test_layout_rules_wrap_alignment_and_unknown_commands() -> None:
    printer = VirtualPrinter(dots=384)
    printer.write(b"\x1ba\x01" + b"x" * 40 + b"\n")  # 32 columns: the printer wraps the other 8, centred
    printer.write(b"left \x1ba\x02then right\nnext\n")  # ESC a mid-line is ignored, not deferred
    printer.write(b"\x1ba\x00\x1b\x01\x1b \x02gap\n\x1d(A\x02\x00\x30\x30")
    printer.write(b"\x1dk\x49\x09{Babc{C\x0c\x22\x1dV\x41\x00")
    page = printer.pages[0]
    assert page.text().splitlines() == [
        "x" * 32,
        " " * 12 + "x" * 8,
        " " * 8 + "left then right",
        " " * 14 + "next",
        "gap",
        "[barcode abc1234]",
    ]
    assert printer.unknown == [b"\x1b\x01", b"\x1b \x02", b"\x1d(A\x02\x0000"]


def test_png_draws_the_text_styles() -> None:
    printer = VirtualPrinter(dots=384)
    printer.write(
        b"Receipt 42\n\x1bE\x01Receipt 42\n\x1bE\x00\x1dB\x01Receipt 42\n\x1dB\x00\x1d!\x11Receipt 42\n"
    )
    page = printer.end_page()
    assert page is not None
    image = page.image()
    assert image.size == (384, 3 * 30 + 54)  # 24-dot lines, a 48-dot one, 6 dots between lines

    def black(top: int, bottom: int) -> int:
        return image.crop((0, top, 384, bottom)).histogram()[0]

    normal, bold, reverse, big = black(0, 30), black(30, 60), black(60, 90), black(90, 144)
    assert normal < bold < reverse
    assert 3 * normal < big


def test_save_writes_text_and_png(tmp_path: Path) -> None:
    printer = VirtualPrinter(dots=384)
    printer.write(b"hello\n\x1bi")
    text_path, image_path = printer.save(printer.pages[0], tmp_path / "out", "receipt")
    assert text_path.read_text(encoding="utf-8") == "hello\n"
    with Image.open(image_path) as image:
        assert image.width == 384 and image.mode == "1"


def test_pty_round_trip_with_pyserial() -> None:
    printer = VirtualPrinter(dots=512)
    with serve_on_pty(printer) as port:
        with serial.Serial(port.path, 19200, timeout=1) as link:
            link.write(receipt_tm_t88v() + b"\x10\x04\x04")
            assert link.read(1) == b"\x12"
            printer.paper_out = True
            link.write(b"\x10\x04\x04")
            assert link.read(1) == b"\x7e"
    deadline = time.monotonic() + 1
    while not printer.pages and time.monotonic() < deadline:
        time.sleep(0.01)
    assert printer.pages[0].qr_payloads == [NATIVE_QR]
