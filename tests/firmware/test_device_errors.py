"""`fiscalbox-device` refusing what a shop owner gets wrong: one line `error CODE: message` on stderr, exit 2,
no traceback, nothing changed; and messages that say what is really wrong."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from box_rig import SETTINGS, Rig, sale
from click.testing import CliRunner, Result

from firmware.box import Box
from firmware.core.errors import FiscalError
from firmware.journal import Journal
from firmware.main import main

PASSPHRASE = "test-passphrase"
ENV = {"FISCALBOX_KEY_PASSPHRASE": PASSPHRASE}
DEVICE_COMMAND = str(Path(sys.executable).parent / "fiscalbox-device")
HUGE = "99999999999999999999999"
LARGEST = str((1 << 63) - 1)  # the largest number the journal can hold: names nothing, refused by the box


def config(root: Path, extra: str = "", keys: Path | None = None, journal: Path | None = None) -> str:
    """A box configuration over the rig's files (or `keys` and `journal` elsewhere), with `extra` after it."""
    journal = journal or root / "journal.db"
    path = root / "box.toml"
    path.write_text(
        f'[device]\nid = 4321\nserial = "FB-TEST-0001"\n\n'
        f'[keys]\nstore = "file"\ndirectory = "{keys or root / "keys"}"\n\n'
        f'[backup]\ndir = "{root / "backups"}"\nretain = 2\n\n'
        f'[journal]\npath = "{journal}"\nanchor = "{root / "anchor.json"}"\n' + extra
    )
    return str(path)


def run(rig: Rig, *args: str, env: dict[str, str] | None = None, extra: str = "") -> Result:
    return CliRunner().invoke(
        main, ["--config", config(rig.root, extra), *args], env=ENV if env is None else env
    )


