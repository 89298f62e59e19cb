"""The interfaces the firmware uses; concrete drivers are chosen in `firmware/main.py` alone."""

from __future__ import annotations

from typing import Protocol

# Key algorithms FDMS accepts, in its order of preference.
ECDSA_P256 = "ECDSA_P256"
RSA_2048 = "RSA_2048"
ALGORITHMS = (ECDSA_P256, RSA_2048)


class KeyStore(Protocol):
    """Holds the device's private key; the key never leaves it.

    `sign` uses FDMS's schemes over the given bytes (the hash is computed inside):
    ECDSA P-256 with SHA-256, DER-encoded; RSA-2048 PKCS#1 v1.5 with SHA-256.
    """

    @property
    def algorithm(self) -> str | None: ...

    def generate(self, algorithm: str, replace: bool = False) -> None: ...

    def public_key_pem(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...

    def certificate_request(self, common_name: str) -> bytes: ...

    def install_certificate(self, pem: bytes) -> None: ...

    def certificate_pem(self) -> bytes | None: ...

    def close(self) -> None: ...


class Clock(Protocol):
    """Where time comes from, so day limits are tested without waiting."""

    def now(self) -> float: ...
