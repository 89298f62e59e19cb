"""Wrong input to any `fiscalbox` command: one line `error CODE: message` on stderr, exit 2, nothing else."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from host_tools.cli import main

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "fdms.json").read_text())
RECEIPT = VECTORS["receipts"][0]["receipt"]
HASH = VECTORS["receipts"][0]["previous_hash"]


def refused(args, code, stdin=None, env=None):
    """The command's single stderr line, once it is checked to be `error CODE: ...` with exit status 2."""
    result = CliRunner().invoke(main, args, input=stdin, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error {code}: "), result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def receipt(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(RECEIPT))
    return str(path)


@pytest.fixture
def cert(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "device.pem"
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


def commands(file, cert):
    """Every subcommand that reads a JSON file, with otherwise good options."""
    return [
        ["explain", "receipt", file, "--device-id", "321"],
        ["explain", "day", file, "--device-id", "321", "--day-no", "1", "--day-date", "2026-12-04"],
        ["explain", "receipt", "-", "--device-id", "321", "--config", file],
        ["journal", "verify", file, "--cert", cert],
    ]


@pytest.mark.parametrize(
    "content, code, words",
    [
        ("9" * 5000, "BOX_BAD_NUMBER", "5000 digits"),  # beyond Python's int-string limit
        ('{"receiptTotal": -' + "1" * 5000 + "}", "BOX_BAD_NUMBER", "5000 digits"),
        ("[" * 100_000, "BOX_BAD_JSON", "too deeply"),  # beyond Python's recursion limit
        ('{"a": ' * 100_000, "BOX_BAD_JSON", "too deeply"),
        (b"\xff\xfe{}", "BOX_BAD_JSON", "not UTF-8"),
        ("", "BOX_BAD_JSON", "not JSON"),
        ("NaN", "BOX_BAD_JSON", "NaN is not a JSON number"),
        ("{not json", "BOX_BAD_JSON", "not JSON"),
    ],
    ids=[
        "digits",
        "digits-inside",
        "nested-arrays",
        "nested-objects",
        "not-utf8",
        "empty",
        "nan",
        "not-json",
    ],
)
def test_unreadable_json_files_are_one_line(tmp_path, cert, content, code, words):
    path = tmp_path / "in.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    for args in commands(str(path), cert):
        stdin = path.read_bytes() if "-" in args else None
        assert words in refused(args, code, stdin=stdin)


def test_not_utf8_on_standard_input_is_one_line():
    assert "not UTF-8" in refused(
        ["explain", "receipt", "-", "--device-id", "1"], "BOX_BAD_JSON", stdin=b"\xff"
    )


def test_a_missing_file_or_a_directory_is_one_line(tmp_path, cert):
    for file in (str(tmp_path / "missing.json"), str(tmp_path)):
        for args in commands(file, cert):
            refused(args, "BOX_FILE")
    refused(["journal", "verify", str(tmp_path / "missing.json"), "--cert", str(tmp_path)], "BOX_FILE")


def test_a_byte_order_mark_is_not_an_error(tmp_path, receipt):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + Path(receipt).read_bytes())
    result = CliRunner().invoke(main, ["explain", "receipt", str(path), "--device-id", "321", "--json"])
    assert result.exit_code == 0, result.output


def test_the_installed_command_prints_no_traceback(tmp_path):
    """The same through the real entry point, as a user runs it: no click test runner in between."""
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000)
    for args in (
        ["explain", "receipt", str(path), "--device-id", "1"],
        ["journal", "verify", str(path), "--cert", "x"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "host_tools.cli", *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.startswith("error BOX_BAD_JSON: ") and len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "options, code, words",
    [
        (["--device-id", "-1"], "BOX_BAD_OPTION", "--device-id"),
        (["--device-id", "0"], "BOX_BAD_OPTION", "positive whole number"),
        (["--device-id", "abc"], "BOX_BAD_OPTION", "--device-id"),
        (["--device-id", "9" * 5000], "BOX_BAD_OPTION", "at most 10 digits"),
        (["--device-id", "1", "--previous-hash", "not base64!"], "BOX_BAD_OPTION", "--previous-hash"),
        (["--device-id", "1", "--previous-hash", "YWJj"], "BOX_BAD_OPTION", "44 characters"),
        (["--device-id", "1", "--previous-hash", HASH[:-1]], "BOX_BAD_OPTION", "--previous-hash"),
        (["--device-id", "1", "--signature", "%%%"], "BOX_BAD_OPTION", "--signature"),
        (["--device-id", "1", "--signature", ""], "BOX_BAD_OPTION", "--signature"),
        (["--device-id", "1", "--qr-url", "fdmstest.zimra.co.zw"], "BOX_BAD_OPTION", "https://"),
        ([], "BOX_USAGE", "Missing option '--device-id'"),
        (["--device-id", "1", "--bogus"], "BOX_USAGE", "--bogus"),
    ],
)
def test_bad_receipt_options_are_one_line(receipt, options, code, words):
    assert words in refused(["explain", "receipt", receipt, *options], code)


@pytest.mark.parametrize(
    "options, code, words",
    [
        (["--device-id", "-5", "--day-date", "2026-12-04"], "BOX_BAD_OPTION", "--device-id"),
        (["--device-id", "1", "--day-no", "0", "--day-date", "2026-12-04"], "BOX_BAD_OPTION", "--day-no"),
        (["--device-id", "1", "--day-no", "-3", "--day-date", "2026-12-04"], "BOX_BAD_OPTION", "--day-no"),
        (["--device-id", "1", "--day-no", "1", "--day-date", "2026-02-30"], "BOX_BAD_DATE", "real date"),
        (
            ["--device-id", "1", "--day-no", "1", "--day-date", "2026-12-04T08:00:00"],
            "BOX_BAD_DATE",
            "YYYY-MM-DD",
        ),
        (["--device-id", "1", "--day-no", "1"], "BOX_USAGE", "--day-date"),
    ],
)
def test_bad_day_options_are_one_line(tmp_path, options, code, words):
    path = tmp_path / "d.json"
    path.write_text("[]")
    assert words in refused(["explain", "day", str(path), *options], code)


def test_an_empty_previous_hash_means_none_as_for_the_first_receipt_of_the_day(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(dict(RECEIPT, receiptCounter=1)))
    result = CliRunner().invoke(
        main, ["explain", "receipt", str(path), "--device-id", "321", "--previous-hash", "", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["first_in_day"] is True and report["previous_hash"] is None and report["findings"] == []


def test_a_day_date_in_another_format_is_told_the_format_the_option_takes(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("[]")
    line = refused(
        ["explain", "day", str(path), "--device-id", "1", "--day-no", "1", "--day-date", "04/12/2026"],
        "BOX_BAD_DATE",
    )
    assert "--day-date" in line and "YYYY-MM-DD" in line and "HH:mm:ss" not in line


@pytest.mark.parametrize("day_no", ["0", "-1", "true", '"3"', "1.5"])
def test_a_bad_fiscal_day_no_in_the_body_is_one_line(tmp_path, day_no):
    path = tmp_path / "d.json"
    path.write_text('{"fiscalDayNo": ' + day_no + ', "fiscalDayCounters": []}')
    refused(["explain", "day", str(path), "--device-id", "1", "--day-date", "2026-12-04"], "RCPT02")


def test_unknown_commands_are_one_line():
    assert "'frobnicate'" in refused(["frobnicate"], "BOX_USAGE")
    assert "'recipt'" in refused(["explain", "recipt"], "BOX_USAGE")


def test_a_passphrase_set_for_another_key_does_not_refuse_a_plain_one(tmp_path, receipt):
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    result = CliRunner().invoke(
        main,
        ["explain", "receipt", receipt, "--device-id", "321", "--key", str(path), "--json"],
        env={"FISCALBOX_KEY_PASSPHRASE": "for-the-other-key"},
    )
    assert result.exit_code == 0, result.output
    assert "signature" in json.loads(result.stdout)


def export(**members):
    """A hand-made journal export: enough members for `journal verify` to reach the days."""
    document = {
        "format": "fiscalbox-journal/1",
        "device_id": 1,
        "first": 1,
        "last": 0,
        "start": {"link": "00" * 32, "day_no": None, "counter": 0, "day_hash": None},
        "receipts": [],
        "days": [],
    }
    return json.dumps({**document, **members})


def test_a_mangled_export_member_is_one_line(tmp_path, cert):
    path = tmp_path / "export.json"
    path.write_text(export(days=["day 1"]))
    refused(["journal", "verify", str(path), "--cert", cert], "BOX_EXPORT_FORMAT")


@pytest.mark.parametrize("close_request", ["[" * 100_000, "9" * 5000, "{not json"])
def test_an_unreadable_close_request_is_a_problem_found(tmp_path, cert, close_request):
    path = tmp_path / "export.json"
    path.write_text(
        export(days=[{"day_no": 1, "opened": "2026-12-04T08:00:00", "close_request": close_request}])
    )
    result = CliRunner().invoke(main, ["journal", "verify", str(path), "--cert", cert, "--json"])
    assert result.exit_code == 1, result.output
    problems = json.loads(result.stdout)["problems"]
    assert {"code": "BOX_TAMPER_BODY", "day_no": 1, "field": "close_request"} in [
        {k: p.get(k) for k in ("code", "day_no", "field")} for p in problems
    ]


@pytest.mark.parametrize("body", ["[" * 100_000, '{"receiptTotal": ' + "9" * 5000 + "}"])
def test_an_unreadable_receipt_body_is_a_problem_found(tmp_path, cert, body):
    row = {
        "global_no": 1,
        "day_no": 1,
        "counter": 1,
        "body": body,
        "hash": "",
        "signature": "",
        "link": "00" * 32,
    }
    path = tmp_path / "export.json"
    path.write_text(export(receipts=[row], last=1))
    result = CliRunner().invoke(main, ["journal", "verify", str(path), "--cert", cert, "--json"])
    assert result.exit_code == 1, result.output
    assert "BOX_TAMPER_BODY" in [p["code"] for p in json.loads(result.stdout)["problems"]]


def test_a_signature_in_the_json_that_is_not_base64_is_named(tmp_path):
    """The lenient decoder skipped the stray characters and showed the QR of other bytes."""
    path = tmp_path / "r.json"
    path.write_text(json.dumps(dict(RECEIPT, receiptDeviceSignature={"hash": "x", "signature": "YW!Jj"})))
    assert "receiptDeviceSignature.signature: " in refused(
        ["explain", "receipt", str(path), "--device-id", "321"], "BOX_BAD_BASE64"
    )
    day = {"fiscalDayNo": 1, "fiscalDayCounters": [], "fiscalDayDeviceSignature": {"signature": "YW Jj"}}
    path.write_text(json.dumps(day))
    assert "fiscalDayDeviceSignature.signature: " in refused(
        ["explain", "day", str(path), "--device-id", "1", "--day-date", "2026-12-04"], "BOX_BAD_BASE64"
    )
