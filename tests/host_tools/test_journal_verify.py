"""`fiscalbox journal verify` on a real export: a wrong certificate is said once, long lists are capped."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).parents[1] / "firmware"))

from box_rig import SETTINGS, Rig, sale  # noqa: E402

from host_tools.cli import main  # noqa: E402

RECEIPTS = 12


@pytest.fixture
def export(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A journal export of a closed day of RECEIPTS receipts, and the device's public key PEM."""
    rig = Rig(tmp_path)
    box = rig.box()
    box.provision(SETTINGS)
    box.open_day()
    for _ in range(RECEIPTS):
        rig.clock.advance(5)
        box.issue(sale())
    box.close_day()
    path = tmp_path / "export.json"
    box.export_journal(1, RECEIPTS, path)
    pem = tmp_path / "device.pem"
    pem.write_bytes(rig.keys.public_key_pem())
    yield path, pem
    rig.close()


def verify(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["journal", "verify", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout


def test_a_certificate_of_another_key_is_one_problem_not_tampering(export, tmp_path: Path) -> None:
    path, _ = export
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    status, out = verify(str(path), "--cert", str(wrong))
    lines = out.splitlines()
    assert status == 1 and lines[0].startswith("PROBLEMS FOUND: device ")
    assert len(lines) == 2 and lines[1].startswith("  BOX_EXPORT_KEY: ") and "in force when it was made" in out
    status, out = verify(str(path), "--cert", str(wrong), "--json")
    report = json.loads(out)
    assert [p["code"] for p in report["problems"]] == ["BOX_EXPORT_KEY"]
    assert report["signatures_checked"] is False


def test_the_right_certificate_still_finds_every_forged_signature_capped_at_ten(export) -> None:
    path, pem = export
    status, out = verify(str(path), "--cert", str(pem))
    assert status == 0 and out.startswith("clean: ") and "days 1\n" in out
    document = json.loads(path.read_text())
    for row in document["receipts"]:  # every receipt's signature changed: each one is a problem to list
        row["signature"] = row["signature"][:-5] + "AAAA="
    path.write_text(json.dumps(document))
    status, out = verify(str(path), "--cert", str(pem), "--json")
    problems = json.loads(out)["problems"]
    assert status == 1 and len(problems) > 10
    assert "BOX_TAMPER_SIGNATURE" in {p["code"] for p in problems}
    status, out = verify(str(path), "--cert", str(pem))
    lines = out.splitlines()
    assert len(lines) == 1 + 10 + 1
    assert lines[-1] == f"  ... and {len(problems) - 10} more (--verbose lists them)"
    status, out = verify(str(path), "--cert", str(pem), "--verbose")
    assert len(out.splitlines()) == 1 + len(problems)
