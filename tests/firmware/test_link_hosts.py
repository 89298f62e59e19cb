"""The enrolled host keys: P-256 only, written atomically, a damaged file a FiscalError with a code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from firmware.core.errors import FiscalError
from firmware.cose import key_id
from firmware.hosts import HostKeys

AT = "2026-11-22T08:00:00"


def der(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def refused(code: str, call: object, *args: object) -> FiscalError:
    with pytest.raises(FiscalError) as caught:
        call(*args)  # type: ignore[operator]
    assert caught.value.code == code, caught.value
    return caught.value


def test_an_enrolled_key_is_kept_in_the_file_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    hosts = HostKeys(path)
    assert hosts.entries() == [] and not hosts.has_operator()
    key = p256()
    entry = hosts.enroll(der(key), "operator", "Back office PC", AT)
    assert entry["kid"] == key_id(key.public_key()).hex() and entry["role"] == "operator"
    assert entry["revoked_at"] is None and entry["enrolled_at"] == AT
    assert entry["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    again = HostKeys(path)
    assert again.entries() == [entry] and again.has_operator()
    assert again.find(key_id(key.public_key())) == entry
    assert again.public_key(key_id(key.public_key())) == key.public_key()
    assert again.find(b"\0" * 16) is None
    assert [p.name for p in tmp_path.iterdir()] == ["hosts.json"]  # no temporary file left behind


@pytest.mark.parametrize(
    "public_key",
    [
        der(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        der(ec.generate_private_key(ec.SECP384R1())),
        der(ed25519.Ed25519PrivateKey.generate()),
        b"not a key",
        2**62,  # a number is no key (nor bytes(n): n zero bytes)
        None,
    ],
    ids=["rsa", "p384", "ed25519", "garbage", "number", "none"],
)
def test_only_p256_keys_are_enrolled(tmp_path: Path, public_key: bytes) -> None:
    hosts = HostKeys(tmp_path / "hosts.json")
    error = refused("BOX_LINK_KEY", hosts.enroll, public_key, "pos", "till", AT)
    assert error.field == "public_key"
    assert not (tmp_path / "hosts.json").exists() and hosts.entries() == []


@pytest.mark.parametrize(
    ("role", "label", "field"),
    [("admin", "x", "role"), ("pos", "", "label"), ("pos", "a\nb", "label"), ("pos", "x" * 65, "label")],
)
def test_a_bad_role_or_label_is_refused(tmp_path: Path, role: str, label: str, field: str) -> None:
    hosts = HostKeys(tmp_path / "hosts.json")
    assert refused("BOX_LINK_SCHEMA", hosts.enroll, der(p256()), role, label, AT).field == field
    assert hosts.entries() == []


def test_enrolling_again_answers_the_entry_and_another_role_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    hosts = HostKeys(path)
    key = der(p256())
    entry = hosts.enroll(key, "pos", "till 1", AT)
    before = path.read_bytes()
    assert hosts.enroll(key, "pos", "till 1", "2026-11-22T09:00:00") == entry
    refused("BOX_LINK_ENROLL", hosts.enroll, key, "operator", "till 1", AT)
    assert path.read_bytes() == before


def test_a_revoked_key_stays_listed_and_is_never_enrolled_again(tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    hosts = HostKeys(path)
    operator, till = p256(), p256()
    hosts.enroll(der(operator), "operator", "office", AT)
    entry = hosts.enroll(der(till), "pos", "till", AT)
    kid = bytes.fromhex(entry["kid"])
    revoked = hosts.revoke(kid, "2026-11-23T10:00:00")
    assert revoked == {**entry, "revoked_at": "2026-11-23T10:00:00"}
    assert HostKeys(path).find(kid) == revoked
    assert hosts.revoke(kid, "2026-11-24T10:00:00") == revoked  # revoking twice changes nothing
    before = path.read_bytes()
    refused("BOX_LINK_REVOKED", hosts.enroll, der(till), "pos", "till", AT)
    refused("BOX_LINK_UNKNOWN_KEY", hosts.revoke, b"\1" * 16, AT)
    assert path.read_bytes() == before


def test_the_last_operator_key_cannot_be_revoked(tmp_path: Path) -> None:
    hosts = HostKeys(tmp_path / "hosts.json")
    first = bytes.fromhex(hosts.enroll(der(p256()), "operator", "office", AT)["kid"])
    refused("BOX_LINK_LAST_OPERATOR", hosts.revoke, first, AT)
    hosts.enroll(der(p256()), "operator", "laptop", AT)
    assert hosts.revoke(first, AT)["revoked_at"] == AT
    assert hosts.has_operator()


def valid_file(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    path = tmp_path / "hosts.json"
    HostKeys(path).enroll(der(p256()), "operator", "office", AT)
    return path, json.loads(path.read_text())


def damage(path: Path, data: dict[str, object], change: str) -> None:
    entry = data["keys"][0]  # type: ignore[index]
    if change == "kid":
        entry["kid"] = "00" * 16
    elif change == "role":
        entry["role"] = "root"
    elif change == "pem":
        entry["public_key"] = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    elif change == "field":
        del entry["enrolled_at"]
    elif change == "type":
        entry["revoked_at"] = 5
    elif change == "twice":
        data["keys"].append(dict(entry))  # type: ignore[attr-defined]
    elif change == "format":
        data["format"] = 2
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change", ["kid", "role", "pem", "field", "type", "twice", "format"])
def test_a_damaged_entry_is_refused_with_a_code(tmp_path: Path, change: str) -> None:
    path, data = valid_file(tmp_path)
    damage(path, data, change)
    assert "damaged" in refused("BOX_HOSTS", HostKeys, path).message


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"\xff\xfe", b'{"format": 1, "keys": {}}', b"null"])
def test_a_file_that_is_not_the_list_is_refused_with_a_code(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "hosts.json"
    path.write_bytes(content)
    refused("BOX_HOSTS", HostKeys, path)


def test_a_write_that_fails_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    hosts = HostKeys(path)
    path.mkdir()  # the rename onto it fails, as a full or broken medium would
    refused("BOX_HOSTS", hosts.enroll, der(p256()), "operator", "office", AT)
    assert hosts.entries() == [] and not hosts.has_operator()
    assert [p.name for p in tmp_path.iterdir()] == ["hosts.json"]