def refused(result: Result, code: str) -> str:
    """The command's one stderr line, once it is checked to be `error CODE: ...` with exit 2 and no output."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error {code}: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def state(root: Path) -> tuple[dict[str, bytes], dict[str, list[Any]]]:
    """Every file under `root` but the journal's, and the journal's rows but what a box writes whenever it
    starts (its boot entry and checkpoint, and the anchor that follows them): what a refusal must not
    change."""
    journal_files = (
        "journal.db",
        "journal.db-wal",
        "journal.db-shm",
        "journal.db.lock",
        "journal.db.service",  # the service lock a one-shot command holds shared (made when missing)
        "anchor.json",
    )
    outside = {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in journal_files
    }
    return outside, rows(root / "journal.db") if (root / "journal.db").exists() else {}


def rows(path: Path) -> dict[str, list[Any]]:
    """Every table's rows of the journal, read without writing; the bookkeeping of a box's start aside."""
    journal = Journal(path, read_only=True)
    try:
        tables = [r[0] for r in journal.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        found = {
            name: list(journal.db.execute(f"SELECT * FROM {name}"))
            for name in sorted(tables)
            if name not in ("checkpoints", "head")
        }
        found["audit_log"] = [r for r in found["audit_log"] if r[2] not in ("boot", "checkpoint")]
        return found
    finally:
        journal.close()


@pytest.fixture
def sold(rig: Rig, box: Box) -> Rig:
    """A box with three receipts in day 1, closed (its service stopped) so that writers may run."""
    for _ in range(3):
        box.issue(sale())
    rig.close()
    config(rig.root)
    return rig


def no_traceback(*args: str, root: Path, env: dict[str, str] | None = None) -> str:
    """Run the installed command in a process of its own; its stderr, once it is one `error` line."""
    done = subprocess.run(
        [DEVICE_COMMAND, *args],
        capture_output=True,
        text=True,
        cwd=root,
        env=env or {"PATH": "/usr/bin:/bin"},
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2 and done.stdout == "", done
    assert re.fullmatch(r"error [A-Z0-9_]+: [^\n]+\n", done.stderr), done.stderr
    return done.stderr


# ---------------------------------------------------------------------------------------------------------
# 14: what used to end in a traceback


def test_a_configuration_of_random_bytes_is_refused_as_not_text(tmp_path: Path) -> None:
    path = tmp_path / "box.toml"
    path.write_bytes(b"[box]\nzone = \xff\xfe\x00\x81" + bytes(range(128, 256)))
    line = no_traceback("--config", str(path), "status", root=tmp_path)
    assert line.startswith("error BOX_CONFIG: ") and "not UTF-8" in line


def test_an_unknown_time_zone_is_refused_naming_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "box.toml"
    path.write_text('[box]\nzone = "Mars/Olympus"\n')
    line = no_traceback("--config", str(path), "status", root=tmp_path)
    assert line.startswith("error BOX_CONFIG: ") and "box.zone" in line and "Mars/Olympus" in line


NUMERIC = [
    ["show", "{n}"],
    ["receipt", "{n}"],
    ["reprint", "{n}"],
    ["report", "--day", "{n}"],
    ["export", "--from", "{n}", "--to", "3", "out.json"],
    ["export", "--from", "1", "--to", "{n}", "out.json"],
    ["day-files", "{n}", "out"],
    ["outbox", "--limit", "{n}"],
    ["backup", "--retain", "{n}"],
]


@pytest.mark.parametrize("value", ["0", "-1", HUGE, "1.5", "ten", "9" * 5000])
@pytest.mark.parametrize("template", NUMERIC, ids=lambda t: "-".join(a for a in t if a[0] != "{"))
def test_every_numeric_argument_refuses_what_names_nothing(
    sold: Rig, template: list[str], value: str
) -> None:
    before = state(sold.root)
    line = refused(run(sold, *[a.format(n=value) for a in template]), "BOX_BAD_OPTION")
    assert "whole number" in line and "range" not in line
    assert state(sold.root) == before


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["show", LARGEST], "BOX_NO_RECEIPT"),
        (["receipt", LARGEST], "BOX_NO_RECEIPT"),
        (["reprint", LARGEST], "BOX_NO_RECEIPT"),
        (["report", "--day", LARGEST], "BOX_NO_DAY"),
        (["day-files", LARGEST, "out"], "BOX_NO_DAY"),
        (["export", "--from", "1", "--to", LARGEST, "out.json"], "BOX_EXPORT_RANGE"),
    ],
)
def test_the_largest_number_the_journal_holds_is_looked_up_and_not_found(
    sold: Rig, args: list[str], code: str
) -> None:
    before = state(sold.root)
    refused(run(sold, *args), code)
    assert state(sold.root) == before


def test_a_backup_folder_that_is_a_file_is_refused_and_nothing_is_written(sold: Rig) -> None:
    afile = sold.root / "afile"
    afile.write_text("my notes\n")
    before = state(sold.root)
    line = refused(run(sold, "backup", str(afile)), "BOX_BACKUP")
    assert "is a file" in line
    assert state(sold.root) == before


# ---------------------------------------------------------------------------------------------------------
# 15: messages that mislead


def test_a_section_given_as_a_value_is_not_called_unknown(tmp_path: Path) -> None:
    path = tmp_path / "box.toml"
    path.write_text("journal = 5\n")
    line = refused(CliRunner().invoke(main, ["--config", str(path), "status"], env=ENV), "BOX_CONFIG")
    assert "Unknown" not in line and "journal must be a section" in line


def test_a_day_that_does_not_exist_is_named_with_the_last_day(sold: Rig) -> None:
    line = refused(run(sold, "report", "--day", "99"), "BOX_NO_DAY")
    assert "There is no fiscal day 99" in line and "the last day is 1" in line
    line = refused(run(sold, "day-files", "99", str(sold.root / "out")), "BOX_NO_DAY")
    assert "close it first" not in line and "the last day is 1" in line
    assert not (sold.root / "out").exists()


def test_a_wrong_passphrase_names_the_variable_it_came_from(sold: Rig) -> None:
    path = config(sold.root)  # the same files, with the passphrase in another variable
    text = (
        Path(path)
        .read_text()
        .replace('store = "file"\n', 'store = "file"\npassphrase_env = "SHOP_KEY_PASS"\n')
    )
    Path(path).write_text(text)
    before = state(sold.root)
    for args in (["backup"], ["key", "csr"]):
        result = CliRunner().invoke(main, ["--config", path, *args], env={"SHOP_KEY_PASS": "wrong one"})
        line = refused(result, "BOX_KEY_PASSPHRASE")
        assert "SHOP_KEY_PASS" in line and "configuration" not in line and "wrong one" not in line
    line = refused(CliRunner().invoke(main, ["--config", path, "backup"], env={}), "BOX_CONFIG")
    assert "SHOP_KEY_PASS" in line
    assert state(sold.root) == before


def test_a_wrong_token_pin_names_the_variable_it_came_from(tmp_path: Path, softhsm_token: Any) -> None:
    path = tmp_path / "box.toml"
    path.write_text(
        f'[keys]\nstore = "pkcs11"\npkcs11_module = "{softhsm_token.module}"\n'
        f'token_label = "{softhsm_token.label}"\npin_env = "SHOP_PIN"\n'
    )
    result = CliRunner().invoke(main, ["--config", str(path), "key", "show"], env={"SHOP_PIN": "0000"})
    line = refused(result, "BOX_KEY_PASSPHRASE")
    assert "SHOP_PIN" in line and "configuration" not in line


@pytest.fixture
def read_only_copy(sold: Rig, tmp_path: Path) -> Iterator[Path]:
    """The rig's journal and keys on a medium really mounted read-only (a tmpfs; the tests run as root)."""
    medium = tmp_path / "medium"
    medium.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(medium)], check=True)
    try:
        shutil.copy(sold.journal_path, medium / "journal.db")
        shutil.copytree(sold.root / "keys", medium / "keys")
        subprocess.run(["mount", "-o", "remount,ro", str(medium)], check=True)
        yield medium
    finally:
        if subprocess.run(["umount", str(medium)]).returncode != 0:
            subprocess.run(["umount", "-l", str(medium)], check=True)  # detached all the same
            raise AssertionError(f"a file on {medium} was left open")


