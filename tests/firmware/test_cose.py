"""COSE_Sign1 (firmware/cose.py): RFC 9052's own example and the COSE working group's, round trips, tampering,
and hostile CBOR that must come back as BOX_LINK_FRAME, never as a crash."""

import base64
import hashlib
import json
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from firmware import cose
from firmware.core.errors import FiscalError

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "cose.json").read_text())


def _b64url(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def _vector_key() -> ec.EllipticCurvePublicKey:
    key = VECTORS["key"]
    return ec.EllipticCurvePublicNumbers(_b64url(key["x"]), _b64url(key["y"]), ec.SECP256R1()).public_key()


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _refused(code: str, fn, *args) -> FiscalError:
    with pytest.raises(FiscalError) as caught:
        fn(*args)
    assert caught.value.code == code, caught.value
    assert caught.value.message.endswith("."), caught.value.message
    return caught.value


def _signed(key, payload: bytes = b"\xa1ax\x01") -> bytes:
    alg, sign = cose.signer(key)
    return cose.sign1(payload, sign, alg, cose.key_id(key.public_key()))


def _parts(data: bytes) -> list:
    return list(cbor2.loads(data).value)


def _rebuild(parts: list, tag: int = 18) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(tag, parts))


def test_rfc9052_and_cose_wg_examples_verify() -> None:
    """The examples carry their kid unprotected, which the link refuses (it must be signed); the unprotected
    header is outside the Sig_structure, so without it they verify as they are."""
    for case in VECTORS["pass"]:
        protected, unprotected, payload, signature = _parts(bytes.fromhex(case["cbor"]))
        assert dict(unprotected) == {4: b"11"}
        _refused("BOX_LINK_FRAME", cose.decode1, bytes.fromhex(case["cbor"]))
        message = cose.decode1(_rebuild([protected, {}, payload, signature]))
        assert message.to_be_signed == bytes.fromhex(case["to_be_signed"]), case["name"]
        assert message.payload == bytes.fromhex(case["payload"])
        assert message.alg == cose.ES256 and message.kid is None
        if int.from_bytes(signature[32:], "big") <= cose.P256_ORDER // 2:
            cose.verify1(message, _vector_key())
        else:
            _refused("BOX_LINK_SIGNATURE", cose.verify1, message, _vector_key())


def test_cose_wg_failures_are_refused_with_the_right_code() -> None:
    for case in VECTORS["fail"]:
        data = bytes.fromhex(case["cbor"])
        item = cbor2.loads(data)
        if isinstance(item, cbor2.CBORTag) and hasattr(item.value[1], "items"):
            # their kid is unprotected, refused before the signature is looked at: without it, as they are
            parts = list(item.value)
            parts[1] = {k: v for k, v in parts[1].items() if k != 4}
            data = _rebuild(parts, item.tag)

        def check(data: bytes = data) -> None:
            cose.verify1(cose.decode1(data), _vector_key())

        _refused(case["code"], check)


def test_round_trip_es256_with_the_protected_header_of_the_doc(ec_key) -> None:
    kid = cose.key_id(ec_key.public_key())
    data = _signed(ec_key, b"payload")
    protected = _parts(data)[0]
    assert protected == b"\xa2\x01\x26\x04\x50" + kid  # {1: -7, 4: kid}, canonical
    assert _parts(data)[1] == {}
    message = cose.decode1(data)
    assert (message.alg, message.kid, message.payload) == (cose.ES256, kid, b"payload")
    assert len(message.signature) == 64
    cose.verify1(message, ec_key.public_key())


