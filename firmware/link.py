"""The box's end of the USB link (docs/link.md): SMP frames in, answers out, never a crash on any input.

`Link.handle` takes one SMP frame and returns the answer frame; `Link.serve` runs it over a serial port
through the sans-I/O framer of `firmware/core/smp.py`. The OS group answers what any MCUmgr client expects;
the fiscal groups check a request in a fixed order (shape, COSE, key, signature, group and command, nonce,
role, CDDL body) before the Device runs anything, so every refusal changes nothing. Long work (audit,
backup, export) runs as a job in a worker thread, which the host polls.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import select
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import serial

from firmware import cose, link_schema
from firmware.box import REQUEST_ID
from firmware.core import smp
from firmware.core.errors import FiscalError
from firmware.hosts import HostKeys, load_p256

READ, WRITE = smp.OP_READ, smp.OP_WRITE
OS, FISCAL, HOSTS = 0, 64, 65
NONCE_SIZE = 16
CHUNK = 2048  # bytes of an export a `job` answer carries
PROBLEMS_BYTES = 8192  # CBOR bytes of an audit's problems a `job` answer carries: the first that fit
BUF_COUNT = 4
READ_SIZE = 65536  # bytes the serve loop takes from the port at a time: a whole request and more
RC_EINVAL, RC_ENOTSUP = 3, 8  # MCUmgr's return codes: invalid value, not supported
ROLES = {"any": 0, "pos": 1, "operator": 2}

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    """One command of docs/link.md sections 2 and 3."""

    group: int
    id: int
    name: str
    op: int
    role: str  # the least role allowed: any, pos or operator
    method: str | None  # the Device method it calls; None: the link answers it itself
    args: tuple[str, ...] = ()  # body keys passed to the method by name (an absent optional key: its default)
    rid: bool = False  # the request's rid is passed as request_id, the key's ID (hex) as host
    job: bool = False  # runs as a job (section 7): the method also gets progress(done, total)


COMMANDS = (
    Command(OS, 0, "echo", WRITE, "any", None),
    Command(OS, 6, "mcumgr_params", READ, "any", None),
    Command(FISCAL, 0, "nonce", READ, "any", None),
    Command(FISCAL, 1, "status", READ, "pos", "status"),
    Command(FISCAL, 2, "receipt", READ, "pos", "receipt", ("global_no",)),
    Command(FISCAL, 3, "outbox", READ, "pos", "outbox", ("limit",)),
    Command(FISCAL, 4, "x_report", READ, "pos", "x_report"),
    Command(FISCAL, 5, "z_report", READ, "pos", "z_report", ("day",)),
    Command(FISCAL, 6, "issue", WRITE, "pos", "issue", ("sale",), rid=True),
    Command(FISCAL, 7, "reprint", WRITE, "pos", "reprint", ("global_no",)),
    Command(FISCAL, 8, "print_unprinted", WRITE, "pos", "print_unprinted"),
    Command(FISCAL, 9, "print_report", WRITE, "pos", "print_report", ("day",)),
    Command(FISCAL, 10, "open_day", WRITE, "operator", "open_day"),
    Command(FISCAL, 11, "close_day", WRITE, "operator", "close_day"),
    Command(FISCAL, 12, "provision", WRITE, "operator", "provision", ("values",)),
    Command(FISCAL, 13, "generate_key", WRITE, "operator", "generate_key", ("algorithm", "replace")),
    Command(FISCAL, 14, "certificate_request", READ, "operator", "certificate_request"),
    Command(FISCAL, 15, "install_certificate", WRITE, "operator", "install_certificate", ("certificate",)),
    Command(FISCAL, 16, "register", WRITE, "operator", "register", ("activation_key",)),
    Command(FISCAL, 17, "renew_certificate", WRITE, "operator", "renew_certificate"),
    Command(FISCAL, 18, "audit", WRITE, "operator", "audit", job=True),
    Command(FISCAL, 19, "backup", WRITE, "operator", "backup", ("retain",), job=True),
    Command(FISCAL, 20, "export_journal", WRITE, "operator", "export_journal", ("first", "last"), job=True),
    Command(FISCAL, 21, "replay", WRITE, "operator", "replay", ("since",)),
    Command(FISCAL, 22, "job", READ, "operator", None),
    Command(HOSTS, 0, "enroll", WRITE, "operator", None),
    Command(HOSTS, 1, "list", READ, "operator", None),
    Command(HOSTS, 2, "revoke", WRITE, "operator", None),
)
BY_ID = {(c.group, c.id): c for c in COMMANDS}


class _SmpError(Exception):
    """A refusal below the fiscal protocol, answered the SMP way: {"err": {"group", "rc"}}."""

    def __init__(self, rc: int) -> None:
        super().__init__(rc)
        self.rc = rc


def refuse(code: str, message: str, field: str | None = None) -> FiscalError:
    return FiscalError(code, message, field)


def error_map(error: FiscalError) -> dict[str, Any]:
    """A refusal as the link carries it: code, message, and field when there is one."""
    out = {"code": error.code, "message": error.message}
    if error.field:
        out["field"] = error.field
    return out


def internal(error: BaseException) -> FiscalError:
    return refuse(
        "BOX_INTERNAL",
        f"The box failed while answering ({type(error).__name__}); nothing more is known on the link: "
        "the box's log has the details.",
    )


def cbor_map(data: bytes) -> dict[Any, Any] | None:
    """The one CBOR map `data` holds, as plain data, or None (not CBOR, not a map, bytes after it)."""
    try:
        value = cose.loads(data)
    except FiscalError:
        return None
    return value if isinstance(value, dict) else None


@dataclass
class Request:
    """A fiscal request that passed authentication."""

    command: Command
    rid: str
    body: dict[str, Any]
    role: str
    label: str
    nonce: bytes  # the nonce it was signed with: a write's answer carries it, bound to this request
    kid: bytes = b""  # the key that signed it


@dataclass
class Job:
    """One long operation (docs/link.md section 7), kept until a newer job of its kind replaces it."""

    id: int
    kind: str
    state: str = "running"
    done: int = 0
    total: int = 0
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    path: Path | None = None  # the export file
    size: int | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = int(done), int(total)


SHORT_TEXT = 256  # characters of a text field a shortened answer keeps


def _shortened(outcome: dict[str, Any]) -> dict[str, Any]:
    """A write's outcome cut to what surely fits a frame (docs/link.md section 4): a refusal's code and the
    start of its message; a result's top-level numbers, booleans, nulls and short texts, the length of each
    list in `counts`, and `"truncated": true`. Maps and long texts are left out."""
    if "error" in outcome:
        error = outcome["error"]
        return {"error": {"code": str(error.get("code"))[:64], "message": str(error.get("message"))[:512]}}
    result = outcome.get("ok")
    short: dict[str, Any] = {"truncated": True}
    if isinstance(result, dict):
        counts: dict[str, int] = {}
        for key, value in result.items():
            if not isinstance(key, str) or key in ("truncated", "counts") or len(key) > 64:
                continue
            if value is None or isinstance(value, (bool, int)) and -(2**63) <= value < 2**64:
                short[key] = value
            elif isinstance(value, str) and len(value) <= SHORT_TEXT:
                short[key] = value
            elif isinstance(value, (list, tuple)):
                counts[key] = len(value)
        if counts:
            short["counts"] = counts
    return {"ok": short}


def _printed_summary(result: dict[str, Any]) -> dict[str, Any]:
    """print_unprinted's answer on the link: the receipts printed as a count and the first and last numbers,
    not the list (thousands of receipts left unprinted by a long printer fault would not fit a frame)."""
    printed = result.get("printed")
    if not isinstance(printed, list):
        return result
    summary = {"count": len(printed), "first": printed[0] if printed else None,
               "last": printed[-1] if printed else None}
    return {**result, "printed": summary}


def _capped_problems(result: dict[str, Any]) -> dict[str, Any]:
    """An audit's result as a `job` answer carries it (docs/link.md section 7): the first problems that fit
    PROBLEMS_BYTES, with `problems_total` and `problems_truncated`; a tampered journal can have thousands."""
    problems = result.get("problems")
    if not isinstance(problems, list):
        return result
    kept: list[Any] = []
    size = 0
    for problem in problems:
        size += len(cbor2.dumps(problem))
        if size > PROBLEMS_BYTES:
            break
        kept.append(problem)
    return {
        **result,
        "problems": kept,
        "problems_total": len(problems),
        "problems_truncated": len(kept) < len(problems),
    }


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Link:
    """The link server over one Device and the enrolled host keys. `work_dir` keeps the export files of
    jobs; by default `link-exports` beside the host keys file (the service's state folder, beside the
    journal: an export can be large, so not in a RAM-backed /tmp)."""

    def __init__(
        self,
        device: Any,
        hosts: HostKeys,
        log: logging.Logger | None = None,
        work_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.device = device
        self.hosts = hosts
        self.log = log or _log
        self._own_dir = False
        self.work_dir = Path(work_dir) if work_dir is not None else hosts.path.parent / "link-exports"
        try:
            self.work_dir.mkdir(exist_ok=True)
        except OSError:  # a folder that cannot be made: a temporary one, removed by close()
            self.work_dir = Path(tempfile.mkdtemp(prefix="fiscalbox-link-"))
            self._own_dir = True
        for stale in self.work_dir.glob("export-*.json"):  # a previous run's jobs are gone with it
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._nonce = os.urandom(NONCE_SIZE)
        self._jobs: dict[str, Job] = {}
        # Job numbers start at random, so a host polling a job of the service's previous life is told
        # BOX_LINK_NO_JOB rather than shown another job's data.
        self._next_job = 1 + int.from_bytes(os.urandom(3), "big")
        self._answer_alg = cose.ES256
        self._own: dict[str, Callable[..., Any]] = {
            "echo": self._echo,
            "mcumgr_params": self._params,
            "job": self._job,
            "enroll": self._enroll,
            "list": self._list,
            "revoke": self._revoke,
        }

    @property
    def nonce(self) -> bytes:
        """The nonce the next signed request must carry."""
        return self._nonce

    def join_jobs(self, timeout: float | None = None) -> None:
        """Wait for the jobs in flight to finish (the service's stop; tests)."""
        for job in list(self._jobs.values()):
            if job.thread is not None:
                job.thread.join(timeout)

    def close(self) -> None:
        """Remove the jobs' export files (and the temporary folder, if the link made one)."""
        for job in self._jobs.values():
            if job.path is not None and job.state != "running":
                job.path.unlink(missing_ok=True)
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # -----------------------------------------------------------------------------------------------------
    # Frames

    def handle(self, frame: bytes) -> bytes | None:
        """One SMP frame in, its answer frame out; None for a frame that cannot be answered (shorter than
        a header, or itself an answer)."""
        answer, record = self.respond(frame)
        if record is not None:
            self._log_request(record)
        return answer

    def _log_request(self, record: dict[str, Any]) -> None:
        self.log.info("link.request", extra={"fields": record})

    def respond(self, frame: bytes) -> tuple[bytes | None, dict[str, Any] | None]:
        """The answer frame and the request's log record, not yet logged: the serve loop logs it once the
        answer is on its way, so the host is not kept waiting for the log line."""
        started = time.monotonic()
        try:
            version, op, _flags, length, group, sequence, command_id = smp.parse_header(frame)
        except ValueError:
            return None, None
        if op not in (READ, WRITE):
            return None, None  # an answer sent to the box: answering could start a loop between two devices
        record: dict[str, Any] = {"group": group, "command": command_id}
        with self._lock:
            try:
                answer = self._answer(
                    version, op, length, group, command_id, bytes(frame[smp.HEADER_SIZE :]), record
                )
                body = cbor2.dumps(answer)
                if len(body) > smp.MAX_FRAME - smp.HEADER_SIZE:
                    raise refuse("BOX_INTERNAL", "The answer is larger than a frame; ask for less at a time.")
            except Exception as error:  # the last guard: whatever happened, a frame goes back, no traceback
                if not isinstance(error, FiscalError):
                    self.log.exception(
                        "link.internal", extra={"fields": {"group": group, "command": command_id}}
                    )
                    error = internal(error)
                record["outcome"] = error.code
                body = cbor2.dumps({"nonce": self._nonce, "error": error_map(error)})
            record["ms"] = round((time.monotonic() - started) * 1000, 2)
        return smp.header(op + 1, group, sequence, command_id, len(body), version=version) + body, record

    def _answer(
        self,
        version: int,
        op: int,
        length: int,
        group: int,
        command_id: int,
        raw: bytes,
        record: dict[str, Any],
    ) -> dict[str, Any]:
        try:
            if length != len(raw):
                raise _SmpError(RC_EINVAL)
            command = BY_ID.get((group, command_id))
            if command is None or command.op != op:
                raise _SmpError(RC_ENOTSUP)
            record["name"] = command.name
            body = cbor_map(raw)
            if body is None:
                raise _SmpError(RC_EINVAL)
            if group == OS:
                result: dict[str, Any] = self._own[command.name](body)
                record["outcome"] = "ok"
                return result
        except _SmpError as error:
            record["outcome"] = f"SMP_RC_{error.rc}"
            return {"err": {"group": group, "rc": error.rc}} if version else {"rc": error.rc}
        return self._fiscal(command, body, record)

    # -----------------------------------------------------------------------------------------------------
    # OS group

    def _echo(self, body: dict[Any, Any]) -> dict[str, Any]:
        if set(body) != {"d"} or not isinstance(body["d"], str):
            raise _SmpError(RC_EINVAL)
        return {"r": body["d"]}

    def _params(self, body: dict[Any, Any]) -> dict[str, Any]:
        return {"buf_size": smp.MAX_FRAME, "buf_count": BUF_COUNT}

    # -----------------------------------------------------------------------------------------------------
    # Fiscal groups

    def _fiscal(self, command: Command, body: dict[Any, Any], record: dict[str, Any]) -> dict[str, Any]:
        if command.name == "nonce":
            if body:
                raise refuse("BOX_LINK_FRAME", "The nonce is asked for with an empty map, unsigned.")
            record["outcome"] = "ok"
            return {"nonce": self._nonce, "ok": {"nonce": self._nonce, "deflate": True}}
        compressed = set(body) == {"zreq"}
        request = self._authenticate(command, body, record)
        if command.op == WRITE:
            self._nonce = os.urandom(NONCE_SIZE)  # good once, whatever the outcome
        try:
            if not isinstance(request.rid, str) or not REQUEST_ID.fullmatch(request.rid):
                raise refuse(
                    "BOX_LINK_SCHEMA", "A request ID is 1 to 64 characters from A-Z a-z 0-9 . _ : -.", "rid"
                )
            link_schema.check(command.name, request.body)
            outcome: dict[str, Any] = {"ok": self._run(request)}
            record["outcome"] = "ok"
        except FiscalError as error:
            outcome = {"error": error_map(error)}
            record["outcome"] = error.code
        except Exception as error:  # a Device bug: logged here with its traceback, a sentence on the link
            self.log.exception("link.internal", extra={"fields": {"name": command.name, "rid": request.rid}})
            outcome = {"error": error_map(internal(error))}
            record["outcome"] = "BOX_INTERNAL"
        if command.op == READ:
            if compressed and "ok" in outcome:
                outcome = {"zok": cose.deflate(cbor2.dumps(outcome["ok"]))}
            return {"nonce": self._nonce, **outcome}
        if command.name == "print_unprinted" and isinstance(outcome.get("ok"), dict):
            outcome["ok"] = _printed_summary(outcome["ok"])
        head = {"g": command.group, "c": command.id, "rid": request.rid, "nonce": request.nonce}
        return {"nonce": self._nonce, **self._write_answer(head, outcome, compressed)}

    def _write_answer(
        self, head: dict[str, Any], outcome: dict[str, Any], compressed: bool
    ) -> dict[str, Any]:
        """A write's answer. The write has run, so its outcome always goes back signed: one too large for a
        frame, or holding what CBOR cannot carry, is sent shortened (docs/link.md section 4), never replaced
        by an unsigned error that would say nothing changed."""
        for attempt in (outcome, _shortened(outcome), {"ok": {"truncated": True}}):
            try:
                answer = self._signed({**head, **attempt})
                if compressed and "cose" in answer:
                    answer = {"zcose": cose.deflate(answer["cose"])}
                size = len(cbor2.dumps({"nonce": self._nonce, **answer}))
            except Exception:  # a value CBOR cannot carry: logged, the shortened outcome goes instead
                self.log.exception("link.answer_unencodable", extra={"fields": {"rid": head["rid"]}})
                continue
            if size <= smp.MAX_FRAME - smp.HEADER_SIZE:
                return answer
            self.log.warning("link.answer_truncated", extra={"fields": {"rid": head["rid"], "bytes": size}})
        raise AssertionError("unreachable: the last outcome is a few bytes")  # pragma: no cover

    def _authenticate(self, command: Command, body: dict[Any, Any], record: dict[str, Any]) -> Request:
        """The checks before anything runs, in the order of docs/link.md section 4; none changes anything."""
        if set(body) == {"zreq"}:  # compressed: raw DEFLATE of the COSE_Sign1, at most a frame's worth
            signed = cose.inflate(body["zreq"], smp.MAX_FRAME, "zreq")
        elif set(body) == {"req"} and isinstance(body["req"], bytes):
            signed = body["req"]
        else:
            raise refuse(
                "BOX_LINK_FRAME",
                'A signed request is {"req": COSE_Sign1 bytes}, or {"zreq": those bytes DEFLATE-compressed}.',
                "req",
            )
        message = cose.decode1(signed)
        payload = cbor_map(message.payload) if isinstance(message.payload, bytes) else None
        shape = {"g": int, "c": int, "nonce": bytes, "rid": str, "body": dict}
        if (
            payload is None
            or set(payload) != set(shape)
            or not all(
                isinstance(payload[k], t) and not isinstance(payload[k], bool) for k, t in shape.items()
            )
        ):
            raise refuse(
                "BOX_LINK_FRAME",
                'The signed payload is a map {"g": uint, "c": uint, "nonce": bstr, "rid": text, '
                '"body": map}.',
                "req",
            )
        record["rid"] = payload["rid"][:64]
        kid = message.kid if isinstance(message.kid, bytes) else b""
        entry = self.hosts.find(kid) if kid else None
        if entry is None:
            if command.name != "enroll":
                first = not self.hosts.has_operator() and not self.device.registered
                raise refuse(
                    "BOX_LINK_UNKNOWN_KEY",
                    f"No host key {kid[:16].hex() or '(none)'} is enrolled on this box: "
                    + (
                        "it has no operator yet, so enroll it as the first operator key "
                        "(`fiscalbox keys enroll --role operator`)."
                        if first
                        else "an operator enrolls it first."
                    ),
                    "kid",
                )
            link_schema.check("enroll", payload["body"])  # its values are read here, before the signature
            key = self._first_operator(kid, payload["body"])
            role, label = "operator", payload["body"]["label"]
        else:
            if entry["revoked_at"] is not None:
                raise refuse(
                    "BOX_LINK_REVOKED",
                    f"Host key {entry['kid']} ({entry['label']}) was revoked at {entry['revoked_at']}.",
                    "kid",
                )
            key = self.hosts.public_key(kid)
            role, label = entry["role"], entry["label"]
        cose.verify1(message, key)
        record["key"], record["role"] = label, role  # only once proven: a forger names any key
        if (payload["g"], payload["c"]) != (command.group, command.id):
            raise refuse(
                "BOX_LINK_OP", "The signed request names another command than the frame carrying it.", "req"
            )
        if payload["nonce"] != self._nonce:
            raise refuse(
                "BOX_LINK_NONCE",
                "The request's nonce is not the box's current one (stale, or a replay): sign it again "
                "with the nonce of this answer.",
                "nonce",
            )
        if ROLES[role] < ROLES[command.role]:
            raise refuse(
                "BOX_LINK_ROLE",
                f"A {role} key may not ask for "
                + (f"keys {command.name}" if command.group == HOSTS else command.name.replace("_", " "))
                + f": that needs an {command.role} key.",
                "kid",
            )
        return Request(command, payload["rid"], payload["body"], role, label, payload["nonce"], kid)

    def _first_operator(self, kid: bytes, body: dict[Any, Any]) -> Any:
        """The key a first operator enroll is signed by: the key it enrolls (docs/link.md section 5)."""
        if self.hosts.has_operator() or self.device.ever_registered:  # a missing journal does not reopen it
            raise refuse(
                "BOX_LINK_ENROLL",
                "This box already has an operator key or is registered: an enrolled operator key must "
                "sign the enroll.",
                "kid",
            )
        try:
            key = load_p256(body.get("public_key"))  # type: ignore[arg-type]
        except FiscalError:
            key = None
        if key is None or cose.key_id(key) != kid or body.get("role") != "operator":
            raise refuse(
                "BOX_LINK_ENROLL",
                "The first key enrolled is an operator key, and its enroll is signed by that key itself.",
                "kid",
            )
        return key

    def _run(self, request: Request) -> Any:
        command = request.command
        if command.method is None:
            return self._own[command.name](request)
        kwargs = {name: request.body[name] for name in command.args if name in request.body}
        if command.rid:  # request IDs are the sending key's own (docs/link.md section 6)
            kwargs["request_id"], kwargs["host"] = request.rid, request.kid.hex()
        if command.job:
            return self._start_job(command, kwargs)
        return getattr(self.device, command.method)(**kwargs)

    def _signed(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A write's answer: a COSE_Sign1 by the device key, or the payload as is while it has no key."""
        data = cbor2.dumps(payload)
        used: list[int] = []

        def sign(to_be_signed: bytes) -> bytes:
            answer = self.device.sign_answer(to_be_signed)
            if answer is None:
                raise LookupError("no device key")
            used.append(answer[0])
            return bytes(answer[1])

        try:
            signed = cose.sign1(data, sign, self._answer_alg)
            if (
                used[-1] != self._answer_alg
            ):  # the device key is not the one guessed: sign once more, remember
                self._answer_alg = used[-1]
                signed = cose.sign1(data, sign, self._answer_alg)
        except LookupError:
            return {"answer": payload}
        except Exception:  # a key store that fails must not lose the write's outcome
            self.log.exception("link.sign_failed", extra={"fields": {"rid": payload.get("rid")}})
            return {"answer": payload}
        return {"cose": signed}

    # -----------------------------------------------------------------------------------------------------
    # Host keys

    def _enroll(self, request: Request) -> dict[str, Any]:
        body = request.body
        return self.hosts.enroll(body["public_key"], body["role"], body["label"], utc_now())

    def _list(self, request: Request) -> dict[str, Any]:
        return {"keys": self.hosts.entries()}

    def _revoke(self, request: Request) -> dict[str, Any]:
        return self.hosts.revoke(request.body["kid"], utc_now())

    # -----------------------------------------------------------------------------------------------------
    # Jobs

    def _start_job(self, command: Command, kwargs: dict[str, Any]) -> dict[str, Any]:
        old = self._jobs.get(command.name)
        if old is not None and old.state == "running":
            raise refuse(
                "BOX_BUSY", f"A {command.name} is already running (job {old.id}): wait for it to finish."
            )
        job = Job(self._next_job, command.name)
        self._next_job += 1
        if command.name == "export_journal":
            job.path = self.work_dir / f"export-{job.id}.json"
            kwargs["dest"] = str(job.path)
        if old is not None and old.path is not None:
            old.path.unlink(missing_ok=True)
        self._jobs[command.name] = job
        method = getattr(self.device, command.method or command.name)
        job.thread = threading.Thread(
            target=self._work, args=(job, method, kwargs), name=f"link-{command.name}", daemon=True
        )
        job.thread.start()
        return {"job": job.id, "total": job.total}

    def _work(self, job: Job, method: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        started = time.monotonic()
        try:
            result = _capped_problems(dict(method(progress=job.progress, **kwargs) or {}))
            if job.path is not None:
                data = job.path.read_bytes()
                job.size = len(data)
                result["sha256"] = hashlib.sha256(data).hexdigest()
            job.result = result
            job.state = "done"
        except Exception as error:
            if not isinstance(error, FiscalError):
                self.log.exception("link.internal", extra={"fields": {"job": job.id, "name": job.kind}})
                error = internal(error)
            job.error = error_map(error)
            job.state = "failed"
        ms = round((time.monotonic() - started) * 1000, 2)
        outcome = job.error["code"] if job.error else "ok"
        self.log.info(
            "link.job", extra={"fields": {"job": job.id, "name": job.kind, "outcome": outcome, "ms": ms}}
        )

    def _job(self, request: Request) -> dict[str, Any]:
        wanted = request.body["job"]
        job = next((j for j in self._jobs.values() if j.id == wanted), None)
        if job is None:
            raise refuse(
                "BOX_LINK_NO_JOB",
                f"The box has no job {wanted} (it may have restarted): start it again.",
                "job",
            )
        out: dict[str, Any] = {"state": job.state, "done": job.done, "total": job.total}
        if job.result is not None:
            out["result"] = job.result
        if job.error is not None:
            out["error"] = job.error
        if job.state == "done" and job.path is not None and job.size is not None:
            offset = int(request.body.get("offset", 0))
            if offset >= job.size:  # at or past the end (2**62 too): nothing to read, the file not opened
                out["data"] = b""
            else:
                with open(job.path, "rb") as handle:
                    handle.seek(offset)
                    out["data"] = handle.read(CHUNK)
            out["size"] = job.size
        return out

    # -----------------------------------------------------------------------------------------------------
    # The serial line

    def serve(self, port: Any, stop: threading.Event) -> None:
        """Answer every frame that arrives on `port` (pyserial-like: read, write, timeout) until `stop`.
        Noise is dropped by the framer; a failing port (a cable pulled hangs it up) ends this, so the caller
        opens it again."""
        if getattr(port, "timeout", None) is None:
            port.timeout = 0.1  # so `stop` is noticed
        decoder = smp.Decoder(smp.MAX_FRAME)
        read, write = _reader(port), _writer(port)
        while not stop.is_set():
            try:
                data = read()
            except (OSError, serial.SerialException) as error:
                self.log.warning("link.port", extra={"fields": {"error": str(error)}})
                return
            if not data:
                continue
            try:
                for frame in decoder.feed(data):
                    answer, record = self.respond(frame)
                    try:
                        if answer is not None:
                            # No flush(): pyserial's is tcdrain, which waits for the host to read the answer
                            # (on a pty it made an echo's p99 3 ms instead of 0.3 ms). write() has handed
                            # it on, the whole packet in one call.
                            write(smp.encode(answer))
                    finally:
                        if record is not None:
                            self._log_request(record)
            except (OSError, serial.SerialException) as error:
                self.log.warning("link.port", extra={"fields": {"error": str(error)}})
            except Exception:  # a bug of the link itself: logged, and the line is read on
                self.log.exception("link.internal")
                decoder = smp.Decoder(smp.MAX_FRAME)


def _fd(port: Any) -> int | None:
    """The port's file descriptor (a tty, a pty), or None (socket://, loop://, a test's stand-in)."""
    try:
        fd = port.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation, serial.SerialException):
        return None
    return fd if isinstance(fd, int) else None


def _writer(port: Any) -> Callable[[bytes], None]:
    """How the serve loop writes a packet: one os.write of all of it where the port is a file descriptor
    (pyserial's write copies it, then waits in select after writing); what the line does not take at once
    goes through pyserial's write, with its write timeout."""
    fd = _fd(port)
    if fd is None:
        return port.write  # type: ignore[no-any-return]

    def write_fd(packet: bytes) -> None:
        try:
            done = os.write(fd, packet)
        except BlockingIOError:
            done = 0
        if done < len(packet):
            port.write(packet[done:])

    return write_fd


def _reader(port: Any) -> Callable[[], bytes]:
    """How the serve loop reads `port`: all the bytes waiting, in one system call where the port is a file
    descriptor (a tty, a pty: pyserial's read(1) then read(in_waiting) took three calls and two copies a
    request); through pyserial otherwise (socket://, loop://). Empty after the port's timeout."""
    fd = _fd(port)
    if fd is None:

        def read_port() -> bytes:
            waiting = getattr(port, "in_waiting", 0)
            return bytes(port.read(waiting if waiting > 0 else 1))

        return read_port

    def read_fd() -> bytes:
        ready, _, _ = select.select([fd], [], [], port.timeout)
        if not ready:
            return b""
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return b""
        if not data:  # readable but empty: the other end is gone (a pty whose host closed it)
            raise serial.SerialException("the port reports end of file")
        return data

    return read_fd


def open_port(url_or_path: str, baud: int = 115200) -> Any:
    """A device path (/dev/ttyGS0, a pty) or a pyserial URL (socket://, loop://), raw, with a short read
    timeout; one that cannot be opened is BOX_LINK_PORT."""
    try:
        return serial.serial_for_url(url_or_path, baudrate=baud, timeout=0.1, write_timeout=5)
    except (OSError, ValueError, serial.SerialException) as error:
        raise refuse(
            "BOX_LINK_PORT", f"The link's serial port {url_or_path} cannot be opened: {error}.", "link.port"
        ) from None
