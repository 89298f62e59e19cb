"""The box's own integrity: its journal against the anchor outside it, one writer at a time, reads that write
nothing, damage read back as a finding, and one receipt read back in full."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from box_rig import DEVICE_ID, SETTINGS, Rig, sale
from click.testing import CliRunner

from firmware.backup import Anchor
from firmware.box import Box
from firmware.core.errors import FiscalError
from firmware.journal import CLOSE_INITIATED, Journal
from firmware.main import main as device
from host_tools.cli import main as host

PASSPHRASE = {"FISCALBOX_KEY_PASSPHRASE": "test-passphrase"}
ROOT = Path(__file__).resolve().parents[2]


def config(rig: Rig) -> str:
    path = rig.root / "box.toml"
    path.write_text(
        f'[keys]\nstore = "file"\ndirectory = "{rig.root / "keys"}"\n\n'
        f'[backup]\ndir = "{rig.root / "backups"}"\n\n'
        f'[journal]\npath = "{rig.journal_path}"\nanchor = "{rig.root / "anchor.json"}"\n'
    )
    return str(path)


def run(rig: Rig, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(
        device, ["--config", config(rig), *args], env=PASSPHRASE if env is None else env
    )
    return result.exit_code, result.output


def anchored_box(rig: Rig, receipts: int = 3) -> Box:
    """A provisioned box with its anchor beside the journal, day 1 open and `receipts` issued."""
    box = rig.box(anchor=Anchor(rig.root / "anchor.json"))
    box.provision(SETTINGS)
    box.open_day()
    rig.clock.advance(60)
    for _ in range(receipts):
        box.issue(sale())
        rig.clock.advance(5)
    box.backup(rig.root / "backups")  # the anchor moves at backups (and boots and closes)
    return box


def files_digest(rig: Rig) -> dict[str, str]:
    """What the journal holds on disk: the database and its WAL, byte for byte (a reader may leave an empty
    WAL file behind, which holds nothing)."""
    out = {}
    for suffix in ("", "-wal"):
        path = Path(str(rig.journal_path) + suffix)
        data = path.read_bytes() if path.exists() else b""
        out[suffix or "db"] = hashlib.sha256(data).hexdigest() if data else "empty"
    return out


def remove_journal(rig: Rig) -> None:
    """The journal file and its WAL companions, gone (as a person deleting `journal.db` leaves it)."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(rig.journal_path) + suffix).unlink(missing_ok=True)


def put_in_place(rig: Rig, journal: Path) -> None:
    remove_journal(rig)
    journal.rename(rig.journal_path)


def foreign_journal(
    rig: Rig, where: Path, receipts: int, device_id: int = DEVICE_ID + 1, total: str = "1.15"
) -> Path:
    """A journal this box did not write (another device's by default), signed with the same key store."""
    other = Rig(where)
    other.keys = rig.keys
    theirs = other.box()
    theirs.provision({**SETTINGS, "device_id": device_id})
    theirs.open_day()
    for _ in range(receipts):
        other.clock.advance(7)
        theirs.issue(sale(total=total))
    other.close()
    return where / "journal.db"


# -------------------------------------------------------------------------------------------------------
# 1. A missing or replaced journal never starts a fresh box


def test_a_deleted_journal_is_missing_not_a_new_box(rig: Rig) -> None:
    anchored_box(rig)
    rig.close()
    remove_journal(rig)
    commands = (["status"], ["audit"], ["show", "1"], ["backup"], ["reprint", "--unprinted"], ["register"])
    for command in commands:
        code, out = run(rig, *command)
        assert code == 2 and out.startswith("error BOX_JOURNAL_MISSING"), (command, out)
        assert "restore the latest backup" in out and "up to 3" in out
    assert not rig.journal_path.exists()  # no command created one


def test_a_box_never_provisioned_says_to_register_and_creates_nothing(rig: Rig) -> None:
    code, out = run(rig, "status")
    assert code == 2 and out.startswith("error BOX_NOT_PROVISIONED") and "register" in out
    assert not rig.journal_path.exists()


