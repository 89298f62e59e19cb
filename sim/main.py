"""`fiscalbox-sim`: the simulators as long-running processes a person (or a box) can point at.

`fiscalbox-sim printer` serves a virtual ESC/POS printer on a pseudo-terminal; every page it cuts or tears off
is written to the output directory as NNNN.txt and NNNN.png, so a box configured with that port prints to
files that can be read and decoded.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from sim.printer import VirtualPrinter
from sim.pty_port import serve_on_pty


def serve_printer(args: argparse.Namespace) -> int:
    printer = VirtualPrinter(dots=args.dots, paper_lines=args.paper_lines)
    out = Path(args.out)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with serve_on_pty(printer) as port:
        started = {"port": port.path, "out": str(out), "dots": args.dots}
        if args.json:
            print(json.dumps(started), flush=True)
        else:
            print(f"virtual printer on {port.path} ({args.dots} dots); pages go to {out}/", flush=True)
        saved = 0
        while True:
            stopping = stop.wait(args.poll)
            if stopping:
                printer.end_page()  # a printer without a cutter: what is on the paper is torn off on exit
            while saved < len(printer.pages):
                saved += 1
                text, image = printer.save(printer.pages[saved - 1], out, f"{saved:04d}")
                if args.json:
                    print(json.dumps({"page": saved, "text": str(text), "image": str(image)}), flush=True)
                else:
                    print(f"page {saved}: {text}", flush=True)
            if stopping:
                return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fiscalbox-sim", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    printer = commands.add_parser("printer", help="a virtual ESC/POS printer on a pseudo-terminal")
    printer.add_argument(
        "--out", default="out/receipts", help="where pages are written (default out/receipts)"
    )
    printer.add_argument(
        "--dots", type=int, default=576, help="print width in dots: 576 for 80 mm, 384 for 58 mm"
    )
    printer.add_argument(
        "--paper-lines", type=int, default=None, help="paper left, in text lines (default endless)"
    )
    printer.add_argument("--poll", type=float, default=0.2, help=argparse.SUPPRESS)
    printer.add_argument("--json", action="store_true", help="one JSON object per line")
    printer.set_defaults(run=serve_printer)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
