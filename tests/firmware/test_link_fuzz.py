"""No frame crashes the box or changes its state (issue 11, "Bad input on the link"): 100,000 fuzzed inputs of
every kind through the framer and Link.handle of a real Device, and a sample over a pty to the serve loop.

Each input is followed by a good echo frame on the same line, which must be answered: the link resynchronises
after every kind of noise. bench/link_fuzz.py runs the same fuzzer over a million inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from box_rig import sale
from fuzz_rig import DROPPED, UNANSWERED, Report, Target, fuzz_in_process, fuzz_over_pty

IN_PROCESS = 100_000
OVER_PTY = 2_400
FRAMING = ("truncated", "bad CRC", "bad base64", "oversized length", "line noise")
SIGNED = {
    # a first operator enroll's body is checked (BOX_LINK_SCHEMA) before its key, which it holds, is used
    "bad signature": {
        "BOX_LINK_SIGNATURE", "BOX_LINK_UNKNOWN_KEY", "BOX_LINK_FRAME", "BOX_LINK_ENROLL", "BOX_LINK_SCHEMA"
    },
    "replay": {"BOX_LINK_NONCE", "BOX_LINK_OP", "BOX_LINK_ROLE", "BOX_LINK_SCHEMA", "ok (repeated)"},
    # a number beyond 64 bits (2**70) is no CBOR integer: refused with the frame (BOX_LINK_FRAME)
    "signed, wrong body": {"BOX_LINK_SCHEMA", "BOX_LINK_ENROLL", "BOX_LINK_FRAME"},
}
# Compressed bodies (docs/link.md section 4) that do not inflate to a COSE_Sign1 within a frame's 16 KB.
COMPRESSED = ("zip bomb", "truncated deflate", "garbage deflate", "compressed, not COSE")
KINDS = 17


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    made = Target(tmp_path / "box")
    yield made
    made.close()


def check(report: Report, dropped: str) -> None:
    print(report.table(f"{report.total} inputs, {report.seconds:.1f} s"))
    assert report.crashes == []
    assert report.resync_failures == [] and report.resynced == report.total
    assert len(report.inputs) == KINDS and min(report.inputs.values()) >= report.total // KINDS
    for kind in FRAMING:
        assert set(report.answers[kind]) == {dropped}, (kind, report.answers[kind])
    for kind, codes in SIGNED.items():
        assert set(report.answers[kind]) <= codes, (kind, report.answers[kind])
    for kind in COMPRESSED:
        assert set(report.answers[kind]) == {"BOX_LINK_FRAME"}, (kind, report.answers[kind])
    for kind, answered in report.answers.items():
        assert "BOX_INTERNAL" not in answered, (kind, answered)
    assert set(report.answers["replay"]) == SIGNED["replay"] or report.total < 1000


def test_a_hundred_thousand_fuzzed_inputs_crash_nothing_change_nothing(target: Target) -> None:
    before = target.state()
    report = fuzz_in_process(target, IN_PROCESS, seed=11)
    assert target.state() == before
    check(report, DROPPED)
    assert report.total == IN_PROCESS
    # What each kind reaches: the framer drops the broken packets, SMP refuses what is not a map or a
    # command, the fiscal checks refuse the rest in their order.
    assert report.answers["garbage CBOR"].most_common(1)[0][0] == "SMP rc 3"
    assert report.answers["right CBOR, wrong shape"]["BOX_LINK_FRAME"] > 0
    assert report.answers["wrong header"]["SMP rc 8"] > 0 and report.answers["wrong header"]["no answer"] > 0
    assert report.answers["deeply nested CBOR"]["BOX_LINK_FRAME"] > 0
    assert report.answers["bad signature"]["BOX_LINK_SIGNATURE"] > 0
    assert report.answers["signed, wrong body"]["BOX_LINK_SCHEMA"] > 0
    # The digest does see a change: a good sale afterwards moves it.
    answer = target.pos.send(64, 6, {"req": target.pos.signed("issue", {"sale": sale("9.20")}, rid="after")})
    assert "cose" in answer and target.state() != before


def test_a_sample_over_a_pty_to_the_running_serve_loop(target: Target) -> None:
    before = target.state()
    report = fuzz_over_pty(target, OVER_PTY, seed=12)
    assert target.state() == before
    check(report, UNANSWERED)
