"""Thermal printer drivers: ESC/POS printers via python-escpos, Adafruit's mini printer via its library.

Each supported model has an explicit profile (columns, dots, whether it prints QR codes natively, its cutter,
its code page); nothing is guessed from the printer at run time. A driver turns a layout Document into bytes,
sends them, and reads the printer's status before and after so a paper-out or open cover becomes a FiscalError
with a BOX_PRINTER_ code instead of a silently lost receipt. Any failure of the port or of a driver library
(an unplugged cable, a timeout, an exception of any type) becomes one too: callers catch only FiscalError.
See reference/hardware.md section 1.
"""

from __future__ import annotations

import functools
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import qrcode
from anyascii import anyascii
from escpos.constants import QR_ECLEVEL_M
from escpos.escpos import Escpos
from escpos.printer import Dummy
from PIL import Image

from firmware.core import layout
from firmware.core.errors import FiscalError
from hardware import SerialPort

QR_BORDER = 4  # quiet zone in modules, as the QR standard asks


@dataclass(frozen=True)
class Profile:
    """One printer model as the box drives it."""

    name: str
    columns: int  # characters per line in font A
    dots: int  # printable width
    native_qr: bool  # prints GS ( k QR codes itself; otherwise the QR goes as a raster image
    cutter: bool
    code_page: str  # the code page the box selects, as python-escpos names it
    escpos_profile: str | None = None  # python-escpos capabilities profile; None for the Adafruit printer
    qr_module: int = 6  # dots per QR module: a 70-character URL is about 270 dots wide
    reads_status: bool = True  # the link carries the printer's answers back (DLE EOT or ESC v)
    feed_lines: int = 4  # blank lines fed at the end, past the tear bar or the cutter

    @property
    def codec(self) -> str:
        return self.code_page.lower()


PROFILES = {
    profile.name: profile
    for profile in (
        Profile("epson-tm-t20ii", 48, 576, True, True, "CP858", "TM-T20II"),
        Profile("epson-tm-t88v", 42, 512, True, True, "CP858", "TM-T88V"),
        Profile("pos-5890", 32, 384, False, False, "CP858", "POS-5890"),
        Profile("adafruit-csn-a2", 32, 384, False, False, "CP437", None, qr_module=5, feed_lines=3),
    )
}


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise FiscalError("BOX_CONFIG", f"Unknown printer model {name!r}; known models: {known}.") from None


# ---------------------------------------------------------------------------------------------------------
# Text the code page can show


