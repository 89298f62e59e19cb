"""A box is one device for life: what a new user's trial found when the configuration, the key or the
registration did not match the journal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from box_rig import DEVICE_ID, SETTINGS, Rig, sale
from click.testing import CliRunner
from test_journal_integrity import anchored_box, config, files_digest, foreign_journal

from firmware import config as configuration
from firmware.backup import Anchor
from firmware.core.errors import FiscalError
from firmware.fdms_client import FdmsClient
from firmware.main import main as device

NOWHERE = "https://127.0.0.1:9"  # nothing listens here: a call that reached it would fail as unavailable


def run(rig: Rig, *args: str, **env: str) -> tuple[int, str]:
    environ = {"FISCALBOX_KEY_PASSPHRASE": "test-passphrase", **env}
    result = CliRunner().invoke(device, ["--config", config(rig), *args], env=environ)
    return result.exit_code, result.output


def test_register_as_another_device_is_refused_before_anything_changes(rig: Rig) -> None:
    box = anchored_box(rig)
    certificate = rig.keys.certificate_pem()
    box.fdms = FdmsClient(NOWHERE, DEVICE_ID + 1, "fiscalbox", "1.0", timeout=0.5)
    before = box.journal.settings()
    with pytest.raises(FiscalError) as refused:
        box.register(DEVICE_ID + 1, "FB-OTHER", "ACTIVATE", ["USD"])
    assert (
        refused.value.code == "BOX_SETTINGS" and f"registered as device {DEVICE_ID}" in refused.value.message
    )
    assert box.journal.settings() == before and rig.keys.certificate_pem() == certificate


def test_key_replace_is_refused_once_a_journal_is_signed_with_the_key(rig: Rig) -> None:
    anchored_box(rig)
    rig.close()
    public = rig.keys.public_key_pem()
    code, out = run(rig, "key", "generate", "--replace")
    assert code == 2 and out.startswith("error BOX_KEY_IN_USE")
    assert rig.root.joinpath("keys").exists() and Rig(rig.root).keys.public_key_pem() == public


def test_a_configuration_naming_another_device_is_refused(rig: Rig) -> None:
    anchored_box(rig)
    rig.close()
    before = files_digest(rig)
    for command in (["status"], ["backup"], ["outbox"]):
        code, out = run(rig, *command, FISCALBOX_DEVICE_ID=str(DEVICE_ID + 7))
        assert code == 2 and out.startswith("error BOX_CONFIG") and f"id {DEVICE_ID}" in out, out
    code, out = run(rig, "status", FISCALBOX_DEVICE_SERIAL="FB-9999")
    assert code == 2 and "[device] serial" in out
    assert files_digest(rig) == before
    code, out = run(rig, "status", FISCALBOX_DEVICE_ID=str(DEVICE_ID))  # the right one is fine
    assert code == 0, out


def test_a_failed_first_registration_leaves_no_journal(rig: Rig) -> None:
    code, out = run(
        rig,
        "register",
        FISCALBOX_FDMS_URL=NOWHERE,
        FISCALBOX_DEVICE_ID="10009",
        FISCALBOX_DEVICE_SERIAL="FB-0009",
        FISCALBOX_ACTIVATION_KEY="ACTIVATE",
        FISCALBOX_FDMS_TIMEOUT_SECONDS="1",
    )
    assert code == 2 and out.startswith("error BOX_FDMS_UNAVAILABLE") and "run register again" in out, out
    assert "will try again" not in out
    left = sorted(p.name for p in rig.root.iterdir() if p.name.startswith("journal.db"))
    # only the (empty) lock files, never removed under a writer or a service starting
    assert left == ["journal.db.lock", "journal.db.service"]


def test_an_override_that_names_no_key_is_refused() -> None:
    with pytest.raises(FiscalError) as refused:
        configuration.load(None, {"FISCALBOX_JOURNAL_PTH": "/x"})
    assert refused.value.code == "BOX_CONFIG" and "FISCALBOX_JOURNAL_PATH" in refused.value.message
    # the secrets' own variables are not overrides
    configuration.load(
        None, {"FISCALBOX_KEY_PASSPHRASE": "x", "FISCALBOX_TOKEN_PIN": "1", "FISCALBOX_CONFIG": ""}
    )


def test_status_of_a_closed_day_says_it_is_closed_not_when_it_ends(rig: Rig) -> None:
    box = anchored_box(rig)
    box.close_day()
    code, out = run(rig, "status")
    assert code == 0
    assert (
        "day 1 FiscalDayCloseInitiated, 3 receipts (it was opened" in out and "ends" not in out.split("\n")[1]
    )


def test_restoring_another_devices_backup_says_whose_it_is(rig: Rig, tmp_path: Path) -> None:
    anchored_box(rig)
    rig.close()
    theirs = foreign_journal(rig, tmp_path / "other", receipts=2)
    manifest = tmp_path / "other-backup.manifest.json"
    manifest.write_text(
        json.dumps({"manifest": {"device_id": DEVICE_ID + 1, "file": "x.db"}, "signature": ""})
    )
    code, out = run(rig, "restore", str(manifest))
    assert code == 2 and out.startswith("error BOX_RESTORE_FOREIGN") and f"device {DEVICE_ID + 1}'s" in out
    assert theirs.exists()


def test_a_journal_folder_that_does_not_exist_is_named(rig: Rig) -> None:
    from firmware.journal import Journal

    with pytest.raises(FiscalError) as refused:
        Journal(rig.root / "no" / "such" / "journal.db", create=True)
    assert refused.value.code == "BOX_JOURNAL" and "does not exist" in refused.value.message


def test_a_registered_box_without_receipts_whose_journal_vanished_is_missing_not_new(rig: Rig) -> None:
    box = rig.box(anchor=Anchor(rig.root / "anchor.json"))
    box.provision(SETTINGS)
    box._advance_anchor()  # what register does once FDMS has given the settings
    rig.close()
    rig.journal_path.unlink()
    code, out = run(rig, "status")
    assert code == 2 and out.startswith("error BOX_JOURNAL_MISSING") and "is registered" in out
    assert "up to 0" not in out
    assert sale()  # the rig's sale maker is shared; nothing issued here


def test_two_restores_in_one_second_keep_both_journals_they_replace(rig: Rig) -> None:
    anchored_box(rig)
    rig.close()
    manifest = sorted((rig.root / "backups").glob("*.manifest.json"))[-1]
    kept = []
    for _ in range(2):
        code, out = run(rig, "restore", str(manifest), "--json")
        assert code == 0, out
        kept.append(json.loads(out)["kept"])
    assert len(set(kept)) == 2 and all(Path(k).exists() for k in kept)


def test_an_anchor_that_cannot_be_written_is_a_box_error_not_a_traceback(rig: Rig) -> None:
    anchor = Anchor(rig.root / "anchor.json")
    (rig.root / "anchor.json.tmp").mkdir()  # where its atomic write would go
    with pytest.raises(FiscalError) as refused:
        anchor.advance(5, DEVICE_ID)
    assert refused.value.code == "BOX_ANCHOR"


def test_key_replace_with_an_unreadable_anchor_keeps_the_key(rig: Rig) -> None:
    (rig.root / "anchor.json").write_text("garbage")
    code, out = run(rig, "key", "generate", "--replace")
    assert code == 2 and out.startswith("error BOX_KEY_IN_USE")


def test_an_audit_by_the_box_signs_nothing_onto_a_journal_not_its_own(rig: Rig, tmp_path: Path) -> None:
    anchored_box(rig)
    rig.close()
    (tmp_path / "other").mkdir()
    theirs = foreign_journal(rig, tmp_path / "other", receipts=2)
    rig.journal_path.unlink()
    theirs.rename(rig.journal_path)
    box = rig.box(anchor=Anchor(rig.root / "anchor.json"))
    checkpoints = len(box.journal.checkpoints())
    with pytest.raises(FiscalError) as refused:
        box.audit()
    assert refused.value.code == "BOX_JOURNAL_FOREIGN"
    assert len(box.journal.checkpoints()) == checkpoints


def test_register_with_another_serial_is_refused(rig: Rig) -> None:
    box = anchored_box(rig)
    box.fdms = FdmsClient(NOWHERE, DEVICE_ID, "fiscalbox", "1.0", timeout=0.5)
    with pytest.raises(FiscalError) as refused:
        box.register(DEVICE_ID, "FB-ELSE-0001", "ACTIVATE", ["USD"])
    assert refused.value.code == "BOX_SETTINGS" and refused.value.field == "serial"
