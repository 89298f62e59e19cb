"""BoxClient over a real pseudo-terminal against a small real responder built from the same smp and cose
modules the box uses: framing, signing, the nonce, signed answers, retries and resumed exports."""

from __future__ import annotations

import _thread
import hashlib
import json
import os
import select
import socket
import stat
import threading
import tty
from collections.abc import Callable, Iterator
from typing import Any

import cbor2
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from firmware import cose
from firmware.core import smp
from firmware.core.errors import FiscalError
from host_tools import link
from host_tools.cli import main
from host_tools.link import BoxClient

LOST = 0.5  # seconds the client waits in the tests where an answer is lost on purpose


def pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


class Responder:
    """The box's side of the link in miniature: checks what docs/link.md says a box checks, answers writes
    signed by its device key, and can lose an answer (`lose(name, body)` true: the work is done, the answer
    never sent) or put noise and stale answers on the line first."""

    def __init__(self, host_key: Any, cable: bool = False) -> None:
        """`cable`: on a TCP socket (the port a pyserial socket:// URL), where losing an answer is the
        connection closed under the client, as a pulled cable; otherwise on a pty, where it is silence."""
        self.cable = cable
        self.pulled = False
        if cable:
            self.listener = socket.create_server(("127.0.0.1", 0))
            self.path = "socket://127.0.0.1:%d" % self.listener.getsockname()[1]
        else:
            self.master, self.slave = os.openpty()
            tty.setraw(self.slave)
            self.path = os.ttyname(self.slave)
        self.device_key = ec.generate_private_key(ec.SECP256R1())
        self.signing_key = self.device_key  # what answers are signed with (another key: a forged answer)
        self.hosts = {cose.key_id(host_key.public_key()): host_key.public_key()}
        self.nonce = os.urandom(16)
        self.requests: list[tuple[str, str, Any]] = []  # (command, rid, body) of every request checked
        self.nonce_requests = 0
        self.receipts: dict[str, dict[str, Any]] = {}
        self.lose: Callable[[str, Any], bool] = lambda name, body: False
        self.noise_first = False
        self.status_key = True  # status names the device key (the real box's does not yet: then the CSR)
        self.csr_allowed = True
        self.export = os.urandom(5000)
        self.jobs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve_cable if cable else self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.cable:
            self.listener.close()
        else:
            os.close(self.master)
            os.close(self.slave)

    def _serve_cable(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.listener], [], [], 0.05)
            if not ready:
                continue
            connection, _ = self.listener.accept()
            with connection:
                decoder = smp.Decoder()
                while not self._stop.is_set() and not self.pulled:
                    ready, _, _ = select.select([connection], [], [], 0.05)
                    data = connection.recv(4096) if ready else b""
                    if ready and not data:
                        break  # the client hung up
                    for frame in decoder.feed(data):
                        answer = self.handle(frame)
                        if self.pulled:
                            break
                        if answer is not None:
                            connection.sendall(answer)
            self.pulled = False  # the cable plugged in again: the next connection

    def _serve(self) -> None:
        decoder = smp.Decoder()
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            for frame in decoder.feed(os.read(self.master, 4096)):
                answer = self.handle(frame)
                if answer is not None:
                    os.write(self.master, answer)

    def handle(self, frame: bytes) -> bytes | None:
        _, op, _, _, group, sequence, command = smp.parse_header(frame)
        body = cbor2.loads(frame[smp.HEADER_SIZE :])

        def packet(answer: dict[str, Any], seq: int = sequence) -> bytes:
            data = cbor2.dumps(answer)
            return smp.encode(smp.header(op + 1, group, seq, command, len(data)) + data)

        if (group, command) == (64, 0):
            self.nonce_requests += 1
            return packet({"nonce": self.nonce, "ok": {"nonce": self.nonce}})
        message = cose.decode1(body["req"])
        cose.verify1(message, self.hosts[message.kid])
        payload = cbor2.loads(message.payload)
        assert (payload["g"], payload["c"]) == (group, command)
        if payload["nonce"] != self.nonce:
            refusal = {"code": "BOX_LINK_NONCE", "message": "The nonce is not the box's current one."}
            return packet({"nonce": self.nonce, "error": refusal})
        name = link.NAMES[(group, command)]
        rid = payload["rid"]
        self.requests.append((name, rid, payload["body"]))
        try:
            outcome: dict[str, Any] = {"ok": getattr(self, "do_" + name)(payload["body"], rid)}
        except FiscalError as error:
            outcome = {"error": {"code": error.code, "message": error.message}}
        if op == smp.OP_WRITE:
            self.nonce = os.urandom(16)

            def sign(data: bytes) -> bytes:
                return cose.signer(self.signing_key)[1](data)

            signed = cose.sign1(
                cbor2.dumps({"g": group, "c": command, "rid": rid, **outcome}), sign, cose.ES256
            )
            answer = {"nonce": self.nonce, "cose": signed}
        else:
            answer = {"nonce": self.nonce, **outcome}
        if self.lose(name, payload["body"]):
            self.pulled = self.cable
            return None
        if self.noise_first:  # a console's text, then a stale answer (another sequence number), then this one
            stale = packet({"nonce": self.nonce, "ok": {"stale": True}}, (sequence + 255) & 0xFF)
            return b"login: garbage\r\n\x06\x09not base64!\n" + stale + packet(answer)
        return packet(answer)

    # the commands the tests use
    def do_status(self, body: Any, rid: str) -> dict[str, Any]:
        if self.status_key:
            return {"device_id": 4321, "device_key": {"public_key": public_pem(self.device_key)}}
        return {"device_id": 4321}

    def do_certificate_request(self, body: Any, rid: str) -> dict[str, Any]:
        if not self.csr_allowed:
            raise FiscalError("BOX_LINK_ROLE", "This key's role may not ask this.")
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ZIMRA-FB-0001-0000004321")])
        csr = (
            x509.CertificateSigningRequestBuilder().subject_name(name).sign(self.device_key, hashes.SHA256())
        )
        return {"csr": csr.public_bytes(serialization.Encoding.PEM).decode()}

    def do_issue(self, body: Any, rid: str) -> dict[str, Any]:
        if rid in self.receipts:
            return {**self.receipts[rid], "repeated": True}
        self.receipts[rid] = {"global_no": len(self.receipts) + 1, "total": body["sale"]["total"]}
        return self.receipts[rid]

    def do_open_day(self, body: Any, rid: str) -> dict[str, Any]:
        return {"day_no": 1}

    def do_close_day(self, body: Any, rid: str) -> dict[str, Any]:
        raise FiscalError("BOX_DAY_NOT_OPEN", "No fiscal day is open, so there is nothing to close.")

    def do_export_journal(self, body: Any, rid: str) -> dict[str, Any]:
        self.jobs += 1
        return {"job": self.jobs, "total": len(self.export)}

    def do_job(self, body: Any, rid: str) -> dict[str, Any]:
        if body["job"] != self.jobs:
            raise FiscalError("BOX_LINK_NO_JOB", "The box has no such job.")
        offset = body.get("offset", 0)
        size = len(self.export)
        return {
            "state": "done",
            "done": size,
            "total": size,
            "size": size,
            "data": self.export[offset : offset + 2048],
            "result": {"sha256": hashlib.sha256(self.export).hexdigest()},
        }


