"""A pseudo-terminal in front of a VirtualPrinter, so a driver opens it as a real serial port.

A driver's own serial code (pyserial `Serial(path, 19200, timeout=1)`, python-escpos's `Serial` backend) then
runs unchanged: bytes written to the slave side reach the printer, and its status replies come back to be
read.
"""

from __future__ import annotations

import os
import select
import threading
import tty
from types import TracebackType

from sim.printer import VirtualPrinter


class PtyPort:
    """The slave device at `path` is the printer's serial port until close()."""

    def __init__(self, printer: VirtualPrinter) -> None:
        self._printer = printer
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline: ESC/POS is binary
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="pty-printer", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        """Feed what the driver writes to the printer and send back whatever it answers."""
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:  # the slave side was closed under us: nothing more will come
                return
            if not data:
                continue
            self._printer.write(data)
            reply = self._printer.read(self._printer.in_waiting)
            if reply:
                os.write(self._master, reply)

    def close(self) -> None:
        """Stop serving; the pty disappears (a driver still holding it open gets errors, as on unplug)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self._master)
        os.close(self._slave)

    def __enter__(self) -> PtyPort:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def serve_on_pty(printer: VirtualPrinter) -> PtyPort:
    """Expose `printer` on a new pseudo-terminal; connect to `PtyPort.path`."""
    return PtyPort(printer)