def test_a_journal_on_a_read_only_medium_is_named_so_and_still_reads(sold: Rig, read_only_copy: Path) -> None:
    path = config(sold.root, keys=read_only_copy / "keys", journal=read_only_copy / "journal.db")
    env = {**ENV, "FISCALBOX_ACTIVATION_KEY": "abcd1234"}
    writers = [
        ["backup"],
        ["export", "--from", "1", "--to", "1", str(sold.root / "out.json")],
        ["reprint", "1"],
        ["register"],
        ["deliver", "--until-idle"],
    ]
    for args in writers:
        line = refused(CliRunner().invoke(main, ["--config", path, *args], env=env), "BOX_JOURNAL_READ_ONLY")
        assert "read-only medium" in line
    for args in (["status", "--json"], ["audit", "--json"]):
        result = CliRunner().invoke(main, ["--config", path, *args], env={})
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["journal" if args[0] == "status" else "problems"] in (
            {"clean": True, "problems": [], "skipped": None},
            [],
        )
    assert not (sold.root / "out.json").exists() and not (sold.root / "backups").exists()


def test_report_with_no_day_open_says_which_report_it_shows(rig: Rig, box: Box) -> None:
    box.issue(sale())
    box.close_day()  # the close waits for FDMS: still an X report
    code_and_text = run(rig, "report")
    assert code_and_text.exit_code == 0, code_and_text.output
    assert "day 1, whose close is not confirmed yet" in code_and_text.stderr
    assert "Z report" not in code_and_text.stderr and "X REPORT" in code_and_text.stdout
    box.record_close(1, "FiscalDayClosed", closed_at="2026-11-22T09:00:00")
    text = run(rig, "report")
    assert "the Z report of the last day, day 1" in text.stderr and "Z REPORT" in text.stdout
    as_json = run(rig, "report", "--json")
    assert as_json.exit_code == 0 and as_json.stderr == ""
    assert "Z report of the last day, day 1" in json.loads(as_json.stdout)["note"]


def test_status_before_registration_says_to_register(tmp_path: Path) -> None:
    path = config(tmp_path)
    for args in (["status"], ["status", "--json"], ["outbox"], ["report"]):
        line = refused(CliRunner().invoke(main, ["--config", path, *args], env=ENV), "BOX_NOT_PROVISIONED")
        assert "fiscalbox-device register" in line
    assert not (tmp_path / "journal.db").exists()


def test_status_and_outbox_text_show_no_none_and_no_python_dicts(rig: Rig) -> None:
    Journal(rig.journal_path, create=True).close()  # a registration cut short: a journal, no settings
    for args in (["status"], ["outbox"]):
        result = run(rig, *args)
        assert result.exit_code == 0, result.output
        assert "None" not in result.stdout and "{" not in result.stdout, result.stdout
    assert "device not registered yet" in run(rig, "status").stdout
    assert "outbox: empty" in run(rig, "outbox").stdout
    box = rig.box()
    box.provision(SETTINGS)
    box.open_day()
    box.issue(sale())
    for args in (["status"], ["outbox"]):
        result = run(rig, *args)
        assert result.exit_code == 0, result.output
        assert "None" not in result.stdout and "{" not in result.stdout, result.stdout
        assert "1 pending" in result.stdout


def test_deliver_text_counts_the_outbox_in_words(sold: Rig) -> None:
    """No certificate yet: delivery stops for a person at once, and says what waits."""
    result = run(
        sold, "deliver", "--until-idle", "--max-wait", "0", extra='[fdms]\nurl = "https://127.0.0.1:9"\n'
    )
    assert result.exit_code == 1, result.output
    assert "outbox: 3 pending" in result.stdout and "{" not in result.stdout


