"""Helpers of the link's tests: what a journal holds, as one digest (a refusal must leave it unchanged)."""

from __future__ import annotations

import hashlib

from firmware.journal import Journal


def journal_digest(journal: Journal) -> str:
    """SHA-256 over every row of every table, in order: equal digests mean nothing was written."""
    digest = hashlib.sha256()
    tables = journal.db.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
    for (table,) in list(tables):
        digest.update(table.encode())
        for row in journal.db.execute(f"SELECT * FROM {table} ORDER BY 1"):
            digest.update(repr(row).encode())
    return digest.hexdigest()
