from core_support import raises

from firmware.core import money, wire


def test_parse_amounts_exactly():
    cases = [
        ("19.99", 1999),
        ("1.15", 115),
        ("0.29", 29),
        ("-9450.00", -945000),
        ("0.05", 5),
        ("12.3", 1230),
        (".5", 50),
        ("+7", 700),
        ("-0.00", 0),
        (500, 50000),
        (0, 0),
        ("1.230", 123),
    ]
    for text, cents in cases:
        assert money.amount(text) == cents, text


def test_parse_refuses_inexact_or_malformed():
    for bad in ("12.345", "1e3", "", "-", "12,34", "1.2.3", " ", "abc", "0x10"):
        raises("BOX_BAD_NUMBER", money.amount, bad)
    raises("BOX_BAD_NUMBER", money.amount, 1.5)
    raises("BOX_BAD_NUMBER", money.amount, True)
    raises("BOX_BAD_NUMBER", money.amount, None)


def test_error_names_the_field():
    error = raises("BOX_BAD_NUMBER", money.amount, "1.001", "receiptTotal")
    assert error.field == "receiptTotal"


def test_quantities_prices_percents():
    assert money.quantity("0.125") == 125000
    assert money.quantity("3") == 3000000
    assert money.price("3.335") == 3335000
    assert money.percent("15.5") == 1550
    assert money.percent(15) == 1500
    raises("BOX_BAD_NUMBER", money.quantity, "0.0000001")


def test_format_round_trips():
    for units in (0, 5, -5, 1999, -945000, 100, 123456789):
        assert money.amount(money.format_fixed(units, 2)) == units
    assert money.format_fixed(-5, 2) == "-0.05"
    assert money.format_fixed(1550, 2) == "15.50"
    assert money.format_short(1500000, 6) == "1.5"
    assert money.format_short(2000000, 6) == "2"


def test_half_up_away_from_zero():
    assert money.div_half_up(5, 2) == 3
    assert money.div_half_up(-5, 2) == -3
    assert money.div_half_up(4, 3) == 1
    assert money.div_half_up(-4, 3) == -1
    assert money.div_half_up(7, -2) == -4
    assert money.div_half_up(0, 9) == 0


def test_line_total_rounds_once():
    assert money.line_total(money.price("1.15"), money.quantity("3")) == 345
    assert money.line_total(money.price("0.333333"), money.quantity("3")) == 100
    assert money.line_total(money.price("1.00"), money.quantity("0.125")) == 13
    assert money.line_total(money.price("-1.00"), money.quantity("0.125")) == -13
    assert money.line_total(money.price("19.99"), money.quantity("1")) == 1999


def test_percent_text_for_signatures():
    assert money.percent_text(1500) == "15.00"
    assert money.percent_text(1450) == "14.50"
    assert money.percent_text(0) == "0.00"
    assert money.percent_text(None) == ""


def test_exact_json_numbers():
    text = wire.dumps(
        {"b": money.cents(-5), "a": [money.micros(1500000), money.hundredths(0), None, True, 'x"y']}
    )
    assert text == '{"a":[1.5,0.00,null,true,"x\\"y"],"b":-0.05}'
    assert wire.dumps({"name": "Caf\u00e9\n"}) == '{"name":"Caf\u00e9\\n"}'


def test_only_ascii_digits_and_sane_sizes():
    for bad in ("\u00b2", "1\u00b2.00", "\u0663.50", "12.\u0665"):
        raises("BOX_BAD_NUMBER", money.amount, bad)
    raises("BOX_BAD_NUMBER", money.amount, "9" * 20)
    raises("BOX_BAD_NUMBER", money.amount, "9" * 5000)
    assert money.amount("9" * 19) == int("9" * 19) * 100
    assert money.amount("-" + "0" * 25 + "1.5") == -150
    # A JSON integer is held to the same 19 digits as a decimal string (FDMS: 400, not a sale).
    assert money.quantity(10**19 - 1) == (10**19 - 1) * 10**6
    raises("BOX_BAD_NUMBER", money.quantity, 10**19)
    raises("BOX_BAD_NUMBER", money.amount, -(10**30))