def test_a_burst_of_sales_is_asked_to_wait_not_to_set_the_clock(rig: Rig, box: Box) -> None:
    """Four sales a second: each is dated a second after the last, so the dates run ahead of the clock."""
    with pytest.raises(FiscalError) as refused_sale:
        for _ in range(2000):
            box.issue(sale())
            rig.clock.advance(0.25)
    error = refused_sale.value
    assert error.code == "BOX_TOO_FAST" and "set the time" not in error.message
    before = rows(rig.journal_path)
    wait = int(re.search(r"Wait (\d+) s", error.message).group(1))  # type: ignore[union-attr]
    assert 1 <= wait
    rig.clock.advance(wait - 1)
    with pytest.raises(FiscalError) as early:
        box.issue(sale())
    assert early.value.code == "BOX_TOO_FAST"
    assert rows(rig.journal_path) == before
    rig.clock.advance(1)
    box.issue(sale())


# ---------------------------------------------------------------------------------------------------------
# A new user's mistakes, command by command


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["frobnicate"], "BOX_USAGE", "No such command 'frobnicate'"),
        (["show"], "BOX_USAGE", "Missing argument 'GLOBAL_NO'"),
        (["show", "1", "--width", "50"], "BOX_BAD_OPTION", "'50' is not one of"),
        (["export", "--from", "1", "out.json"], "BOX_USAGE", "Missing option '--to'"),
        (["key", "install-cert", "nothing.pem"], "BOX_BAD_OPTION", "does not exist"),
        (["audit", "--journal", "."], "BOX_BAD_OPTION", "is a directory"),
        (["restore", "."], "BOX_BAD_OPTION", "is a directory"),
        (["day-files", "1", "{root}/box.toml"], "BOX_BAD_OPTION", "is a file"),
        (["reprint", "1", "--bogus"], "BOX_USAGE", "--bogus"),
        (["deliver", "--until-idle", "--max-wait", "nan"], "BOX_BAD_OPTION", "seconds"),
        (["deliver", "--until-idle", "--max-wait", "inf"], "BOX_BAD_OPTION", "seconds"),
        (["deliver", "--until-idle", "--max-wait", "-1"], "BOX_BAD_OPTION", "seconds"),
        (["key", "generate", "--algorithm", "dsa"], "BOX_BAD_OPTION", "'dsa' is not one of"),
    ],
)
def test_clicks_own_refusals_are_one_error_line(sold: Rig, args: list[str], code: str, says: str) -> None:
    before = state(sold.root)
    args = [a.format(root=sold.root) for a in args]
    result = CliRunner().invoke(main, ["--config", config(sold.root), *args], env=ENV)
    assert says in refused(result, code)
    assert state(sold.root) == before


def test_an_empty_configuration_path_is_refused(tmp_path: Path) -> None:
    line = refused(CliRunner().invoke(main, ["--config", "", "status"], env=ENV), "BOX_CONFIG")
    assert "configuration path is empty" in line


@pytest.mark.parametrize(
    "name", ["FISCALBOX_JOURNAL_PATH", "FISCALBOX_KEYS_DIRECTORY", "FISCALBOX_BACKUP_DIR"]
)
def test_an_empty_environment_setting_is_refused_and_nothing_lands_in_the_working_folder(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # an empty path is the working folder
    for args in (["key", "generate"], ["status"]):
        result = CliRunner().invoke(main, ["--config", path, *args], env={**ENV, name: ""})
        where = name.removeprefix("FISCALBOX_").lower().replace("_", ".", 1)
        assert f"{where} is empty" in refused(result, "BOX_CONFIG")
    assert list(work.iterdir()) == [] and not (tmp_path / "keys").exists()


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("FISCALBOX_DEVICE_ID", "\u00b9", "device.id must be a whole number"),  # a digit int() refuses
        ("FISCALBOX_DEVICE_ID", "--5", "device.id must be a whole number"),
        ("FISCALBOX_DEVICE_ID", "9" * 5000, "device.id must be a whole number"),
        ("FISCALBOX_DEVICE_ID", HUGE, "device.id must be a whole number from 0 to 9,999,999,999"),
        ("FISCALBOX_BACKUP_RETAIN", "0", "backup.retain must be a whole number from 1"),
        ("FISCALBOX_BOX_DAY_WARN_MINUTES", "-3", "box.day_warn_minutes must be a whole number from 0"),
        ("FISCALBOX_PRINTER_BAUD", "0", "printer.baud must be a whole number from 1"),
    ],
)
def test_numeric_settings_out_of_range_are_refused_naming_the_setting(
    sold: Rig, name: str, value: str, says: str
) -> None:
    before = state(sold.root)
    assert says in refused(run(sold, "backup", env={**ENV, name: value}), "BOX_CONFIG")
    assert state(sold.root) == before


