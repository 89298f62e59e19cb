"""A virtual ESC/POS thermal printer: driver bytes in, receipts out as a text dump and a PNG.

Drivers are judged by what a printer would make of their bytes, not by the bytes themselves. The interpreter
follows Epson's ESC/POS (plus the CSN-A2 commands the Adafruit library sends), keeps raster images bit-exact,
renders native QR codes with `qrcode`, answers status queries with Epson's bit layouts, and simulates paper
out, cover open and offline so a driver's error paths can be tested without hardware.

Rules a driver author may trip over (all as on an Epson TM printer):
- ESC a and ESC { only take effect at the beginning of a line; sent mid-line they are ignored.
- Text is printed on LF (or ESC d / ESC J / FF / a cut); text with no line end never reaches the paper.
- A line wider than the paper wraps onto the next line.
- A native QR code is printed without a quiet zone: the driver must leave the space around it.
- While a fault is set, mode commands still apply and status queries are answered, but everything that would
  put ink or feed on the paper is dropped and the page is marked incomplete; the next page starts once
  printing is possible again.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import qrcode
import qrcode.exceptions
from PIL import Image, ImageChops, ImageDraw, ImageFont, ImageOps

Align = Literal["left", "center", "right"]

ESC, GS, FS, DLE, DC2 = 0x1B, 0x1D, 0x1C, 0x10, 0x12
EOT, ENQ, DC4 = 0x04, 0x05, 0x14

FONT_CELLS = {0: (12, 24), 1: (9, 17)}  # font A and font B: one character cell in dots (width, height)
LINE_GAP = 6  # dots between printed lines in the PNG: Epson's default 30-dot line pitch for font A
LINE_DOTS = 24  # paper accounting: one text line of font A is 24 dots of paper
BARCODE_HEIGHT = 162  # Epson's default GS h
TAB_STOPS = tuple(range(8, 8 * 33, 8))  # Epson's default: every 8 characters

# ESC t n -> Python codec, in Epson's numbering (python-escpos's 'TM-T88V' and 'default' profiles use it).
CODE_PAGES = {
    0: "cp437",
    1: "cp932",  # Katakana: the half-width katakana of JIS X 0201, as cp932 decodes single bytes
    2: "cp850",
    3: "cp860",
    4: "cp863",
    5: "cp865",
    13: "cp857",
    14: "cp737",
    15: "iso8859_7",
    16: "cp1252",
    17: "cp866",
    18: "cp852",
    19: "cp858",
    32: "cp720",
    33: "cp775",
    34: "cp855",
    35: "cp861",
    36: "cp862",
    37: "cp864",
    38: "cp869",
    39: "iso8859_2",
    40: "iso8859_15",
    44: "cp1125",
    45: "cp1250",
    46: "cp1251",
    47: "cp1253",
    48: "cp1254",
    49: "cp1255",
    50: "cp1256",
    51: "cp1257",
    52: "cp1258",
    53: "kz1048",
}

ALIGNMENTS: dict[int, Align] = {0: "left", 1: "center", 2: "right", 48: "left", 49: "center", 50: "right"}
QR_LEVELS = {48: "L", 49: "M", 50: "Q", 51: "H"}
_QR_ERROR_CORRECTION = {
    "L": qrcode.constants.ERROR_CORRECT_L,
    "M": qrcode.constants.ERROR_CORRECT_M,
    "Q": qrcode.constants.ERROR_CORRECT_Q,
    "H": qrcode.constants.ERROR_CORRECT_H,
}

FAULT_PAPER_OUT, FAULT_COVER_OPEN, FAULT_OFFLINE = "paper out", "cover open", "offline"


# ---------------------------------------------------------------------------------------------------------
# What a page holds


@dataclass(frozen=True)
class Style:
    """How one character is printed: the attributes ESC !, ESC E, ESC -, GS B, GS ! and ESC M set."""

    bold: bool = False
    underline: int = 0  # dots: 0, 1 or 2
    reverse: bool = False
    width: int = 1  # magnification, 1..8
    height: int = 1
    font: int = 0  # 0 = font A (12x24), 1 = font B (9x17)

    @property
    def cell(self) -> tuple[int, int]:
        """The character's footprint on paper, in dots."""
        cell_width, cell_height = FONT_CELLS[self.font]
        return cell_width * self.width, cell_height * self.height


@dataclass(frozen=True)
class Cell:
    char: str
    style: Style


@dataclass
class TextLine:
    """One printed line of text; an empty line is a blank line fed by LF or ESC d."""

    cells: list[Cell]
    align: Align = "left"
    upside_down: bool = False

    @property
    def text(self) -> str:
        return "".join(cell.char for cell in self.cells)

    @property
    def width(self) -> int:
        return sum(cell.style.cell[0] for cell in self.cells)

    @property
    def height(self) -> int:
        return max((cell.style.cell[1] for cell in self.cells), default=FONT_CELLS[0][1])

    def dump(self, dots: int) -> list[str]:
        """The line on a character grid: font A columns (font B's if the whole line is font B).

        A magnified character keeps its real footprint, so a double-width one is followed by a space.
        """
        if not self.cells:
            return [""]
        unit = 9 if all(cell.style.font == 1 for cell in self.cells) else 12
        grid: list[str | None] = []
        x = _offset(self.align, self.width, dots)
        for cell in self.cells:
            column = x // unit
            while column < len(grid) and grid[column] is not None:
                column += 1  # a narrower font B character on the font A grid: next free column
            grid.extend([None] * (column + 1 - len(grid)))
            grid[column] = cell.char
            x += cell.style.cell[0]
        return ["".join(char or " " for char in grid).rstrip()]

    def render(self, dots: int, glyphs: _Glyphs) -> Image.Image:
        height = self.height
        strip = Image.new("L", (dots, height + LINE_GAP), 255)
        x = _offset(self.align, self.width, dots)
        for cell in self.cells:
            glyph = glyphs.cell(cell)
            strip.paste(glyph, (x, height - glyph.height))  # characters of mixed heights share the baseline
            x += glyph.width
        if self.upside_down:
            strip.paste(strip.crop((0, 0, dots, height)).rotate(180), (0, 0))
        return strip


