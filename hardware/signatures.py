"""FDMS's two signature schemes over the exact canonical bytes, for keys held in software.

ECDSA P-256 with SHA-256, DER-encoded (FDMS rejects raw r||s), and RSA-2048 PKCS#1 v1.5 with SHA-256. The
same functions sign in the file key store and in the integrator's `explain`, and verify everywhere a
signature is checked (the device's own, FDMS's server signatures, a journal export).
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from firmware.core.errors import FiscalError

# Immutable scheme objects, built once: constructing them per receipt costs a fifth of an ECDSA signature.
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


def sign(private_key: Any, data: bytes) -> bytes:
    """The signature FDMS expects over `data` (the hash is computed inside, never passed pre-hashed)."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, _ECDSA_SHA256)
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(data, _PKCS1V15, _SHA256)
    raise FiscalError("BOX_KEY_ALGORITHM", "Only ECDSA P-256 and RSA-2048 keys can sign for FDMS.")


def verify(public_key: Any, data: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid FDMS-scheme signature of `data` by `public_key`."""
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, _ECDSA_SHA256)
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, _PKCS1V15, _SHA256)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def load_public_key(pem: bytes) -> Any:
    """A public key from a certificate, a public-key PEM, or a private-key PEM (its public half)."""
    if b"CERTIFICATE-----" in pem:
        return x509.load_pem_x509_certificate(pem).public_key()
    if b"PUBLIC KEY-----" in pem:
        return serialization.load_pem_public_key(pem)
    return load_private_key(pem).public_key()


def load_private_key(pem: bytes, passphrase: bytes | None = None) -> Any:
    """A software private key from PEM, encrypted or not; refused with a clear code when it cannot be read."""
    try:
        return serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError:
        raise FiscalError(
            "BOX_KEY_PASSPHRASE", "This key file is encrypted: give its passphrase.", "key"
        ) from None
    except ValueError:
        raise FiscalError(
            "BOX_KEY_UNREADABLE", "This is not a PEM private key, or the passphrase is wrong.", "key"
        ) from None
