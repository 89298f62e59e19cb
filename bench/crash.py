"""kill -9 endurance: a box process SIGKILLed at random instants, restarted and checked, N times over.

Drives tests/reliability/crash_harness.run_kills (the same harness `make test` runs 100 kills of): a child box
issues receipts as fast as it can and acknowledges each one on a pipe after issue() returns; it is killed
while booting, provisioning, issuing or changing days, and after every kill the parent reopens the journal
and checks that every acknowledged receipt is there unchanged, numbering is gapless and the boot check is
clean, with a full audit every --audit-every kills and after the last.

Prints the figures and writes bench/results/crash.json (--json: the JSON on stdout too). Exits 1 if any
acknowledged receipt was lost or any invariant broke: unlike a speed figure, that is a defect.
Run: .venv/bin/python bench/crash.py [--kills 1000] [--seed 1] [--audit-every 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

from crash_harness import KillReport, run_kills  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "crash.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1000, help="how many times to kill the box (1000)")
    parser.add_argument("--seed", type=int, default=1, help="seed for kill modes and instants (1)")
    parser.add_argument("--audit-every", type=int, default=100, help="full audit every N kills (100)")
    parser.add_argument("--json", action="store_true", help="also print the JSON result on stdout")
    args = parser.parse_args()
    if args.kills < 1 or args.audit_every < 1:
        parser.error("--kills and --audit-every must be at least 1")

    def progress(done: int, report: KillReport) -> None:
        if done % 50 == 0 or done == args.kills:
            print(
                f"{done}/{args.kills} kills, {report.acks} receipts acknowledged, {len(report.lost)} lost, "
                f"{len(report.failures)} failures, {time.perf_counter() - began:.0f} s",
                file=sys.stderr,
            )

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fiscalbox-crash-") as scratch:
        report = run_kills(Path(scratch) / "box", args.kills, args.seed, args.audit_every, progress)
    summary = report.summary()
    result = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "seed": args.seed,
        "audit_every": args.audit_every,
        "kills_requested": args.kills,
        **summary,
    }
    print(
        f"kills {summary['kills']}  receipts acknowledged {summary['receipts_acknowledged']}  "
        f"acknowledged lost {summary['acknowledged_lost']}  "
        f"integrity failures {summary['integrity_failures']}  "
        f"median receipts/life {summary['median_receipts_per_life']}  time {summary['seconds']} s"
    )
    print(
        f"kills during {summary['kills_during']}; {summary['full_audits']} full audits; journal "
        f"{summary['receipts_in_journal']} receipts over {summary['fiscal_days']} days; child start-up "
        f"{summary['median_child_startup_seconds']} s (median)"
    )
    for line in summary["lost"] + summary["failures"]:
        print(f"  {line}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    return 1 if report.lost or report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
