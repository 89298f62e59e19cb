"""Local date-times as FDMS writes them (`YYYY-MM-DDTHH:mm:ss`, no zone), parsed and compared exactly.

The core gets these strings from the box, which owns the clock and the time zone; it only needs to check
their shape, order them, and add hours (the day's maximum length).
"""

from firmware.core import money
from firmware.core.errors import FiscalError

_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _leap(year):
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_from_civil(year, month, day):
    """Days since 1970-01-01 in the proleptic Gregorian calendar."""
    year -= 1 if month <= 2 else 0
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(days):
    days += 719468
    era = (days if days >= 0 else days - 146096) // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (1 if month <= 2 else 0), month, day


def parse(text, field="receiptDate"):
    """(year, month, day, hour, minute, second) from `YYYY-MM-DDTHH:mm:ss`; refuses any other shape."""
    digits = ""
    shaped = isinstance(text, str) and len(text) == 19
    if shaped and text[4] + text[7] + text[10] + text[13] + text[16] == "--T::":
        digits = text[0:4] + text[5:7] + text[8:10] + text[11:13] + text[14:16] + text[17:19]
    if not money.is_digits(digits):
        raise FiscalError("BOX_BAD_DATE", "Dates must be local time as YYYY-MM-DDTHH:mm:ss.", field)
    number = int(digits)  # one conversion, then split: YYYYMMDDhhmmss
    year, rest = divmod(number, 10000000000)
    month, rest = divmod(rest, 100000000)
    day, rest = divmod(rest, 1000000)
    hour, rest = divmod(rest, 10000)
    minute, second = divmod(rest, 100)
    last = 29 if month == 2 and _leap(year) else (_DAYS_IN_MONTH[month - 1] if 1 <= month <= 12 else 0)
    if not (1 <= day <= last and hour < 24 and minute < 60 and second < 60):
        raise FiscalError("BOX_BAD_DATE", "'" + text + "' is not a real date and time.", field)
    return year, month, day, hour, minute, second


def seconds(text, field="receiptDate"):
    """Seconds since 1970-01-01T00:00:00 of the same (unzoned) local time: for ordering and differences."""
    year, month, day, hour, minute, second = parse(text, field)
    return _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second


def format_seconds(total):
    days, rest = divmod(total, 86400)
    year, month, day = _civil_from_days(days)
    return "%04d-%02d-%02dT%02d:%02d:%02d" % (year, month, day, rest // 3600, rest // 60 % 60, rest % 60)


def add_hours(text, hours):
    return format_seconds(seconds(text) + hours * 3600)


def months_before(text, months):
    """The same local time `months` calendar months earlier (day clamped to the month's end)."""
    year, month, day, hour, minute, second = parse(text)
    index = year * 12 + (month - 1) - months
    year, month = index // 12, index % 12 + 1
    last = 29 if month == 2 and _leap(year) else _DAYS_IN_MONTH[month - 1]
    return "%04d-%02d-%02dT%02d:%02d:%02d" % (year, month, min(day, last), hour, minute, second)
