"""The journal's own hash chains: one over receipts, one over the audit log.

FDMS's receipt hash covers the amounts and taxes but not the lines, buyer or payments, and restarts every
day. The journal chain covers every stored byte of every receipt row, across days, so that changing any
field of any row breaks a link. The box, the audit and the host tool's export check all compute links here,
so there is one definition of a link.
"""

import hashlib

GENESIS = b"\x00" * 32


def link(previous, fields):
    """SHA-256 over the previous link and each field, length-prefixed so that no two field lists collide."""
    digest = hashlib.sha256(previous)
    for field in fields:
        data = field.encode() if isinstance(field, str) else field
        digest.update(str(len(data)).encode() + b":")
        digest.update(data)
    return digest.digest()


def receipt_link(previous, global_no, day_no, counter, body, receipt_hash, signature):
    """The link of one receipt row: its numbers, the exact JSON sent, the FDMS hash and the signature."""
    return link(previous, [str(global_no), str(day_no), str(counter), body, receipt_hash, signature])


def audit_link(previous, seq, at, event, detail):
    """The link of one audit-log entry: its sequence number, time, event name and detail JSON."""
    return link(previous, [str(seq), at, event, detail])