def test_a_journal_replaced_by_an_empty_one_is_behind_and_issues_nothing(rig: Rig) -> None:
    anchored_box(rig)
    rig.close()
    remove_journal(rig)
    fresh = rig.box(anchor=Anchor(rig.root / "anchor.json"))  # a new journal where the old one was
    assert fresh.boot["problems"][0]["code"] == "BOX_JOURNAL_BEHIND"
    fresh.provision(SETTINGS)
    with pytest.raises(FiscalError) as refused:
        fresh.open_day()
    assert refused.value.code == "BOX_JOURNAL_BEHIND" and "restore the latest backup" in refused.value.message
    assert fresh.journal.head()["last_global_no"] == 0
    assert json.loads((rig.root / "anchor.json").read_text())["last_global_no"] == 3  # the anchor stays


def test_a_journal_rolled_back_to_an_older_copy_is_behind(rig: Rig) -> None:
    box = anchored_box(rig, receipts=2)
    older = rig.root / "older.db"
    box.journal.backup_to(older)
    box.issue(sale())
    box.close_day()  # the anchor moves to receipt 3
    rig.close()
    for suffix in ("-wal", "-shm"):
        Path(str(rig.journal_path) + suffix).unlink(missing_ok=True)
    older.replace(rig.journal_path)
    code, out = run(rig, "status", "--json")
    assert code == 0
    problems = json.loads(out)["journal"]["problems"]
    assert problems[0]["code"] == "BOX_JOURNAL_BEHIND" and "up to 3" in problems[0]["message"]
    code, out = run(rig, "audit")
    assert code == 1 and "BOX_JOURNAL_BEHIND" in out


def test_another_devices_journal_and_another_history_are_foreign(rig: Rig, tmp_path: Path) -> None:
    anchored_box(rig)
    rig.close()
    put_in_place(rig, foreign_journal(rig, tmp_path / "other", receipts=4))
    box = rig.box(anchor=Anchor(rig.root / "anchor.json"))
    assert box.boot["problems"][0]["code"] == "BOX_JOURNAL_FOREIGN"
    with pytest.raises(FiscalError) as refused:
        box.issue(sale())
    assert refused.value.code == "BOX_JOURNAL_FOREIGN"
    rig.close()

    # The same device, as many receipts as the anchor knows, but not the receipts this box committed.
    put_in_place(rig, foreign_journal(rig, tmp_path / "again", receipts=3, device_id=DEVICE_ID, total="9.99"))
    box = rig.box(anchor=Anchor(rig.root / "anchor.json"))
    assert [p["code"] for p in box.boot["problems"]] == ["BOX_JOURNAL_FOREIGN"]
    assert box.boot["problems"][0]["field"] == "link"


def test_restoring_the_latest_backup_mends_a_missing_journal(rig: Rig) -> None:
    anchored_box(rig)
    rig.close()
    remove_journal(rig)
    manifest = sorted((rig.root / "backups").glob("*.manifest.json"))[-1]
    code, out = run(rig, "restore", str(manifest), env={})  # the public key is enough: no passphrase
    assert code == 0, out
    box = rig.box(anchor=Anchor(rig.root / "anchor.json"))
    assert box.boot["clean"], box.boot
    assert box.issue(sale())["global_no"] == 4


# -------------------------------------------------------------------------------------------------------
# 2. One writer at a time; checks never race


def test_a_second_writer_is_busy_naming_the_holder_and_writes_nothing(rig: Rig) -> None:
    anchored_box(rig)
    rig.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_JOURNAL, str(rig.journal_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        before = files_digest(rig)
        for command in (["backup"], ["reprint", "--unprinted"], ["export", "--from", "1", "--to", "1", "x"]):
            code, out = run(rig, *command)
            assert code == 2 and out.startswith("error BOX_BUSY"), out
            assert f"process {holder.pid}" in out
        with pytest.raises(FiscalError) as busy:
            Journal(rig.journal_path)
        assert busy.value.code == "BOX_BUSY"
        assert files_digest(rig) == before
        code, out = run(rig, "status", "--json")  # a reader is never refused
        assert code == 0 and json.loads(out)["journal"]["clean"]
    finally:
        holder.communicate("done\n", timeout=30)
    box = rig.box()  # the lock went with its process
    assert box.boot["clean"]


HOLD_JOURNAL = textwrap.dedent(
    """
    import sys
    from firmware.journal import Journal
    journal = Journal(sys.argv[1])
    print("holding", flush=True)
    sys.stdin.readline()
    journal.close()
    """
)

WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, "tests/firmware")
    from pathlib import Path
    from box_rig import Rig, sale
    from firmware.box import Box
    from firmware.core.errors import FiscalError
    from firmware.journal import Journal
    rig = Rig(Path(sys.argv[1]))

    class Wall:  # the writers share one time line: the machine's
        def now(self):
            return time.time()

    rig.clock = Wall()
    issued = busy = 0
    while issued < 15:
        try:
            journal = Journal(rig.journal_path)
        except FiscalError as error:
            assert error.code == "BOX_BUSY", error
            busy += 1
            time.sleep(0.01)
            continue
        box = Box(journal, rig.keys, rig.clock)
        if not box.boot["clean"]:
            print("UNCLEAN", box.boot["problems"], flush=True)
            sys.exit(1)
        for _ in range(5):
            box.issue(sale(invoice=f"W{sys.argv[2]}-{issued}"))
            issued += 1
        journal.close()
    print("issued", issued, "busy", busy, flush=True)
    """
)

READER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, "tests/firmware")
    from pathlib import Path
    from box_rig import Rig
    from firmware.box import Box
    from firmware.journal import Journal
    rig = Rig(Path(sys.argv[1]))
    for _ in range(100):
        journal = Journal(rig.journal_path, read_only=True)
        box = Box(journal, rig.keys, rig.clock)
        if not box.boot["clean"]:
            print("UNCLEAN", box.boot["problems"], flush=True)
            sys.exit(1)
        journal.close()
    print("read clean", flush=True)
    """
)