@dataclass
class Raster:
    """A bit image (GS v 0, GS ( L, ESC *, DC2 *), black = 0, one pixel per printed dot."""

    image: Image.Image
    align: Align = "left"

    def dump(self, dots: int) -> list[str]:
        return [_place("[image %dx%d]" % self.image.size, self.align, dots)]

    def render(self, dots: int, glyphs: _Glyphs) -> Image.Image:
        return _strip_with(self.image, self.align, dots)


@dataclass
class QrCode:
    """A native QR code (GS ( k, fn 81), drawn module-exact without a quiet zone, as the printer does."""

    payload: str
    data: bytes
    module_size: int
    error_correction: str
    align: Align
    image: Image.Image

    def dump(self, dots: int) -> list[str]:
        return [_place("[QR %s]" % self.payload, self.align, dots)]

    def render(self, dots: int, glyphs: _Glyphs) -> Image.Image:
        return _strip_with(self.image, self.align, dots)


@dataclass
class Barcode:
    """A 1-D barcode (GS k); the PNG shows a labelled placeholder, not scannable bars."""

    system: int  # GS k m
    data: str  # the human-readable text (CODE128 code-set switches removed)
    height: int
    hri: int  # GS H: 0 none, 1 above, 2 below, 3 both
    align: Align

    def dump(self, dots: int) -> list[str]:
        return [_place("[barcode %s]" % self.data, self.align, dots)]

    def render(self, dots: int, glyphs: _Glyphs) -> Image.Image:
        label_height = FONT_CELLS[0][1] + 4
        above = label_height if self.hri in (1, 3) else 0
        below = label_height if self.hri in (2, 3) else 0
        width = min(dots, max(96, 11 * 2 * (len(self.data) + 3)))
        box = Image.new("L", (width, above + self.height + below), 255)
        draw = ImageDraw.Draw(box)
        bars = (0, above, width - 1, above + self.height - 1)
        draw.rectangle(bars, outline=0, width=2)  # a crossed box: visibly a barcode's place, never decodable
        draw.line(bars, fill=0, width=2)
        draw.line((0, above + self.height - 1, width - 1, above), fill=0, width=2)
        label = TextLine([Cell(char, Style()) for char in self.data], "center").render(width, glyphs)
        for top in ([0] if above else []) + ([above + self.height + 2] if below else []):
            box.paste(label.crop((0, 0, width, label_height - 2)), (0, top))
        return _strip_with(box, self.align, dots)