def test_round_trip_rs256_pkcs1_v15(rsa_key) -> None:
    message = cose.decode1(_signed(rsa_key))
    assert message.alg == cose.RS256 and len(message.signature) == 256
    cose.verify1(message, rsa_key.public_key())
    cose.verify1(
        message,
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def test_es256_raw_turns_a_key_store_der_signature_into_r_and_s(ec_key) -> None:
    der = ec_key.sign(b"to be signed", ec.ECDSA(hashes.SHA256()))  # what KeyStore.sign answers
    r, s = decode_dss_signature(der)
    low = min(s, cose.P256_ORDER - s)  # the low-s form of the same signature
    assert cose.es256_raw(der) == r.to_bytes(32, "big") + low.to_bytes(32, "big")

    def key_store_sign(tbs: bytes) -> bytes:
        return cose.es256_raw(ec_key.sign(tbs, ec.ECDSA(hashes.SHA256())))

    data = cose.sign1(b"p", key_store_sign, cose.ES256)
    message = cose.decode1(data)
    assert message.kid is None
    cose.verify1(message, ec_key.public_key())


def test_a_high_s_signature_is_refused_and_its_low_s_twin_verifies(ec_key) -> None:
    good = _parts(_signed(ec_key, b"payload"))
    r, s = good[3][:32], int.from_bytes(good[3][32:], "big")
    twin = _rebuild([*good[:3], r + (cose.P256_ORDER - s).to_bytes(32, "big")])  # valid ECDSA, other form
    cose.verify1(cose.decode1(_rebuild(good)), ec_key.public_key())
    error = _refused("BOX_LINK_SIGNATURE", cose.verify1, cose.decode1(twin), ec_key.public_key())
    assert "low-s" in error.message


def test_a_kid_unprotected_and_crit_anywhere_are_refused(ec_key) -> None:
    protected, unprotected, payload, signature = _parts(_signed(ec_key))
    bare = cbor2.dumps({1: -7})
    kid = cose.key_id(ec_key.public_key())
    for header in ({4: kid}, {2: [4]}):
        error = _refused("BOX_LINK_FRAME", cose.decode1, _rebuild([bare, header, payload, signature]))
        assert "protected" in error.message or "critical" in error.message


def test_a_number_beyond_64_bits_is_a_frame_error() -> None:
    assert cose.loads(cbor2.dumps({"n": 2**64 - 1, "m": -(2**64)})) == {"n": 2**64 - 1, "m": -(2**64)}
    for value in ({"n": 2**64}, [-(2**64) - 1], {10**5000: 1}, {"a": [1, {"b": 10**5000}]}):
        _refused("BOX_LINK_FRAME", cose.loads, cbor2.dumps(value))


def test_key_id_is_the_first_16_bytes_of_sha256_over_the_spki(ec_key) -> None:
    public = ec_key.public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert cose.key_id(public) == hashlib.sha256(der).digest()[:16]
    assert cose.key_id(der) == cose.key_id(pem) == cose.key_id(ec_key) == cose.key_id(public)


def test_tampered_payload_protected_or_signature_is_refused(ec_key) -> None:
    parts = _parts(_signed(ec_key, b"\xa1ax\x01"))
    other_kid = cbor2.dumps({1: -7, 4: b"\x00" * 16}, canonical=True)
    signature = parts[3]
    for name, changed in [
        ("payload", [parts[0], parts[1], b"\xa1ax\x02", parts[3]]),
        ("protected", [other_kid, parts[1], parts[2], parts[3]]),
        ("signature bit", [parts[0], parts[1], parts[2], signature[:-1] + bytes([signature[-1] ^ 1])]),
        ("r and s swapped", [parts[0], parts[1], parts[2], signature[32:] + signature[:32]]),
        ("zero signature", [parts[0], parts[1], parts[2], bytes(64)]),
        ("r beyond the curve order", [parts[0], parts[1], parts[2], b"\xff" * 64]),
        ("DER instead of raw", [parts[0], parts[1], parts[2], ec_key.sign(b"x", ec.ECDSA(hashes.SHA256()))]),
        ("63 bytes", [parts[0], parts[1], parts[2], signature[:63]]),
        ("empty", [parts[0], parts[1], parts[2], b""]),
    ]:
        message = cose.decode1(_rebuild(changed))
        error = _refused("BOX_LINK_SIGNATURE", cose.verify1, message, ec_key.public_key())
        assert error.field is None, name


def test_wrong_key_and_wrong_kind_of_key_are_refused(ec_key, rsa_key) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    _refused("BOX_LINK_SIGNATURE", cose.verify1, cose.decode1(_signed(ec_key)), other.public_key())
    _refused("BOX_LINK_SIGNATURE", cose.verify1, cose.decode1(_signed(ec_key)), rsa_key.public_key())
    _refused("BOX_LINK_SIGNATURE", cose.verify1, cose.decode1(_signed(rsa_key)), ec_key.public_key())
    p384 = ec.generate_private_key(ec.SECP384R1())
    _refused("BOX_LINK_SIGNATURE", cose.verify1, cose.decode1(_signed(ec_key)), p384.public_key())
    _refused("BOX_LINK_SIGNATURE", cose.signer, p384)


def test_decode1_refuses_every_other_shape(ec_key) -> None:
    good = _parts(_signed(ec_key))
    protected, unprotected, payload, signature = good
    shapes = {
        "not bytes": "text",
        "not CBOR": b"\xff\xff",
        "empty": b"",
        "bytes after the item": _rebuild(good) + b"\x00",
        "another tag": _rebuild(good, 98),
        "untagged": cbor2.dumps(good),
        "three items": _rebuild(good[:3]),
        "five items": _rebuild(good + [b""]),
        "a map in the tag": cbor2.dumps(cbor2.CBORTag(18, {"a": 1})),
        "protected a map, not a bstr": _rebuild([{1: -7}, unprotected, payload, signature]),
        "protected holds a list": _rebuild([cbor2.dumps([1, -7]), unprotected, payload, signature]),
        "protected not CBOR": _rebuild([b"\xff", unprotected, payload, signature]),
        "protected empty: no alg": _rebuild([b"", unprotected, payload, signature]),
        "alg only unprotected": _rebuild([cbor2.dumps({}), {1: -7}, payload, signature]),
        "alg a bool": _rebuild([cbor2.dumps({1: True}), unprotected, payload, signature]),
        "alg text": _rebuild([cbor2.dumps({1: "ES256"}), unprotected, payload, signature]),
        "unprotected a list": _rebuild([protected, [], payload, signature]),
        "a header twice": _rebuild([protected, {1: -7}, payload, signature]),
        "critical headers": _rebuild([cbor2.dumps({1: -7, 2: [99]}), unprotected, payload, signature]),
        "kid text": _rebuild([cbor2.dumps({1: -7, 4: "kid"}), unprotected, payload, signature]),
        "detached payload": _rebuild([protected, unprotected, None, signature]),
        "payload a map": _rebuild([protected, unprotected, {"g": 64}, signature]),
        "signature text": _rebuild([protected, unprotected, payload, "sig"]),
        "a date in the header": _rebuild([protected, {7: cbor2.CBORTag(1, 0)}, payload, signature]),
        "a map key that is bytes": _rebuild([protected, {b"k": 1}, payload, signature]),
    }
    for name, data in shapes.items():
        error = _refused("BOX_LINK_FRAME", cose.decode1, data)
        assert "Traceback" not in error.message, name


def test_deep_huge_and_cyclic_cbor_is_a_frame_error_not_a_crash(ec_key) -> None:
    protected, _, payload, signature = _parts(_signed(ec_key))
    head = b"\xd2\x84" + cbor2.dumps(protected)
    hostile = {
        "100,000 nested arrays": b"\x81" * 100_000 + b"\x00",
        "nested maps in the unprotected header": head + b"\xa1\x00" * 5000 + b"\x00",
        "40 levels, under cbor2's limit": head + b"\xa1\x00" * 40 + b"\x00" + cbor2.dumps(payload),
        "indefinite arrays never closed": b"\x9f" * 10_000,
        "a map claiming 2**32 entries": head + b"\xbb\x00\x00\x00\x01\x00\x00\x00\x00",
        "a bstr claiming 2**63 bytes": head + b"\xa0" + b"\x5b\x7f" + b"\xff" * 7,
        "an array claiming 2**64-1 items": b"\x9b" + b"\xff" * 8,
        "a list holding itself": head + bytes.fromhex("a100d81c81d81d00"),
        "a huge bignum": b"\xc2\x5a\x00\x01\x00\x00" + b"\xff" * 65536,
        "a bad datetime tag": head + bytes.fromhex("a100c000"),
    }
    for name, data in hostile.items():
        error = _refused("BOX_LINK_FRAME", cose.decode1, data)
        assert error.code == "BOX_LINK_FRAME", name


def test_a_large_flat_map_decodes(ec_key) -> None:
    protected, _, payload, signature = _parts(_signed(ec_key))
    big = {i: "v" for i in range(10, 5010)}
    message = cose.decode1(_rebuild([protected, big, payload, signature]))
    assert len(message.unprotected) == 5000
    cose.verify1(message, ec_key.public_key())


def test_loads_gives_plain_lists_and_dicts() -> None:
    value = cose.loads(cbor2.dumps(cbor2.CBORTag(18, [{"a": [1, 2]}, (3,)])))
    assert isinstance(value, cbor2.CBORTag) and value.value == [{"a": [1, 2]}, [3]]
    assert type(value.value[0]) is dict and type(value.value[1]) is list
    _refused("BOX_LINK_FRAME", cose.loads, cbor2.dumps([cbor2.CBORTag(18, [])]))  # a tag deeper down
    for data in ("f7", "f0", "81f0", "a1f500", "d9010281f6", "a1a0f6", "c11a514b67b0"):
        _refused("BOX_LINK_FRAME", cose.loads, bytes.fromhex(data))  # undefined, simple, set, keys, date
    assert cose.loads(bytes.fromhex("a2616101201b7fffffffffffffff")) == {"a": 1, -1: 2**63 - 1}
