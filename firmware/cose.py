"""COSE_Sign1 (RFC 9052) over cbor2 and cryptography: the link's signed requests and answers (docs/link.md 4).

Written here rather than taken from pycose, which cannot decode with cbor2 6. Decoding is strict and never
raises anything but FiscalError: a frame from the line is untrusted input, however deep or large its CBOR.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Callable
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from firmware.core.errors import FiscalError

ES256 = -7
RS256 = -257
TAG_SIGN1 = 18
ALG, CRIT, KID = 1, 2, 4
MAX_DEPTH = 32  # nesting any link message needs is far less; cbor2's own limit is 400

# The scheme objects, built once: building them for every message costs a fifth of a P-256 signature.
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()
_protected_headers: dict[tuple[int, bytes | None], bytes] = {}  # (alg, kid): its encoding, one per key

# Exact types: a bool is no key, a simple value no list. Not int: each is range-checked in _plain.
_SCALARS = {str, bytes, float, bool, type(None)}
_INT_LIMIT = 2**64  # CBOR's own integers; a bignum (tag 2/3) beyond is no link message's
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_MAPS = {dict, cbor2.frozendict}  # cbor2 6 gives a frozendict (and a tuple) inside a tag
_ARRAYS = {list, tuple}


def _frame_error(message: str) -> FiscalError:
    return FiscalError("BOX_LINK_FRAME", message)


def _plain(value: Any, depth: int) -> Any:
    """Tuples as lists, frozendicts as dicts; refuses what no link message holds (dates, sets, cycles).
    Dispatches on exact types and changes the decoded lists and maps in place (they are the caller's own,
    fresh from the decoder): it walks every item of every request, so it is kept lean."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is int:
        if not -_INT_LIMIT <= value < _INT_LIMIT:
            raise _frame_error("The message holds a number beyond 64 bits; no link message does.")
        return value
    if depth >= MAX_DEPTH:
        raise _frame_error("The message is nested deeper than %d levels; no link message is." % MAX_DEPTH)
    if kind is list or kind is tuple:
        items = value if kind is list else list(value)
        for at, item in enumerate(items):
            if type(item) not in _SCALARS:
                items[at] = _plain(item, depth + 1)
        return items
    if kind in _MAPS:
        out = value if kind is dict else dict(value)
        for key, item in out.items():
            if type(key) is not str and (type(key) is not int or not -_INT_LIMIT <= key < _INT_LIMIT):
                raise _frame_error("A map in the message has a key that is neither text nor a 64-bit number.")
            if type(item) not in _SCALARS:
                out[key] = _plain(item, depth + 1)
        return out
    if kind is cbor2.CBORTag and depth == 0:
        return cbor2.CBORTag(value.tag, _plain(value.value, depth + 1))
    raise _frame_error("The message holds a CBOR item no link message has (%s)." % kind.__name__)


def loads(data: bytes) -> Any:
    """One CBOR item, all of `data`, as plain Python data; FiscalError BOX_LINK_FRAME for anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _frame_error("The message is not CBOR bytes.")
    stream = io.BytesIO(bytes(data))
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except Exception as error:  # cbor2 raises many kinds (EOF, depth, bad tags, values): all are bad frames
        raise _frame_error("The message is not well-formed CBOR (%s)." % str(error)[:80]) from None
    if stream.tell() != len(stream.getbuffer()):
        raise _frame_error("The message has bytes after its CBOR item.")
    return _plain(value, 0)


def deflate(data: bytes) -> bytes:
    """`data` as raw DEFLATE (RFC 1951, no zlib or gzip wrapper): the link's compressed form (link.md 4)."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def inflate(data: Any, limit: int, field: str | None = None) -> bytes:
    """What the raw DEFLATE stream `data` holds, never more than `limit` bytes: a stream that would inflate
    beyond it (a zip bomb), a cut or damaged one, or bytes after its end are BOX_LINK_FRAME, before anything
    else looks at them."""
    if not isinstance(data, (bytes, bytearray)):
        raise FiscalError("BOX_LINK_FRAME", "The compressed message is not a byte string.", field)
    unpacker = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = unpacker.decompress(bytes(data), limit)
    except zlib.error:
        raise FiscalError(
            "BOX_LINK_FRAME", "The compressed message is not raw DEFLATE (RFC 1951) data.", field
        ) from None
    if not unpacker.eof:
        if unpacker.unconsumed_tail or len(out) >= limit:
            raise FiscalError(
                "BOX_LINK_FRAME", "The compressed message inflates to more than %d bytes." % limit, field
            )
        raise FiscalError("BOX_LINK_FRAME", "The compressed message is cut short: its stream has no end.",
                          field)
    if unpacker.unused_data:
        raise FiscalError("BOX_LINK_FRAME", "The compressed message has bytes after its stream's end.", field)
    return out