@pytest.fixture
def host_key() -> Any:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def box(host_key: Any) -> Iterator[Responder]:
    responder = Responder(host_key)
    yield responder
    responder.close()


@pytest.fixture
def cabled(host_key: Any) -> Iterator[Responder]:
    responder = Responder(host_key, cable=True)
    yield responder
    responder.close()


@pytest.fixture
def client(box: Responder, host_key: Any) -> Iterator[BoxClient]:
    """A client that waits long (a loaded machine never makes it give up early) ..."""
    with BoxClient(box.path, pem(host_key), timeout=30) as made:
        yield made


@pytest.fixture
def hasty(box: Responder, host_key: Any) -> Iterator[BoxClient]:
    """... and one that notices a lost answer soon, for the tests that lose one on a pty (silence)."""
    with BoxClient(box.path, pem(host_key), timeout=LOST) as made:
        yield made


SALE = {"total": "10.00"}


def test_a_read_is_signed_and_the_nonce_is_fetched_once(client: BoxClient, box: Responder) -> None:
    assert client.status()["device_id"] == 4321
    assert client.status()["device_id"] == 4321
    assert box.nonce_requests == 1  # reads do not rotate it; every answer carries it
    assert [name for name, _, _ in box.requests] == ["status", "status"]


def test_a_write_answer_is_checked_against_the_device_key_and_kept_as_proof(
    client: BoxClient, box: Responder
) -> None:
    receipt = client.issue(SALE, "till-1:0001")
    assert receipt == {"global_no": 1, "total": "10.00"}
    assert client.last_request_id == "till-1:0001"
    proof = cose.decode1(client.last_proof)
    cose.verify1(proof, box.device_key.public_key())
    assert cbor2.loads(proof.payload)["rid"] == "till-1:0001"
    client.open_day()  # the nonce rotated after the write: the client took the new one from the answer
    assert box.nonce_requests == 1


