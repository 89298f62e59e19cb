"""`fiscalbox explain`: the strings and hashes of the shared vectors, findings, signing, and bad input."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from firmware.core import fdms
from hardware import signatures
from host_tools.cli import main

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "fdms.json").read_text())
SPEC = VECTORS["receipts"][0]


def run(args, stdin=None, env=None):
    return CliRunner().invoke(main, args, input=stdin, env=env)


def write(tmp_path, name, value):
    path = tmp_path / name
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return str(path)


def key_files(tmp_path, key, passphrase=None):
    encryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return write(tmp_path, "key.pem", private.decode()), write(tmp_path, "pub.pem", public.decode())


def test_receipt_vector_string_and_hash(tmp_path):
    file = write(tmp_path, "r.json", {"receipt": SPEC["receipt"]})
    result = run(
        ["explain", "receipt", file, "--device-id", "321", "--previous-hash", SPEC["previous_hash"], "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["string"] == SPEC["string"]
    assert report["hash"] == SPEC["hash"]
    assert report["findings"] == []


def test_human_output_shows_string_hash_and_taxes(tmp_path):
    file = write(tmp_path, "r.json", SPEC["receipt"])
    result = run(["explain", "receipt", file, "--device-id", "321", "--previous-hash", SPEC["previous_hash"]])
    assert result.exit_code == 0
    assert SPEC["string"] in result.stdout and SPEC["hash"] in result.stdout
    assert "C15.0015000115000" in result.stdout


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["ecdsa", "rsa"],
)
def test_signing_with_a_key_gives_a_verifiable_signature_and_qr(tmp_path, make_key):
    key = make_key()
    key_path, _ = key_files(tmp_path, key)
    file = write(tmp_path, "r.json", SPEC["receipt"])
    result = run(
        [
            "explain",
            "receipt",
            file,
            "--device-id",
            "321",
            "--key",
            key_path,
            "--json",
            "--qr-url",
            "https://fdmstest.zimra.co.zw",
        ]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    signature = fdms.unb64(report["signature"])
    assert signatures.verify(key.public_key(), report["string"].encode(), signature)
    assert not report["string"].endswith("=")  # no previous hash: the first receipt of the day
    assert report["qr_url"] == "https://fdmstest.zimra.co.zw/0000000321190920190000000432" + fdms.qr_data(
        signature
    )
    assert report["verification_code"].replace("-", "") == fdms.qr_data(signature)


def test_encrypted_key_takes_the_passphrase_from_the_environment(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    key_path, _ = key_files(tmp_path, key, passphrase=b"s3cret")
    file = write(tmp_path, "r.json", SPEC["receipt"])
    without = run(["explain", "receipt", file, "--device-id", "321", "--key", key_path])
    assert without.exit_code == 2 and "BOX_KEY_PASSPHRASE" in without.stderr
    with_it = run(
        ["explain", "receipt", file, "--device-id", "321", "--key", key_path, "--json"],
        env={"FISCALBOX_KEY_PASSPHRASE": "s3cret"},
    )
    assert with_it.exit_code == 0 and "signature" in json.loads(with_it.stdout)


def test_a_sent_signature_is_verified_against_the_certificate(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    _, pub_path = key_files(tmp_path, key)
    good = fdms.b64(signatures.sign(key, SPEC["string"].encode()))
    bad = fdms.b64(signatures.sign(other, SPEC["string"].encode()))
    for signature, valid in ((good, True), (bad, False)):
        body = dict(SPEC["receipt"], receiptDeviceSignature={"hash": SPEC["hash"], "signature": signature})
        file = write(tmp_path, "r.json", body)
        result = run(
            [
                "explain",
                "receipt",
                file,
                "--device-id",
                "321",
                "--previous-hash",
                SPEC["previous_hash"],
                "--cert",
                pub_path,
                "--json",
            ]
        )
        report = json.loads(result.stdout)
        assert report["signature_valid"] is valid
        assert result.exit_code == (0 if valid else 1)
        assert ("RCPT020" in [f["code"] for f in report["findings"]]) is not valid


def test_a_wrong_hash_in_the_receipt_is_named(tmp_path):
    body = dict(
        SPEC["receipt"],
        receiptDeviceSignature={"hash": "zDxEalWUpwX2BcsYxRUAEfY/13OaCrTwDt01So3a6uU=", "signature": "YWJj"},
    )
    file = write(tmp_path, "r.json", body)
    result = run(
        ["explain", "receipt", file, "--device-id", "321", "--previous-hash", SPEC["previous_hash"], "--json"]
    )
    assert result.exit_code == 1
    finding = json.loads(result.stdout)["findings"][0]
    assert finding["code"] == "RCPT020" and finding["field"] == "receiptDeviceSignature.hash"


def test_red_findings_fail_the_exit_status(tmp_path):
    file = write(tmp_path, "r.json", dict(SPEC["receipt"], receiptTotal="9450.01"))
    result = run(["explain", "receipt", file, "--device-id", "321", "--json"])
    assert result.exit_code == 1
    codes = [f["code"] for f in json.loads(result.stdout)["findings"]]
    assert "RCPT019" in codes and "RCPT039" in codes


@pytest.mark.parametrize(
    "text, code, field",
    [
        ("{not json", "BOX_BAD_JSON", None),
        (json.dumps(dict(SPEC["receipt"], receiptLines="x")), "RCPT02", "receiptLines"),
        (json.dumps({k: v for k, v in SPEC["receipt"].items() if k != "invoiceNo"}), "RCPT02", "invoiceNo"),
        (json.dumps(dict(SPEC["receipt"], receiptTotal=[1])), "BOX_BAD_NUMBER", "receiptTotal"),
        (json.dumps(dict(SPEC["receipt"], receiptDate="19/09/2019")), "BOX_BAD_DATE", "receiptDate"),
        ("[1, 2]", "RCPT02", "receipt"),
    ],
)
def test_bad_input_is_one_line_naming_the_field_and_exit_2(text, code, field):
    result = run(["explain", "receipt", "-", "--device-id", "321"], stdin=text)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and code in lines[0]
    if field:
        assert f"{field}:" in lines[0]
    assert result.stdout == ""


def test_day_vectors(tmp_path):
    for case in VECTORS["days"]:
        if "counters" not in case:
            continue
        file = write(
            tmp_path, "d.json", {"fiscalDayNo": case["day_no"], "fiscalDayCounters": case["counters"]}
        )
        result = run(
            [
                "explain",
                "day",
                file,
                "--device-id",
                str(case["device_id"]),
                "--day-date",
                case["day_date"],
                "--json",
            ]
        )
        assert result.exit_code in (0, 1), result.output  # 1: sent out of signing order (see below)
        report = json.loads(result.stdout)
        assert report["string"] == case["string"]
        assert report["hash"] == fdms.hash_b64(case["string"])


def test_day_flags_zero_counters_and_json_order(tmp_path):
    case = VECTORS["days"][0]
    file = write(tmp_path, "d.json", case["counters"])
    result = run(
        [
            "explain",
            "day",
            file,
            "--device-id",
            "37367",
            "--day-no",
            "20",
            "--day-date",
            "2026-09-07",
            "--json",
        ]
    )
    findings = json.loads(result.stdout)["findings"]
    # FDMS checks the signature over the counters in the order sent: out of order is BadCertificateSignature.
    assert [(f["code"], f["colour"]) for f in findings] == [
        ("BOX_ZERO_COUNTER", "Yellow"),
        ("BOX_COUNTER_ORDER", "Red"),
    ]
    assert result.exit_code == 1
    ordered = [c for c in fdms.day_counters(fdms.parse_counters(case["counters"]))]
    file = write(tmp_path, "d2.json", json.loads(json.dumps(fdms.counters_wire(ordered), default=str)))
    clean = run(
        [
            "explain",
            "day",
            file,
            "--device-id",
            "37367",
            "--day-no",
            "20",
            "--day-date",
            "2026-09-07",
            "--json",
        ]
    )
    assert json.loads(clean.stdout)["findings"] == [] and clean.exit_code == 0


def test_day_signature_checked_and_made(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_path, pub_path = key_files(tmp_path, key)
    counters = fdms.counters_wire(fdms.day_counters(fdms.parse_counters([])))
    body = {
        "fiscalDayNo": 21,
        "fiscalDayCounters": counters,
        "fiscalDayDeviceSignature": {
            "hash": fdms.hash_b64("37367212026-09-08"),
            "signature": fdms.b64(signatures.sign(key, b"37367212026-09-08")),
        },
    }
    file = write(tmp_path, "d.json", body)
    ok = run(
        [
            "explain",
            "day",
            file,
            "--device-id",
            "37367",
            "--day-date",
            "2026-09-08",
            "--cert",
            pub_path,
            "--json",
        ]
    )
    assert ok.exit_code == 0 and json.loads(ok.stdout)["signature_valid"] is True
    wrong_date = run(
        [
            "explain",
            "day",
            file,
            "--device-id",
            "37367",
            "--day-date",
            "2026-09-09",
            "--cert",
            pub_path,
            "--json",
        ]
    )
    report = json.loads(wrong_date.stdout)
    assert wrong_date.exit_code == 1 and report["signature_valid"] is False
    assert "BadCertificateSignature" in [f["code"] for f in report["findings"]]
    signed = run(
        [
            "explain",
            "day",
            file,
            "--device-id",
            "37367",
            "--day-date",
            "2026-09-08",
            "--key",
            key_path,
            "--json",
        ]
    )
    made = fdms.unb64(json.loads(signed.stdout)["signature"])
    assert signatures.verify(key.public_key(), b"37367212026-09-08", made)


@pytest.mark.parametrize(
    "args, code",
    [
        (["--day-date", "2026-09-08"], "fiscalDayNo"),
        (["--day-no", "3", "--day-date", "08/09/2026"], "BOX_BAD_DATE"),
    ],
)
def test_day_bad_input(tmp_path, args, code):
    file = write(tmp_path, "d.json", [])
    result = run(["explain", "day", file, "--device-id", "1", *args])
    assert result.exit_code == 2 and code in result.stderr


def test_the_qr_comes_from_the_signature_sent_not_a_fresh_one(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    key_path, _ = key_files(tmp_path, key)
    sent = signatures.sign(key, SPEC["string"].encode())
    body = dict(SPEC["receipt"], receiptDeviceSignature={"hash": SPEC["hash"], "signature": fdms.b64(sent)})
    file = write(tmp_path, "r.json", body)
    args = ["explain", "receipt", file, "--device-id", "321", "--previous-hash", SPEC["previous_hash"]]
    report = json.loads(run([*args, "--key", key_path, "--json"]).stdout)
    assert report["signature_valid"] is True
    assert report["qr_data"] == fdms.qr_data(sent)
    assert report["signature"] == fdms.b64(sent) and report["signature_made"] != report["signature"]


@pytest.mark.parametrize("name", ["Receipt", "RECEIPT", "receipt"])
def test_a_submit_receipt_body_is_unwrapped_whatever_the_case_of_its_member(tmp_path, name):
    file = write(tmp_path, "r.json", {name: SPEC["receipt"]})
    args = ["explain", "receipt", file, "--device-id", "321", "--previous-hash", SPEC["previous_hash"]]
    result = run([*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["string"] == SPEC["string"]


def test_a_submit_receipt_body_whose_receipt_is_not_an_object_names_it(tmp_path):
    result = run(["explain", "receipt", write(tmp_path, "r.json", {"Receipt": "x"}), "--device-id", "321"])
    assert result.exit_code == 2 and result.stderr.startswith("error RCPT02: Receipt: A receipt must be")


# A GetConfig answer as FDMS sends it: percents are JSON numbers (15.5 and 15), never strings.
GETCONFIG = """{"operationID": "0HMPH9AF0QKKE:00000005", "taxPayerName": "Test Traders",
 "taxPayerTIN": "2000999999",
 "vatNumber": "220099999", "deviceSerialNo": "SN-1", "deviceOperatingMode": "Online", "taxPayerDayMaxHrs": 24,
 "applicableTaxes": [
  {"taxID": 1, "taxName": "Exempt", "validFrom": "2019-01-01T00:00:00"},
  {"taxID": 2, "taxPercent": 0, "taxName": "Zero rated 0%", "validFrom": "2019-01-01T00:00:00"},
  {"taxID": 3, "taxPercent": 15, "taxName": "Standard rated 15%", "validFrom": "2019-01-01T00:00:00",
   "validTill": "2025-12-14T23:59:59"},
  {"taxID": 514, "taxPercent": 5, "taxName": "Non-VAT Withholding Tax", "validFrom": "2019-01-01T00:00:00"},
  {"taxID": 517, "taxPercent": 15.5, "taxName": "Standard rated 15.5%", "validFrom": "2025-12-15T00:00:00"}],
 "certificateValidTill": "2027-01-01T00:00:00", "qrUrl": "https://fdmstest.zimra.co.zw/"}"""


def config_receipt(date, standard_id, standard_percent):
    """The spec receipt with HS codes (FDMS wants them of a VAT payer) and its 15% lines moved to a tax."""
    lines = []
    for line in SPEC["receipt"]["receiptLines"]:
        line = dict(line, receiptLineHSCode="04011000")
        if line["taxID"] == 3:
            line.update(taxID=standard_id, taxPercent=standard_percent)
        lines.append(line)
    return dict(SPEC["receipt"], receiptDate=date, receiptLines=lines)


def explain_with_config(tmp_path, receipt, *more):
    config = write(tmp_path, "config.json", GETCONFIG)
    args = ["explain", "receipt", write(tmp_path, "r.json", {"receipt": receipt}), "--device-id", "321"]
    result = run([*args, "--previous-hash", SPEC["previous_hash"], "--config", config, "--json", *more])
    return result, json.loads(result.stdout) if result.exit_code != 2 else result.stderr


def test_config_taxes_in_force_pass(tmp_path):
    result, report = explain_with_config(tmp_path, config_receipt("2026-01-10T10:00:00", 517, "15.5"))
    assert result.exit_code == 0 and report["findings"] == []
    result, report = explain_with_config(tmp_path, config_receipt("2025-06-10T10:00:00", 3, "15"))
    assert result.exit_code == 0 and report["findings"] == []


@pytest.mark.parametrize(
    "date, tax_id, percent",
    [
        ("2026-01-10T10:00:00", 7, "15.5"),  # a tax ID FDMS does not know, hard-coded
        ("2026-01-10T10:00:00", 517, "15"),  # a known ID at another percent
        ("2026-01-10T10:00:00", 3, "15"),  # a tax no longer in force on the receipt date
        ("2025-06-10T10:00:00", 517, "15.5"),  # a tax not yet in force
    ],
)
def test_config_taxes_not_in_force_are_rcpt025_red(tmp_path, date, tax_id, percent):
    result, report = explain_with_config(tmp_path, config_receipt(date, tax_id, percent))
    assert result.exit_code == 1
    assert {(f["code"], f["colour"], f["field"]) for f in report["findings"]} == {
        ("RCPT025", "Red", "receiptLines[2].taxID"),
        ("RCPT025", "Red", "receiptLines[3].taxID"),
    }


def test_config_vat_status_and_qr_url_are_used(tmp_path):
    receipt = config_receipt("2026-01-10T10:00:00", 517, "15.5")
    receipt["receiptLines"][3].pop("receiptLineHSCode")
    result, report = explain_with_config(tmp_path, receipt, "--signature", "YWJj")
    assert [(f["code"], f["field"]) for f in report["findings"]] == [
        ("RCPT047", "receiptLines[3].receiptLineHSCode")
    ]
    assert report["qr_url"].startswith("https://fdmstest.zimra.co.zw/0000000321100120260000000432")


@pytest.mark.parametrize(
    "config, field",
    [
        ("[]", "applicableTaxes"),
        ('{"applicableTaxes": [{"taxID": 1, "taxName": 5}]}', "applicableTaxes[0].taxName"),
        ('{"applicableTaxes": [{"taxID": 1, "validFrom": 2019}]}', "applicableTaxes[0].validFrom"),
        ('{"applicableTaxes": [{"taxID": 1, "validTill": "31/12/2030"}]}', "applicableTaxes[0].validTill"),
        ('{"applicableTaxes": [{"taxID": 3, "taxPercent": 15.555}]}', "applicableTaxes[0].taxPercent"),
        ('{"applicableTaxes": [], "qrUrl": 5}', "qrUrl"),
    ],
)
def test_a_bad_config_is_one_line_naming_its_field(tmp_path, config, field):
    args = ["explain", "receipt", write(tmp_path, "r.json", SPEC["receipt"]), "--device-id", "321"]
    result = run([*args, "--config", write(tmp_path, "c.json", config)])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert re.match(r"error (BOX_|RCPT)\w+: ", result.stderr) and f" {field}: " in result.stderr


def day_args(file):
    return [
        "explain",
        "day",
        file,
        "--device-id",
        "37367",
        "--day-no",
        "21",
        "--day-date",
        "2026-09-08",
        "--json",
    ]


def test_a_counter_sent_twice_is_red(tmp_path):
    ordered = fdms.counters_wire(fdms.day_counters(fdms.parse_counters(VECTORS["days"][0]["counters"])))
    counters = json.loads(json.dumps(ordered, default=str))
    doubled = [*counters[:2], counters[1], *counters[2:]]
    result = run(day_args(write(tmp_path, "d.json", doubled)))
    assert result.exit_code == 1
    assert [(f["code"], f["colour"], f["field"]) for f in json.loads(result.stdout)["findings"]] == [
        ("BOX_COUNTER_TWICE", "Red", "fiscalDayCounters[2]")
    ]
    assert "fiscalDayCounters[1]" in json.loads(result.stdout)["findings"][0]["message"]


def test_the_senders_text_is_shown_as_sent_never_read_as_markup(tmp_path):
    lines = [dict(line, taxCode="[/]") for line in SPEC["receipt"]["receiptLines"]]
    signed = {"hash": "[/bold]", "signature": "YWJj"}
    file = write(tmp_path, "r.json", dict(SPEC["receipt"], receiptLines=lines, receiptDeviceSignature=signed))
    result = run(["explain", "receipt", file, "--device-id", "321", "--qr-url", "https://[red]"])
    assert result.exit_code == 1, result.output  # the hash is wrong: RCPT020
    assert "[/]15.0045000345000" in result.stdout and "receiptDeviceSignature is [/bold]," in result.stdout
    assert "QR URL: https://[red]/" in result.stdout
    counter = {"fiscalCounterType": "SaleByTax", "fiscalCounterCurrency": "[/]", "fiscalCounterTaxID": 1}
    day = write(tmp_path, "d.json", [dict(counter, fiscalCounterValue="1.00")])
    result = run(["explain", "day", day, "--device-id", "1", "--day-no", "1", "--day-date", "2026-01-01"])
    assert result.exit_code == 0, result.output
    assert "SALEBYTAX[/]100" in result.stdout


SALES = [
    json.loads(block)
    for block in re.findall(
        r"```json\n(.*?)\n```", (Path(__file__).resolve().parents[2] / "docs" / "sale.md").read_text(), re.S
    )
]


def test_docs_sales_are_explained_given_what_the_box_sets(tmp_path):
    """A sale as the POS sends it, numbered, dated and chained by options as docs/sale.md says."""
    assert len(SALES) == 5
    previous = []
    for n, sale in enumerate(SALES, 1):
        path = write(tmp_path, f"sale{n}.json", sale)
        box_set = ["--counter", str(n), "--global-no", str(n), "--date", f"2026-12-04T10:0{n}:00"]
        result = run(["explain", "receipt", path, "--device-id", "4321", *box_set, *previous, "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["findings"] == [] and report["first_in_day"] is (n == 1)
        assert (
            f"4321{sale['receiptType'].upper()}{sale['receiptCurrency']}{n}2026-12-04T10:0{n}:00"
            in (report["string"])
        )
        previous = ["--previous-hash", report["hash"]]


def test_a_sale_without_what_the_box_sets_is_refused_naming_all_of_it_and_the_options(tmp_path):
    result = run(["explain", "receipt", write(tmp_path, "s.json", SALES[0]), "--device-id", "4321"])
    assert result.exit_code == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error RCPT02: receiptCounter: A sale lacks what the box sets: receiptCounter, ")
    assert "receiptGlobalNo, receiptDate." in line
    assert "--counter N --global-no N --date YYYY-MM-DDTHH:MM:SS" in line and "--body" in line
    partly = ["--global-no", "3", "--date", "2026-12-04T10:00:00"]
    result = run(["explain", "receipt", write(tmp_path, "s.json", SALES[0]), "--device-id", "4321", *partly])
    assert result.exit_code == 2 and "what the box sets: receiptCounter. Give --counter N (" in result.stderr
    result = run(["explain", "receipt", "-", "--device-id", "1", "--counter", "1", "--date", "4/12/2026"])
    assert result.exit_code == 2 and "error BOX_BAD_DATE: " in result.stderr


def test_a_later_receipt_without_the_previous_hash_is_a_finding_not_the_days_first(tmp_path):
    receipt = write(tmp_path, "r.json", SPEC["receipt"])  # receiptCounter 7
    result = run(["explain", "receipt", receipt, "--device-id", "321", "--json"])
    report = json.loads(result.stdout)
    assert report["first_in_day"] is False
    [finding] = report["findings"]
    assert finding["code"] == "BOX_NO_PREVIOUS_HASH" and finding["colour"] == "Yellow"
    assert "--previous-hash" in finding["message"] and "receiptCounter is 7" in finding["message"]
    result = run(["explain", "receipt", receipt, "--device-id", "321"])
    assert "first receipt" not in result.stdout and "NO previous hash given" in result.stdout
    assert "BOX_NO_PREVIOUS_HASH" in result.stdout
    result = run(
        ["explain", "receipt", receipt, "--device-id", "321", "--previous-hash", SPEC["previous_hash"]]
    )
    assert result.exit_code == 0 and "No findings" in result.stdout
    first = write(tmp_path, "first.json", VECTORS["receipts"][2]["receipt"])  # receiptCounter 1
    result = run(
        ["explain", "receipt", first, "--device-id", "321", "--previous-hash", SPEC["previous_hash"]]
    )
    assert "BOX_PREVIOUS_HASH_ON_FIRST" in result.stdout
