"""An audit of a tampered journal over the link (docs/link.md section 7): the job answer carries the first
problems that fit a frame, with their total, and `fiscalbox audit` shows them and says how to see the rest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from box_rig import sale
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from link_rig import Host, Served, StandIn

from firmware.box import Box
from firmware.hosts import HostKeys
from firmware.link import Link
from host_tools.cli import main

AT = "2026-11-22T08:00:00"
TAMPERED = 100


@pytest.fixture
def tampered(box: Box, tmp_path: Path) -> Iterator[tuple[Link, Host]]:
    """A box whose journal has the signatures of 100 receipts overwritten, and an operator on its link."""
    for _ in range(TAMPERED):
        box.issue(sale())
    box.journal.db.execute("UPDATE receipts SET signature = 'AAAA' || signature")
    link = Link(StandIn(box, tmp_path), HostKeys(tmp_path / "hosts.json"))
    operator = Host(link)
    link.hosts.enroll(operator.der, "operator", "office", AT)
    yield link, operator
    link.join_jobs()
    link.close()


def test_a_tampered_journal_audit_is_read_over_the_link_capped(tampered: tuple[Link, Host]) -> None:
    link, operator = tampered
    job = operator.result("audit")["job"]
    link.join_jobs()
    answer = operator.result("job", {"job": job})  # before: BOX_INTERNAL, larger than a frame
    result = answer["state"] == "done" and answer["result"]
    assert result and result["clean"] is False
    assert result["problems_total"] >= TAMPERED and result["problems_truncated"] is True
    assert 0 < len(result["problems"]) < result["problems_total"]


def test_fiscalbox_audit_shows_a_tampered_journals_findings(
    tampered: tuple[Link, Host], tmp_path: Path
) -> None:
    link, operator = tampered
    key = tmp_path / "operator.pem"
    key.write_bytes(
        operator.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    served = Served(link)
    try:
        result = CliRunner().invoke(main, ["--port", served.slave_path, "--key", str(key), "audit"])
    finally:
        served.close()
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("PROBLEMS FOUND: ")
    assert len([line for line in lines if line.startswith("  ") and ":" in line]) >= 10
    assert "more problems: run `fiscalbox-device audit` on the box" in result.stdout
