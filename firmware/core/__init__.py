"""The fiscal rules: pure functions and plain classes, no I/O, no third-party imports.

Everything here must run unchanged under CPython and MicroPython.
"""
