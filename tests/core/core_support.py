"""Shared by the core's tests under CPython (pytest) and MicroPython (mp_runner.py): no pytest here."""

import json

from firmware.core.errors import FiscalError


def _here():
    path = __file__
    cut = path.rfind("/")
    return path[:cut] if cut >= 0 else "."


def vectors(name):
    """The shared JSON vector file tests/vectors/<name>.json."""
    with open(_here() + "/../vectors/" + name + ".json") as handle:
        return json.load(handle)


def raises(code, fn, *args):
    """Call fn(*args) and return the FiscalError it raises; fail unless it raises one with `code`."""
    try:
        fn(*args)
    except FiscalError as error:
        assert error.code == code, "expected " + code + ", got " + error.code
        return error
    raise AssertionError("expected FiscalError " + code + ", nothing raised")
