"""The `fiscalbox` host tool end to end over a pseudo-terminal: the real link server (Link.serve) on a real
Device registered with the FDMS simulator. A shop's first day: keys, provision, register, open, sales (one
retried after its answer was lost on the line), close, an export that loses a chunk mid-transfer and resumes,
and the export verified offline."""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
import serial
from click.testing import CliRunner, Result

from firmware import config as configuration
from firmware import cose
from firmware.core import smp
from firmware.hosts import HostKeys
from firmware.link import Link
from firmware.service import Device, SystemClock
from host_tools import box_commands
from host_tools.cli import main
from host_tools.link import load_host_key
from sim.fdms.scenario import Scenario
from sim.fdms.server import FdmsSimulator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))
from link_rig import Served  # noqa: E402  (the link's own pty rig: the box's side of the line)
from service_rig import poll, write_config  # noqa: E402  (the service tests' helpers)

PASSPHRASE = "client e2e pass phrase"
ENV = {"FISCALBOX_KEY_PASSPHRASE": PASSPHRASE}
DEVICE_ID = 10001
PATIENCE = 60.0  # seconds a test waits for the box before it fails (never how long it should take)
SALE = {  # the virtual box's example sale: one line at 15.5 %, paid in cash
    "receiptType": "FiscalInvoice",
    "receiptCurrency": "USD",
    "invoiceNo": "INV-1",
    "receiptLinesTaxInclusive": True,
    "receiptLines": [
        {
            "receiptLineType": "Sale",
            "receiptLineName": "Bread 700g",
            "receiptLinePrice": "2.50",
            "receiptLineQuantity": "2",
            "taxID": 517,
            "taxPercent": "15.5",
            "receiptLineHSCode": "19059000",
        }
    ],
    "receiptPayments": [{"moneyTypeCode": "Cash", "paymentAmount": "5.00"}],
}


class CablePort:
    """A TCP listener as the pyserial-like port Link.serve reads, one host connection at a time: a host
    reaches it as `socket://...`, and `pull_at_next_answer` closes the connection instead of answering (a
    cable pulled mid-transfer: the host's read fails at once)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = "socket://127.0.0.1:%d" % self.listener.getsockname()[1]
        self.connection: socket.socket | None = None
        self.timeout = 0.05
        self.pull_at_next_answer = False

    @property
    def in_waiting(self) -> int:
        return 0 if self.connection is None else waiting_bytes(self.connection.fileno())

    def read(self, size: int) -> bytes:
        if self.connection is None:
            if select.select([self.listener], [], [], self.timeout)[0]:
                self.connection, _ = self.listener.accept()
            return b""
        if not select.select([self.connection], [], [], self.timeout)[0]:
            return b""
        data = self.connection.recv(max(size, 4096))
        if not data:
            self._hang_up()
        return data

    def write(self, data: bytes) -> int:
        if self.pull_at_next_answer:
            self.pull_at_next_answer = False
            self._hang_up()
        elif self.connection is not None:
            self.connection.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass

    def _hang_up(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def close(self) -> None:
        self._hang_up()
        self.listener.close()


class Rig:
    """The FDMS simulator, a Device behind Link.serve on a pty, and the host tool's environment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sim = FdmsSimulator(Scenario.default(), state_dir=root / "fdms").start()
        self.device = Device(configuration.load(write_config(root), ENV), ENV, SystemClock())
        self.stop = threading.Event()
        self.device.start(self.stop)
        self.link = Link(self.device, HostKeys(root / "hosts.json"), work_dir=root / "link")
        self.served = Served(self.link)
        self.cable = CablePort()  # the same box on a second line, for the pulled cable
        self.cable_thread = threading.Thread(
            target=self.link.serve, args=(self.cable, self.stop), daemon=True
        )
        self.cable_thread.start()
        self.env = {
            "FISCALBOX_PORT": self.served.slave_path,
            "FISCALBOX_HOST_KEY": str(root / "operator.pem"),
        }

    def run(self, *args: str, key: str = "operator", stdin: str | None = None, **env: str) -> Result:
        """`fiscalbox ARGS` with the `key` host key; a generous --timeout unless ARGS give their own."""
        environment = {**self.env, "FISCALBOX_HOST_KEY": str(self.root / f"{key}.pem"), **env}
        timeout = [] if "--timeout" in args else ["--timeout", str(PATIENCE)]
        return CliRunner().invoke(main, [*timeout, *args], env=environment, input=stdin)

    def ok(self, *args: str, **options: Any) -> Any:
        """The command's --json answer, once it is checked to have succeeded."""
        result = self.run(*args, "--json", **options)
        assert result.exit_code == 0, (args, result.output, result.exception)
        return json.loads(result.stdout)

    def close(self) -> None:
        self.served.close()
        self.stop.set()
        self.cable_thread.join()
        self.cable.close()
        self.device.close()
        self.link.close()
        self.sim.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    yield made
    made.close()


