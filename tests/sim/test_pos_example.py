"""docs/pos-api.md's example POS program, run as written (against its own state directory) twice: a POS
program that works once and then fails on its own invoice numbers would teach the wrong thing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_pos_example_runs_twice_on_the_same_virtual_box(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "pos-api.md").read_text()
    [program] = re.findall(r"```python\n(.*?)```", text, re.S)
    assert '"out/pos-example"' in program
    program = program.replace('"out/pos-example"', repr(str(tmp_path / "vbox")))
    program = program.replace(
        '".venv/bin/fiscalbox-sim"', repr(str(Path(sys.executable).parent / "fiscalbox-sim"))
    )
    (tmp_path / "pos.py").write_text(program)
    for run in (1, 2):
        done = subprocess.run(
            [sys.executable, str(tmp_path / "pos.py")], cwd=ROOT, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, f"run {run}: {done.stdout}{done.stderr}"
        assert "Traceback" not in done.stderr
        assert re.search(r"^closed day \d+ with 2 receipts$", done.stdout, re.M), done.stdout
