"""Checks a link message against its rule in firmware/link.cddl (pycddl), refusing with BOX_LINK_SCHEMA.

pycddl 0.6.4 leaves a map open when none of its keys is required (`{}` and `{? "limit": uint}` accept any
key), and a `* tstr => any` map beside a required key wants at least one entry. So the rules are compiled with
one required key "@" added to every map, and the message checked with "@" added to every map it holds: then
every map is closed, as the CDDL says. No link message has a key "@"; one that does is refused. (Its controls
checked without their base type are handled in link.cddl itself.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import cbor2
import pycddl

from firmware.core.errors import FiscalError

SOURCE = Path(__file__).with_name("link.cddl")
MARK = "@"
_RULE = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\s*=", re.M)
_STEP = re.compile(r'/"((?:[^"\\]|\\.)*)"|/(-?\d+)')
_KEY = re.compile(r'Text\("((?:[^"\\]|\\.)*)"\)|Integer\(Integer\((-?\d+)\)\)')
_TYPES = {
    "uint": "a whole number, 0 or more",
    "int": "a whole number",
    "nint": "a negative whole number",
    "tstr": "text",
    "text": "text",
    "bstr": "a byte string",
    "bytes": "a byte string",
    "bool": "true or false",
    "map": "a map",
    "array": "a list",
}

_MESSAGES = {"signed", "request", "answer", "outcome", "error", "identity", "rid", "nonce_ok"}

_SOURCE_TEXT = SOURCE.read_text(encoding="utf-8")
_schemas: dict[str, Any] = {}


def _closed(source: str) -> str:
    """The CDDL with a required `"@": 0` entry opening every map; strings and comments left as they are."""
    out = []
    in_string = False
    in_comment = False
    escaped = False
    for ch in source:
        out.append(ch)
        if in_comment:
            in_comment = ch != "\n"
        elif in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == ";":
            in_comment = True
        elif ch == "{":
            out.append('"%s": 0, ' % MARK)
    return "".join(out)


def _rule_texts(source: str) -> dict[str, str]:
    """Each rule's text (from its `name =` to the next rule), comments removed, by name."""
    plain = re.sub(r'("(?:[^"\\]|\\.)*")|;[^\n]*', lambda m: m.group(1) or "", source)
    starts = list(_RULE.finditer(plain))
    ends = [m.start() for m in starts[1:]] + [len(plain)]
    return {m.group(1): plain[m.start() : end].strip() for m, end in zip(starts, ends, strict=True)}


_RULES = _rule_texts(_SOURCE_TEXT)

# The fields a rule gives as `{* tstr => any}` (issue's sale, request's body): pycddl looks at that map's keys
# only, never at their values, so the values reach it as null. The verdict is the same, and the whole sale is
# not encoded and walked by pycddl again (about half of a sale's check); `_marked` still walks all of it.
_OPAQUE = {
    name: tuple(re.findall(r'"([^"]+)"\s*:\s*\{\s*\*\s*tstr\s*=>\s*any\s*\}', text))
    for name, text in _RULES.items()
}


def rules() -> list[str]:
    """The names of the rules in link.cddl, in order."""
    return list(_RULES)


def _needed(name: str) -> list[str]:
    """`name` and every rule it names, directly or not, in file order."""
    seen = {name}
    todo = [name]
    while todo:
        text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', _RULES[todo.pop()].split("=", 1)[1])
        for word in re.findall(r"[A-Za-z_][A-Za-z0-9_-]*", text):
            if word in _RULES and word not in seen:
                seen.add(word)
                todo.append(word)
    return [rule for rule in _RULES if rule in seen]


def _schema(name: str) -> Any:
    """The compiled rule, with only the rules it uses: pycddl's check costs with the size of the whole
    schema (21 us against 2 us for a small message), so each rule is compiled apart."""
    schema = _schemas.get(name)
    if schema is None:
        if name not in _RULES:
            raise FiscalError("BOX_LINK_SCHEMA", "The link has no message called %s." % name)
        text = "\n".join(_RULES[rule] for rule in _needed(name))
        schema = pycddl.Schema("root = %s\n%s" % (name, _closed(text)))
        _schemas[name] = schema
    return schema