def waiting_bytes(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def send_and_hang_up(rig: Rig, key_pem: bytes, name_body: tuple[int, int, dict[str, Any]], rid: str) -> None:
    """A POS sends a signed request and loses the line before it reads the answer (the answer arrives on a
    line nobody reads, and is flushed away like a cable pulled)."""
    group, command, body = name_body
    key = load_host_key(key_pem)
    port = serial.serial_for_url(rig.served.slave_path, baudrate=115200, timeout=0.05)
    decoder = smp.Decoder()
    port.write(smp.encode(smp.header(smp.OP_READ, 64, 1, 0, 1) + cbor2.dumps({})))
    answers: list[bytes] = []
    poll(lambda: answers.extend(decoder.feed(port.read(port.in_waiting or 1))) or answers, "the nonce")
    nonce = cbor2.loads(answers[0][smp.HEADER_SIZE :])["nonce"]
    payload = cbor2.dumps({"g": group, "c": command, "nonce": nonce, "rid": rid, "body": body})
    alg, sign = cose.signer(key)
    request = cbor2.dumps({"req": cose.sign1(payload, sign, alg, cose.key_id(key))})
    port.write(smp.encode(smp.header(smp.OP_WRITE, group, 2, command, len(request)) + request))
    port.flush()
    port.close()  # hung up before the answer
    poll(lambda: waiting_bytes(rig.served.slave), "the answer on the line")
    termios.tcflush(rig.served.slave, termios.TCIFLUSH)  # the answer is lost


def lose_one_chunk(rig: Rig, offset: int, pull: bool = False) -> list[int]:
    """The line loses the answer to the export chunk at `offset` once: the box answered, the host never saw it
    (`pull`: the cable line's connection closes instead). Returns the offsets the box was asked for."""
    asked: list[int] = []
    handle = rig.link.handle

    def lossy(frame: bytes) -> bytes | None:
        answer = handle(frame)
        _, _, _, _, group, _, command = smp.parse_header(frame)
        if (group, command) == (64, 22):
            message = cose.decode1(cbor2.loads(frame[smp.HEADER_SIZE :])["req"])
            at = cbor2.loads(message.payload)["body"].get("offset", 0)
            asked.append(at)
            if at == offset and asked.count(at) == 1:
                rig.cable.pull_at_next_answer = pull
                return answer if pull else None
        return answer

    rig.link.handle = lossy  # type: ignore[method-assign]
    return asked


def test_a_shops_first_day_over_the_link(rig: Rig, tmp_path: Path) -> None:
    # keys: one for the operator (it enrolls itself on the new box), one for the till
    for role in ("operator", "pos"):
        made = rig.ok("keys", "new", str(tmp_path / f"{role}.pem"))
        assert len(made["kid"]) == 32
    assert rig.ok("keys", "enroll", "--role", "operator", "--label", "owner")["role"] == "operator"
    till = rig.ok("keys", "enroll", str(tmp_path / "pos.pem"), "--role", "pos", "--label", "till-1")
    assert [k["label"] for k in rig.ok("keys", "list")["keys"]] == ["owner", "till-1"]

    # the identity from a box.toml, then registration with the activation key from the environment
    device = rig.sim.scenario.device(DEVICE_ID)
    assert device is not None
    (tmp_path / "identity.toml").write_text(
        f'[device]\nid = {DEVICE_ID}\nserial = "{device.serial}"\nmodel_name = "fiscalbox"\n'
        f'model_version = "1.0"\n\n[fdms]\nurl = "{rig.sim.url}"\nca_file = "{rig.sim.ca_cert_path}"\n'
        'currencies = "USD,ZWG"\n'
    )
    identity = rig.ok("provision", str(tmp_path / "identity.toml"))
    assert identity["device_id"] == DEVICE_ID and identity["currencies"] == ["USD", "ZWG"]
    said = rig.run("provision", str(tmp_path / "identity.toml"))
    assert said.exit_code == 0 and "currencies USD, ZWG" in said.stdout and "[" not in said.stdout
    refused = rig.run("register")
    assert refused.exit_code == 2 and refused.stderr.startswith("error BOX_USAGE: ")
    rig.ok("register", FISCALBOX_ACTIVATION_KEY=device.activation_key)
    assert rig.ok("status")["device_id"] == DEVICE_ID

    # the day: the till may sell, not open days
    refused = rig.run("day", "open", key="pos")
    assert refused.exit_code == 2 and refused.stderr.startswith("error BOX_LINK_ROLE: ")
    assert rig.ok("day", "open")["day_no"] == 1
    (tmp_path / "sale.json").write_text(json.dumps(SALE))
    first = rig.ok("sale", str(tmp_path / "sale.json"), key="pos")
    assert first["global_no"] == 1 and first["total"] == "5.00" and first["request_id"]
    text = rig.run("sale", "-", key="pos", stdin=json.dumps({**SALE, "invoiceNo": "INV-2"}))
    assert text.exit_code == 0 and text.stderr.startswith("request ID ")
    assert "receipt 2: FiscalInvoice USD 5.00" in text.stdout

    # a sale whose answer is lost on the line, retried with the same request ID: one receipt
    pos_pem = (tmp_path / "pos.pem").read_bytes()
    lost = {**SALE, "invoiceNo": "INV-3"}
    send_and_hang_up(rig, pos_pem, (64, 6, {"sale": lost}), "till-1:0003")
    (tmp_path / "lost.json").write_text(json.dumps(lost))
    again = rig.ok("sale", str(tmp_path / "lost.json"), "--request-id", "till-1:0003", key="pos")
    assert again["repeated"] is True and again["global_no"] == 3
    assert rig.ok("status")["last_global_no"] == 3
    other = rig.run("sale", str(tmp_path / "sale.json"), "--request-id", "till-1:0003", key="pos")
    assert other.exit_code == 2 and other.stderr.startswith("error BOX_LINK_REQUEST_REUSED: ")

    assert rig.ok("report", "x")["receipts"] == 3
    closed = rig.ok("day", "close")
    assert closed["fiscalDayNo"] == 1

    # the export loses a chunk mid-transfer and resumes from the last offset held; then verified offline
    asked = lose_one_chunk(rig, 2048)
    out = tmp_path / "export.json"
    exported = rig.ok("--timeout", "1", "journal", "export", "1", "3", str(out))  # 1 s: the loss is noticed
    assert exported["size"] == out.stat().st_size > 2 * 2048
    assert asked[:3] == [0, 2048, 2048]  # the lost chunk asked again, nothing before it
    rig.ok("keys", "device", "--out", str(tmp_path / "device.pem"))  # learnt over the link
    assert (tmp_path / "device.pem").read_bytes() == rig.device.keys.public_key_pem()
    verified = rig.run("journal", "verify", str(out), "--cert", str(tmp_path / "device.pem"))
    assert verified.exit_code == 0 and verified.stdout.startswith("clean: device 10001, receipts 1..3")

    # the same over a line whose cable is pulled mid-transfer: the tool sees it at once, reconnects, resumes
    asked = lose_one_chunk(rig, 4096, pull=True)
    cabled = rig.ok("--port", rig.cable.url, "journal", "export", "1", "3", str(tmp_path / "again.json"))
    assert asked[:4] == [0, 2048, 4096, 4096]
    assert cabled["size"] == (tmp_path / "again.json").stat().st_size
    verified = rig.run(
        "journal", "verify", str(tmp_path / "again.json"), "--cert", str(tmp_path / "device.pem")
    )
    assert verified.exit_code == 0 and verified.stdout.startswith("clean: device 10001, receipts 1..3")

    # a till given the device key checks every answer against it: one signed by another key is refused
    rig.ok("keys", "new", str(tmp_path / "stranger.pem"))
    sale_file = str(tmp_path / "sale.json")
    forged = rig.run("--device-key", str(tmp_path / "stranger.pem"), "sale", sale_file, key="pos")
    assert forged.exit_code == 2 and forged.stderr.splitlines()[-1].startswith("error BOX_LINK_SIGNATURE: ")
    checked = rig.run(
        "--device-key", str(tmp_path / "device.pem"), "sale", sale_file, key="pos"
    )  # the day is closed
    assert checked.exit_code == 2 and checked.stderr.splitlines()[-1].startswith("error BOX_DAY_NOT_OPEN: ")

    # the till's key revoked: refused from now on
    rig.ok("keys", "revoke", till["kid"])
    refused = rig.run("status", key="pos")
    assert refused.exit_code == 2 and refused.stderr.startswith("error BOX_LINK_REVOKED: ")


def test_without_a_port_or_key_the_tool_says_where_to_give_them(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "FISCALBOX_PORT": None, "FISCALBOX_HOST_KEY": None}
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 2 and result.stderr.startswith("error BOX_USAGE: port: Say where the box is")
    (tmp_path / "fiscalbox").mkdir()
    (tmp_path / "fiscalbox" / "host.toml").write_text('port = "/dev/null-box"\nkey = "op.pem"\n')
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 2 and result.stderr.startswith("error BOX_FILE: key: Cannot read the host key")
    assert str(tmp_path / "fiscalbox" / "op.pem") in result.stderr  # relative to host.toml


def test_a_box_that_is_not_there_is_one_error_line_and_verbose_shows_the_retries(tmp_path: Path) -> None:
    """Its own process: in one with no logging set up, Python prints a library's warnings on stderr."""
    assert CliRunner().invoke(main, ["keys", "new", str(tmp_path / "op.pem")]).exit_code == 0
    silent, line = os.openpty()  # a port that is there, where nothing ever answers: the client retries
    env = {
        "XDG_CONFIG_HOME": str(tmp_path),
        "FISCALBOX_PORT": os.ttyname(line),
        "FISCALBOX_HOST_KEY": str(tmp_path / "op.pem"),
    }
    command = [sys.executable, "-c", "from host_tools.cli import main; main()", "--timeout", "0.3"]
    try:
        quiet = subprocess.run([*command, "status"], env=env, capture_output=True, text=True)
        verbose = subprocess.run([*command, "--verbose", "status"], env=env, capture_output=True, text=True)
    finally:
        os.close(silent)
        os.close(line)
    assert quiet.returncode == 2 and quiet.stderr.startswith("error BOX_LINK_TIMEOUT: ")
    assert quiet.stderr.count("\n") == 1 and quiet.stderr.endswith("\n")  # the whole of stderr: one line
    lines = verbose.stderr.splitlines()
    assert verbose.returncode == 2 and lines[-1].startswith("error BOX_LINK_TIMEOUT: ")
    assert lines[:-1] and all(json.loads(line)["event"] == "link.retry" for line in lines[:-1])


@pytest.mark.parametrize(
    "args",
    [
        ["report"],
        ["report", "y"],
        ["report", "z"],
        ["report", "x", "3"],
        ["reprint"],
        ["reprint", "abc"],
        ["keys", "enroll"],
        ["keys", "enroll", "--role", "king"],
        ["replay", "--since", "-1"],
        ["journal", "export", "1", "0", "out.json"],
        ["--timeout", "0", "status"],
        ["register"],
        ["sale", "no-such-sale.json"],
        ["provision", "no-such-box.toml"],
    ],
)
def test_a_wrong_command_line_is_one_error_line(args: list[str], tmp_path: Path) -> None:
    env = {
        "XDG_CONFIG_HOME": str(tmp_path),
        "FISCALBOX_PORT": "/dev/null-box",
        "FISCALBOX_ACTIVATION_KEY": "",
    }
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error BOX_"), result.stderr


def test_counts_are_said_in_the_singular_for_one() -> None:
    assert box_commands.counted(35, "receipts") == "35 receipts"
    assert [box_commands.counted(1, w) for w in ("days", "audit_entries")] == ["1 day", "1 audit entry"]


def test_provision_reads_the_identity_of_a_box_toml(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    values = box_commands.provision_values(tomllib.loads((root / "docs" / "box.toml").read_text()), root)
    assert values == {
        "device_id": 4321,
        "serial": "FB-0001-2026",
        "model_name": "fiscalbox",
        "model_version": "1.0",
        "fdms_url": "https://fdmsapitest.zimra.co.zw",
        "fdms_ca": "",
        "currencies": ["USD", "ZWG"],
    }
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    relative = box_commands.provision_values({"fdms": {"ca_file": "ca.pem"}}, tmp_path)
    assert relative == {"fdms_ca": "-----BEGIN CERTIFICATE-----\n"}  # read beside the file, sent as text
