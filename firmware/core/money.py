"""Exact fixed-point numbers: amounts in cents, quantities and prices in micro-units, percents in hundredths.

Money never touches a float. Inputs are decimal strings ("12.34", "-0.5") or whole numbers (JSON integers),
parsed digit by digit; a float is refused because it may already have lost the value (19.99 * 100 < 1999).
Rounding is half away from zero, so a credit note's amounts are exactly the negated invoice's.
"""

from firmware.core.errors import FiscalError

AMOUNT_PLACES = 2  # cents
QUANTITY_PLACES = 6  # micro-units, FDMS decimal(25,6)
PRICE_PLACES = 6  # FDMS receiptLinePrice is decimal(25,6)
PERCENT_PLACES = 2  # hundredths of a percent: 15.5 % -> 1550

_POW10 = [10**i for i in range(19)]
_ZEROS = "0" * 18


MAX_WHOLE_DIGITS = 19  # FDMS decimal(25,6) leaves 19 digits before the point
_WHOLE_LIMIT = 10**MAX_WHOLE_DIGITS  # a JSON integer is held to the same 19 digits as a decimal string


try:
    _IS_ASCII = str.isascii  # CPython, where isdigit() also accepts '²' and other scripts' digits
except AttributeError:
    _IS_ASCII = None  # type: ignore[assignment]  # MicroPython: isdigit() is ASCII-only already


def is_digits(text):
    """ASCII digits only: a superscript or Arabic-Indic digit must never pass as a number."""
    return text.isdigit() and (_IS_ASCII is None or _IS_ASCII(text))


def parse_fixed(value, places, field="amount"):
    """The integer number of 10**-places units in `value`; refuses anything not exact."""
    if type(value) is str:
        whole, dot, frac = value.partition(".")
        plain = whole.isdigit() and len(whole) <= MAX_WHOLE_DIGITS and len(frac) <= places
        if plain and (not dot or frac.isdigit()) and (_IS_ASCII is None or _IS_ASCII(value)):
            return int(whole + frac + _ZEROS[: places - len(frac)])  # the common case: plain and positive
    else:
        if isinstance(value, bool) or value is None:
            raise FiscalError("BOX_BAD_NUMBER", "A number is required here.", field)
        if isinstance(value, int):
            if -_WHOLE_LIMIT < value < _WHOLE_LIMIT:
                return value * _POW10[places]
            raise FiscalError("BOX_BAD_NUMBER", "This number is too large.", field)
        if isinstance(value, Fixed):
            return value.rescale(places, field)
        raise FiscalError(
            "BOX_BAD_NUMBER", "Send this number as an exact decimal, not a binary float.", field
        )
    sign = value[:1]
    whole, dot, frac = (value[1:] if sign == "-" or sign == "+" else value).partition(".")
    if not whole and frac:
        whole = "0"
    if not is_digits(whole) or (dot and not is_digits(frac)):
        raise FiscalError("BOX_BAD_NUMBER", "'" + value[:40] + "' is not a decimal number.", field)
    if len(whole.lstrip("0")) > MAX_WHOLE_DIGITS:
        raise FiscalError("BOX_BAD_NUMBER", "This number is too large.", field)
    if len(frac) > places:
        if frac[places:].strip("0"):
            raise FiscalError(
                "BOX_BAD_NUMBER",
                "'" + value + "' has more than " + str(places) + " decimal places.",
                field,
            )
        frac = frac[:places]
    units = int(whole + frac + _ZEROS[: places - len(frac)])
    return -units if sign == "-" else units


def format_fixed(units, places):
    """`units` of 10**-places as a plain decimal string with exactly `places` decimals: 1234, 2 -> '12.34'."""
    sign = "-" if units < 0 else ""
    units = -units if units < 0 else units
    if places == 0:
        return sign + str(units)
    whole, frac = divmod(units, _POW10[places])
    return sign + str(whole) + "." + ("%0" + str(places) + "d") % frac


def format_short(units, places):
    """Like `format_fixed` without trailing zeros after the point: 1500000 micro -> '1.5', 2000000 -> '2'."""
    text = format_fixed(units, places)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def div_half_up(numerator, denominator):
    """numerator / denominator rounded to the nearest integer, halves away from zero."""
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    magnitude = (2 * abs(numerator) + denominator) // (2 * denominator)
    return -magnitude if numerator < 0 else magnitude


def amount(value, field="amount"):
    return parse_fixed(value, AMOUNT_PLACES, field)


def quantity(value, field="quantity"):
    return parse_fixed(value, QUANTITY_PLACES, field)


def price(value, field="price"):
    return parse_fixed(value, PRICE_PLACES, field)


def percent(value, field="percent"):
    return parse_fixed(value, PERCENT_PLACES, field)


def line_total(unit_price, qty):
    """Cents for micro-unit price x micro-unit quantity, rounded once at the end."""
    return div_half_up(unit_price * qty, _POW10[PRICE_PLACES + QUANTITY_PLACES - AMOUNT_PLACES])


def percent_text(hundredths):
    """FDMS's percent in signature strings: two decimals with a dot; exempt (None) is empty."""
    return "" if hundredths is None else format_fixed(hundredths, PERCENT_PLACES)


class Fixed:
    """An exact decimal for JSON output: `places` decimals, or as few as exact when `trim` is set."""

    def __init__(self, units, places, trim=False):
        self.units = units
        self.places = places
        self.trim = trim

    def __str__(self):
        return format_short(self.units, self.places) if self.trim else format_fixed(self.units, self.places)

    def __repr__(self):
        return "Fixed(" + str(self) + ")"

    def rescale(self, places, field="amount"):
        if self.places <= places:
            return self.units * _POW10[places - self.places]
        factor = _POW10[self.places - places]
        if self.units % factor:
            raise FiscalError(
                "BOX_BAD_NUMBER", str(self) + " has more than " + str(places) + " decimal places.", field
            )
        return self.units // factor


def cents(units):
    return Fixed(units, AMOUNT_PLACES)


def micros(units):
    return Fixed(units, QUANTITY_PLACES, trim=True)


def hundredths(units):
    return Fixed(units, PERCENT_PLACES)