def key_id(public_key: Any) -> bytes:
    """The key's ID: the first 16 bytes of SHA-256 over its SubjectPublicKeyInfo (DER)."""
    der = _public_key(public_key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()[:16]


def _public_key(key: Any) -> Any:
    if isinstance(key, (bytes, bytearray)):
        data = bytes(key)
        if data.lstrip().startswith(b"-----"):
            return serialization.load_pem_public_key(data)
        return serialization.load_der_public_key(data)
    if isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        return key.public_key()
    return key


class Sign1:
    """A decoded COSE_Sign1: its headers, payload, signature and the bytes the signature covers."""

    def __init__(self, protected: dict, unprotected: dict, payload: bytes, signature: bytes, raw: bytes,
                 alg: int, kid: bytes | None):
        self.protected = protected
        self.unprotected = unprotected
        self.payload = payload
        self.signature = signature
        self.alg = alg
        self.kid = kid
        self.to_be_signed = _to_be_signed(raw, payload)


def _to_be_signed(protected_bytes: bytes, payload: bytes) -> bytes:
    """The Sig_structure ["Signature1", protected, external_aad = h'', payload]."""
    return cbor2.dumps(["Signature1", protected_bytes, b"", payload])


def sign1(payload: bytes, sign: Callable[[bytes], bytes], alg: int, kid: bytes | None = None) -> bytes:
    """A tagged COSE_Sign1 of `payload`: protected {1: alg, 4: kid}, unprotected {}.

    `sign(to_be_signed)` returns the signature as COSE wants it (ES256: raw r||s, see es256_raw).
    """
    kid = None if kid is None else bytes(kid)
    protected_bytes = _protected_headers.get((alg, kid))
    if protected_bytes is None:
        protected: dict[int, Any] = {ALG: alg}
        if kid is not None:
            protected[KID] = kid
        protected_bytes = cbor2.dumps(protected, canonical=True)
        if len(_protected_headers) < 256:  # a box sees a handful of keys; a host one
            _protected_headers[(alg, kid)] = protected_bytes
    signature = sign(_to_be_signed(protected_bytes, payload))
    return cbor2.dumps(cbor2.CBORTag(TAG_SIGN1, [protected_bytes, {}, payload, signature]))


def es256_raw(der_signature: bytes) -> bytes:
    """A DER ECDSA P-256 signature (what KeyStore.sign answers) as COSE's raw r||s, 64 bytes."""
    r, s = decode_dss_signature(der_signature)
    if s > P256_ORDER // 2:  # the low-s form: verify1 refuses the other, so no signature has a twin
        s = P256_ORDER - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def signer(private_key: Any) -> tuple[int, Callable[[bytes], bytes]]:
    """(alg, sign) for a `cryptography` private key: ES256 for P-256, RS256 for RSA; for sign1."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(private_key.curve, ec.SECP256R1):
        return ES256, lambda data: es256_raw(private_key.sign(data, _ECDSA_SHA256))
    if isinstance(private_key, rsa.RSAPrivateKey):
        return RS256, lambda data: private_key.sign(data, _PKCS1V15, _SHA256)
    raise FiscalError("BOX_LINK_SIGNATURE", "Only ECDSA P-256 and RSA keys can sign link messages.")


def decode1(data: bytes) -> Sign1:
    """The COSE_Sign1 in `data`; FiscalError BOX_LINK_FRAME, with a sentence, when it is not exactly one."""
    item = loads(data)
    if not isinstance(item, cbor2.CBORTag) or item.tag != TAG_SIGN1:
        raise _frame_error("The request is not a COSE_Sign1 message (CBOR tag 18).")
    parts = item.value
    if not isinstance(parts, list) or len(parts) != 4:
        raise _frame_error("A COSE_Sign1 message is an array of four items; this one is not.")
    protected_bytes, unprotected, payload, signature = parts
    if not isinstance(protected_bytes, bytes):
        raise _frame_error("The COSE_Sign1 protected header is not a byte string.")
    protected = loads(protected_bytes) if protected_bytes else {}
    if not isinstance(protected, dict):
        raise _frame_error("The COSE_Sign1 protected header does not hold a map.")
    if not isinstance(unprotected, dict):
        raise _frame_error("The COSE_Sign1 unprotected header is not a map.")
    if set(protected) & set(unprotected):
        raise _frame_error("The COSE_Sign1 message has a header both protected and unprotected.")
    if CRIT in protected or CRIT in unprotected:
        raise _frame_error("The COSE_Sign1 message marks headers critical; the box understands none.")
    if KID in unprotected:
        raise _frame_error("The COSE_Sign1 key ID must be in the protected header, where it is signed.")
    alg = protected.get(ALG)
    if not isinstance(alg, int) or isinstance(alg, bool):
        raise _frame_error("The COSE_Sign1 message names no signature algorithm in its protected header.")
    kid = protected.get(KID)
    if kid is not None and not isinstance(kid, bytes):
        raise _frame_error("The COSE_Sign1 key ID is not a byte string.")
    if not isinstance(payload, bytes):
        raise _frame_error("The COSE_Sign1 payload is not a byte string.")
    if not isinstance(signature, bytes):
        raise _frame_error("The COSE_Sign1 signature is not a byte string.")
    return Sign1(protected, unprotected, payload, signature, protected_bytes, alg, kid)


def _refused(message: str) -> FiscalError:
    return FiscalError("BOX_LINK_SIGNATURE", message)


def verify1(message: Sign1, public_key: Any) -> None:
    """Check the signature under `public_key` (ES256 raw r||s, or RS256); FiscalError BOX_LINK_SIGNATURE."""
    key = _public_key(public_key)
    data = message.to_be_signed
    size = len(message.signature)
    try:
        if message.alg == ES256:
            if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
                raise _refused("The message is signed ES256 but the key named is not an ECDSA P-256 key.")
            if size != 64:
                raise _refused("An ES256 signature is 64 bytes (r||s); this one is %d." % size)
            r = int.from_bytes(message.signature[:32], "big")
            s = int.from_bytes(message.signature[32:], "big")
            if s > P256_ORDER // 2:
                raise _refused("The ES256 signature is not in its low-s form (s > n/2); it is refused.")
            key.verify(encode_dss_signature(r, s), data, _ECDSA_SHA256)
        elif message.alg == RS256:
            if not isinstance(key, rsa.RSAPublicKey):
                raise _refused("The message is signed RS256 but the key named is not an RSA key.")
            key.verify(message.signature, data, _PKCS1V15, _SHA256)
        else:
            raise _refused("The message is signed with algorithm %d; the box knows only ES256 and RS256."
                           % message.alg)
    except InvalidSignature:
        raise _refused("The signature does not verify under the key it names; nothing was done.") from None