class _Marked(Exception):
    """What the message holds that pycddl must not see; `path` is where, built on the way out."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


_PLAIN = {str, bytes, bool, float, type(None)}  # values taken as they are (exact types: a bool is no int)


class _Uncarried(Exception):
    """A value CBOR cannot carry (only a caller in Python can hand one over)."""


def _marked(value: Any) -> Any:
    """The message with "@": 0 added to every map (the path is only spelt out for a refusal). A number
    beyond 64 bits is refused here: CBOR carries it as a tagged byte string, pycddl's bytes (or bool).
    It walks every item of a sale, so plain values are taken without a call."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is int:
        if not -(2**64) <= value < 2**64:
            raise _Marked("a number beyond 64 bits", "")
        return value
    if isinstance(value, dict):
        if MARK in value:
            raise _Marked("a field called %s" % MARK, MARK)
        out: dict[Any, Any] = {MARK: 0}
        for key, item in value.items():
            try:
                out[key] = item if type(item) in _PLAIN else _marked(item)
            except _Marked as marked:
                marked.path = _under(str(key), marked.path)
                raise
        return out
    if isinstance(value, (list, tuple)):
        items = []
        for at, item in enumerate(value):
            try:
                items.append(item if type(item) in _PLAIN else _marked(item))
            except _Marked as marked:
                marked.path = _under("[%d]" % at, marked.path)
                raise
        return items
    try:
        cbor2.dumps(value)  # what pycddl may not be shown (a value under `any`) must still be CBOR
    except Exception:
        raise _Uncarried() from None
    return value


def _under(step: str, path: str) -> str:
    return step + path if path.startswith("[") or not path else step + "." + path


def _join(where: str, key: str) -> str:
    return key if not where else where + "." + key


def _field(location: str) -> str:
    where = ""
    for key, index in _STEP.findall(location):
        where = _join(where, key) if not index else "%s[%s]" % (where, index)
    return where


def _refusal(name: str, text: str) -> FiscalError:
    """pycddl's error text as a sentence, and the field it names (a.b[2].c), when it names one."""
    what = ("The %s message" if name in _MESSAGES else "The %s request") % name
    found = []
    for line in text.splitlines():
        match = re.search(r"cbor location ([^:]*):\s*(.*)$", line)
        if match:
            found.append((_field(match.group(1)), match.group(2)))
    if not found:
        return FiscalError("BOX_LINK_SCHEMA", "%s is not as docs/link.md describes it." % what)
    for where, detail in found:
        missing = re.search(r'missing key: ""(.*)""', detail)
        if missing:
            field = _join(where, missing.group(1))
            return FiscalError("BOX_LINK_SCHEMA", "%s lacks %s; see docs/link.md." % (what, field), field)
        unexpected = _KEY.search(detail) if "unexpected key" in detail else None
        if unexpected:
            field = _join(where, unexpected.group(1) or unexpected.group(2))
            return FiscalError("BOX_LINK_SCHEMA", "%s has a field the box does not know: %s." % (what, field),
                               field)
    for where, detail in found:
        typed = re.search(r"expected type (\w+)", detail)
        if typed and typed.group(1) in _TYPES:
            return _bad(what, where, "must be " + _TYPES[typed.group(1)])
    where, detail = found[0]
    container = re.search(r"got (Map|Array)\(", detail)
    if container:
        return _bad(what, where, "is a %s where docs/link.md has none" % ("map" if container.group(1) == "Map"
                                                                          else "list"))
    bound = re.search(r"expected (?:value \.le )?(\d+), got", detail)
    if bound:
        return _bad(what, where, "must be at most " + bound.group(1))
    choices = [line for at, line in found if at == where]
    values = [value for line in choices for value in re.findall(r"expected value (\S+) got", line)]
    if values:
        return _bad(what, where, "must be one of " + ", ".join(values))
    if "regex" in detail or ".size" in detail or "length" in detail:
        return _bad(what, where, "has a length or characters docs/link.md does not allow")
    if "array" in detail or "map requires" in detail or "key of type" in detail:
        return _bad(what, where, "must be a map with text keys")
    return _bad(what, where, "is not what docs/link.md has there")


def _bad(what: str, where: str, complaint: str) -> FiscalError:
    message = "%s: %s %s." % (what, where or "its body", complaint)
    return FiscalError("BOX_LINK_SCHEMA", message, where or None)


def check(name: str, body: object) -> None:
    """Refuse `body` unless it matches rule `name` of link.cddl: BOX_LINK_SCHEMA, with the field."""
    schema = _schema(name)
    try:
        marked = _marked(body)
        if type(marked) is dict:
            for key in _OPAQUE.get(name, ()):
                inner = marked.get(key)
                if type(inner) is dict:
                    marked[key] = {item: 0 if item == MARK else None for item in inner}
        data = cbor2.dumps(marked)
    except _Marked as marked:
        message = "No link message has %s%s." % (marked.message, " (%s)" % marked.path if marked.path else "")
        raise FiscalError("BOX_LINK_SCHEMA", message, marked.path or None) from None
    except Exception:  # _Uncarried, or a key CBOR cannot carry
        message = "The %s request holds a value CBOR cannot carry." % name
        raise FiscalError("BOX_LINK_SCHEMA", message) from None
    try:
        schema.validate_cbor(data)
    except pycddl.ValidationError as error:
        raise _refusal(name, str(error)) from None
    except BaseException as error:  # pycddl's Rust panics (PanicException is no Exception): never past here
        if type(error).__name__ != "PanicException":
            raise
        message = "The box could not check the %s request against docs/link.md; it was refused." % name
        raise FiscalError("BOX_LINK_SCHEMA", message) from None
