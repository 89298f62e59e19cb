from core_support import raises

from firmware.core import localtime


def test_seconds_and_back():
    for text in ("1970-01-01T00:00:00", "2024-02-29T23:59:59", "2026-12-31T12:00:00", "2000-03-01T00:00:01"):
        assert localtime.format_seconds(localtime.seconds(text)) == text
    assert localtime.seconds("1970-01-02T00:00:00") == 86400


def test_add_hours_crosses_days_and_months():
    assert localtime.add_hours("2026-02-28T20:00:00", 24) == "2026-03-01T20:00:00"
    assert localtime.add_hours("2024-02-28T20:00:00", 24) == "2024-02-29T20:00:00"
    assert localtime.add_hours("2026-12-31T23:00:00", 2) == "2027-01-01T01:00:00"


def test_months_before_clamps():
    assert localtime.months_before("2026-03-31T10:00:00", 1) == "2026-02-28T10:00:00"
    assert localtime.months_before("2026-09-08T08:00:00", 12) == "2025-09-08T08:00:00"


def test_refuses_other_shapes():
    for bad in (
        "2026-09-08 08:00:00",
        "2026-09-08T08:00",
        "2026-13-01T00:00:00",
        "2026-02-30T00:00:00",
        "2026-09-08T24:00:00",
        "2026-09-08T08:00:00Z",
        "",
        None,
    ):
        raises("BOX_BAD_DATE", localtime.parse, bad)


def test_refuses_non_ascii_digits():
    raises("BOX_BAD_DATE", localtime.parse, "\u00b2024-01-01T10:00:00")
    raises("BOX_BAD_DATE", localtime.parse, "2024-01-01T1\u0660:00:00")