def test_writers_and_readers_in_several_processes_never_see_a_false_mismatch(rig: Rig) -> None:
    rig.clock.t = time.time() - 60
    box = rig.box()
    box.provision(SETTINGS)
    box.open_day()
    rig.close()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(rig.root), str(n)], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        for n in range(1, 4)
    ]
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(rig.root)], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        for _ in range(2)
    ]
    outputs = [(p.communicate(timeout=120)[0], p.returncode) for p in writers + readers]
    assert all(code == 0 for _, code in outputs), outputs
    assert sum(int(out.split()[1]) for out, _ in outputs[:3]) == 45
    box = rig.box()
    assert box.boot["clean"]
    assert box.journal.head()["last_global_no"] == 45
    boots = [
        json.loads(detail)
        for (detail,) in box.journal.db.execute("SELECT detail FROM audit_log WHERE event = 'boot'")
    ]
    assert boots and all(b["clean"] for b in boots)
    assert box.audit()["clean"]


# -------------------------------------------------------------------------------------------------------
# 3. Commands that read write nothing


def test_read_commands_write_nothing_and_need_no_passphrase(rig: Rig) -> None:
    box = anchored_box(rig)
    box.close_day()
    rig.close()
    before = files_digest(rig)
    anchor = (rig.root / "anchor.json").read_bytes()
    reads = [
        ["status"],
        ["status", "--json"],
        ["show", "2"],
        ["report", "--day", "1"],
        ["report", "--json"],
        ["outbox", "--json"],
        ["audit"],
        ["receipt", "2", "--json"],
        ["day-files", "1", str(rig.root / "files")],
    ]
    for _ in range(3):
        for command in reads:
            code, out = run(rig, *command, env={})
            assert code in (0, 1) and not out.startswith("error "), (command, out)
    assert files_digest(rig) == before
    assert (rig.root / "anchor.json").read_bytes() == anchor
    with Journal(rig.journal_path, read_only=True) as journal:
        events = [row[0] for row in journal.db.execute("SELECT event FROM audit_log")]
    assert events.count("boot") == 1  # the one box opened for writing above, none from the reads