def test_an_answer_not_signed_by_the_device_key_is_refused(client: BoxClient, box: Responder) -> None:
    client.status()  # pins the device key
    box.signing_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(FiscalError) as refused:
        client.open_day()
    assert refused.value.code == "BOX_LINK_SIGNATURE"


def test_without_the_key_in_status_an_operator_learns_it_from_the_device_csr(
    client: BoxClient, box: Responder
) -> None:
    box.status_key = False
    client.open_day()
    assert client.verified is True
    box.signing_key = ec.generate_private_key(ec.SECP256R1())  # pinned: a forged answer is caught
    with pytest.raises(FiscalError) as refused:
        client.open_day()
    assert refused.value.code == "BOX_LINK_SIGNATURE"


def test_a_key_that_cannot_learn_the_device_key_takes_answers_unchecked_unless_strict(
    client: BoxClient, box: Responder, host_key: Any
) -> None:
    box.status_key = box.csr_allowed = False  # a POS key on a box whose status does not name its key
    assert client.issue(SALE, "a")["global_no"] == 1
    assert client.verified is False and client.last_proof is not None
    client.close()  # one reader on the line at a time
    with BoxClient(box.path, pem(host_key), timeout=30, strict=True) as strict:
        with pytest.raises(FiscalError) as refused:
            strict.issue(SALE, "b")
    assert refused.value.code == "BOX_LINK_SIGNATURE"
    with BoxClient(box.path, pem(host_key), timeout=30, device_key=public_pem(box.device_key)) as given:
        given.issue(SALE, "c")
        assert given.verified is True


def test_a_signed_refusal_is_raised_with_the_box_code(client: BoxClient) -> None:
    with pytest.raises(FiscalError) as refused:
        client.close_day()
    assert refused.value.code == "BOX_DAY_NOT_OPEN"
    assert client.last_proof is not None  # the refusal is signed too: proof of what the box said


def test_a_nonce_rotated_by_another_host_is_fetched_and_the_request_signed_again(
    client: BoxClient, box: Responder
) -> None:
    client.status()
    box.nonce = os.urandom(16)  # another host wrote meanwhile
    assert client.issue(SALE, "rid-7")["global_no"] == 1
    assert [rid for name, rid, _ in box.requests if name == "issue"] == ["rid-7"]


def test_noise_and_a_stale_answer_on_the_line_are_passed_over(client: BoxClient, box: Responder) -> None:
    box.noise_first = True
    assert client.status()["device_id"] == 4321
    assert client.issue(SALE)["global_no"] == 1


def test_an_issue_whose_answer_is_lost_is_retried_under_the_same_id_and_issued_once(
    hasty: BoxClient, box: Responder
) -> None:
    lost = []
    box.lose = lambda name, body: name == "issue" and not lost and not lost.append(1)
    receipt = hasty.issue(SALE, "sale-42")
    assert receipt["repeated"] is True and receipt["global_no"] == 1
    assert len(box.receipts) == 1
    assert [rid for name, rid, _ in box.requests if name == "issue"] == ["sale-42", "sale-42"]
    assert box.nonce_requests == 2  # the line was reopened and the nonce fetched again


def test_an_issue_without_an_id_gets_one_and_keeps_it_across_the_retry(
    hasty: BoxClient, box: Responder
) -> None:
    lost = []
    box.lose = lambda name, body: name == "issue" and not lost and not lost.append(1)
    hasty.issue(SALE)
    rids = [rid for name, rid, _ in box.requests if name == "issue"]
    assert len(rids) == 2 and rids[0] == rids[1] == hasty.last_request_id
    assert len(box.receipts) == 1


def test_a_write_that_is_not_idempotent_is_not_sent_twice(hasty: BoxClient, box: Responder) -> None:
    box.lose = lambda name, body: name == "close_day"
    with pytest.raises(FiscalError) as refused:
        hasty.close_day()
    assert refused.value.code == "BOX_LINK_TIMEOUT"
    assert [name for name, _, _ in box.requests] == ["close_day"]


def test_a_box_that_never_answers_is_a_timeout(hasty: BoxClient, box: Responder) -> None:
    box.lose = lambda name, body: True
    with pytest.raises(FiscalError) as refused:
        hasty.status()
    assert refused.value.code == "BOX_LINK_TIMEOUT"
    assert f"({1 + link.RETRIES} tries)" in refused.value.message  # the time waited in all, not one try's
    assert len(box.requests) == 1 + link.RETRIES