def _fits(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


@functools.lru_cache(maxsize=8192)
def legible_char(char: str, codec: str) -> str:
    """The character itself when the code page has it; else its letter without accents (Ŝ -> S); else a
    spelling in Latin letters (ß -> ss, 北 -> Bei); else '?'. Control characters never reach the printer: a
    name must not be able to cut the paper or switch the code page."""
    if char == "\n":
        return char
    if unicodedata.category(char)[0] == "C":
        return " "
    if _fits(char, codec):
        return char
    bare = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
    if bare and _fits(bare, codec) and unicodedata.category(bare[0])[0] != "C":
        return bare
    spelled = anyascii(char)
    return spelled if spelled and _fits(spelled, codec) else "?"


def legible(text: str, codec: str) -> str:
    return "".join(legible_char(char, codec) for char in text)


# ---------------------------------------------------------------------------------------------------------
# QR as a raster image, for printers without GS ( k


def qr_image(data: str, module: int, width: int) -> Image.Image:
    """A 1-bit image `width` dots wide with the QR code centred: the same placement a native QR gets."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=module, border=QR_BORDER)
    code.add_data(data)
    code.make(fit=True)
    symbol = code.make_image(fill_color="black", back_color="white").get_image().convert("1")
    if symbol.width > width:
        raise FiscalError("BOX_PRINTER", f"The QR code is {symbol.width} dots wide; the paper has {width}.")
    page = Image.new("1", (width, symbol.height), 1)
    page.paste(symbol, ((width - symbol.width) // 2, 0))
    return page


def raster_rows(image: Image.Image) -> tuple[int, bytes]:
    """(bytes per row, rows packed MSB first with 1 = black), the form GS v 0 and DC2 * both take."""
    inverted = Image.eval(image.convert("L"), lambda v: 255 - v).convert("1")
    return (image.width + 7) // 8, inverted.tobytes()


# ---------------------------------------------------------------------------------------------------------
# Status


PAPER_OUT = ("BOX_PRINTER_PAPER_OUT", "The printer is out of paper: load a new roll.")
COVER_OPEN = ("BOX_PRINTER_COVER_OPEN", "The printer's cover is open: close it.")
OFFLINE = ("BOX_PRINTER_OFFLINE", "The printer is offline or does not answer: check its power and cable.")


def _problem(found: tuple[str, str], during: bool) -> FiscalError:
    code, message = found
    if during:
        message = "The print did not finish. " + message
    return FiscalError(code, message)


def device_fault(error: Exception, during: bool) -> FiscalError:
    """A failure of the link or of a driver library as a BOX_PRINTER_ error: pyserial's errors (a vanished
    port, a write timeout, "returned no data") are OSErrors, so offline; any other type the libraries raise
    is a fault of the printer or its driver. Either way the shop can act: check, then reprint."""
    detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if isinstance(error, OSError):
        found = (
            "BOX_PRINTER_OFFLINE",
            f"The printer stopped answering ({detail}): check its power and cable, then reprint.",
        )
    else:
        found = (
            "BOX_PRINTER_FAULT",
            f"The printer driver failed ({detail}): switch the printer off and on, check its model in the "
            "configuration, then reprint.",
        )
    return _problem(found, during)


P = ParamSpec("P")
R = TypeVar("R")


def _device_faults(during: bool) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Whatever a driver method raises reaches the box as a FiscalError with a BOX_PRINTER_ code, never as
    a library's own exception: callers (issue, reprint, reports) then need only catch FiscalError."""

    def wrap(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(*args, **kwargs)
            except FiscalError:
                raise
            except Exception as error:
                raise device_fault(error, during) from error

        return run

    return wrap


class _PortEscpos(Escpos):
    """python-escpos over any serial-like port (a pyserial Serial, a pseudo-terminal, the virtual printer)."""

    def __init__(self, port: SerialPort, profile_name: str | None) -> None:
        super().__init__(profile=profile_name)
        self.port = port

    def _raw(self, msg: bytes) -> None:
        self.port.write(msg)

    def _read(self) -> bytes:
        return self.port.read(1) or b""


DLE_EOT_PRINTER = b"\x10\x04\x01"
DLE_EOT_OFFLINE_CAUSE = b"\x10\x04\x02"
DLE_EOT_PAPER = b"\x10\x04\x04"


class EscposPrinter:
    """An ESC/POS printer: the document is encoded with python-escpos for the model's profile, sent in one
    write, and the printer's real-time status (DLE EOT) is read before and after."""

    def __init__(self, model: Profile, device: SerialPort | Escpos) -> None:
        if model.escpos_profile is None:
            raise FiscalError("BOX_CONFIG", f"{model.name} is not an ESC/POS profile.")
        self.profile = model
        self.device = device if isinstance(device, Escpos) else _PortEscpos(device, model.escpos_profile)

    @property
    def columns(self) -> int:
        return self.profile.columns

    def legible(self, text: str) -> str:
        return legible(text, self.profile.codec)

    def encode(self, document: layout.Document) -> bytes:
        """The ESC/POS bytes of a document for this model."""
        out = Dummy(profile=self.profile.escpos_profile)
        out.hw("INIT")
        out.charcode(self.profile.code_page)
        for line in document.lines:
            if line.kind == "qr":
                out.set(align="center", bold=False, normal_textsize=True)
                if self.profile.native_qr:
                    out.qr(
                        line.text,
                        ec=QR_ECLEVEL_M,
                        size=self.profile.qr_module,
                        native=True,
                    )
                else:
                    out.image(qr_image(line.text, self.profile.qr_module, self.profile.dots))
                continue
            if line.kind == "blank":
                out.ln()
                continue
            double = line.double
            out.set(
                align=line.align,
                bold=line.bold,
                double_width=double,
                double_height=double,
                normal_textsize=not double,
            )
            out.textln(line.text)
        out.set(align="left", bold=False, normal_textsize=True)
        if self.profile.cutter:
            out.cut()  # python-escpos feeds past the cutter first
        else:
            out.ln(self.profile.feed_lines)
        return bytes(out.output)

    def _status(self) -> tuple[str, str] | None:
        if not self.profile.reads_status:
            return None
        online = self.device.query_status(DLE_EOT_PRINTER)
        cause = self.device.query_status(DLE_EOT_OFFLINE_CAUSE)
        paper = self.device.query_status(DLE_EOT_PAPER)
        if not online or not cause or not paper:
            return OFFLINE
        if cause[0] & 0x04:
            return COVER_OPEN
        if cause[0] & 0x20 or paper[0] & 0x60 == 0x60:
            return PAPER_OUT
        if online[0] & 0x08:
            return OFFLINE
        return None

    @_device_faults(during=False)
    def check(self) -> None:
        found = self._status()
        if found is not None:
            raise _problem(found, during=False)

    @_device_faults(during=True)
    def print_document(self, document: layout.Document) -> None:
        self.device._raw(self.encode(document))
        found = self._status()
        if found is not None:
            raise _problem(found, during=True)


class AdafruitPrinter:
    """Adafruit's mini TTL printer (CSN-A2) through adafruit-circuitpython-thermal-printer, text only; its QR
    is a raster image sent as DC2 * rows, since the library has no QR and its bitmap path fails on CPython.

    `firmware` picks the library's class by hand: its own version lookup compares versions as floats and
    gives 2.64 and 2.68 printers the 2.168 class. `paced=False` drops the library's waits (virtual printer).
    """

    FIRMWARE_MODULES = {
        "2.68": "thermal_printer",
        "2.64": "thermal_printer_264",
        "2.168": "thermal_printer_2168",
        "legacy": "thermal_printer_legacy",
    }
    MAX_BITMAP_ROWS = 255  # DC2 * takes at most 255 rows at a time

    def __init__(self, port: SerialPort, firmware: str = "2.68", paced: bool = True) -> None:
        import importlib

        if firmware not in self.FIRMWARE_MODULES:
            known = ", ".join(self.FIRMWARE_MODULES)
            raise FiscalError("BOX_CONFIG", f"Unknown Adafruit firmware {firmware!r}; known: {known}.")
        module = importlib.import_module("adafruit_thermal_printer." + self.FIRMWARE_MODULES[firmware])
        timing: dict[str, Any] = {} if paced else {"byte_delay_s": 0, "dot_feed_s": 0, "dot_print_s": 0}
        self.profile = PROFILES["adafruit-csn-a2"]
        self.port = port
        self.paced = paced
        make = _device_faults(during=False)(module.ThermalPrinter)  # warming up writes to the port
        self.device = make(port, auto_warm_up=paced, **timing)
        self.dot_print_s = timing.get("dot_print_s", 0.03)

    @property
    def columns(self) -> int:
        return self.profile.columns

    def legible(self, text: str) -> str:
        return legible(text, self.profile.codec)

    def _status(self) -> tuple[str, str] | None:
        """ESC v 0: bit 2 of the answer is set when the paper is out; no answer means offline. (The library's
        has_paper() fails on an empty answer from pyserial, so the query is sent here.)"""
        if not self.profile.reads_status:
            return None
        self.port.write(b"\x1bv\x00")
        answer = self.port.read(1)
        if not answer:
            return OFFLINE
        return PAPER_OUT if answer[0] & 0x04 else None

    @_device_faults(during=False)
    def check(self) -> None:
        found = self._status()
        if found is not None:
            raise _problem(found, during=False)

    def _bitmap(self, image: Image.Image) -> None:
        per_row, data = raster_rows(image)
        for top in range(0, image.height, self.MAX_BITMAP_ROWS):
            rows = min(self.MAX_BITMAP_ROWS, image.height - top)
            chunk = data[top * per_row : (top + rows) * per_row]
            self.port.write(bytes((0x12, 0x2A, rows, per_row)) + chunk)
            if self.paced:
                time.sleep(rows * self.dot_print_s)

    @_device_faults(during=True)
    def print_document(self, document: layout.Document) -> None:
        from adafruit_thermal_printer import thermal_printer as base

        printer = self.device
        printer.send_command("\x1bt\x00")  # code page 0: CP437, what `legible` wrote for
        aligns = {
            layout.LEFT: base.JUSTIFY_LEFT,
            layout.CENTER: base.JUSTIFY_CENTER,
            layout.RIGHT: base.JUSTIFY_RIGHT,
        }
        for line in document.lines:
            if line.kind == "qr":
                printer.justify = base.JUSTIFY_LEFT
                self._bitmap(qr_image(line.text, self.profile.qr_module, self.profile.dots))
                continue
            if line.kind == "blank":
                printer.feed(1)
                continue
            printer.justify = aligns[line.align]
            printer.bold = line.bold
            printer.size = base.SIZE_LARGE if line.double else base.SIZE_SMALL
            printer.print(line.text, encoding=self.profile.codec)
        printer.justify = base.JUSTIFY_LEFT
        printer.bold = False
        printer.size = base.SIZE_SMALL
        printer.feed(self.profile.feed_lines)
        found = self._status()
        if found is not None:
            raise _problem(found, during=True)


def open_printer(model: str, port: SerialPort | Escpos, **options: Any) -> EscposPrinter | AdafruitPrinter:
    """The driver for a configured model on an opened port."""
    chosen = profile(model)
    if chosen.escpos_profile is None:
        return AdafruitPrinter(port, **options)  # type: ignore[arg-type]
    return EscposPrinter(chosen, port)
