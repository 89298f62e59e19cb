"""`fiscalbox-sim`: the simulators as long-running processes a person (or a box) can point at.

`fiscalbox-sim printer` serves a virtual ESC/POS printer on a pseudo-terminal; every page it cuts or tears off
is written to the output directory as NNNN.txt and NNNN.png, so a box configured with that port prints to
files that can be read and decoded.

`fiscalbox-sim fdms --config scenario.toml` serves the ZIMRA FDMS simulator (HTTPS with mutual TLS, and a
plain-HTTP admin port on 127.0.0.1); it prints where it listens, the CA certificate a device must trust, and
each device's ID and activation key, then serves until SIGINT or SIGTERM. Log lines (JSON) go to stderr.

`fiscalbox-sim box` runs the virtual box (sim/box.py): the real `fiscalbox-device run` on a pseudo-terminal,
with the virtual printer and the FDMS simulator (or `--fdms-url`), provisioned and registered through the
link; it prints one JSON line (the host port, the operator and POS key files, ...) and serves until SIGINT or
SIGTERM. The box's own log is STATE_DIR/service.log.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from firmware.core.errors import FiscalError
from firmware.logs import json_logging
from sim.printer import VirtualPrinter
from sim.pty_port import serve_on_pty


def fail(error: FiscalError) -> int:
    """A start that cannot go on: one line on stderr, exit status 2."""
    print(f"error {error.code}: {error.message}", file=sys.stderr, flush=True)
    return 2


def check_printer_args(args: argparse.Namespace) -> None:
    """FiscalError for arguments the printer could not run with, before anything is opened or written."""
    if not 8 <= args.dots <= 4096 or args.dots % 8:
        raise FiscalError(
            "SIM_ARGUMENT",
            f"--dots must be a multiple of 8 up to 4096 (576 for 80 mm, 384 for 58 mm), not {args.dots}.",
        )
    if args.paper_lines is not None and args.paper_lines < 0:
        raise FiscalError("SIM_ARGUMENT", f"--paper-lines must be 0 or more, not {args.paper_lines}.")
    if not args.poll > 0:
        raise FiscalError("SIM_ARGUMENT", "--poll must be more than 0 seconds.")
    out = Path(args.out)
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        where = "it is a file" if existing == out else f"{existing} is a file"
        raise FiscalError("SIM_OUT_DIR", f"Cannot write pages to {out}: {where}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FiscalError("SIM_OUT_DIR", f"Cannot write pages to {out}: {existing} is not writable.")


def serve_printer(args: argparse.Namespace) -> int:
    try:
        check_printer_args(args)
    except FiscalError as error:
        return fail(error)
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


def serve_fdms(args: argparse.Namespace) -> int:
    from sim.fdms.scenario import Scenario, ScenarioError
    from sim.fdms.server import FdmsSimulator

    json_logging(args.log_level, sys.stderr)
    try:
        scenario = Scenario.load(args.config) if args.config else Scenario.default()
    except OSError as error:
        return fail(FiscalError("SIM_SCENARIO", f"Cannot read {args.config}: {error.strerror}."))
    except UnicodeDecodeError:
        return fail(FiscalError("SIM_SCENARIO", f"{args.config} is not UTF-8 text."))
    except ScenarioError as error:
        return fail(FiscalError("SIM_SCENARIO", str(error)))
    if args.port is not None:
        scenario.server.port = args.port
    if args.admin_port is not None:
        scenario.server.admin_port = args.admin_port
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    simulator = FdmsSimulator(scenario, state_dir=args.state_dir)
    try:
        simulator.start()
    except FiscalError as error:
        return fail(error)
    with simulator as sim:
        devices = [
            {"id": d.id, "serial": d.serial, "mode": d.mode, "activation_key": d.activation_key}
            for d in scenario.devices
        ]
        if args.json:
            started = {
                "url": sim.url,
                "admin_url": sim.admin_url,
                "ca_cert": str(sim.ca_cert_path),
                "state_dir": str(sim.state_dir),
                "certificate_thumbprint": sim.certificate_thumbprint,
                "devices": devices,
            }
            print(json.dumps(started), flush=True)
        else:
            print(f"FDMS simulator on {sim.url}", flush=True)
            print(f"admin on {sim.admin_url}", flush=True)
            print(f"CA certificate: {sim.ca_cert_path}", flush=True)
            print(f"state: {sim.state_dir}", flush=True)
            for d in devices:
                line = f"device {d['id']} serial {d['serial']} ({d['mode']})"
                print(f"{line}: activation key {d['activation_key']}", flush=True)
        stop.wait()
    return 0


def serve_box(args: argparse.Namespace) -> int:
    """The virtual box until SIGINT or SIGTERM: one JSON line saying where it is, then its pages as files."""
    from sim.box import VirtualBox

    if args.fdms_ca and not args.fdms_url:
        return fail(FiscalError("SIM_ARGUMENT", "--fdms-ca goes with --fdms-url."))
    if args.fdms_url and not args.fdms_url.startswith("https://"):
        return fail(FiscalError("SIM_ARGUMENT", f"--fdms-url must be an https:// URL, not {args.fdms_url}."))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    scenario = None
    if args.scenario:
        from sim.fdms.scenario import Scenario, ScenarioError

        try:
            scenario = Scenario.load(args.scenario)
        except (OSError, UnicodeDecodeError, ScenarioError) as error:
            return fail(FiscalError("SIM_SCENARIO", f"Cannot use the scenario {args.scenario}: {error}."))
    vbox = VirtualBox(
        args.state_dir,
        fdms_url=args.fdms_url,
        fdms_ca=args.fdms_ca,
        scenario=scenario,
        pages=args.out,
        device_id=args.device_id,
        serial=args.serial,
        setup=not args.no_setup,
    )
    try:
        vbox.start()
        print(json.dumps(vbox.facts()), flush=True)
        while not stop.wait(args.poll):
            vbox.save_pages()
            if vbox.process is not None and vbox.process.poll() is not None:
                stopped = vbox.stop()
                return fail(
                    FiscalError(
                        "SIM_BOX_SERVICE", f"The box's service stopped (exit {stopped}); see {vbox.log_path}."
                    )
                )
    except FiscalError as error:
        vbox.stop()
        return fail(error)
    except OSError as error:  # no pseudo-terminals left, a folder that vanished: said, never a traceback
        vbox.stop()
        return fail(FiscalError("SIM_BOX", f"The virtual box cannot run: {error.strerror or error}."))
    code = vbox.stop()
    return (
        0
        if code in (0, None)
        else fail(
            FiscalError(
                "SIM_BOX_SERVICE", f"The box's service stopped with exit {code}; see {vbox.log_path}."
            )
        )
    )


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
    fdms = commands.add_parser("fdms", help="the ZIMRA FDMS simulator (HTTPS, mutual TLS)")
    fdms.add_argument(
        "--config", help="scenario TOML (default: the built-in scenario; see sim/fdms/example.toml)"
    )
    fdms.add_argument(
        "--state-dir", help="keys, certificates and state (default: the scenario's server.state_dir)"
    )
    fdms.add_argument("--port", type=int, help="HTTPS port (default: the scenario's; 0 = a free port)")
    fdms.add_argument("--admin-port", type=int, help="admin port on 127.0.0.1 (default: the scenario's)")
    fdms.add_argument("--json", action="store_true", help="print the start-up facts as one JSON object")
    fdms.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    fdms.set_defaults(run=serve_fdms)
    box = commands.add_parser("box", help="the virtual box: the real service on a pseudo-terminal")
    box.add_argument("--state-dir", default="out/vbox", help="the box's state (default out/vbox); reused")
    box.add_argument("--fdms-url", help="an FDMS to use instead of starting the simulator (https://...)")
    box.add_argument("--fdms-ca", help="with --fdms-url: the PEM file of the CA its certificate is from")
    box.add_argument("--scenario", help="the simulator's scenario TOML (default: the built-in one)")
    box.add_argument("--device-id", type=int, default=10001, help="the device to register (default 10001)")
    box.add_argument("--serial", help="its serial (default: the scenario's for that device)")
    box.add_argument("--out", help="where printed pages go (default STATE_DIR/receipts)")
    box.add_argument(
        "--no-setup", action="store_true", help="start the service only: no keys enrolled, not registered"
    )
    box.add_argument("--poll", type=float, default=0.2, help=argparse.SUPPRESS)
    box.set_defaults(run=serve_box)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