def test_audit_works_on_a_read_only_medium(rig: Rig, tmp_path: Path) -> None:
    anchored_box(rig)
    rig.close()
    medium = tmp_path / "medium"
    medium.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(medium)], check=False)
    assert mounted.returncode == 0, "the test mounts a tmpfs (it runs as root, as CI does)"
    try:
        for name in ("journal.db", "anchor.json"):
            (medium / name).write_bytes((rig.root / name).read_bytes())
        subprocess.run(["mount", "-o", "remount,ro", str(medium)], check=True)
        pem = rig.root / "public.pem"
        pem.write_bytes(rig.keys.public_key_pem())
        result = CliRunner().invoke(
            device,
            ["audit", "--journal", str(medium / "journal.db"), "--public-key", str(pem), "--json"],
            env={},
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["checked"]["receipts"] == 3
        with pytest.raises(FiscalError) as refused:
            Journal(medium / "journal.db")
        assert refused.value.code == "BOX_JOURNAL_READ_ONLY" and "read-only" in refused.value.message
    finally:
        subprocess.run(["umount", str(medium)], check=False)


# -------------------------------------------------------------------------------------------------------
# 7. Damage in what waits for FDMS is found at boot and never escapes raw


def close_request_bytes(journal: Journal) -> bytes:
    return journal.db.execute("SELECT CAST(close_request AS BLOB) FROM days WHERE day_no = 1").fetchone()[0]


@pytest.mark.parametrize("damage", ["not utf-8", "a digit"])
def test_one_damaged_byte_in_an_unconfirmed_close_is_found_at_boot(rig: Rig, damage: str) -> None:
    box = anchored_box(rig)
    box.close_day()
    assert box.journal.day(1)["status"] == CLOSE_INITIATED  # type: ignore[index]
    raw = bytearray(close_request_bytes(box.journal))
    if damage == "not utf-8":
        raw[20] = 0xFF
    else:
        at = raw.index(b'"fiscalCounterValue":') + len(b'"fiscalCounterValue":')
        raw[at] = ord("9") if raw[at] != ord("9") else ord("8")
    box.journal.db.execute("UPDATE days SET close_request = CAST(? AS TEXT) WHERE day_no = 1", (bytes(raw),))
    reopened = rig.box(anchor=Anchor(rig.root / "anchor.json"))
    assert not reopened.boot["clean"]
    problem = reopened.boot["problems"][0]
    if damage == "not utf-8":
        assert problem["code"] == "BOX_JOURNAL_CORRUPT" and "table days, row day_no 1" in problem["message"]
        for operation in (reopened.outbox, reopened.status):
            with pytest.raises(FiscalError) as corrupt:
                operation()
            assert corrupt.value.code == "BOX_JOURNAL_CORRUPT"
            assert "table days, row day_no 1" in corrupt.value.message
    else:
        assert problem["code"] == "BOX_TAMPER_DAY" and problem["day_no"] == 1
        assert reopened.status()["journal"]["clean"] is False
    with pytest.raises(FiscalError) as refused:
        reopened.close_day()
    assert refused.value.code in ("BOX_JOURNAL_MISMATCH", "BOX_JOURNAL_CORRUPT")


def test_a_waiting_receipt_from_before_the_last_checkpoint_is_checked_at_boot(rig: Rig) -> None:
    box = anchored_box(rig, receipts=4)
    rig.close()
    box = rig.box()  # the boot signs a checkpoint at receipt 4: receipt 2 is behind it, still undelivered
    checkpoint = box.journal.last_checkpoint()
    assert checkpoint is not None and checkpoint.global_no == 4
    body = box.journal.receipt(2)["body"]  # type: ignore[index]
    box.journal.db.execute(
        "UPDATE receipts SET body = ? WHERE global_no = 2", (body.replace('"invoiceNo":"', '"invoiceNo":"X'),)
    )
    reopened = rig.box()
    codes = {(p["code"], p.get("global_no")) for p in reopened.boot["problems"]}
    assert ("BOX_TAMPER_CHAIN", 2) in codes


# -------------------------------------------------------------------------------------------------------
# 8. One receipt read back, straight into explain


def test_receipt_reads_one_back_and_its_body_feeds_explain(rig: Rig) -> None:
    box = anchored_box(rig)
    stored = box.journal.receipt(2)
    assert stored is not None
    code, out = run(rig, "receipt", "2", "--json", env={})
    assert code == 0, out
    info = json.loads(out)
    assert info["body"] == stored["body"] and info["hash"] == stored["hash"]
    assert info["previous_hash"] == box.journal.receipt(1)["hash"]  # type: ignore[index]
    assert info["delivery"]["state"] == "pending" and info["prints"] == {"started": 0, "completed": 0}
    code, text = run(rig, "receipt", "2")
    assert code == 0 and "fiscalbox explain receipt -" in text and "None" not in text
    code, body = run(rig, "receipt", "2", "--body")
    assert body.strip() == stored["body"]
    pem = rig.root / "public.pem"
    pem.write_bytes(rig.keys.public_key_pem())
    explained = CliRunner().invoke(
        host,
        ["explain", "receipt", "-", "--device-id", str(DEVICE_ID), "--previous-hash", info["previous_hash"]]
        + ["--cert", str(pem), "--signature", info["signature"], "--json"],
        input=body,
    )
    assert explained.exit_code == 0, explained.output
    report = json.loads(explained.output)
    assert report["hash"] == stored["hash"] and report["signature_valid"] is True
    code, out = run(rig, "receipt", "9")
    assert code == 2 and "BOX_NO_RECEIPT" in out and "the last one is 3" in out


def test_the_anchor_file_is_never_written_by_a_box_opened_to_read(rig: Rig) -> None:
    anchored_box(rig)
    rig.close()
    (rig.root / "anchor.json").unlink()
    run(rig, "status")
    assert not (rig.root / "anchor.json").exists()
    assert os.path.exists(rig.journal_path)


def test_show_never_hands_the_terminal_a_control_character(rig: Rig) -> None:
    box = rig.box()
    box.provision({**SETTINGS, "branch_name": "Main \x1b[2J\x1b[31mBranch\u202e"})  # as GetConfig sent it
    box.open_day()
    rig.clock.advance(60)
    box.issue(sale())
    code, out = run(rig, "show", "1")
    assert code == 0, out
    assert "\x1b" not in out and "\u202e" not in out
    assert "Main \\u001b[2J\\u001b[31mBranch\\u202e" in out


# -------------------------------------------------------------------------------------------------------
# What a review found: the anchor's edges, restore's dead ends, delivery and writers on a refused journal


def test_a_provisioned_box_with_no_receipt_restarts_clean_again_and_again(rig: Rig) -> None:
    box = rig.box(anchor=Anchor(rig.root / "anchor.json"))
    box.provision(SETTINGS)
    box.backup(rig.root / "backups")
    for _ in range(3):
        box = rig.box(anchor=Anchor(rig.root / "anchor.json"))
        assert box.boot["clean"], box.boot
    assert "link" not in json.loads((rig.root / "anchor.json").read_text())
    box.open_day()
    rig.clock.advance(60)
    assert box.issue(sale())["global_no"] == 1


def test_writers_refuse_a_journal_that_is_not_the_boxs_own_and_leave_the_anchor(
    rig: Rig, tmp_path: Path
) -> None:
    anchored_box(rig)
    rig.close()
    put_in_place(rig, foreign_journal(rig, tmp_path / "other", receipts=10))
    anchor = (rig.root / "anchor.json").read_bytes()
    before = files_digest(rig)
    for command in (
        ["backup"],
        ["export", "--from", "1", "--to", "2", str(rig.root / "x.json")],
        ["reprint", "1"],
    ):
        code, out = run(rig, *command)
        assert code == 2 and out.startswith("error BOX_JOURNAL_FOREIGN"), (command, out)
    assert (rig.root / "anchor.json").read_bytes() == anchor
    assert files_digest(rig) == before  # not even a boot entry went into the other device's journal
    assert not (rig.root / "x.json").exists()
    with pytest.raises(FiscalError) as refused:
        Anchor(rig.root / "anchor.json").advance(20, DEVICE_ID + 1)
    assert refused.value.code == "BOX_JOURNAL_FOREIGN"


def test_restore_mends_a_foreign_or_unreadable_journal_and_keeps_it(rig: Rig, tmp_path: Path) -> None:
    anchored_box(rig)
    rig.close()
    manifest = sorted((rig.root / "backups").glob("*.manifest.json"))[-1]
    put_in_place(rig, foreign_journal(rig, tmp_path / "other", receipts=10))  # ahead of the backup
    code, out = run(rig, "restore", str(manifest), "--json")
    assert code == 0, out
    kept = Path(json.loads(out)["kept"])
    assert kept.exists() and kept.name.startswith("journal.db.replaced-")
    with Journal(kept, read_only=True) as theirs:
        assert theirs.head()["last_global_no"] == 10  # nothing of it was lost
    rig.journal_path.write_bytes(os.urandom(8192))  # then a journal that is no database at all
    code, out = run(rig, "restore", str(manifest))
    assert code == 0, out
    box = rig.box(anchor=Anchor(rig.root / "anchor.json"))
    assert box.boot["clean"], box.boot
    assert box.issue(sale())["global_no"] == 4


def test_delivery_sends_nothing_from_a_journal_that_failed_its_check(rig: Rig) -> None:
    from firmware.delivery import BLOCKED, Delivery
    from firmware.fdms_client import FdmsClient

    anchored_box(rig)
    rig.close()
    remove_journal(rig)
    box = rig.box(anchor=Anchor(rig.root / "anchor.json"))  # an empty journal where the box's was
    box.provision(SETTINGS)
    # Nothing listens at this address: were delivery to try FDMS, its problem would be BOX_FDMS_UNAVAILABLE.
    client = FdmsClient("https://127.0.0.1:9", DEVICE_ID, "fiscalbox", "1.0", timeout=0.5)
    worker = Delivery(box, client, rig.clock, state_file=rig.root / "delivery.json")
    assert worker.step() == BLOCKED
    assert worker.problem is not None and worker.problem["code"] == "BOX_JOURNAL_BEHIND"


def test_an_audit_racing_a_backup_is_not_taken_for_a_rollback(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from firmware import verify

    box = anchored_box(rig)
    real = verify.full_audit

    def audit_while_the_box_moves_on(*args: object, **kwargs: object) -> object:
        rig.clock.advance(5)
        box.issue(sale())  # committed after the audit's snapshot began ...
        box.backup(rig.root / "backups")  # ... and anchored before the audit reads the anchor
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(verify, "full_audit", audit_while_the_box_moves_on)
    code, out = run(rig, "audit", "--json")
    assert code == 0, out
    assert (
        json.loads(out)["checked"]["receipts"] == 3
    )  # the snapshot's, consistent with the anchor read first


def test_damage_sqlite_finds_and_damaged_stored_json_are_one_line_naming_where(rig: Rig) -> None:
    box = anchored_box(rig)
    box.journal.db.execute(
        "UPDATE settings SET value = CAST(? AS TEXT) WHERE key = 'qr_url'", (b'{"https://fdms',)
    )
    rig.close()
    for command in (["status"], ["receipt", "1"], ["show", "1"], ["report"], ["outbox"]):
        code, out = run(rig, *command)
        assert code in (0, 2) and "Traceback" not in out, (command, out)
        if code == 2:
            assert out.startswith("error BOX_JOURNAL_CORRUPT") and "table settings, row key qr_url" in out
    code, out = run(rig, "status", "--json")
    assert "table settings, row key qr_url" in json.loads(out)["journal"]["problems"][0]["message"]
    with Journal(rig.journal_path) as journal:  # a page of the receipts table overwritten
        root = journal.db.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'receipts'").fetchone()[0]
        size = journal.db.execute("PRAGMA page_size").fetchone()[0]
        journal.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(rig.journal_path, "r+b") as handle:
        handle.seek((root - 1) * size)
        handle.write(b"\xff" * 64)
    for command in (["receipt", "1"], ["outbox"], ["audit"]):
        code, out = run(rig, *command)
        assert code in (1, 2) and "Traceback" not in out, (command, out)
        assert "BOX_JOURNAL_CORRUPT" in out


def test_an_empty_or_schemaless_file_is_never_made_a_journal_by_a_writer(rig: Rig) -> None:
    import apsw

    anchored_box(rig)
    rig.close()
    (rig.root / "anchor.json").unlink()
    remove_journal(rig)
    rig.journal_path.write_bytes(b"")
    code, out = run(rig, "backup")
    assert code == 2 and "an empty file, not a journal" in out
    assert rig.journal_path.read_bytes() == b""
    rig.journal_path.unlink()
    other = apsw.Connection(str(rig.journal_path))
    other.execute("CREATE TABLE notes (text TEXT)")
    other.close()
    before = rig.journal_path.read_bytes()
    for command in (["backup"], ["status"], ["register"]):
        code, out = run(rig, *command)
        assert code == 2 and "not a journal" in out, (command, out)
    assert rig.journal_path.read_bytes() == before


def test_one_lock_however_the_journal_path_is_spelled(rig: Rig) -> None:
    anchored_box(rig)  # holds the journal for writing
    link = rig.root / "link.db"
    link.symlink_to(rig.journal_path)
    with pytest.raises(FiscalError) as busy:
        Journal(link)
    assert busy.value.code == "BOX_BUSY"


def test_status_says_the_check_did_not_run_when_no_public_key_is_readable(rig: Rig) -> None:
    anchored_box(rig)
    rig.close()
    for public in (rig.root / "keys").glob("gen-*/device-key.pub"):
        public.unlink()  # a key store made before the public file
    code, out = run(rig, "status", env={})
    assert code == 0 and "journal check: not run" in out, out
    code, out = run(rig, "status")  # with the passphrase the full store is opened, and it checks
    assert code == 0 and "journal check: clean" in out, out
    assert list((rig.root / "keys").glob("gen-*/device-key.pub"))  # ... and the public file is back
