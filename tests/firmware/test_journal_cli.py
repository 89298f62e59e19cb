"""`fiscalbox-device status|audit|backup|export` on a real journal and key store."""

from __future__ import annotations

import json
from pathlib import Path

from box_rig import Rig, sale
from click.testing import CliRunner

from firmware.box import Box
from firmware.main import main

ENV = {"FISCALBOX_KEY_PASSPHRASE": "test-passphrase"}


def config(rig: Rig) -> str:
    path = rig.root / "box.toml"
    path.write_text(
        f'[keys]\nstore = "file"\ndirectory = "{rig.root / "keys"}"\n\n'
        f'[backup]\ndir = "{rig.root / "backups"}"\nretain = 2\n\n'
        f'[journal]\npath = "{rig.journal_path}"\nanchor = "{rig.root / "anchor.json"}"\n'
    )
    return str(path)


def run(rig: Rig, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", config(rig), *args], env=ENV)
    return result.exit_code, result.output


def test_audit_is_clean_then_names_a_changed_receipt(rig: Rig, box: Box) -> None:
    for _ in range(3):
        box.issue(sale())
    code, out = run(rig, "audit", "--json")
    assert code == 0, out
    assert json.loads(out)["checked"]["receipts"] == 3
    box.journal.db.execute("UPDATE receipts SET total = total + 100 WHERE global_no = 2")
    code, out = run(rig, "audit", "--journal", str(rig.journal_path), "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    assert {(p["code"], p.get("global_no"), p.get("field")) for p in problems} == {
        ("BOX_TAMPER_ROW", 2, "total")
    }
    code, out = run(rig, "audit")
    assert code == 1 and "PROBLEMS FOUND" in out and "total" in out


def test_audit_with_only_the_public_key(rig: Rig, box: Box) -> None:
    box.issue(sale())
    pem = rig.root / "device.pem"
    pem.write_bytes(rig.keys.public_key_pem())
    result = CliRunner().invoke(
        main, ["audit", "--journal", str(rig.journal_path), "--public-key", str(pem), "--json"], env={}
    )
    assert result.exit_code == 0, result.output


def test_status_backup_and_export(rig: Rig, box: Box) -> None:
    box.issue(sale())
    code, out = run(rig, "status", "--json")
    assert code == 0, out
    assert json.loads(out)["last_global_no"] == 1
    rig.close()  # the one-shot commands that write are for a box whose service is stopped
    for _ in range(3):
        code, out = run(rig, "backup", "--json")
        assert code == 0, out
    assert len(list((rig.root / "backups").glob("*.db"))) == 2  # retain = 2
    assert json.loads((rig.root / "anchor.json").read_text())["last_global_no"] == 1
    code, out = run(rig, "export", "--from", "1", "--to", "1", str(rig.root / "x.json"), "--json")
    assert code == 0, out
    assert json.loads(out)["receipts"] == 1
    code, out = run(rig, "export", "--from", "1", "--to", "5", str(rig.root / "y.json"))
    assert code == 2 and "BOX_EXPORT_RANGE" in out
    assert not Path(rig.root / "y.json").exists()
