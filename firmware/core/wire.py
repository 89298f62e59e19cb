"""The exact JSON the box sends: keys sorted, exact decimals, the same bytes under CPython and MicroPython.

`json.dumps` cannot write an exact decimal (only floats), and MicroPython's dicts keep no insertion order, so
the core writes its own JSON. Amounts are `money.Fixed` values and come out as JSON numbers.
"""

from firmware.core.money import Fixed

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _string(text):
    out = ['"']
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def dumps(value):
    """Compact JSON text for `value` (dict, list, tuple, str, int, bool, None, Fixed)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Fixed):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join([dumps(item) for item in value]) + "]"
    if isinstance(value, dict):
        keys = sorted(value.keys())
        return "{" + ",".join([_string(k) + ":" + dumps(value[k]) for k in keys]) + "}"
    raise TypeError("cannot write " + repr(type(value)) + " as exact JSON")