@pytest.mark.parametrize("content", [b"", b"x", b"journal notes\n" * 100])
def test_a_journal_path_that_is_not_a_journal_is_refused_and_left_as_it_was(
    sold: Rig, content: bytes
) -> None:
    other = sold.root / "notes.db"
    other.write_bytes(content)
    env = {**ENV, "FISCALBOX_JOURNAL_PATH": str(other)}
    for args in (["backup"], ["status"], ["audit"]):
        line = refused(run(sold, *args, env=env), "BOX_JOURNAL")
        assert "not a journal" in line and "version" not in line
    line = refused(run(sold, "audit", "--journal", str(other)), "BOX_JOURNAL")
    assert "not a journal" in line
    assert other.read_bytes() == content and not Path(f"{other}-wal").exists()


def test_a_public_key_file_that_holds_no_key_is_named_so(sold: Rig) -> None:
    garbage = sold.root / "device.pem"
    garbage.write_bytes(b"-----BEGIN NOTHING-----\nAAAA\n-----END NOTHING-----\n")
    line = refused(run(sold, "audit", "--public-key", str(garbage)), "BOX_KEY_UNREADABLE")
    assert "holds no certificate or public key" in line and "passphrase" not in line


def test_export_to_nowhere_is_refused_and_changes_nothing(sold: Rig) -> None:
    afile = sold.root / "afile"
    afile.write_text("x")
    before = rows(sold.journal_path)
    assert "OUT is empty" in refused(run(sold, "export", "--from", "1", "--to", "3", ""), "BOX_USAGE")
    line = refused(run(sold, "export", "--from", "1", "--to", "3", str(afile / "x.json")), "BOX_FILE")
    assert str(afile / "x.json") in line
    assert rows(sold.journal_path) == before and afile.read_text() == "x"


def test_day_files_into_a_folder_that_cannot_be_made_is_refused(rig: Rig, box: Box) -> None:
    box.issue(sale())
    box.close_day()
    afile = rig.root / "afile"
    afile.write_text("x")
    assert "BOX_FILE" in refused(run(rig, "day-files", "1", str(afile / "sub")), "BOX_FILE")
    assert "OUT_DIR is empty" in refused(run(rig, "day-files", "1", ""), "BOX_USAGE")
    assert afile.read_text() == "x"


def test_backup_given_an_empty_folder_name_is_refused(sold: Rig) -> None:
    before = state(sold.root)
    assert "DEST is empty" in refused(run(sold, "backup", ""), "BOX_USAGE")
    assert state(sold.root) == before


def test_an_unregistered_journal_says_to_register_and_that_no_receipt_exists(rig: Rig) -> None:
    Journal(rig.journal_path, create=True).close()
    config(rig.root)
    before = state(rig.root)
    assert "fiscalbox-device register" in refused(run(rig, "backup"), "BOX_NOT_PROVISIONED")
    line = refused(run(rig, "receipt", "1"), "BOX_NO_RECEIPT")
    assert "no receipt has been issued yet" in line
    assert state(rig.root) == before


@pytest.mark.parametrize(
    "extra",
    ['[fdms]\nurl = "https://127.0.0.1:9"\n', '[fdms]\nurl = "http://fdms.example"\n'],
    ids=["no-device-id", "not-https"],
)
def test_register_refused_by_its_settings_makes_no_journal(tmp_path: Path, extra: str) -> None:
    path = tmp_path / "box.toml"
    path.write_text(
        f'[keys]\ndirectory = "{tmp_path / "keys"}"\n[journal]\npath = "{tmp_path / "journal.db"}"\n'
        f'anchor = "{tmp_path / "anchor.json"}"\n' + extra
    )
    env = {**ENV, "FISCALBOX_ACTIVATION_KEY": "abcd1234"}
    refused(CliRunner().invoke(main, ["--config", str(path), "register"], env=env), "BOX_CONFIG")
    # no journal: only the (empty) service lock the command held, so no service started beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box.toml", "journal.db.service"]


def test_status_says_a_day_past_its_end_has_ended(rig: Rig, box: Box) -> None:
    rig.clock.advance(23 * 3600)
    assert "min left" in box.status()["warnings"][0]["message"]
    rig.clock.advance(3600)
    (warning,) = box.status()["warnings"]
    assert (
        "ended at 2026-11-23T08:00:00: close it now" in warning["message"]
        and "min left" not in warning["message"]
    )
