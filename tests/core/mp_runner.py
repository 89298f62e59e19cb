"""Runs the core's tests under MicroPython, where pytest does not exist.

Usage (from the project root): micropython tests/core/mp_runner.py
Imports every core module first, so a module using something MicroPython lacks fails the build, then calls
every `test_*` function of every tests/core/test_*.py. Prints 'N passed, N failed'; exit 1 on failure.
"""

import os
import sys

CORE_MODULES = ("errors", "money", "wire", "localtime", "fdms", "chain", "layout", "smp")


def main():
    sys.path.insert(0, ".")
    sys.path.insert(0, "tests/core")
    for name in CORE_MODULES:
        __import__("firmware.core." + name)
    names = sorted([f[:-3] for f in os.listdir("tests/core") if f.startswith("test_") and f.endswith(".py")])
    passed = failed = 0
    for module_name in names:
        module = __import__(module_name)
        for attr in sorted(dir(module)):
            if not attr.startswith("test_"):
                continue
            try:
                getattr(module, attr)()
                passed += 1
            except Exception as error:  # report every failure, then fail the run
                failed += 1
                print("FAIL", module_name + "." + attr, type(error).__name__, error)
                sys.print_exception(error)
    print("micropython: %d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed or not passed else 0)


main()