def test_an_export_resumes_from_the_last_offset_after_a_lost_chunk(
    hasty: BoxClient, box: Responder, tmp_path: Any
) -> None:
    lost = []
    box.lose = lambda name, body: (
        name == "job" and body.get("offset") == 2048 and not lost and not lost.append(1)
    )
    seen = []
    result = hasty.export_journal(1, 9, tmp_path / "export.json", lambda done, total: seen.append(done))
    assert (tmp_path / "export.json").read_bytes() == box.export
    assert not (tmp_path / "export.json.part").exists()
    assert result["size"] == 5000 and result["sha256"] == hashlib.sha256(box.export).hexdigest()
    offsets = [body.get("offset") for name, _, body in box.requests if name == "job"]
    assert offsets == [0, 2048, 2048, 4096]  # the lost chunk asked again, nothing before it
    assert seen == [2048, 4096, 5000]


def test_a_cable_pulled_during_an_issue_reconnects_and_issues_once(cabled: Responder, host_key: Any) -> None:
    pulled = []
    cabled.lose = lambda name, body: name == "issue" and not pulled and not pulled.append(1)
    with BoxClient(cabled.path, pem(host_key), timeout=30) as client:  # the pull is seen at once, no waiting
        receipt = client.issue(SALE, "sale-43")
    assert receipt["repeated"] is True and len(cabled.receipts) == 1
    assert [rid for name, rid, _ in cabled.requests if name == "issue"] == ["sale-43", "sale-43"]


def test_a_cable_pulled_mid_export_reconnects_and_resumes(
    cabled: Responder, host_key: Any, tmp_path: Any
) -> None:
    pulled = []
    cabled.lose = lambda name, body: (
        name == "job" and body.get("offset") == 4096 and not pulled and not pulled.append(1)
    )
    with BoxClient(cabled.path, pem(host_key), timeout=30) as client:
        client.export_journal(1, 9, tmp_path / "export.json")
    assert (tmp_path / "export.json").read_bytes() == cabled.export
    offsets = [body.get("offset") for name, _, body in cabled.requests if name == "job"]
    assert offsets == [0, 2048, 4096, 4096]
    assert cabled.nonce_requests == 2  # a new line, a new nonce


def test_an_export_given_up_goes_on_where_it_stopped_when_asked_again(
    cabled: Responder, host_key: Any, tmp_path: Any
) -> None:
    cabled.lose = lambda name, body: name == "job" and body.get("offset") == 2048  # the cable stays out
    with BoxClient(cabled.path, pem(host_key), timeout=30) as client:
        with pytest.raises(FiscalError) as refused:
            client.export_journal(1, 9, tmp_path / "export.json")
        assert refused.value.code == "BOX_LINK_PORT"
        assert (tmp_path / "export.json.part").stat().st_size == 2048
        cabled.lose = lambda name, body: False  # plugged in again: the same export asked for once more
        client.export_journal(1, 9, tmp_path / "export.json")
    assert (tmp_path / "export.json").read_bytes() == cabled.export
    assert not (tmp_path / "export.json.part").exists() and not (tmp_path / "export.json.part.job").exists()
    assert [name for name, _, _ in cabled.requests].count("export_journal") == 1
    offsets = [body.get("offset") for name, _, body in cabled.requests if name == "job"]
    assert offsets == [0] + [2048] * (1 + link.RETRIES) + [2048, 4096]


def test_a_cable_pulled_for_good_is_a_port_error_after_the_retries(cabled: Responder, host_key: Any) -> None:
    cabled.lose = lambda name, body: True
    with BoxClient(cabled.path, pem(host_key), timeout=30) as client:
        with pytest.raises(FiscalError) as refused:
            client.status()
    assert refused.value.code == "BOX_LINK_PORT"
    assert len(cabled.requests) == 1 + link.RETRIES


def test_an_export_the_box_forgot_starts_once_more(client: BoxClient, box: Responder, tmp_path: Any) -> None:
    forgotten = []

    def restart(name: str, body: Any) -> bool:
        if name == "job" and body.get("offset") == 2048 and not forgotten:
            forgotten.append(1)
            box.jobs += 1  # the box restarted: job 1 is gone
        return False

    box.lose = restart
    client.export_journal(1, 9, tmp_path / "export.json")
    assert (tmp_path / "export.json").read_bytes() == box.export
    assert [name for name, _, _ in box.requests].count("export_journal") == 2


