"""FDMS delivery: the simulator's SubmitReceipt rate with 20 devices at once, and one box catching up.

The simulator runs in its own process (`python -m sim.main fdms`, so its threads do not share a GIL with the
devices), over mutual TLS on loopback; its state and the journals are on the project's disk.
  concurrent: 20 registered boxes, each with its receipts issued through Box.issue and its day's OpenDay
              delivered; then 20 threads, one per device, each with its own FdmsClient and TLS connection
              (opened before the clock starts), post their device's receipts in global-number order with
              submit_receipt. Figure: receipts answered per second, all devices together. No target.
  catch-up:   one box with 10,000 receipts queued, delivered by Delivery.run_until_idle (the next receipt
              from the journal, SubmitReceipt, FDMS's signature checked, the answer committed). The floor:
              the same 10,000 bodies posted back-to-back with a bare FdmsClient.submit_receipt on one
              connection. Target: catch-up >= 0.5x the floor.
Each round starts the simulator on a fresh copy of a state saved after set-up (devices registered, days open,
nothing submitted): a receipt FDMS already holds is answered from its store unjudged, so no round may see
another's. The boxes' clock steps one second per receipt (FDMS flags two receipts in one second, RCPT030) and
starts hours before the wall clock, so no receiptDate is in the simulator's future.
Writes bench/results/fdms.json (--quick: out/bench/fdms-quick.json, a smoke run).
Run: .venv/bin/python bench/fdms.py [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import shutil
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import apsw
from measure import ROOT, file_system, percentile, profile_lines, results_head, say

from firmware.box import Box
from firmware.delivery import Delivery
from firmware.fdms_client import FdmsClient
from firmware.journal import Journal
from hardware.keystores import FileKeyStore
from sim.shop import Shop

RESULTS = ROOT / "bench" / "results" / "fdms.json"
SCRATCH = ROOT / "out" / "bench"
PASSPHRASE = b"bench pass phrase"
CATCH_UP_DEVICE = 20001
PLAN_KEYS = ("rounds", "devices", "per_device", "backlog")
FULL_PLAN = dict(zip(PLAN_KEYS, (3, 20, 100, 10_000), strict=True))
QUICK_PLAN = dict(zip(PLAN_KEYS, (2, 20, 10, 300), strict=True))
TARGET = 0.5


class StepClock:
    """The boxes' clock, moved by the bench: one second per receipt, starting `behind` seconds ago."""

    def __init__(self, behind: float) -> None:
        self.t = float(int(time.time() - behind))

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Simulator:
    """`fiscalbox-sim fdms` as a child process on a state directory: its URL and CA from the --json line."""

    def __init__(self, config: Path, state: Path) -> None:
        state.parent.mkdir(parents=True, exist_ok=True)
        self.log = state.with_suffix(".log")
        command = [
            sys.executable,
            "-m",
            "sim.main",
            "fdms",
            "--config",
            str(config),
            "--state-dir",
            str(state),
        ]
        command += ["--port", "0", "--admin-port", "0", "--json", "--log-level", "warning"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise SystemExit(f"the simulator did not start:\n{self.log.read_text()[-2000:]}")
        facts = json.loads(line)
        self.url, self.ca = str(facts["url"]), str(facts["ca_cert"])

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def scenario_toml(ids: list[int]) -> str:
    """The default scenario (taxes 1, 2, 3, 517 as sim/shop.py sells) with these Online devices."""
    return "".join(f'[[devices]]\nid = {i}\nserial = "FB-{i}"\nactivation_key = "KEY{i}"\n\n' for i in ids)


def client_for(sim: Simulator, device_id: int, keys: FileKeyStore | None) -> FdmsClient:
    tls = keys.tls_key_material() if keys is not None and keys.certificate_pem() is not None else None
    return FdmsClient(sim.url, device_id, "fiscalbox", "1.0", ca_file=sim.ca, tls=tls)


class Rig:
    """A box on its own journal and key store with its client and delivery, as tests/e2e/fdms_site.py has."""

    def __init__(self, where: Path, device_id: int, sim: Simulator, clock: StepClock) -> None:
        where.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.keys = FileKeyStore(where / "keys", PASSPHRASE)
        self.client = client_for(sim, device_id, self.keys)
        self.journal = Journal(where / "journal.db", create=True)
        self.box = Box(self.journal, self.keys, clock, fdms_client=self.client)
        self.delivery = Delivery(self.box, self.client, clock, backoff_base=0.5, backoff_max=60)
        self.box.delivery = self.delivery

    def bodies(self) -> list[str]:
        return [body for (body,) in self.journal.db.execute("SELECT body FROM receipts ORDER BY global_no")]

    def close(self) -> None:
        self.client.close()
        self.journal.close()


def prepare(work: Path, config: Path, ids: list[int], per_device: int) -> dict[str, Any]:
    """Register the boxes, open their days, issue their receipts (round-robin, one second apart) and deliver
    each day's OpenDay; the simulator is then stopped, so its state directory is the template of every round.
    """
    clock = StepClock(behind=len(ids) * per_device + 3600)
    state = work / "fdms-template"
    begin = time.perf_counter()
    with Simulator(config, state) as sim:
        rigs = [Rig(work / f"box-{i}", i, sim, clock) for i in ids]
        for rig in rigs:
            rig.box.register(rig.device_id, f"FB-{rig.device_id}", f"KEY{rig.device_id}", ["USD", "ZWG"])
            clock.advance(60)
            rig.box.open_day()
        shops = [Shop(seed=rig.device_id, device_id=rig.device_id) for rig in rigs]
        last_report = time.perf_counter()
        for n in range(per_device):
            for rig, shop in zip(rigs, shops, strict=True):
                clock.advance(1)
                sale = shop.next_sale()
                shop.issued(sale, rig.box.issue(sale))
            if time.perf_counter() - last_report > 15:
                last_report = time.perf_counter()
                say(f"  issued {(n + 1) * len(rigs):,} of {per_device * len(rigs):,}")
        for rig in rigs:
            if rig.delivery.step() != "opened":
                raise SystemExit(f"device {rig.device_id}: the OpenDay did not go: {rig.delivery.problem}")
        bodies = {rig.device_id: rig.bodies() for rig in rigs}
        for rig in rigs:
            rig.close()
    return {"state": state, "bodies": bodies, "clock_t": clock.t, "seconds": time.perf_counter() - begin}


def fresh_state(template: Path, work: Path, name: str) -> Path:
    state = work / name
    shutil.rmtree(state, ignore_errors=True)
    shutil.copytree(template, state)
    return state


def flagged(answer: dict[str, Any]) -> int:
    return 1 if answer.get("validationErrors") else 0


# ---------------------------------------------------------------------------------------------------------
# 1. Twenty devices at once


def concurrent_round(
    setup: dict[str, Any], work: Path, config: Path, limit: int | None = None
) -> dict[str, Any]:
    """Each device's thread posts its receipts (the first `limit`) in order on its own connection; the clock
    runs from the moment all threads are released until the last answer."""
    state = fresh_state(setup["state"], work, "fdms-concurrent")
    with Simulator(config, state) as sim:
        clients = {
            i: client_for(sim, i, FileKeyStore(work / f"box-{i}" / "keys", PASSPHRASE))
            for i in setup["bodies"]
        }
        for client in clients.values():
            client.get_status()  # the TLS handshake, outside the timing
        gate = threading.Barrier(len(clients) + 1)
        latencies: list[float] = []
        counts = {"flagged": 0}
        failures: list[BaseException] = []

        def post(client: FdmsClient, bodies: list[str]) -> None:
            mine, marked = [], 0
            try:
                gate.wait()
                for body in bodies:
                    start = time.perf_counter()
                    marked += flagged(client.submit_receipt(body).body)
                    mine.append(time.perf_counter() - start)
            except BaseException as error:  # noqa: BLE001 - reported by the main thread
                failures.append(error)
            latencies.extend(mine)
            counts["flagged"] += marked

        threads = [
            threading.Thread(target=post, args=(clients[i], setup["bodies"][i][:limit])) for i in clients
        ]
        for thread in threads:
            thread.start()
        gate.wait()
        begin = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - begin
        for client in clients.values():
            client.close()
    if failures:
        raise failures[0]
    return {"seconds": seconds, "count": len(latencies), "latencies": latencies, "flagged": counts["flagged"]}


# ---------------------------------------------------------------------------------------------------------
# 2. Catch-up against the floor


def floor_round(setup: dict[str, Any], work: Path, config: Path, limit: int | None = None) -> dict[str, Any]:
    """The same bodies back-to-back on one connection with the bare client: the simulator's own rate."""
    state = fresh_state(setup["state"], work, "fdms-floor")
    bodies = setup["bodies"][CATCH_UP_DEVICE][:limit]
    with Simulator(config, state) as sim:
        client = client_for(
            sim, CATCH_UP_DEVICE, FileKeyStore(work / f"box-{CATCH_UP_DEVICE}" / "keys", PASSPHRASE)
        )
        client.get_status()
        marked = 0
        begin = time.perf_counter()
        for body in bodies:
            marked += flagged(client.submit_receipt(body).body)
        seconds = time.perf_counter() - begin
        client.close()
    return {"seconds": seconds, "count": len(bodies), "flagged": marked}


class TimedClient:
    """The delivery's client with the time spent inside submit_receipt summed: the round trip to FDMS."""

    def __init__(self, client: FdmsClient) -> None:
        self.client = client
        self.seconds = 0.0

    def submit_receipt(self, body: str) -> Any:
        start = time.perf_counter()
        try:
            return self.client.submit_receipt(body)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def catch_up_round(
    setup: dict[str, Any],
    work: Path,
    config: Path,
    limit: int | None = None,
    profiler: cProfile.Profile | None = None,
) -> dict[str, Any]:
    """A copy of the box with its backlog against a fresh copy of the simulator: Delivery.run_until_idle
    (with a `limit`: that many Delivery.step() calls, each of which must send a receipt)."""
    state = fresh_state(setup["state"], work, "fdms-catch-up")
    box_dir = work / "box-catch-up"
    shutil.rmtree(box_dir, ignore_errors=True)
    shutil.copytree(work / f"box-{CATCH_UP_DEVICE}", box_dir)
    clock = StepClock(0)
    clock.t = setup["clock_t"] + 1
    with Simulator(config, state) as sim:
        rig = Rig(box_dir, CATCH_UP_DEVICE, sim, clock)
        timed_client = TimedClient(rig.client)
        rig.delivery.client = timed_client
        rig.client.get_status()
        begin = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        if limit is None:
            steps = rig.delivery.run_until_idle(advance=clock.advance)
        else:
            done = [rig.delivery.step() for _ in range(limit)]
            steps = done.count("sent")
        if profiler is not None:
            profiler.disable()
        seconds = time.perf_counter() - begin
        counts = rig.journal.outbox_counts()
        marked = rig.journal.db.execute(
            "SELECT count(*) FROM outbox WHERE errors IS NOT NULL AND errors != '[]'"
        ).fetchall()[0][0]
        rig.close()
    count = len(setup["bodies"][CATCH_UP_DEVICE]) if limit is None else limit
    if counts.get("delivered") != count:
        raise SystemExit(f"catch-up left the outbox at {counts}")
    return {
        "seconds": seconds,
        "count": count,
        "steps": steps,
        "round_trip_s": timed_client.seconds,
        "flagged": marked,
    }


# ---------------------------------------------------------------------------------------------------------


def rate(rounds: list[dict[str, Any]]) -> list[int]:
    return [round(r["count"] / r["seconds"]) for r in rounds]


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median rate and time per receipt over the rounds; latency percentiles when the rounds kept them."""
    out: dict[str, Any] = {
        "receipts": rounds[0]["count"],
        "rounds": len(rounds),
        "per_s": round(statistics.median(rate(rounds))),
        "per_s_rounds": rate(rounds),
        "ms_per_receipt": round(statistics.median(r["seconds"] / r["count"] for r in rounds) * 1000, 3),
        "flagged": sum(r["flagged"] for r in rounds),
    }
    latencies = [x for r in rounds for x in r.get("latencies", [])]
    if latencies:
        out["call_p50_ms"] = round(percentile(latencies, 50) * 1000, 2)
        out["call_p99_ms"] = round(percentile(latencies, 99) * 1000, 2)
    if "round_trip_s" in rounds[0]:
        trip = statistics.median(r["round_trip_s"] / r["count"] for r in rounds)
        out["round_trip_ms"] = round(trip * 1000, 3)
        out["box_ms"] = round(out["ms_per_receipt"] - trip * 1000, 3)
    return out


def measure(
    many: dict[str, Any], one: dict[str, Any], work: Path, config: Path, rounds: int
) -> dict[str, Any]:
    """`rounds` of the three runs, each on fresh simulator state; floor and catch-up alternate in order so
    drift in the machine's speed falls on both."""
    concurrent: list[dict[str, Any]] = []
    floor: list[dict[str, Any]] = []
    catch_up: list[dict[str, Any]] = []
    for r in range(rounds):
        say(f"  round {r + 1}/{rounds}: {len(many['bodies'])} devices at once ...")
        concurrent.append(concurrent_round(many, work / "concurrent", config))
        say(f"    {concurrent[-1]['count'] / concurrent[-1]['seconds']:,.0f}/s")
        pair = [("floor", floor_round, floor), ("catch-up", catch_up_round, catch_up)]
        for name, run, into in pair if r % 2 == 0 else pair[::-1]:
            say(f"  round {r + 1}/{rounds}: {name} ...")
            into.append(run(one, work / "catch-up", config))
            say(f"    {into[-1]['count'] / into[-1]['seconds']:,.0f}/s")
    out = {"concurrent": summary(concurrent), "floor": summary(floor), "catch_up": summary(catch_up)}
    out["concurrent"]["devices"] = len(many["bodies"])
    out["concurrent"]["vs_one_connection"] = round(out["concurrent"]["per_s"] / out["floor"]["per_s"], 2)
    out["catch_up"]["ratio"] = round(out["catch_up"]["per_s"] / out["floor"]["per_s"], 3)
    out["catch_up"]["ratio_rounds"] = [
        round(c / f, 3) for c, f in zip(rate(catch_up), rate(floor), strict=True)
    ]
    return out


def report(name: str, part: dict[str, Any]) -> list[str]:
    c, f, u = part["concurrent"], part["floor"], part["catch_up"]
    return [
        f"{name}:",
        f"  {c['devices']} devices at once: {c['per_s']:,} receipts/s (rounds {c['per_s_rounds']}), call p50 "
        f"{c['call_p50_ms']} ms, p99 {c['call_p99_ms']} ms; {c['vs_one_connection']}x one connection",
        f"  floor, one connection: {f['per_s']:,}/s (rounds {f['per_s_rounds']}), "
        f"{f['ms_per_receipt']} ms each",
        f"  catch-up, {u['receipts']:,} receipts: {u['per_s']:,}/s (rounds {u['per_s_rounds']}), "
        f"{u['ms_per_receipt']} ms each = {u['round_trip_ms']} ms in submit_receipt + {u['box_ms']} ms "
        "on the box",
        f"  catch-up / floor: {u['ratio']} (rounds {u['ratio_rounds']})",
    ]


def tree() -> dict[str, Any]:
    """The commit measured, and the product files that differed from it (others may edit while this runs)."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    status = subprocess.run(
        git + ["status", "--porcelain", "--", "firmware", "hardware", "sim"], capture_output=True, text=True
    ).stdout
    return {"commit": commit, "modified": [line[3:] for line in status.splitlines()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few receipts and rounds (a smoke run)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one catch-up round (untimed)")
    args = parser.parse_args()
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    SCRATCH.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fdms-", dir=SCRATCH))
    ids = [CATCH_UP_DEVICE + n for n in range(plan["devices"])]
    results = results_head(
        "fdms",
        args.quick,
        openssl=ssl.OPENSSL_VERSION,
        sqlite_simulator=sqlite3.sqlite_version,
        sqlite_box=apsw.sqlite_lib_version(),
        file_system=file_system(SCRATCH),
    )
    results |= {
        "plan": plan,
        "tree": tree(),
        "notes": "The simulator runs as its own process (sim.main fdms); the devices are threads of the "
        "bench. concurrent: one FdmsClient and TLS connection per device (handshake before the clock runs), "
        "each posting its device's receipts in order with submit_receipt; call_p50/p99: one call's latency "
        "over all rounds. floor: the catch-up box's bodies with a bare FdmsClient.submit_receipt on one "
        "connection. catch_up: Delivery.run_until_idle on a copy of the box (the backlog issued before "
        "delivery ran, the day's OpenDay delivered); round_trip_ms: time inside submit_receipt, box_ms: the "
        "rest (journal reads and commits, FDMS's signature checked). ratio: median catch-up rate / median "
        "floor rate. Every run against a fresh copy of the same simulator state.",
    }
    started = time.perf_counter()
    try:
        config = work / "scenario.toml"
        config.write_text(scenario_toml(ids))
        say(f"set-up: {plan['devices']} boxes, {plan['per_device']:,} receipts each ...")
        many = prepare(work / "concurrent", config, ids, plan["per_device"])
        say(f"set-up: one box with {plan['backlog']:,} receipts queued ...")
        one = prepare(work / "catch-up", config, [CATCH_UP_DEVICE], plan["backlog"])
        results["set_up_seconds"] = round(many["seconds"] + one["seconds"], 1)
        results["measured"] = measure(many, one, work, config, plan["rounds"])
        if args.profile:
            say("profiling one catch-up round (untimed) ...")
            profiler = cProfile.Profile()
            catch_up_round(one, work / "catch-up", config, profiler=profiler)
            results["catch_up_profile"] = profile_lines(profiler, 14)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - started)
    ratio = results["measured"]["catch_up"]["ratio"]
    results["targets"] = [
        {
            "target": "catch-up / floor",
            "figure": ratio,
            "goal": f">= {TARGET}",
            "met": ratio >= TARGET,
        }
    ]
    lines = report("FDMS simulator in its own process", results["measured"])
    lines.append(f"target catch-up >= {TARGET}x the floor: {'met' if ratio >= TARGET else 'MISSED'}")
    lines += results.get("catch_up_profile", [])
    print("\n".join(lines))
    if any(results["measured"][p]["flagged"] for p in ("concurrent", "floor", "catch_up")):
        say("warning: FDMS flagged some receipts: the set-up is not what a box would send")
    out = SCRATCH / "fdms-quick.json" if args.quick else RESULTS
    out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
