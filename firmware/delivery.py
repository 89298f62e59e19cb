"""The outbox worker: every receipt reaches FDMS exactly once, in global-number order.

Each `step()` does one piece of work and returns what it did, so tests drive it synchronously and the box
runs it on a thread. The order is FDMS's: a day's OpenDay before any of its receipts, its receipts one at a
time in ascending global number, its CloseDay only once all of them are delivered, and the next day's OpenDay
only after FDMS confirmed the close. Nothing is decided from memory that FDMS can answer: after a restart or a
lost answer, the receipt is sent again (FDMS returns the original ID and signature) and the close follows
GetStatus.

An outage never stops the shop: the box keeps issuing; the worker backs off (exponentially, with jitter,
honouring 429's Retry-After) and catches up when FDMS is back. Retries are not written to the journal: the
last problem (its code and sentence, since when, the next attempt) goes to a small state file beside the
journal, replaced atomically whenever it changes (at most once per attempt, and never while all is well), so
`status` in another process can say what delivery is waiting for.

A close FDMS did not make, whatever form its answer takes (FiscalDayCloseFailed, or the day open again with a
fiscalDayClosingErrorCode), is sent again under the back-off at most `close_attempts` times for one signed
close; then the day is recorded CloseFailed with FDMS's code and a person closes it again.

The box checks FDMS's signatures itself. A signature that does not verify (or is missing) is the box's own
security finding, recorded beside the receipt or the day as a BOX_ code, never as FDMS's verdict, and it does
not hold the close back.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from firmware.backup import write_atomically
from firmware.core import fdms, localtime
from firmware.core.errors import FiscalError
from firmware.fdms_client import FdmsError, FdmsUnavailable
from firmware.journal import CLOSE_FAILED, CLOSE_INITIATED, CLOSED, OPENED
from hardware import Clock
from hardware.signatures import load_public_key
from hardware.signatures import verify as verify_signature

log = logging.getLogger(__name__)

# What step() reports.
IDLE = "idle"
WAITING = "waiting"  # backing off after a failure
OPENED_DAY = "opened"
SENT = "sent"
CLOSE_SENT = "close sent"
CLOSE_PENDING = "close pending"
DAY_CLOSED = "closed"
BLOCKED = "blocked"  # something only a person can resolve; said in `problem`
PINGED = "pinged"
RENEWED = "renewed"

CLOSE_ATTEMPTS = 3  # CloseDay sends for one signed close that FDMS did not make, before a person is asked
POLL_MAX = 30.0  # seconds: the longest pause between GetStatus calls while FDMS processes a close
# "Unavailable" errors that do not pass by waiting: a server certificate the box does not trust.
NEEDS_PERSON = frozenset({"BOX_FDMS_TLS"})


def is_box_finding(error: Mapping[str, Any]) -> bool:
    """The box's own finding among a receipt's errors (its check of FDMS's signature), not FDMS's verdict:
    shown as such, and it never blocks a close."""
    return str(error.get("code") or "").startswith("BOX_")


def blocks_close(error: Mapping[str, Any]) -> bool:
    """FDMS's Grey or Red flag: the box cannot close that day; ZIMRA has to."""
    return error.get("colour") in ("Red", "Grey") and not is_box_finding(error)


def signature_finding(code: str, what: str) -> dict[str, Any]:
    """The box's own finding on FDMS's signature over `what` ("receipt 7", "the close of day 2"), in words."""
    if code == "BOX_SERVER_SIGNATURE_MISSING":
        message = (
            f"The box's own check: FDMS's answer for {what} carries no server signature, so the box cannot "
            "check that FDMS signed it. FDMS accepted it; report it to the supplier."
        )
    else:
        message = (
            f"The box's own check: FDMS's signature on {what} does not verify with FDMS's certificate. "
            "This is not FDMS's verdict (FDMS accepted it): the signed text differs from the box's or the "
            "answer was changed on the way. Report it to the supplier."
        )
    return {"code": code, "colour": None, "source": "box", "message": message}


def state_path(journal_path: str | os.PathLike[str]) -> Path:
    """Delivery's state file, beside the journal and never in it: journal.db -> journal.delivery.json."""
    return Path(journal_path).with_suffix(".delivery.json")


def read_state(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What the last delivery process wrote, or None when there is nothing (readable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("problem") or {}, dict):
        return None
    return data


class RetryLater(FiscalError):
    """A failure delivery retries under its back-off without a person: a close FDMS did not make."""


class Delivery:
    """Works the box's outbox against one FDMS client."""

    def __init__(
        self,
        box: Any,
        client: Any,
        clock: Clock,
        rng: random.Random | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        renew_days_before: int = 30,
        sleep: Callable[[float], None] = time.sleep,
        close_attempts: int = CLOSE_ATTEMPTS,
        state_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.box = box
        self.client = client
        self.clock = clock
        self.rng = rng or random.Random()
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.renew_days_before = renew_days_before
        self.sleep = sleep
        self.failures = 0  # consecutive failed calls: the backoff exponent
        self.not_before = 0.0  # no call before this clock time
        self.attempts: dict[int, int] = {}  # global_no -> calls made for it (kept in memory only)
        self.problem: dict[str, Any] | None = None  # the last refusal or outage, for status()
        self.reporting_frequency = 5  # minutes, from Ping
        self.last_ping: float | None = None  # on the delivery clock, for when the next one is due
        self.last_ping_at: str | None = None  # local time, as status shows every other time
        self.server_keys: dict[str, Any] = {}  # FDMS signing certificates by thumbprint
        self.close_sent: set[tuple[int, str]] = set()  # (day, close request time) sent by this run
        self.files_sent: dict[tuple[int, int], str] = {}  # offline mode: (day, sequence) -> operation ID
        self.sent = 0
        self.close_attempts = close_attempts
        self.close_failures: dict[tuple[int, str], int] = {}  # (day, close request time) -> failed answers
        self.polls: dict[tuple[int, str], int] = {}  # GetStatus calls while FDMS processes that close
        self.stopped: dict[str, Any] | None = None  # why run_until_idle stopped short, for the caller
        self.on_problem: Callable[[dict[str, Any] | None], None] | None = None  # told when it changes
        journal_path = getattr(getattr(box, "journal", None), "path", None)
        if state_file is None and journal_path is not None:
            state_file = state_path(journal_path)
        self.state_file = None if state_file is None else Path(state_file)
        written = None if self.state_file is None else read_state(self.state_file)
        self.problem = None if written is None else written.get("problem")  # the last process's, until news
        self._file_has_problem = self.problem is not None

    # -----------------------------------------------------------------------------------------------------
    # Driving

    def step(self) -> str:
        """Do the next piece of work, if it is time; never raises for FDMS's or the network's faults."""
        now = self.clock.now()
        if now < self.not_before:
            return WAITING
        try:
            done = self._work()
        except RetryLater as error:
            self._back_off(error, None, needs_person=False)
            return WAITING
        except FdmsUnavailable as error:
            needs_person = error.code in NEEDS_PERSON
            self._back_off(error, error.retry_after, needs_person)
            return BLOCKED if needs_person else WAITING
        except FiscalError as error:
            # A refusal retried unchanged gets the same answer: wait long, say what it was.
            self._back_off(error, None, needs_person=True)
            return BLOCKED
        if done in (CLOSE_SENT, CLOSE_PENDING) and (self.problem or {}).get("code") == "BOX_CLOSE_FAILED":
            return done  # a close sent again: its problem stands (and its back-off grows) until FDMS answers
        self.failures = 0
        if self.problem is not None:
            self._set_problem(None)
        return done

    def run_until_idle(
        self,
        max_steps: int = 1_000_000,
        advance: Callable[[float], None] | None = None,
        max_wait: float | None = None,
    ) -> int:
        """Step until there is nothing to do; while backing off, wait (or `advance` an injected clock).
        Returns the number of steps. Stops short, with `stopped` saying why, when nothing can move without a
        person (a refusal, an untrusted FDMS certificate, a blocked or failed close) or when `max_wait`
        seconds pass without anything delivered."""
        self.stopped = None
        moved = self.clock.now()
        for steps in range(1, max_steps + 1):
            done = self.step()
            now = self.clock.now()
            if done == BLOCKED:
                self.stopped = self.problem
                return steps
            if done == IDLE:
                self.stopped = self._failed_close()
                return steps
            if done == WAITING and self.box.next_pending() is None and not self.box.unfinished_days():
                self.stopped = self.problem  # only a Ping failed: nothing waits, so nothing to wait for
                return steps
            if done not in (WAITING, CLOSE_PENDING):
                moved = now
                continue
            pause = max(self.not_before - now, 0.05)
            if max_wait is not None:
                left = moved + max_wait - now
                if left <= 0:
                    self.stopped = self._gave_up(max_wait)
                    return steps
                pause = min(pause, left)
            if advance is not None:
                advance(pause)
            else:
                self.sleep(pause)
        raise RuntimeError("delivery did not settle")

    def _failed_close(self) -> dict[str, Any] | None:
        """A day FDMS could not close: nothing of it moves until a person closes it again."""
        for day in self.box.unfinished_days():
            if day["status"] == CLOSE_FAILED:
                return {
                    "code": "BOX_CLOSE_FAILED",
                    "message": f"FDMS could not close day {day['day_no']} ({day['closing_error']}): close "
                    "the day again; if it fails again, ask ZIMRA to close it in the FDMS portal.",
                    "field": None,
                    "needs_person": True,
                }
        return None

    def _gave_up(self, seconds: float) -> dict[str, Any]:
        waited = f"Nothing was delivered for {seconds:g} s, so delivery stopped; what waits stays queued."
        if self.problem is not None:
            return {**self.problem, "message": f"{self.problem['message']} {waited}"}
        return {
            "code": "BOX_CLOSE_PENDING",
            "message": f"FDMS has not finished processing the day's close. {waited}",
            "field": None,
            "needs_person": False,
        }

    def run(self, stop: threading.Event, idle_seconds: float = 1.0) -> None:
        """The box's delivery thread: step until `stop` is set."""
        while not stop.is_set():
            done = self.step()
            if done in (IDLE, WAITING, BLOCKED, CLOSE_PENDING):
                pause = idle_seconds if done == IDLE else max(self.not_before - self.clock.now(), 0.05)
                stop.wait(min(pause, idle_seconds * 10))

    def _back_off(self, error: FiscalError, retry_after: float | None, needs_person: bool) -> None:
        self.failures += 1
        delay = min(self.backoff_max, self.backoff_base * 2 ** min(self.failures - 1, 16))
        delay *= 0.5 + self.rng.random()  # jitter: a shop full of boxes does not retry in step
        if retry_after is not None:
            delay = max(delay, retry_after)
        self.not_before = self.clock.now() + delay
        now = self.box.now_local()
        previous = self.problem or {}
        self._set_problem(
            {
                **error.as_dict(),
                "since": previous.get("since") if previous.get("code") == error.code else now,
                "next_attempt": localtime.format_seconds(localtime.seconds(now) + math.ceil(delay)),
                "retry_in_seconds": round(delay, 1),
                "attempts": self.failures,
                "needs_person": needs_person,
            }
        )
        log.info("delivery.backoff", extra={"fields": {"code": error.code, "seconds": round(delay, 1)}})

    def _set_problem(self, problem: dict[str, Any] | None) -> None:
        """The problem now, kept for `status` in the state file (written only when there is something to
        say or to clear), and told to `on_problem` when its code or sentence changes."""
        before = self.problem or {}
        self.problem = problem
        if self.state_file is not None and (problem is not None or self._file_has_problem):
            record = {"problem": problem, "updated": self.box.now_local(), "pid": os.getpid()}
            try:
                write_atomically(self.state_file, json.dumps(record).encode())
                self._file_has_problem = problem is not None
            except OSError as error:  # a status file must never stop delivery
                log.warning("delivery.state_file", extra={"fields": {"error": str(error)}})
        now = problem or {}
        if self.on_problem is not None and (now.get("code"), now.get("message")) != (
            before.get("code"),
            before.get("message"),
        ):
            self.on_problem(problem)

    def state(self) -> dict[str, Any]:
        """For status(): the last problem, the clock skew FDMS's Date header shows, and what is pending."""
        return {
            "problem": self.problem,
            "clock_skew_seconds": None if self.client.clock_skew is None else round(self.client.clock_skew),
            "last_ping": self.last_ping_at,
            "sent": self.sent,
        }

    # -----------------------------------------------------------------------------------------------------
    # The work, in FDMS's order

    def _work(self) -> str:
        self.box.require_sound_journal()  # nothing goes to FDMS from a journal that failed its check
        if self._renewal_due():
            self.box.renew_certificate()
            return RENEWED
        if self.box.operating_mode() == "Offline":
            return self._offline()
        # The days before the receipt: a day seen closing then has all its receipts visible, so its close
        # never overtakes one.
        days = self.box.unfinished_days()
        pending = self.box.next_pending()
        for day in days:
            return self._work_on_day(day, pending)
        return self._ping_if_due()

    def _work_on_day(self, day: dict[str, Any], pending: dict[str, Any] | None) -> str:
        day_no = day["day_no"]
        if day["open_sent_at"] is None:
            return self._open(day)
        if pending is not None and pending["day_no"] == day_no:
            return self._send(pending)
        if day["status"] in (OPENED, CLOSE_FAILED):
            return self._ping_if_due()
        if day["status"] == CLOSE_INITIATED:
            return self._close(day)
        return IDLE

    def _open(self, day: dict[str, Any]) -> str:
        try:
            answer = self.client.open_day(day["opened"], day["day_no"])
        except FdmsError as error:
            if error.code != "FISC01":
                raise
            # FISC01: FDMS has a day open already: this one, when an earlier answer was lost.
            status = self.client.get_status().body
            if not (
                status.get("lastFiscalDayNo") == day["day_no"]
                and status.get("fiscalDayStatus") != "FiscalDayClosed"
            ):
                raise FiscalError(
                    "FISC01",
                    f"FDMS will not open day {day['day_no']}: its last day is "
                    f"{status.get('lastFiscalDayNo')} ({status.get('fiscalDayStatus')}). "
                    "Ask ZIMRA to close the day in its portal.",
                ) from None
        else:
            if answer.body.get("fiscalDayNo") not in (None, day["day_no"]):
                raise FiscalError(
                    "BOX_FDMS_DAY",
                    f"FDMS opened day {answer.body['fiscalDayNo']} where the box opened {day['day_no']}.",
                )
        self.box.mark_open_sent(day["day_no"])
        return OPENED_DAY

    def _send(self, pending: dict[str, Any]) -> str:
        global_no = pending["global_no"]
        self.attempts[global_no] = self.attempts.get(global_no, 0) + 1
        answer = self.client.submit_receipt(pending["body"]).body
        errors = [
            {
                "code": e.get("validationErrorCode"),
                "colour": e.get("validationErrorColor"),
                "message": e.get("validationErrorDescription"),
            }
            for e in answer.get("validationErrors") or []
        ]
        server_signature = answer.get("receiptServerSignature") or {}
        receipt_id = int(answer["receiptID"])
        server_date = str(answer["serverDate"])
        text = fdms.receipt_server_string(pending["signature"], receipt_id, server_date)
        finding = self._check_signature(f"receipt {global_no}", text, server_signature)
        if finding is not None:
            errors.append(finding)
        self.box.record_delivery(
            global_no,
            self.attempts.pop(global_no),
            receipt_id=receipt_id,
            server_date=server_date,
            server_signature=server_signature,
            errors=errors,
        )
        self.sent += 1
        return SENT

    def _close(self, day: dict[str, Any]) -> str:
        """CloseDay once every receipt of the day is delivered, then follow GetStatus to its end."""
        day_no = day["day_no"]
        blockers = [f for f in self.box.delivery_findings(day_no) if any(map(blocks_close, f["errors"]))]
        if blockers:
            first = blockers[0]
            error = next(e for e in first["errors"] if blocks_close(e))
            raise FiscalError(
                "BOX_CLOSE_BLOCKED",
                f"Day {day_no} cannot be closed by the box: FDMS flagged receipt "
                f"{first['global_no']} {error['colour']} ({error['code']}: {error['message']}). "
                "Only ZIMRA can close this day: ask for a manual close in the FDMS portal.",
            )
        status = self.client.get_status().body
        state = status.get("fiscalDayStatus")
        same_day = status.get("lastFiscalDayNo") == day_no
        if same_day and state == "FiscalDayClosed":
            return self._closed(day, status)
        attempt = (day_no, day["close_requested_at"])
        if same_day and state == "FiscalDayCloseInitiated":
            # FDMS closes asynchronously: poll again, less often the longer it takes.
            polls = self.polls[attempt] = self.polls.get(attempt, 0) + 1
            self.not_before = self.clock.now() + min(POLL_MAX, 2.0 ** (polls - 1))
            return CLOSE_PENDING
        if same_day and attempt in self.close_sent:
            # FDMS took the close and the day is not closed, in whatever words: the close did not happen.
            return self._close_not_made(day, attempt, status)
        # Sent again after a restart even if it went before: FDMS takes a close any number of times.
        self.client.close_day(day["close_request"])
        self.close_sent.add(attempt)
        self.polls.pop(attempt, None)
        self.not_before = self.clock.now() + 0.2
        return CLOSE_SENT

    def _close_not_made(self, day: dict[str, Any], attempt: tuple[int, str], status: dict[str, Any]) -> str:
        """FDMS answered a close it took with a failure (FiscalDayCloseFailed, or FiscalDayOpened with a
        fiscalDayClosingErrorCode, or neither): sent again under the back-off, `close_attempts` times in
        all; then recorded with FDMS's code for a person to close again. Never a loop."""
        day_no = day["day_no"]
        code = str(status.get("fiscalDayClosingErrorCode") or "BOX_CLOSE_NOT_TAKEN")
        failures = self.close_failures[attempt] = self.close_failures.get(attempt, 0) + 1
        self.close_sent.discard(attempt)
        fields = {"day_no": day_no, "status": status.get("fiscalDayStatus"), "code": code}
        fields["attempt"] = failures
        log.warning("delivery.close_failed", extra={"fields": fields})
        said = f"FDMS did not close day {day_no}: it answered {status.get('fiscalDayStatus')} ({code})"
        if failures < self.close_attempts:
            raise RetryLater(
                "BOX_CLOSE_FAILED",
                f"{said}, attempt {failures} of {self.close_attempts}; the box sends the close again soon.",
            )
        self.box.record_close(day_no, CLOSE_FAILED, closing_error=code)
        raise FiscalError(
            "BOX_CLOSE_FAILED",
            f"{said} after {failures} attempts. Check the day (`fiscalbox-device status`), then close it "
            "again; if it fails again, ask ZIMRA to close it in the FDMS portal.",
        )

    def _closed(self, day: dict[str, Any], status: dict[str, Any]) -> str:
        signature = status.get("fiscalDayServerSignature") or {}
        request = json.loads(day["close_request"], parse_float=str)
        closed_at = str(status.get("fiscalDayClosed") or "")
        mode = str(status.get("fiscalDayReconciliationMode") or "Auto")
        counters = fdms.day_counters(fdms.parse_counters(request["fiscalDayCounters"]))
        text = fdms.day_server_string(
            self.box.device_id,
            day["day_no"],
            day["opened"][:10],
            closed_at,
            mode,
            counters,
            day["close_signature"],
        )
        values: dict[str, Any] = {"closed_at": closed_at, "server_signature": json.dumps(signature)}
        # A Manual close is signed over FDMS's own counters, which the box does not have: only its presence
        # is checked.
        finding = self._check_signature(
            f"the close of day {day['day_no']}", text, signature, verify=mode.upper() == "AUTO"
        )
        if finding is not None:
            values["closing_error"] = finding["code"]
        self.box.record_close(day["day_no"], CLOSED, **values)
        return DAY_CLOSED

    def _close_failed(self, day: dict[str, Any], status: dict[str, Any]) -> str:
        code = status.get("fiscalDayClosingErrorCode") or "InternalError"
        self.box.record_close(day["day_no"], CLOSE_FAILED, closing_error=code)
        raise FiscalError(
            "BOX_CLOSE_FAILED",
            f"FDMS could not close day {day['day_no']}: {code}. Check the day "
            "(`fiscalbox-device status`), then close it again.",
        )

    # -----------------------------------------------------------------------------------------------------
    # Offline mode: a closed day goes as SubmitFile files, followed through SubmittedFileList

    def _offline(self) -> str:
        for day in self.box.unfinished_days():
            if day["status"] != CLOSE_INITIATED:
                return IDLE  # an offline device reports a day only once it is closed
            return self._offline_day(day)
        return IDLE

    def _offline_day(self, day: dict[str, Any]) -> str:
        day_no = day["day_no"]
        sent = {f["sequence"]: f for f in self.box.sent_files(day_no)}
        if not any(f["has_footer"] for f in sent.values()):  # the footer goes last: once sent, all are
            for item in self.box.day_files(day_no):
                if item["sequence"] not in sent:
                    answer = self.client.submit_file(item["body"])
                    self.box.record_file(day_no, item, answer.operation_id or answer.body.get("operationID"))
                    return SENT
        # A day either side, in full date-times: FDMS's clock, not the box's, dates the uploads.
        since = localtime.add_hours(day["opened"][:10] + "T00:00:00", -24)
        till = localtime.add_hours(self.box.now_local(), 24)
        listing = self.client.submitted_file_list(since, till).body
        rows = [r for r in listing.get("rows") or [] if r.get("dayNo") == day_no]
        by_sequence = {r.get("fileSequence"): r for r in rows}
        last = max(sent)
        for sequence, record in sent.items():
            row = by_sequence.get(sequence)
            if row is None:
                continue
            status = str(row.get("fileProcessingStatus") or "")
            if status != record["status"]:
                self.box.update_file(day_no, sequence, status, row.get("fileProcessingError"))
        final = by_sequence.get(last) or {}
        outcome = final.get("fileProcessingStatus")
        if outcome in ("FileProcessingIsSuccessful", "CompleteSuccessful"):
            self.box.record_close(day_no, CLOSED, closed_at=str(final.get("fileProcessingDate") or ""))
            return DAY_CLOSED
        if outcome in ("FileProcessingWithErrors", "FailedWithErrors"):
            code = str(final.get("fileProcessingError") or "IncorrectFileFormat")
            return self._close_failed(day, {"fiscalDayClosingErrorCode": code})
        self.not_before = self.clock.now() + 1.0
        return CLOSE_PENDING

    # -----------------------------------------------------------------------------------------------------
    # Ping, renewal, FDMS's signatures

    def _ping_if_due(self) -> str:
        now = self.clock.now()
        if self.last_ping is not None and now - self.last_ping < self.reporting_frequency * 60:
            return IDLE
        answer = self.client.ping().body
        self.last_ping = now
        self.last_ping_at = self.box.now_local()
        frequency = answer.get("reportingFrequency")
        if isinstance(frequency, int) and frequency > 0:
            self.reporting_frequency = frequency
        return PINGED

    def _renewal_due(self) -> bool:
        """Due within `renew_days_before` days of certificateValidTill, and only once nothing signed with the
        current key waits for FDMS: FDMS checks a receipt and a close with the certificate it holds when they
        arrive, so what the old key signed goes before the key changes."""
        till = self.box.certificate_valid_till()
        if not till:
            return False
        left = localtime.seconds(str(till)[:19]) - localtime.seconds(self.box.now_local())
        return left < self.renew_days_before * 86400 and self.box.renewal_waits_for() is None

    def _check_signature(
        self, what: str, text: str, signature: dict[str, Any], verify: bool = True
    ) -> dict[str, Any] | None:
        """The box's own finding on FDMS's signature over `what`, logged; None when it verifies."""
        if not signature or not signature.get("signature"):
            code = "BOX_SERVER_SIGNATURE_MISSING"
        elif verify and not self._server_signed(text, signature):
            code = "BOX_SERVER_SIGNATURE"
        else:
            return None
        log.warning("delivery.server_signature", extra={"fields": {"what": what, "code": code}})
        return signature_finding(code, what)

    def _server_signed(self, text: str, signature: dict[str, Any]) -> bool:
        """FDMS's hash and signature over `text`, checked with its certificate (fetched once a thumbprint)."""
        if signature.get("hash") != fdms.hash_b64(text):
            return False
        thumbprint = str(signature.get("certificateThumbprint") or "").lower()
        key = self.server_keys.get(thumbprint)
        if key is None:
            try:
                chain = self.client.get_server_certificate(thumbprint or None).body.get("certificate") or []
            except FdmsError:  # FDMS does not know the certificate its signature names
                return False
            pem = chain[0] if isinstance(chain, list) and chain else chain
            if not isinstance(pem, str) or not pem:
                return False
            key = self.server_keys[thumbprint] = load_public_key(pem.encode())
        try:
            raw = fdms.unb64(str(signature.get("signature") or ""))
        except FiscalError:
            return False
        return verify_signature(key, text.encode(), raw)


__all__ = ["Delivery", "blocks_close", "is_box_finding", "read_state", "signature_finding", "state_path"]