@dataclass
class Feed:
    """Paper fed by ESC J with nothing printed."""

    dots: int

    def dump(self, dots: int) -> list[str]:
        return [""] * (self.dots // (LINE_DOTS + LINE_GAP))

    def render(self, dots: int, glyphs: _Glyphs) -> Image.Image:
        return Image.new("L", (dots, max(self.dots, 0)), 255)


Block = TextLine | Raster | QrCode | Barcode | Feed


@dataclass
class Page:
    """One receipt: everything printed between two cuts (or end_page calls)."""

    dots: int
    lines: list[Block] = field(default_factory=list)
    incomplete: bool = False
    fault: str | None = None  # why it is incomplete: "paper out", "cover open" or "offline"

    @property
    def qr_payloads(self) -> list[str]:
        return [block.payload for block in self.lines if isinstance(block, QrCode)]

    @property
    def has_content(self) -> bool:
        """True once anything but blank paper was printed."""
        return any(
            isinstance(block, (Raster, QrCode, Barcode))
            or (isinstance(block, TextLine) and len(block.cells) > 0)
            for block in self.lines
        )

    def text(self) -> str:
        """The deterministic text dump that golden files keep.

        One line per printed line on the paper's character grid (dots // 12 columns; dots // 9 for a line
        all in font B), alignment applied with spaces, trailing spaces stripped. A magnified character keeps
        its footprint (double width: the character, then a space). QR codes, images and barcodes print as
        `[QR payload]`, `[image WxH]` and `[barcode data]`, aligned as the printer aligns the object. Blank
        lines at the end of the page (the feed before the cut) are dropped; an incomplete page ends with
        `[paper out]`, `[cover open]` or `[offline]`.
        """
        out: list[str] = []
        for block in self.lines:
            out.extend(block.dump(self.dots))
        while out and not out[-1]:
            out.pop()  # the feed before the cut is paper, not content
        if self.incomplete:
            out.append("[%s]" % (self.fault or FAULT_PAPER_OUT))
        return "".join(line + "\n" for line in out)

    def image(self) -> Image.Image:
        """The page as printed: white paper `dots` wide, one pixel per dot, mode "1"."""
        glyphs = _Glyphs()
        strips = [block.render(self.dots, glyphs) for block in self.lines]
        page = Image.new("L", (self.dots, max(1, sum(strip.height for strip in strips))), 255)
        y = 0
        for strip in strips:
            page.paste(strip, (0, y))
            y += strip.height
        return page.convert("1", dither=Image.Dither.NONE)


def _offset(align: Align, width: int, dots: int) -> int:
    free = max(0, dots - width)
    return {"left": 0, "center": free // 2, "right": free}[align]


def _place(label: str, align: Align, dots: int) -> str:
    """A placeholder label aligned on the font A grid the way the printer aligns the object itself."""
    free = max(0, dots // FONT_CELLS[0][0] - len(label))
    return " " * {"left": 0, "center": free // 2, "right": free}[align] + label


def _strip_with(image: Image.Image, align: Align, dots: int) -> Image.Image:
    strip = Image.new("L", (dots, image.height), 255)
    strip.paste(
        image.convert("L").crop((0, 0, min(image.width, dots), image.height)),
        (_offset(align, image.width, dots), 0),
    )
    return strip


class _Glyphs:
    """Character bitmaps at the printer's cell sizes, made once per rendered page.

    Pillow's built-in bitmap font (6x11, Latin-1) doubled gives font A's 12x24 cell a printer-like look with
    no system fonts; box-drawing and block characters are drawn, other characters fall back to their
    unaccented letter or '?'.
    """

    def __init__(self) -> None:
        self._font = ImageFont.load_default_imagefont()
        self._bases: dict[tuple[str, int, bool], Image.Image] = {}

    def cell(self, cell: Cell) -> Image.Image:
        style = cell.style
        glyph = self._base(cell.char, style.font, style.bold)
        width, height = style.cell
        if glyph.size != (width, height):
            glyph = glyph.resize((width, height), Image.Resampling.NEAREST)
        if style.reverse:
            return ImageOps.invert(glyph)  # Epson prints no underline in reverse mode
        if style.underline:
            glyph = glyph.copy()
            ImageDraw.Draw(glyph).rectangle((0, height - style.underline, width - 1, height - 1), fill=0)
        return glyph

    def _base(self, char: str, font: int, bold: bool) -> Image.Image:
        key = (char, font, bold)
        if key not in self._bases:
            glyph = _shape(char, *FONT_CELLS[font]) or self._letter(char, font)
            if bold:  # double-strike, shifted one dot: what "emphasized" looks like on a thermal head
                shifted = Image.new("L", glyph.size, 255)
                shifted.paste(glyph, (1, 0))
                glyph = ImageChops.darker(glyph, shifted)
            self._bases[key] = glyph
        return self._bases[key]

    def _letter(self, char: str, font: int) -> Image.Image:
        small = Image.new("L", (6, 11), 255)
        draw = ImageDraw.Draw(small)
        draw.text((0, 0), _latin1(char), font=self._font, fill=0)
        if char == "\u20ac":  # the euro sign, common in cp858/cp1252 receipts: a C with two bars
            draw.line((0, 4, 3, 4), fill=0)
            draw.line((0, 6, 3, 6), fill=0)
        cell_width, cell_height = FONT_CELLS[font]
        cell = Image.new("L", (cell_width, cell_height), 255)
        if font == 0:
            cell.paste(small.resize((12, 22), Image.Resampling.NEAREST), (0, 1))
        else:
            scaled = small.resize((9, 16), Image.Resampling.BILINEAR).point(lambda v: 0 if v < 160 else 255)
            cell.paste(scaled, (0, 0))
        return cell


def _latin1(char: str) -> str:
    """A character the bitmap font has: itself, its unaccented base letter, or '?'."""
    if char == "\u20ac":
        return "C"
    if 0x20 <= ord(char) < 0x7F or 0xA0 <= ord(char) <= 0xFF:
        return char
    base = unicodedata.normalize("NFKD", char)[:1]
    return base if base and 0x20 <= ord(base) < 0x7F else "?"


def _shape(char: str, width: int, height: int) -> Image.Image | None:
    """Box-drawing, block and shade characters (cp437's frames and separators), drawn to join cell to cell."""
    name = unicodedata.name(char, "")
    if not name.startswith(
        (
            "BOX DRAWINGS",
            "FULL BLOCK",
            "UPPER HALF",
            "LOWER HALF",
            "LEFT HALF",
            "RIGHT HALF",
            "LIGHT SHADE",
            "MEDIUM SHADE",
            "DARK SHADE",
        )
    ):
        return None
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    cx, cy = width // 2, height // 2
    if name.startswith("BOX DRAWINGS"):
        offsets = (-2, 2) if "DOUBLE" in name else (0,)
        thick = 2 if "HEAVY" in name else 1
        both_h, both_v = "HORIZONTAL" in name, "VERTICAL" in name
        for d in offsets:
            if both_h or "LEFT" in name:
                draw.rectangle((0, cy + d, cx, cy + d + thick - 1), fill=0)
            if both_h or "RIGHT" in name:
                draw.rectangle((cx, cy + d, width - 1, cy + d + thick - 1), fill=0)
            if both_v or "UP" in name:
                draw.rectangle((cx + d, 0, cx + d + thick - 1, cy), fill=0)
            if both_v or "DOWN" in name:
                draw.rectangle((cx + d, cy, cx + d + thick - 1, height - 1), fill=0)
        return image
    boxes = {
        "FULL BLOCK": (0, 0, width - 1, height - 1),
        "UPPER HALF": (0, 0, width - 1, cy - 1),
        "LOWER HALF": (0, cy, width - 1, height - 1),
        "LEFT HALF": (0, 0, cx - 1, height - 1),
        "RIGHT HALF": (cx, 0, width - 1, height - 1),
    }
    for prefix, box in boxes.items():
        if name.startswith(prefix):
            draw.rectangle(box, fill=0)
            return image
    for y in range(height):
        for x in range(width):
            quarter = (x + 2 * (y % 2)) % 4 == 0
            dark = {"L": quarter, "M": (x + y) % 2 == 0, "D": not quarter}[name[0]]
            if dark:
                image.putpixel((x, y), 0)
    return image


def _qr_image(data: bytes, module_size: int, level: str) -> Image.Image:
    """The symbol a printer would print for `data`: model 2, smallest version, no quiet zone."""
    code = qrcode.QRCode(version=None, error_correction=_QR_ERROR_CORRECTION[level], box_size=1, border=0)
    code.add_data(data)
    code.make(fit=True)
    matrix = code.get_matrix()
    side = len(matrix)
    image = Image.new("1", (side, side), 1)
    for y, row in enumerate(matrix):
        for x, dark in enumerate(row):
            if dark:
                image.putpixel((x, y), 0)
    return image.resize((side * module_size, side * module_size), Image.Resampling.NEAREST)


def _bitmap(data: bytes, row_bytes: int, rows: int) -> Image.Image:
    """Raster bytes (MSB = leftmost dot, 1 = black) as an image, bit for bit."""
    if not row_bytes or not rows:
        return Image.new("1", (row_bytes * 8, rows), 1)
    return Image.frombytes("1", (row_bytes * 8, rows), bytes(data), "raw", "1;I")


def _columns(data: bytes, columns: int, stripe: int) -> Image.Image:
    """ESC * column data (each column `stripe` dots tall, MSB at the top) as an image."""
    if not columns:
        return Image.new("1", (0, stripe), 1)
    pixels = bytearray(b"\xff" * (columns * stripe))
    per_column = stripe // 8
    for x in range(columns):
        for j in range(per_column):
            byte = data[x * per_column + j]
            for bit in range(8):
                if byte & (0x80 >> bit):
                    pixels[(j * 8 + bit) * columns + x] = 0
    return Image.frombytes("L", (columns, stripe), bytes(pixels)).convert("1", dither=Image.Dither.NONE)


def _code128_text(data: bytes) -> str:
    """What CODE128 prints as its human-readable line: code-set switches ({A {B {C) removed."""
    out: list[str] = []
    code_set = "B"
    i = 0
    while i < len(data):
        if data[i] == 0x7B and i + 1 < len(data):
            following = chr(data[i + 1])
            if following in "ABC":
                code_set = following
            elif following == "{":
                out.append("{")
            i += 2  # {1 {2 {3 {4 {S: function characters, not printed
            continue
        out.append("%02d" % data[i] if code_set == "C" else chr(data[i]))
        i += 1
    return "".join(out)


def _charmap(codec: str | None) -> tuple[str, ...]:
    """The character each byte prints as under one code page (ASCII below 0x80, as every page has)."""
    chars: list[str] = []
    for byte in range(256):
        if byte < 0x80:
            chars.append(chr(byte) if 0x20 <= byte < 0x7F else " ")
            continue
        try:
            char = bytes([byte]).decode(codec) if codec else "?"
        except UnicodeDecodeError:
            char = "?"
        if unicodedata.category(char) == "Zs":
            char = " "
        elif not char.isprintable():
            char = "?"
        chars.append(char)
    return tuple(chars)


# ---------------------------------------------------------------------------------------------------------
# The printer

Handler = Callable[[bytes], None]  # receives the whole command, prefix included
Parser = Callable[[bytes, int], "int | None"]  # returns where the command ends, or None if more bytes are due


class VirtualPrinter:
    """An ESC/POS printer in memory, shaped like a serial port so a driver can use it as pyserial's Serial."""

    def __init__(self, dots: int = 576, paper_lines: int | None = None) -> None:
        self.dots = dots
        self.timeout: float = 1.0  # pyserial compatibility only
        self.paper_out = False
        self.cover_open = False
        self.offline = False
        self.paper_near_end = False
        self.pages: list[Page] = []
        self.unknown: list[bytes] = []
        self._paper_dots: int | None = None
        self.paper_lines = paper_lines
        self._lock = threading.RLock()
        self._input = bytearray()
        self._replies = bytearray()
        self._page = Page(dots)
        self._charmaps: dict[int, tuple[str, ...]] = {}
        self._fixed, self._variable = self._command_tables()
        self._controls: dict[int, Callable[[], None]] = {
            0x0A: self._line_feed,
            0x0B: self._line_feed,  # VT with no vertical tabs set: a line feed
            0x0C: self._form_feed,
            0x09: self._tab,
        }
        self._reset()

    # -- serial-port face ------------------------------------------------------------------------------

    def write(self, data: bytes) -> int:
        """Interpret bytes; a command split across writes waits for its remaining bytes."""
        if isinstance(data, str):
            raise TypeError("unicode strings are not supported, please encode to bytes: %r" % data)
        chunk = bytes(data)
        with self._lock:
            self._input += chunk
            buffer = bytes(self._input)
            position = 0
            while position < len(buffer):
                end = self._step(buffer, position)
                if end is None:
                    break
                position = end
            del self._input[:position]
        return len(chunk)

    def read(self, size: int = 1) -> bytes:
        """Pending status replies, oldest first; b"" when there are none (never blocks)."""
        with self._lock:
            reply = bytes(self._replies[:size])
            del self._replies[:size]
            return reply

    @property
    def in_waiting(self) -> int:
        return len(self._replies)

    def reset_input_buffer(self) -> None:
        with self._lock:
            self._replies.clear()

    def flush(self) -> None:
        """Nothing is buffered on the way in: write() interprets at once."""

    # -- paper and pages -------------------------------------------------------------------------------

    @property
    def paper_lines(self) -> int | None:
        """Text lines of paper left (None = endless roll); images use it up at 24 dot rows a line."""
        if self._paper_dots is None:
            return None
        return max(0, -(-self._paper_dots // LINE_DOTS))

    @paper_lines.setter
    def paper_lines(self, lines: int | None) -> None:
        self._paper_dots = None if lines is None else lines * LINE_DOTS

    @property
    def current_page(self) -> Page:
        """The page being printed (not yet cut)."""
        return self._page

    def load_paper(self, lines: int | None = None) -> None:
        """A fresh roll: the stub of a receipt cut short by paper out is torn off into `pages` first."""
        with self._lock:
            if self._page.incomplete:
                self._finish_page()
            self.paper_out = False
            self.paper_near_end = False
            self.paper_lines = lines

    def end_page(self) -> Page | None:
        """Tear off the current page, for printers without a cutter; None when nothing was printed."""
        with self._lock:
            return self._finish_page()

    def save(self, page: Page, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write `stem.txt` (the text dump) and `stem.png` (the page image) into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        text_path, image_path = directory / (stem + ".txt"), directory / (stem + ".png")
        text_path.write_text(page.text(), encoding="utf-8")
        page.image().save(image_path)
        return text_path, image_path

    # -- status bytes (Epson layouts) ------------------------------------------------------------------

    def _realtime_status(self, n: int) -> int:
        """DLE EOT n: bits 1 and 4 are fixed on in every reply."""
        status = 0x12
        if n == 1 and (self.offline or self.cover_open or self.paper_out):
            status |= 0x08  # offline: the printer goes offline on paper end and cover open too
        elif n == 2:
            status |= (0x04 if self.cover_open else 0) | (0x20 if self.paper_out else 0)
        elif n == 4:
            status |= (0x0C if self.paper_near_end or self.paper_out else 0) | (0x60 if self.paper_out else 0)
        return status

    def _paper_sensor(self) -> int:
        """GS r 1 and ESC v: bits 0-1 near end, bits 2-3 paper end (Adafruit's has_paper tests bit 2)."""
        return (0x03 if self.paper_near_end or self.paper_out else 0) | (0x0C if self.paper_out else 0)

    # -- the interpreter -------------------------------------------------------------------------------

    def _reset(self) -> None:
        """ESC @: modes back to power-on; unprinted text in the line buffer is discarded."""
        self._bold = False
        self._underline = 0
        self._reverse = False
        self._width = 1
        self._height = 1
        self._font = 0
        self._upside_down = False
        self._align: Align = "left"
        self._code_page = 0
        self._tabs: tuple[int, ...] = TAB_STOPS
        self._line: list[Cell] = []
        self._line_x = 0
        self._line_align: Align = "left"
        self._line_upside_down = False
        self._barcode_height = BARCODE_HEIGHT
        self._barcode_hri = 0
        self._qr_module = 3
        self._qr_level = "L"
        self._qr_model = 50
        self._qr_data = b""
        self._graphics: Image.Image | None = None
        self._raster_open = False  # the last thing printed is an image that the next raster extends
        self._column_line = False  # an ESC * stripe is on the line: the next LF ends it and feeds nothing

    def _step(self, buffer: bytes, i: int) -> int | None:
        byte = buffer[i]
        if byte >= 0x20:
            end = i
            while end < len(buffer) and buffer[end] >= 0x20:
                end += 1
            self._text(buffer[i:end])
            return end
        if byte in (ESC, GS, FS, DLE, DC2):
            if i + 1 >= len(buffer):
                return None
            prefix = buffer[i : i + 2]
            if prefix in self._fixed:
                count, handler = self._fixed[prefix]
                if i + 2 + count > len(buffer):
                    return None
                handler(buffer[i : i + 2 + count])
                return i + 2 + count
            if prefix in self._variable:
                return self._variable[prefix](buffer, i)
            self.unknown.append(prefix)
            return i + 2
        control = self._controls.get(byte)
        if control is not None:
            control()
        elif byte not in (0x00, 0x0D, 0x07, 0x18):  # NUL, CR (no auto line feed), BEL, CAN: nothing to do
            self.unknown.append(bytes([byte]))
        return i + 1

    def _command_tables(self) -> tuple[dict[bytes, tuple[int, Handler]], dict[bytes, Parser]]:
        """Commands by their two-byte prefix: fixed parameter counts, and those that find their own end."""

        def quiet(command: bytes) -> None:
            """Understood, and nothing on paper depends on it."""

        record = self.unknown.append  # understood well enough to skip, but its effect is not simulated

        def e(char: str) -> bytes:
            return bytes([ESC]) + char.encode()

        def g(char: str) -> bytes:
            return bytes([GS]) + char.encode()

        def f(char: str) -> bytes:
            return bytes([FS]) + char.encode()

        def d(char: str) -> bytes:
            return bytes([DC2]) + char.encode()

        fixed: dict[bytes, tuple[int, Handler]] = {
            e("@"): (0, lambda c: self._reset()),
            e("a"): (1, self._set_align),
            e("E"): (1, lambda c: setattr(self, "_bold", bool(c[2] & 1))),
            e("G"): (1, lambda c: setattr(self, "_bold", bool(c[2] & 1))),  # double-strike looks like bold
            e("!"): (1, self._set_print_mode),
            e("-"): (1, self._set_underline),
            e("{"): (1, self._set_upside_down),
            e("M"): (1, lambda c: setattr(self, "_font", 0 if c[2] in (0, 48) else 1)),
            e("t"): (1, self._set_code_page),
            e("R"): (1, quiet),
            e("d"): (1, lambda c: self._feed_lines(c[2])),
            e("J"): (1, lambda c: self._feed_dots(c[2])),
            e("2"): (0, quiet),
            e("3"): (1, quiet),
            e("A"): (1, quiet),
            e("+"): (1, quiet),
            e("7"): (3, quiet),  # CSN-A2 heating parameters
            e("8"): (2, quiet),  # CSN-A2 sleep
            e("="): (1, quiet),  # select peripheral / CSN-A2 online-offline
            e("v"): (1, lambda c: self._replies.append(self._paper_sensor())),  # CSN-A2 takes a parameter
            e("i"): (0, lambda c: self._cut()),
            e("m"): (0, lambda c: self._cut()),
            e("p"): (3, quiet),  # cash drawer pulse
            e("B"): (2, quiet),  # buzzer
            e("c"): (2, quiet),  # panel buttons, paper sensors, paper type
            e("U"): (1, quiet),
            e("r"): (1, quiet),  # colour; the Adafruit legacy class reads a status after it, Epson sends none
            e("S"): (0, quiet),
            e("?"): (1, quiet),
            e(" "): (1, record),
            e("$"): (2, record),
            e("\\"): (2, record),
            e("V"): (1, record),
            e("L"): (0, record),
            e("T"): (1, record),
            e("W"): (8, record),
            e("%"): (1, record),
            e("e"): (1, record),
            e("K"): (1, record),
            e("u"): (1, record),
            g("!"): (1, self._set_size),
            g("B"): (1, lambda c: setattr(self, "_reverse", bool(c[2] & 1))),
            g("h"): (1, lambda c: setattr(self, "_barcode_height", c[2] or BARCODE_HEIGHT)),
            g("w"): (1, quiet),
            g("H"): (1, lambda c: setattr(self, "_barcode_hri", c[2] & 0x03)),
            g("f"): (1, quiet),
            g("r"): (1, self._transmit_status),
            g("b"): (1, quiet),
            g("|"): (1, quiet),
            g("a"): (1, quiet),  # automatic status back is not simulated; queries are
            g("P"): (2, quiet),
            g("L"): (2, record),
            g("W"): (2, record),
            g("I"): (1, record),
            g("$"): (2, record),
            g("\\"): (2, record),
            g("/"): (1, record),
            g("Z"): (1, record),
            f("&"): (0, quiet),
            f("."): (0, quiet),
            f("!"): (1, record),
            f("-"): (1, record),
            f("C"): (1, record),
            f("W"): (1, record),
            f("S"): (2, record),
            f("p"): (2, record),
            bytes([DLE, ENQ]): (1, quiet),
            d("#"): (1, quiet),  # CSN-A2 print density
            d("T"): (0, quiet),  # CSN-A2 test page
        }
        variable: dict[bytes, Parser] = {
            e("D"): self._parse_tab_stops,
            e("*"): self._parse_column_image,
            e("&"): self._parse_user_characters,
            g("V"): self._parse_cut,
            g("k"): self._parse_barcode,
            g("v"): self._parse_raster,
            g("("): self._parse_extended,
            g("8"): self._parse_graphics_long,
            g("*"): self._parse_downloaded_image,
            d("*"): self._parse_bitmap,
            bytes([DLE, EOT]): self._parse_realtime_status,
            bytes([DLE, DC4]): self._parse_realtime_request,
        }
        return fixed, variable

    # -- modes -----------------------------------------------------------------------------------------

    def _set_align(self, command: bytes) -> None:
        alignment = ALIGNMENTS.get(command[2])
        if alignment is not None and not self._line:  # only at the beginning of a line
            self._align = alignment

    def _set_upside_down(self, command: bytes) -> None:
        if not self._line:
            self._upside_down = bool(command[2] & 1)

    def _set_print_mode(self, command: bytes) -> None:
        """ESC ! sets font, bold, size and underline at once; the last of ESC !/GS !/ESC E/ESC - wins."""
        mode = command[2]
        self._font = mode & 0x01
        self._bold = bool(mode & 0x08)
        self._height = 2 if mode & 0x10 else 1
        self._width = 2 if mode & 0x20 else 1
        self._underline = 1 if mode & 0x80 else 0

    def _set_size(self, command: bytes) -> None:
        self._width = min((command[2] >> 4) + 1, 8)
        self._height = min((command[2] & 0x0F) + 1, 8)

    def _set_underline(self, command: bytes) -> None:
        n = command[2]
        if n in (0, 1, 2, 48, 49, 50):
            self._underline = n % 48

    def _set_code_page(self, command: bytes) -> None:
        self._code_page = command[2]
        if command[2] not in CODE_PAGES:
            self.unknown.append(command)  # printed as '?' above 0x80: no Python codec for this page

    def _style(self) -> Style:
        return Style(self._bold, self._underline, self._reverse, self._width, self._height, self._font)

    # -- text ------------------------------------------------------------------------------------------

    def _text(self, raw: bytes) -> None:
        if self._blocked():
            return
        chars = self._charmaps.get(self._code_page)
        if chars is None:
            chars = self._charmaps[self._code_page] = _charmap(CODE_PAGES.get(self._code_page))
        style = self._style()
        for byte in raw:
            self._add(Cell(chars[byte], style))

    def _add(self, cell: Cell) -> None:
        width = cell.style.cell[0]
        if self._line and self._line_x + width > self.dots:
            self._end_line()  # the printer wraps a line that does not fit
        if not self._line:
            self._line_align, self._line_upside_down = self._align, self._upside_down
        self._line.append(cell)
        self._line_x += width
        self._column_line = False

    def _tab(self) -> None:
        if self._blocked():
            return
        step = FONT_CELLS[self._font][0] * self._width
        for stop in self._tabs:
            target = stop * step
            if target > self.dots:
                return
            if target > self._line_x:
                space = Cell(" ", self._style())
                while self._line_x < target:
                    self._add(space)
                return

    def _line_feed(self) -> None:
        if self._column_line and not self._line:
            self._column_line = False
            return
        self._end_line()

    def _form_feed(self) -> None:
        if self._line:
            self._end_line()

    def _end_line(self) -> None:
        """Print the line buffer (an empty one feeds a blank line)."""
        cells, self._line, self._line_x = self._line, [], 0
        line = TextLine(cells, self._line_align, self._line_upside_down) if cells else TextLine([])
        self._emit(line, LINE_DOTS * max((cell.style.height for cell in cells), default=0))

    def _feed_lines(self, count: int) -> None:
        """ESC d n: print the buffer and feed n lines in all (so ESC d 1 is a LF)."""
        if self._line:
            self._end_line()
            count -= 1
        for _ in range(count):
            self._end_line()

    def _feed_dots(self, dots: int) -> None:
        if self._line:
            self._end_line()
        else:
            self._emit(Feed(dots), 0)

    def _parse_tab_stops(self, buffer: bytes, i: int) -> int | None:
        """ESC D n1 ... NUL: up to 32 ascending columns."""
        end = buffer.find(b"\x00", i + 2, i + 2 + 33)
        if end < 0:
            if len(buffer) < i + 2 + 33:
                return None
            end = i + 2 + 32
        stops: list[int] = []
        for column in buffer[i + 2 : end]:
            if not stops or column > stops[-1]:
                stops.append(column)
        self._tabs = tuple(stops)
        return end + 1 if end < len(buffer) and buffer[end] == 0 else end

    def _parse_user_characters(self, buffer: bytes, i: int) -> int | None:
        """ESC & y c1 c2 [x d1...d(y*x)]...: skipped; user-defined characters are not simulated."""
        if len(buffer) < i + 5:
            return None
        height, first, last = buffer[i + 2], buffer[i + 3], buffer[i + 4]
        position = i + 5
        for _ in range(max(0, last - first + 1)):
            if position >= len(buffer):
                return None
            position += 1 + buffer[position] * height
        if position > len(buffer):
            return None
        self.unknown.append(buffer[i:position])
        return position

    # -- images ----------------------------------------------------------------------------------------

    def _raster(self, image: Image.Image) -> None:
        if not image.width or not image.height:
            return
        if self._line:
            self._end_line()
        if image.width > self.dots:
            image = image.crop((0, 0, self.dots, image.height))  # dots past the print area are lost
        self._emit(Raster(image, self._align), image.height)

    def _parse_raster(self, buffer: bytes, i: int) -> int | None:
        """GS v 0 m xL xH yL yH data: row-major raster, m doubles width (1, 3) and height (2, 3)."""
        if len(buffer) < i + 8:
            return None
        if buffer[i + 2] != 0x30:
            self.unknown.append(buffer[i : i + 3])
            return i + 3
        mode = buffer[i + 3] % 48
        row_bytes = buffer[i + 4] + 256 * buffer[i + 5]
        rows = buffer[i + 6] + 256 * buffer[i + 7]
        end = i + 8 + row_bytes * rows
        if len(buffer) < end:
            return None
        image = _bitmap(buffer[i + 8 : end], row_bytes, rows)
        scale_x, scale_y = (2 if mode in (1, 3) else 1), (2 if mode in (2, 3) else 1)
        if (scale_x, scale_y) != (1, 1):
            image = image.resize((image.width * scale_x, image.height * scale_y), Image.Resampling.NEAREST)
        self._raster(image)
        return end

    def _parse_bitmap(self, buffer: bytes, i: int) -> int | None:
        """DC2 * r n data: the CSN-A2 (Adafruit) bitmap, r rows of n bytes, MSB leftmost."""
        if len(buffer) < i + 4:
            return None
        rows, row_bytes = buffer[i + 2], buffer[i + 3]
        end = i + 4 + rows * row_bytes
        if len(buffer) < end:
            return None
        self._raster(_bitmap(buffer[i + 4 : end], row_bytes, rows))
        return end

    def _parse_column_image(self, buffer: bytes, i: int) -> int | None:
        """ESC * m nL nH data: an 8- or 24-dot stripe; single density doubles width, 8-dot triples height."""
        if len(buffer) < i + 5:
            return None
        mode, columns = buffer[i + 2], buffer[i + 3] + 256 * buffer[i + 4]
        if mode not in (0, 1, 32, 33):
            self.unknown.append(buffer[i : i + 3])
            return i + 3
        stripe = 24 if mode >= 32 else 8
        end = i + 5 + columns * stripe // 8
        if len(buffer) < end:
            return None
        image = _columns(buffer[i + 5 : end], columns, stripe)
        scale_x, scale_y = (2 if mode in (0, 32) else 1), (3 if stripe == 8 else 1)
        if (scale_x, scale_y) != (1, 1):
            image = image.resize((image.width * scale_x, image.height * scale_y), Image.Resampling.NEAREST)
        self._raster(image)
        self._column_line = True
        return end

    def _parse_graphics_long(self, buffer: bytes, i: int) -> int | None:
        """GS 8 L p1 p2 p3 p4 m fn ...: GS ( L with a four-byte length."""
        if len(buffer) < i + 7:
            return None
        if buffer[i + 2] != ord("L"):
            self.unknown.append(buffer[i : i + 3])
            return i + 3
        length = int.from_bytes(buffer[i + 3 : i + 7], "little")
        end = i + 7 + length
        if len(buffer) < end:
            return None
        self._graphics_function(buffer[i:end], buffer[i + 7 : end])
        return end

    def _graphics_function(self, command: bytes, body: bytes) -> None:
        """GS ( L / GS 8 L body `m fn params`: store raster graphics (fn 112) and print them (fn 50)."""
        if len(body) < 2:
            self.unknown.append(command)
            return
        function, params = body[1], body[2:]
        if function == 112 and len(params) >= 8 and params[0] == 48 and params[3] == 49:
            scale_x, scale_y = params[1], params[2]
            width, height = params[4] + 256 * params[5], params[6] + 256 * params[7]
            row_bytes = (width + 7) // 8
            data = params[8 : 8 + row_bytes * height]
            if len(data) < row_bytes * height:
                self.unknown.append(command)
                return
            image = _bitmap(data, row_bytes, height).crop((0, 0, width, height))
            if (scale_x, scale_y) != (1, 1):
                image = image.resize((width * scale_x, height * scale_y), Image.Resampling.NEAREST)
            self._graphics = image
        elif function in (50, 2):
            if self._graphics is not None:
                image, self._graphics = self._graphics, None
                self._raster(image)
        elif function in (49, 1):
            pass  # reference dot density
        else:
            self.unknown.append(command)  # multi-tone, NV and download graphics are not simulated

    def _parse_downloaded_image(self, buffer: bytes, i: int) -> int | None:
        """GS * x y data: define a downloaded image (x*y*8 bytes); skipped."""
        if len(buffer) < i + 4:
            return None
        end = i + 4 + buffer[i + 2] * buffer[i + 3] * 8
        if len(buffer) < end:
            return None
        self.unknown.append(buffer[i:end])
        return end

    # -- GS ( functions: QR codes and graphics ---------------------------------------------------------

    def _parse_extended(self, buffer: bytes, i: int) -> int | None:
        """GS ( X pL pH ...: the length says where every such function ends, known or not."""
        if len(buffer) < i + 5:
            return None
        end = i + 5 + buffer[i + 3] + 256 * buffer[i + 4]
        if len(buffer) < end:
            return None
        command, body = buffer[i:end], buffer[i + 5 : end]
        kind = chr(buffer[i + 2])
        if kind == "k":
            self._symbol_function(command, body)
        elif kind == "L":
            self._graphics_function(command, body)
        else:
            self.unknown.append(command)
        return end

    def _symbol_function(self, command: bytes, body: bytes) -> None:
        """GS ( k body `cn fn params`: the QR functions (cn 49); other symbologies are not simulated."""
        if len(body) < 2 or body[0] != 49:
            self.unknown.append(command)
            return
        function, params = body[1], body[2:]
        if function == 65 and params:
            self._qr_model = params[0]
            if params[0] != 50:
                self.unknown.append(command)  # model 1 and micro QR are drawn as model 2
        elif function == 67 and params:
            self._qr_module = max(1, min(params[0], 16))
        elif function == 69 and params and params[0] in QR_LEVELS:
            self._qr_level = QR_LEVELS[params[0]]
        elif function == 80 and params:
            self._qr_data = bytes(params[1:])
        elif function == 81:
            self._print_qr(command)
        else:
            self.unknown.append(command)

    def _print_qr(self, command: bytes) -> None:
        if self._line:
            self._end_line()
        if not self._qr_data:
            return  # nothing stored: the printer prints nothing
        try:
            image = _qr_image(self._qr_data, self._qr_module, self._qr_level)
        except qrcode.exceptions.DataOverflowError:
            self.unknown.append(command)
            return
        payload = self._qr_data.decode("utf-8", errors="replace")
        block = QrCode(payload, self._qr_data, self._qr_module, self._qr_level, self._align, image)
        self._emit(block, image.height)

    # -- barcodes and cuts -----------------------------------------------------------------------------

    def _parse_barcode(self, buffer: bytes, i: int) -> int | None:
        """GS k m: m < 65 takes data up to NUL; m >= 65 takes a length byte."""
        if len(buffer) < i + 3:
            return None
        system = buffer[i + 2]
        if system < 65:
            end = buffer.find(b"\x00", i + 3, i + 3 + 256)
            if end < 0:
                if len(buffer) < i + 3 + 256:
                    return None
                self.unknown.append(buffer[i : i + 3])
                return i + 3
            data, after = buffer[i + 3 : end], end + 1
        else:
            if len(buffer) < i + 4:
                return None
            after = i + 4 + buffer[i + 3]
            if len(buffer) < after:
                return None
            data = buffer[i + 4 : after]
        text = _code128_text(data) if system == 73 else data.decode("latin-1")
        if self._line:
            self._end_line()
        block = Barcode(system, text, self._barcode_height, self._barcode_hri, self._align)
        self._emit(block, self._barcode_height + (LINE_DOTS if self._barcode_hri else 0))
        return after

    def _parse_cut(self, buffer: bytes, i: int) -> int | None:
        """GS V m (0, 1, 48, 49) or GS V m n (65, 66: feed n dots first; 97, 98, 103, 104)."""
        if len(buffer) < i + 3:
            return None
        mode = buffer[i + 2]
        if mode in (0, 1, 48, 49):
            self._cut()
            return i + 3
        if mode in (65, 66, 97, 98, 103, 104):
            if len(buffer) < i + 4:
                return None
            if mode in (65, 66) and buffer[i + 3]:
                self._feed_dots(buffer[i + 3])
            self._cut()
            return i + 4
        self.unknown.append(buffer[i : i + 3])
        return i + 3

    def _cut(self) -> None:
        if self._blocked():
            return
        if self._line:
            self._end_line()
        self._finish_page()

    # -- status ----------------------------------------------------------------------------------------

    def _parse_realtime_status(self, buffer: bytes, i: int) -> int | None:
        """DLE EOT n: answered whatever state the printer is in."""
        if len(buffer) < i + 3:
            return None
        n = buffer[i + 2]
        if n in (1, 2, 3, 4):
            self._replies.append(self._realtime_status(n))
            return i + 3
        if n in (7, 8):  # ink and peeler status take one more byte
            if len(buffer) < i + 4:
                return None
            self.unknown.append(buffer[i : i + 4])
            return i + 4
        self.unknown.append(buffer[i : i + 3])
        return i + 3

    def _parse_realtime_request(self, buffer: bytes, i: int) -> int | None:
        """DLE DC4 fn ...: drawer pulse (fn 1) is quiet; power-off and buffer clear are recorded."""
        if len(buffer) < i + 3:
            return None
        extra = {1: 2, 2: 2, 7: 3, 8: 7}.get(buffer[i + 2], 0)
        end = i + 3 + extra
        if len(buffer) < end:
            return None
        if buffer[i + 2] != 1:
            self.unknown.append(buffer[i:end])
        return end

    def _transmit_status(self, command: bytes) -> None:
        """GS r n: 1/49 paper sensor, 2/50 drawer (closed)."""
        if command[2] in (1, 49):
            self._replies.append(self._paper_sensor())
        elif command[2] in (2, 50):
            self._replies.append(0x00)
        else:
            self.unknown.append(command)

    # -- faults, paper and pages -----------------------------------------------------------------------

    def _fault(self) -> str | None:
        if self.paper_out:
            return FAULT_PAPER_OUT
        if self.cover_open:
            return FAULT_COVER_OPEN
        if self.offline:
            return FAULT_OFFLINE
        return None

    def _blocked(self) -> bool:
        """True (and the page marked) when print data must be dropped because of a fault."""
        fault = self._fault()
        if fault is None and self._paper_dots is not None and self._paper_dots <= 0:
            self.paper_out = True
            fault = FAULT_PAPER_OUT
        if fault is None:
            return False
        self._interrupt(fault)
        return True

    def _interrupt(self, fault: str) -> None:
        if not self._page.incomplete:
            self._page.incomplete, self._page.fault = True, fault
        self._raster_open = False

    def _emit(self, block: Block, paper_dots: int) -> None:
        """Put a block on the page, using up paper; merges an image sent in slices back into one."""
        if self._blocked():
            return
        if self._page.incomplete:
            self._finish_page()  # a fault cut that page short; printing resumes on a new one
        previous = self._page.lines[-1] if self._page.lines else None
        if (
            isinstance(block, Raster)
            and isinstance(previous, Raster)
            and self._raster_open
            and previous.align == block.align
            and previous.image.width == block.image.width
        ):
            joined = Image.new("1", (block.image.width, previous.image.height + block.image.height), 1)
            joined.paste(previous.image, (0, 0))
            joined.paste(block.image, (0, previous.image.height))
            previous.image = joined
        else:
            self._page.lines.append(block)
        self._raster_open = isinstance(block, Raster)
        self._column_line = False
        if paper_dots and self._paper_dots is not None:
            self._paper_dots -= paper_dots
            if self._paper_dots <= 0:
                self.paper_out = True
                self._interrupt(FAULT_PAPER_OUT)

    def _finish_page(self) -> Page | None:
        page, self._page = self._page, Page(self.dots)
        self._raster_open = False
        if page.has_content or page.incomplete:
            self.pages.append(page)
            return page
        return None
