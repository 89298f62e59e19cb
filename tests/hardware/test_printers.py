"""Printer drivers at the byte level: the GS ( k sequence, raster fallback, cut, code page, legible text."""

from __future__ import annotations

import pytest
import serial
from escpos.printer import Dummy

from firmware.core import layout
from firmware.core.errors import FiscalError
from hardware import printers
from sim.printer import VirtualPrinter

URL = "https://invoice.zimra.co.zw/0000000321030420231112223331" + "4C8BE27663330417"


def _document(width: int) -> layout.Document:
    doc = layout.Document(width)
    doc.text("FISCAL TAX INVOICE", layout.CENTER, True, True)
    doc.pair("Invoice total, USD", "10.00", True)
    doc.qr(URL)
    doc.text("4C8B-E276-6333-0417", layout.CENTER)
    return doc


def _escpos(name: str) -> printers.EscposPrinter:
    model = printers.PROFILES[name]
    return printers.EscposPrinter(model, Dummy(profile=model.escpos_profile))


def test_native_qr_is_the_gs_k_sequence_of_the_reference_table() -> None:
    data = _escpos("epson-tm-t20ii").encode(_document(48))
    gs_k = b"\x1d\x28\x6b"
    assert gs_k + b"\x04\x00\x31\x41\x32\x00" in data  # model 2
    assert gs_k + b"\x03\x00\x31\x43\x06" in data  # module size 6 dots
    assert gs_k + b"\x03\x00\x31\x45\x31" in data  # error correction M
    stored = len(URL) + 3
    assert gs_k + bytes((stored % 256, stored // 256)) + b"\x31\x50\x30" + URL.encode() in data
    assert gs_k + b"\x03\x00\x31\x51\x30" in data  # print
    assert b"\x1dv0" not in data  # no raster image
    assert data.startswith(b"\x1b@\x1bt\x13")  # reset, then code page 19 (CP858)
    assert b"\x1dV" in data  # cut


def test_printers_without_native_qr_get_a_raster_image_and_no_cut() -> None:
    data = _escpos("pos-5890").encode(_document(32))
    assert b"\x1d\x28\x6b" not in data
    assert b"\x1dv0" in data
    assert b"\x1dV" not in data
    assert URL.encode() not in data


def test_the_qr_image_is_centred_and_fits_the_paper() -> None:
    for name in ("pos-5890", "adafruit-csn-a2"):
        model = printers.PROFILES[name]
        image = printers.qr_image(URL, model.qr_module, model.dots)
        assert image.width == model.dots
        box = image.point(lambda v: 255 - v).getbbox()  # black modules
        assert box is not None
        left, right = box[0], model.dots - box[2]
        assert abs(left - right) <= model.qr_module


def test_a_qr_wider_than_the_paper_is_refused() -> None:
    with pytest.raises(FiscalError) as refused:
        printers.qr_image(URL * 4, 8, 384)
    assert refused.value.code == "BOX_PRINTER"


@pytest.mark.parametrize(
    ("text", "codec", "shown"),
    [
        ("Café Ñandú", "cp858", "Café Ñandú"),  # the code page has them
        ("Ŝipŝ Łódź", "cp858", "Sips Lódz"),  # accents the page lacks are dropped; Ł spelled L
        ("Straße", "cp437", "Straße"),
        ("Œuvre €5", "cp437", "Oeuvre EUR5"),
        ("北京 Store", "cp858", "BeiJing Store"),
        ("Bad\x1bi\x1dV name", "cp858", "Bad i V name"),  # no name can cut the paper or switch pages
        ("two\nlines", "cp437", "two\nlines"),
    ],
)
def test_legible_text_never_prints_garbage(text: str, codec: str, shown: str) -> None:
    assert printers.legible(text, codec) == shown
    printers.legible(text, codec).encode(codec)  # always encodable


def test_unknown_model_is_refused_with_the_known_ones() -> None:
    with pytest.raises(FiscalError) as refused:
        printers.profile("tm-x")
    assert refused.value.code == "BOX_CONFIG" and "epson-tm-t20ii" in refused.value.message


# ---------------------------------------------------------------------------------------------------------
# Whatever a driver library raises reaches the box as a BOX_PRINTER_ error


def test_an_exception_of_python_escpos_itself_becomes_a_printer_fault() -> None:
    """python-escpos's Dummy printer cannot read a status: the library raises NotImplementedError."""
    driver = _escpos("epson-tm-t20ii")
    with pytest.raises(FiscalError) as refused:
        driver.check()
    assert refused.value.code == "BOX_PRINTER_FAULT"
    assert "NotImplementedError" in refused.value.message and "then reprint" in refused.value.message
    with pytest.raises(FiscalError) as refused:
        driver.print_document(_document(48))
    assert refused.value.code == "BOX_PRINTER_FAULT"
    assert refused.value.message.startswith("The print did not finish.")


class Glitch(Exception):
    """An exception type no one here has heard of."""


class FailingPort(VirtualPrinter):
    """The virtual printer behind a link that fails with `error` once `good` bytes went through."""

    def __init__(self, error: Exception, good: int) -> None:
        super().__init__(dots=384)
        self.error = error
        self.good = good

    def write(self, data: bytes) -> int:
        if self.good < len(data):
            raise self.error
        self.good -= len(data)
        return super().write(data)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Glitch("bitmap buffer overrun"), "BOX_PRINTER_FAULT"),
        (ValueError(), "BOX_PRINTER_FAULT"),
        (serial.SerialTimeoutException("Write timeout"), "BOX_PRINTER_OFFLINE"),
        (serial.SerialException("returned no data"), "BOX_PRINTER_OFFLINE"),
        (TimeoutError(), "BOX_PRINTER_OFFLINE"),
        (OSError(5, "Input/output error"), "BOX_PRINTER_OFFLINE"),
    ],
)
@pytest.mark.parametrize("model", ["epson-tm-t20ii", "adafruit-csn-a2"])
def test_any_exception_from_the_link_or_library_becomes_a_box_printer_error(
    error: Exception, code: str, model: str
) -> None:
    profile = printers.PROFILES[model]
    for good, during in ((0, False), (40, True)):  # at the status check; in the middle of the print
        port = FailingPort(error, 1000)
        options = {"paced": False} if profile.escpos_profile is None else {}
        driver = printers.open_printer(model, port, **options)  # the Adafruit library writes a reset
        port.good = good
        with pytest.raises(FiscalError) as refused:
            driver.check() if not during else driver.print_document(_document(profile.columns))
        assert refused.value.code == code
        assert refused.value.message.startswith("The print did not finish.") == during
        assert type(error).__name__ in refused.value.message
        assert refused.value.__cause__ is error


def test_the_adafruit_library_failing_as_it_opens_the_port_is_a_printer_error() -> None:
    with pytest.raises(FiscalError) as refused:
        printers.open_printer("adafruit-csn-a2", FailingPort(Glitch("no reset"), 0), paced=False)
    assert refused.value.code == "BOX_PRINTER_FAULT" and "Glitch: no reset" in refused.value.message
