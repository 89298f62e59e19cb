"""A million fuzzed inputs on the link: crashes, state changes and how each kind was answered.

Drives tests/firmware/fuzz_rig.py (the fuzzer `make test` runs 100,000 inputs of): truncated packets, bad
CRCs, bad base64, oversized lengths, wrong headers, garbage, deeply nested CBOR, huge maps, right CBOR of the
wrong shape, right shape with bad signatures, replays, well-signed requests whose bodies the CDDL refuses, and
line noise, against a real Device behind a real Link; most in-process through the framer and Link.handle, a
sample over a pty to the running serve loop. Every input is followed by a good echo frame, which must be
answered (the link resynchronises); the journal's tables and the host keys file are digested before and after.

Prints the table and writes bench/results/link_fuzz.json (--json: the JSON on stdout too). Exits 1 on a
crash, a traceback, a state change or a missed resync: unlike a speed figure, that is a defect.
Run: .venv/bin/python bench/link_fuzz.py [--frames 1000000] [--pty 10000] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "firmware"))

from fuzz_rig import Target, fuzz_in_process, fuzz_over_pty  # noqa: E402
from measure import ROOT, results_head, say  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "link_fuzz.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000, help="inputs fed in-process (1,000,000)")
    parser.add_argument("--pty", type=int, default=10_000, help="inputs written over a pty (10,000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fuzzer (1)")
    parser.add_argument("--json", action="store_true", help="also print the JSON result on stdout")
    args = parser.parse_args()
    if args.frames < 17 or args.pty < 0:
        parser.error("--frames must be at least 17 (one of each kind) and --pty at least 0")

    result = results_head("link_fuzz", quick=args.frames < 1_000_000, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="fiscalbox-fuzz-") as scratch:
        target = Target(Path(scratch) / "box")
        try:
            before = target.state()
            say(f"fuzzing {args.frames:,} inputs in-process (seed {args.seed})")
            in_process = fuzz_in_process(
                target, args.frames, args.seed, lambda done: say(f"  {done:,} / {args.frames:,}")
            )
            say(f"fuzzing {args.pty:,} inputs over a pty")
            over_pty = fuzz_over_pty(target, args.pty, args.seed + 1) if args.pty else None
            after = target.state()
        finally:
            target.close()
    reports = {"in_process": in_process, **({"over_pty": over_pty} if over_pty else {})}
    result.update(
        state_changed=before != after,
        journal_and_hosts_digest=after,
        **{name: report.as_dict() for name, report in reports.items()},
    )
    for name, report in reports.items():
        rate = report.total / report.seconds if report.seconds else 0.0
        print(report.table(f"\n{name.replace('_', ' ')}: {report.total:,} inputs, {report.seconds:.1f} s, "
                           f"{rate:,.0f} inputs/s"))
    print(f"\nstate changed: {'YES' if before != after else 'no'} (journal tables and host keys, digested)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    failed = before != after or any(r.crashes or r.resync_failures for r in reports.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
