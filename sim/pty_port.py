"""A pseudo-terminal in front of a VirtualPrinter, so a driver opens it as a real serial port.

A driver's own serial code (pyserial `Serial(path, 19200, timeout=1)`, python-escpos's `Serial` backend) then
runs unchanged: bytes written to the slave side reach the printer, and its status replies come back to be
read.
`unplug_after` pulls the cable at a chosen byte, for tests of a printer that vanishes mid-print.
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
        self.received = 0  # bytes the printer got: where to pull the cable, counted without a clock
        self._unplug_at: int | None = None
        self._closed = False
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
            if self._unplug_at is not None and self.received + len(data) > self._unplug_at:
                self._printer.write(data[: self._unplug_at - self.received])
                self.received = self._unplug_at
                self._close_pty()
                return
            self.received += len(data)
            self._printer.write(data)
            reply = self._printer.read(self._printer.in_waiting)
            if reply:
                os.write(self._master, reply)

    def unplug_after(self, count: int) -> None:
        """Pull the cable after the next `count` bytes: those reach the printer (and are answered); the byte
        after them and all that follows is lost, and the pty disappears, so the driver's writes and reads
        fail from then on, as when the printer is unplugged in the middle of a print."""
        self._unplug_at = self.received + count

    def _close_pty(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._master)
            os.close(self._slave)

    def close(self) -> None:
        """Stop serving; the pty disappears (a driver still holding it open gets errors, as on unplug)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2)
        self._close_pty()

    def __enter__(self) -> PtyPort:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def serve_on_pty(printer: VirtualPrinter) -> PtyPort:
    """Expose `printer` on a new pseudo-terminal; connect to `PtyPort.path`."""
    return PtyPort(printer)
