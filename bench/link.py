"""A sale's round trip over the USB link, over a pty and at 115,200 baud, with Box.issue as the floor.

The box is the real service (`fiscalbox-device run`, its own process) with its link on a pty; the bench is the
POS: it signs a five-line sale with its enrolled P-256 key and the nonce of the previous answer, sends it,
reads the answer and verifies the device's signature on it, one sale after another. The floor is Box.issue
on a box of its own, in this process, on the same disk, with the same sales and request IDs (the link keeps
each sale's ID in the journal, exactly once); floor and pty rounds alternate.

A pty has no baud rate: the 115,200-baud figure puts a relay between two ptys that passes each byte no
sooner than a real line would (10 bits a byte, 11,520 bytes/s each way, in pieces of 16 bytes).

Targets (issue 11): over a pty, p99 <= 10 ms and >= 0.5x the direct rate; at 115,200 baud, a five-line
sale's round trip <= 150 ms. Writes bench/results/link.json (--quick: fewer sales, a smoke run).
Run: .venv/bin/python bench/link.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import select
import shutil
import statistics
import sys
import threading
import time
import tty
from functools import partial
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec
from measure import ROOT, file_system, percentile, results_head, say

from firmware import cose
from firmware.box import Box
from firmware.core import smp
from firmware.hosts import HostKeys
from firmware.journal import Journal
from firmware.service import SystemClock
from hardware import ECDSA_P256
from hardware.keystores import FileKeyStore

sys.path.insert(0, str(ROOT / "tests" / "firmware"))
from box_rig import SETTINGS  # noqa: E402
from link_rig import public_der  # noqa: E402
from service_rig import ENV, PASS, Service  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "link.json"
SCRATCH = ROOT / "out" / "bench"
BAUD = 115_200
BITS_A_BYTE = 10  # start bit, 8 data bits, stop bit
PIECE = 16  # bytes the relay passes at a time
ITEMS = [("Bread", 1, 115), ("Milk 1 l", 2, 189), ("Sugar 2 kg", 1, 450), ("Cooking oil 2 l", 1, 799),
         ("Matches", 10, 12)]  # fmt: skip


def five_line_sale(n: int) -> dict[str, Any]:
    """A five-line 15.5 % inclusive invoice paid in cash, as a POS sends it (amounts as decimal strings)."""
    lines = []
    total = 0
    for name, quantity, cents in ITEMS:
        price = "%d.%02d" % divmod(cents, 100)
        lines.append({
            "receiptLineType": "Sale", "receiptLineName": name, "receiptLinePrice": price,
            "receiptLineQuantity": str(quantity), "taxID": 517, "taxPercent": "15.5",
            "receiptLineHSCode": "19059000",
        })  # fmt: skip
        total += quantity * cents
    return {
        "receiptType": "FiscalInvoice",
        "receiptCurrency": "USD",
        "invoiceNo": "LINK-%d" % n,
        "receiptLinesTaxInclusive": True,
        "receiptLines": lines,
        "receiptPayments": [{"moneyTypeCode": "Cash", "paymentAmount": "%d.%02d" % divmod(total, 100)}],
    }


def make_box(root: Path) -> FileKeyStore:
    """A provisioned box with today's day open, on the real clock (the service runs on it)."""
    keys = FileKeyStore(root / "keys", PASS.encode())
    keys.generate(ECDSA_P256)
    with Journal(root / "journal.db", create=True) as journal:
        box = Box(journal, keys, SystemClock())
        box.provision(SETTINGS)
        box.open_day()
    return keys


