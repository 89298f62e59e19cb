"""What every benchmark here needs: the project's root, progress on standard error, nearest-rank
percentiles, the file system the figures were taken on, a cProfile summary as lines, and the opening of a
results file."""

from __future__ import annotations

import cProfile
import datetime
import io
import math
import os
import platform
import pstats
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def file_system(path: Path) -> dict[str, str]:
    """What `df -T` says of the directory a benchmark's files live in."""
    lines = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, check=True).stdout
    device, kind, *_ = lines.splitlines()[-1].split()
    return {"device": device, "type": kind, "path": str(path.relative_to(ROOT))}


def profile_lines(profiler: cProfile.Profile, lines: int = 12) -> list[str]:
    """The top functions by own time, then by cumulative time, as printed lines."""
    out: list[str] = []
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(order).print_stats(lines)
        printed = text.getvalue().splitlines()
        start = next(i for i, line in enumerate(printed) if line.lstrip().startswith("ncalls"))
        out += [f"-- by {order}"] + [line for line in printed[start:] if line.strip()]
    return out


def results_head(benchmark: str, quick: bool, **machine: Any) -> dict[str, Any]:
    """The opening of a results file: which benchmark, when, and on what (plus what the caller adds)."""
    return {
        "benchmark": benchmark,
        "quick": quick,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            **machine,
        },
    }