def test_a_damaged_export_is_not_put_in_place(client: BoxClient, box: Responder, tmp_path: Any) -> None:
    original = box.do_job

    def damaged(body: Any, rid: str) -> dict[str, Any]:
        answer = original(body, rid)
        answer["result"] = {"sha256": "00" * 32}
        return answer

    box.do_job = damaged  # type: ignore[method-assign]
    with pytest.raises(FiscalError) as refused:
        client.export_journal(1, 9, tmp_path / "export.json")
    assert refused.value.code == "BOX_LINK_EXPORT"
    assert not (tmp_path / "export.json").exists()


def test_a_port_that_cannot_be_opened(host_key: Any, tmp_path: Any) -> None:
    with pytest.raises(FiscalError) as refused:
        BoxClient(str(tmp_path / "no-such-tty"), pem(host_key), retries=0).status()
    assert refused.value.code == "BOX_LINK_PORT"


def test_a_port_that_does_not_exist_is_not_retried(host_key: Any, tmp_path: Any, caplog: Any) -> None:
    caplog.set_level("WARNING", "fiscalbox.link.client")
    with pytest.raises(FiscalError) as refused:
        BoxClient(str(tmp_path / "no-such-tty"), pem(host_key)).status()
    assert "No such file or directory" in refused.value.message
    assert [r for r in caplog.records if "link.retry" in r.getMessage()] == []


def test_ctrl_c_during_a_sale_is_one_error_line_saying_how_to_check(
    box: Responder, host_key: Any, tmp_path: Any
) -> None:
    (tmp_path / "pos.pem").write_bytes(pem(host_key))
    (tmp_path / "sale.json").write_text(json.dumps(SALE))

    def ctrl_c(name: str, body: Any) -> bool:
        if name == "issue":
            _thread.interrupt_main()  # as the terminal's SIGINT: the sale sent, its answer not yet back
        return name == "issue"

    box.lose = ctrl_c
    args = ["--port", box.path, "--key", str(tmp_path / "pos.pem"), "sale", str(tmp_path / "sale.json")]
    result = CliRunner().invoke(main, [*args, "--request-id", "till-1-42"])
    assert result.exit_code == 2
    assert "Aborted" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error BOX_INTERRUPTED: ")
    assert "fiscalbox status" in last and "--request-id till-1-42" in last


def test_keys_device_reads_the_status_and_says_when_the_box_has_no_key_yet(
    box: Responder, host_key: Any, tmp_path: Any
) -> None:
    (tmp_path / "pos.pem").write_bytes(pem(host_key))
    args = ["--port", box.path, "--key", str(tmp_path / "pos.pem"), "keys", "device"]
    shown = CliRunner().invoke(main, args)
    assert shown.exit_code == 0 and shown.stdout.strip() == public_pem(box.device_key).strip()
    box.status_key = False  # a box not registered yet: no device key in its status
    missing = CliRunner().invoke(main, args)
    assert missing.exit_code == 2
    assert missing.output.strip() == (
        "error BOX_KEY_MISSING: The box has no device key yet: it makes one when it is registered "
        "(`fiscalbox register`)."
    )


def test_a_second_program_on_the_same_port_is_told_it_is_in_use(
    client: BoxClient, box: Responder, host_key: Any
) -> None:
    assert client.status()["device_id"] == 4321  # the first holds the port open
    with BoxClient(box.path, pem(host_key), timeout=30) as second:
        with pytest.raises(FiscalError) as refused:
            second.status()
    assert refused.value.code == "BOX_LINK_PORT"
    assert f"{box.path} is in use by another program" in refused.value.message
    assert client.status()["device_id"] == 4321  # and the first is not knocked out


def test_a_request_id_outside_the_rule_is_refused_before_sending(client: BoxClient, box: Responder) -> None:
    with pytest.raises(FiscalError) as refused:
        client.issue(SALE, "no spaces allowed")
    assert (refused.value.code, refused.value.field) == ("BOX_LINK_SCHEMA", "request_id")
    assert box.requests == []


def test_a_new_host_key_is_private_to_its_owner_and_never_overwritten(tmp_path: Any) -> None:
    path = tmp_path / "pos.pem"
    kid = link.new_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = link.load_host_key(path.read_bytes())
    assert kid == cose.key_id(key.public_key())
    with pytest.raises(FiscalError) as refused:
        link.new_key(path)
    assert refused.value.code == "BOX_FILE"


def test_a_host_key_that_is_not_p256_is_refused() -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(FiscalError) as refused:
        BoxClient("loop://", pem(other))
    assert refused.value.code == "BOX_KEY_UNREADABLE"
