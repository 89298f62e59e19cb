"""Backups with signed manifests, restore that never goes backwards, and the signed journal export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from box_rig import Rig, sale
from click.testing import CliRunner

from firmware.backup import Anchor, restore, write_atomically
from firmware.box import Box
from firmware.core.errors import FiscalError
from host_tools.cli import main as host_main
from host_tools.journal_file import verify_export


def issue(rig: Rig, box: Box, n: int) -> None:
    for _ in range(n):
        rig.clock.advance(5)
        box.issue(sale())


def test_backup_writes_a_signed_manifest_and_keeps_the_newest(rig: Rig, box: Box, tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    for _ in range(4):
        issue(rig, box, 2)
        result = box.backup(dest, retain=2)
    assert len(list(dest.glob("*.db"))) == 2 and len(result["removed"]) == 1
    manifest = json.loads(Path(result["manifest_file"]).read_text())["manifest"]
    assert manifest["last_global_no"] == 8
    # The copy is a working journal that audits clean on its own.
    copy_rig = Rig(rig.root)
    copy_rig.journal_path = Path(result["file"])
    copied = copy_rig.box()
    assert copied.boot["clean"] and copied.audit()["clean"]
    copy_rig.close()


def test_retention_keeps_other_devices_backups_and_the_one_just_made(
    rig: Rig, box: Box, tmp_path: Path
) -> None:
    dest = tmp_path / "backups"
    issue(rig, box, 2)
    first = box.backup(dest)
    # another box's backup in the same folder, its name sorting after this box's
    other = dest / "journal-0000009999-20260101T000000-001.db"
    other.write_bytes(Path(first["file"]).read_bytes())
    document = json.loads(Path(first["manifest_file"]).read_text())
    document["manifest"].update(device_id=document["manifest"]["device_id"] + 1, file=other.name)
    Path(str(other) + ".manifest.json").write_text(json.dumps(document))
    issue(rig, box, 2)
    made = box.backup(dest, retain=1)
    assert made["removed"] == [Path(first["file"]).name]
    assert Path(made["file"]).exists() and Path(made["manifest_file"]).exists()
    assert other.exists() and Path(str(other) + ".manifest.json").exists()


def test_a_backup_that_cannot_be_written_is_a_box_error_not_a_traceback(rig: Rig, box: Box) -> None:
    issue(rig, box, 1)
    with pytest.raises(FiscalError) as refused:
        box.backup(Path("/proc"))  # a folder where no file can be made
    assert (refused.value.code, refused.value.field) == ("BOX_BACKUP", "dest")
    assert "/proc" in refused.value.message


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """The one atomic-write helper (backups, anchor, identity, host keys) cleans up after itself."""
    target = tmp_path / "hosts.json"
    target.mkdir()
    (target / "inside").write_text("kept")  # a rename over a folder that is not empty fails
    with pytest.raises(OSError):
        write_atomically(target, b"new")
    assert (target / "inside").read_text() == "kept" and list(tmp_path.iterdir()) == [target]


def test_restore_refuses_to_go_backwards_and_restores_a_current_backup(
    rig: Rig, box: Box, tmp_path: Path
) -> None:
    anchor = Anchor(tmp_path / "anchor.json")
    box.anchor = anchor
    issue(rig, box, 3)
    old = box.backup(tmp_path / "b")
    issue(rig, box, 2)
    new = box.backup(tmp_path / "b")
    assert anchor.value() == 5
    pem = rig.keys.public_key_pem()
    rig.close()
    rig.journal_path.unlink()  # the card died: only the anchor remembers how far the box got
    with pytest.raises(FiscalError) as refused:
        restore(Path(old["manifest_file"]), rig.journal_path, pem, anchor)
    assert refused.value.code == "BOX_RESTORE_BEHIND"
    assert "lose 2 receipts" in refused.value.message
    assert not rig.journal_path.exists()  # nothing changed
    restore(Path(new["manifest_file"]), rig.journal_path, pem, anchor)
    restored = rig.box()
    assert restored.boot["clean"] and restored.status()["last_global_no"] == 5
    assert restored.issue(sale())["global_no"] == 6


def test_a_changed_backup_is_refused(rig: Rig, box: Box, tmp_path: Path) -> None:
    issue(rig, box, 2)
    made = box.backup(tmp_path / "b")
    data = bytearray(Path(made["file"]).read_bytes())
    data[-100] ^= 1
    Path(made["file"]).write_bytes(bytes(data))
    with pytest.raises(FiscalError) as refused:
        restore(
            Path(made["manifest_file"]), tmp_path / "j.db", rig.keys.public_key_pem(), Anchor(tmp_path / "a")
        )
    assert refused.value.code == "BOX_BACKUP_INVALID"


def exported(rig: Rig, box: Box, tmp_path: Path, first: int, last: int) -> Path:
    out = tmp_path / "export.json"
    box.export_journal(first, last, out)
    return out


def test_export_verifies_offline_whole_days_and_partial_ranges(rig: Rig, box: Box, tmp_path: Path) -> None:
    from hardware.signatures import load_public_key

    issue(rig, box, 4)
    box.close_day()
    box.record_close(1, "FiscalDayClosed")
    rig.clock.advance(100)
    box.open_day()
    issue(rig, box, 3)
    key = load_public_key(rig.keys.public_key_pem())
    whole = verify_export(json.loads(exported(rig, box, tmp_path, 1, 7).read_text()), key)
    assert whole["clean"], whole["problems"]
    assert whole["days"] == [1, 2]
    part = verify_export(json.loads(exported(rig, box, tmp_path, 3, 6).read_text()), key)
    assert part["clean"], part["problems"]


@pytest.mark.parametrize("where", ["body", "hash", "signature", "link", "global_no"])
def test_a_changed_export_is_caught_naming_the_receipt(
    rig: Rig, box: Box, tmp_path: Path, where: str
) -> None:
    issue(rig, box, 5)
    path = exported(rig, box, tmp_path, 1, 5)
    document = json.loads(path.read_text())
    row = document["receipts"][2]
    if where == "body":
        row["body"] = row["body"].replace("Bread", "Bread!")
    elif where == "global_no":
        row["global_no"] = 30
    else:
        row[where] = row[where][:-5] + ("AAAA=" if where != "link" else "00000")
    path.write_text(json.dumps(document))
    pem = tmp_path / "device.pem"
    pem.write_bytes(rig.keys.public_key_pem())
    result = CliRunner().invoke(host_main, ["journal", "verify", str(path), "--cert", str(pem), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert not report["clean"]
    assert 3 in {p.get("global_no") for p in report["problems"]} | {p.get("global_no") == 30 for p in []}


def test_an_untouched_export_passes_the_cli(rig: Rig, box: Box, tmp_path: Path) -> None:
    issue(rig, box, 3)
    path = exported(rig, box, tmp_path, 1, 3)
    pem = tmp_path / "device.pem"
    pem.write_bytes(rig.keys.public_key_pem())
    result = CliRunner().invoke(host_main, ["journal", "verify", str(path), "--cert", str(pem)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("clean")


def test_export_range_is_checked(rig: Rig, box: Box, tmp_path: Path) -> None:
    issue(rig, box, 2)
    with pytest.raises(FiscalError) as refused:
        box.export_journal(2, 9, tmp_path / "x.json")
    assert refused.value.code == "BOX_EXPORT_RANGE"