def write_config(root: Path, port: str) -> str:
    path = root / "box.toml"
    path.write_text(
        f'[keys]\ndirectory = "{root / "keys"}"\n\n'
        f'[journal]\npath = "{root / "journal.db"}"\nanchor = "{root / "anchor.json"}"\n\n'
        f'[box]\nprovisioned = "{root / "provisioned.json"}"\n\n'
        f'[backup]\nat = ""\ndir = "{root / "backups"}"\nretain = 2\n\n'
        f'[link]\nport = "{port}"\nhosts = "{root / "hosts.json"}"\n'
    )
    return str(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Wire:
    """Two pty pairs joined by a relay that paces every byte as a `baud` line would, both ways. The box opens
    `box_path`; the host reads and writes `host_fd`."""

    def __init__(self, baud: int) -> None:
        self.host_master, self.host_fd = os.openpty()
        self.box_master, self.box_slave = os.openpty()
        for fd in (self.host_fd, self.box_slave):
            tty.setraw(fd)
        self.box_path = os.ttyname(self.box_slave)
        self.byte_time = BITS_A_BYTE / baud
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._relay, args=(self.host_master, self.box_master), daemon=True),
            threading.Thread(target=self._relay, args=(self.box_master, self.host_master), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _relay(self, source: int, sink: int) -> None:
        free = 0.0  # when the line is free again: a byte cannot arrive before the one before it has
        while not self.stop.is_set():
            ready, _, _ = select.select([source], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(source, 4096)
            except OSError:
                return
            arrived = time.perf_counter()  # the line's schedule runs from here: late wake-ups do not add up
            for at in range(0, len(data), PIECE):
                piece = data[at : at + PIECE]
                free = max(free, arrived) + len(piece) * self.byte_time
                delay = free - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                _write_all(sink, piece)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        for fd in (self.host_master, self.host_fd, self.box_master, self.box_slave):
            os.close(fd)


class Pty:
    """One pty pair: the box opens `box_path`, the host uses the master side."""

    def __init__(self) -> None:
        self.host_fd, self.box_slave = os.openpty()
        tty.setraw(self.box_slave)
        self.box_path = os.ttyname(self.box_slave)

    def close(self) -> None:
        os.close(self.host_fd)
        os.close(self.box_slave)


class Pos:
    """The POS end of the link: signs each sale with the nonce of the previous answer, verifies the answer."""

    def __init__(self, fd: int, key: ec.EllipticCurvePrivateKey, device_key: bytes) -> None:
        self.fd = fd
        self.alg, self.sign = cose.signer(key)
        self.kid = cose.key_id(key)
        self.device_key = device_key
        self.decoder = smp.Decoder()
        self.sequence = 0
        self.nonce = b""
        self.deflate = False
        self.sent = self.received = 0  # bytes on the line, the last exchange

    def exchange(self, group: int, command: int, op: int, body: dict[str, Any]) -> dict[str, Any]:
        data = cbor2.dumps(body)
        self.sequence = (self.sequence + 1) % 256
        packet = smp.encode(smp.header(op, group, self.sequence, command, len(data)) + data)
        self.sent, self.received = len(packet), 0
        _write_all(self.fd, packet)
        while True:
            select.select([self.fd], [], [])
            chunk = os.read(self.fd, 65536)
            self.received += len(chunk)
            frames = self.decoder.feed(chunk)
            if frames:
                return dict(cbor2.loads(frames[0][smp.HEADER_SIZE :]))

    def connect(self) -> None:
        answer = self.exchange(64, 0, smp.OP_READ, {})
        self.nonce = answer["nonce"]
        self.deflate = answer["ok"].get("deflate") is True  # the box takes compressed requests

    def issue(self, sale: dict[str, Any], rid: str) -> dict[str, Any]:
        payload = {"g": 64, "c": 6, "nonce": self.nonce, "rid": rid, "body": {"sale": sale}}
        request = cose.sign1(cbor2.dumps(payload), self.sign, self.alg, self.kid)
        body = {"zreq": cose.deflate(request)} if self.deflate else {"req": request}
        answer = self.exchange(64, 6, smp.OP_WRITE, body)
        self.nonce = answer["nonce"]
        signed = cose.inflate(answer["zcose"], 1 << 20) if "zcose" in answer else answer["cose"]
        message = cose.decode1(signed)
        cose.verify1(message, self.device_key)
        outcome = cbor2.loads(message.payload)
        if "ok" not in outcome:
            raise SystemExit(f"the box refused a bench sale: {outcome}")
        return dict(outcome["ok"])


SALE_NUMBERS = itertools.count(1)  # one invoice number and request ID per sale, across boxes


def direct_sale(box: Box) -> None:
    n = next(SALE_NUMBERS)
    box.issue(five_line_sale(n), request_id="bench-%d" % n)  # as the link calls it: the POS's request ID kept


def link_sale(host: Pos) -> None:
    n = next(SALE_NUMBERS)
    host.issue(five_line_sale(n), "bench-%d" % n)


def timed(count: int, one: Any) -> dict[str, Any]:
    """`count` calls of one() in a row: their latencies (ms) and the rate."""
    times = []
    began = time.perf_counter()
    for _ in range(count):
        start = time.perf_counter()
        one()
        times.append((time.perf_counter() - start) * 1000)
    elapsed = time.perf_counter() - began
    return {
        "sales": count,
        "p50_ms": round(statistics.median(times), 3),
        "p99_ms": round(percentile(times, 99), 3),
        "max_ms": round(max(times), 3),
        "per_second": round(count / elapsed, 1),
    }


class Served:
    """The service on its own box, its link on `port_path`, a POS key enrolled."""

    def __init__(self, root: Path, port_path: str, pos: ec.EllipticCurvePrivateKey) -> None:
        root.mkdir(parents=True)
        keys = make_box(root)
        self.device_key = keys.public_key_pem()
        keys.close()
        HostKeys(root / "hosts.json").enroll(public_der(pos), "pos", "bench till", "2026-12-01T00:00:00")
        self.service = Service(write_config(root, port_path), ENV)
        self.service.wait_for("link listening")

    def handle_ms(self) -> list[float]:
        """The service's own time for each sale so far (its link log line's `ms`: frame in to answer out)."""
        found = []
        while not self.service.lines.empty():
            line = self.service.lines.get()
            record = json.loads(line) if line else {}
            if record.get("message") == "link.request" and record.get("name") == "issue":
                found.append(float(record["ms"]))
        return found

    def close(self) -> None:
        self.service.stop()


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    names = ("p50_ms", "p99_ms", "max_ms", "per_second", "in_the_service_p50_ms")
    keys = [key for key in names if key in rounds[0]]
    return {key: round(statistics.median(r[key] for r in rounds), 3) for key in keys} | {
        "rounds": len(rounds),
        "sales_a_round": rounds[0]["sales"],
    }


class Floor:
    """Box.issue on a box of its own, in this process."""

    def __init__(self, root: Path) -> None:
        self.keys = make_box(root)
        self.journal = Journal(root / "journal.db")
        self.box = Box(self.journal, self.keys, SystemClock())

    def close(self) -> None:
        self.journal.close()
        self.keys.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few sales, one round")
    parser.add_argument("--json", action="store_true", help="also print the JSON result on stdout")
    args = parser.parse_args()
    # A box dates each receipt at least a second after the one before and runs at most 300 s ahead of its
    # clock (BOX_TOO_FAST), so every round gets fresh boxes and stays under 300 sales.
    rounds, sales, slow_rounds, slow_sales = (1, 50, 1, 5) if args.quick else (5, 250, 3, 25)
    warm = 10

    scratch = SCRATCH / f"link-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    pos_key = ec.generate_private_key(ec.SECP256R1())
    result = results_head("link", args.quick, file_system=file_system(scratch))
    floor_rounds: list[dict[str, Any]] = []
    pty_rounds: list[dict[str, Any]] = []
    baud_rounds: list[dict[str, Any]] = []
    try:
        for r in range(rounds):
            floor = Floor(scratch / f"floor-{r}")
            direct = partial(direct_sale, floor.box)
            timed(warm, direct)
            floor_rounds.append(timed(sales, direct))
            floor.close()
            pty = Pty()
            served = Served(scratch / f"pty-{r}", pty.box_path, pos_key)
            host = Pos(pty.host_fd, pos_key, served.device_key)
            host.connect()
            over_pty = partial(link_sale, host)
            timed(warm, over_pty)  # warm-up: imports, first pages, the answer algorithm learnt
            served.handle_ms()
            pty_rounds.append(timed(sales, over_pty))
            pty_rounds[-1]["in_the_service_p50_ms"] = round(statistics.median(served.handle_ms()), 3)
            served.close()
            pty.close()
            say(f"round {r + 1}: direct {floor_rounds[-1]}, pty {pty_rounds[-1]}")
        request_bytes, answer_bytes = host.sent, host.received

        for r in range(slow_rounds):
            wire = Wire(BAUD)
            served = Served(scratch / f"baud-{r}", wire.box_path, pos_key)
            host = Pos(wire.host_fd, pos_key, served.device_key)
            host.connect()
            paced = partial(link_sale, host)
            timed(2, paced)
            baud_rounds.append(timed(slow_sales, paced))
            served.close()
            wire.close()
            say(f"round {r + 1} at {BAUD} baud: {baud_rounds[-1]}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    direct_m, pty_m, baud_m = median_of(floor_rounds), median_of(pty_rounds), median_of(baud_rounds)
    ratio = pty_m["per_second"] / direct_m["per_second"]
    wire_ms = (request_bytes + answer_bytes) * BITS_A_BYTE / BAUD * 1000
    result.update(
        sale="five lines, 15.5 % inclusive, cash",
        request_bytes_on_the_line=request_bytes,
        answer_bytes_on_the_line=answer_bytes,
        direct=direct_m,
        pty=pty_m | {"ratio_to_direct": round(ratio, 3)},
        baud_115200=baud_m | {"bytes_alone_ms": round(wire_ms, 1)},
        rounds={"direct": floor_rounds, "pty": pty_rounds, "baud_115200": baud_rounds},
        targets={
            "pty_p99_ms<=10": pty_m["p99_ms"] <= 10,
            "pty_rate>=0.5x_direct": ratio >= 0.5,
            "baud_round_trip_ms<=150": baud_m["p50_ms"] <= 150,
        },
    )
    print(f"sale: five lines; request {request_bytes} bytes on the line, answer {answer_bytes} bytes")
    print("| path | p50 | p99 | sales/s | target |")
    print("|---|---|---|---|---|")
    print(f"| Box.issue directly (floor) | {direct_m['p50_ms']:.2f} ms | {direct_m['p99_ms']:.2f} ms | "
          f"{direct_m['per_second']:,.0f} | |")
    print(f"| over a pty | {pty_m['p50_ms']:.2f} ms | {pty_m['p99_ms']:.2f} ms | {pty_m['per_second']:,.0f} "
          f"({ratio:.2f}x) | p99 <= 10 ms, >= 0.5x |")
    inside = pty_m["in_the_service_p50_ms"]
    print(f"| of which in the service (frame in to answer out) | {inside:.2f} ms | | | |")
    print(f"| at 115,200 baud (paced relay) | {baud_m['p50_ms']:.1f} ms | {baud_m['p99_ms']:.1f} ms | "
          f"{baud_m['per_second']:,.1f} | <= 150 ms (the bytes alone: {wire_ms:.0f} ms) |")
    if not args.quick:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        say(f"wrote {RESULTS.relative_to(ROOT)}")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
