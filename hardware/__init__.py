"""The interfaces the firmware uses; concrete drivers are chosen in `firmware/main.py` alone."""

from __future__ import annotations

from typing import Any, Protocol

# Key algorithms FDMS accepts, in its order of preference.
ECDSA_P256 = "ECDSA_P256"
RSA_2048 = "RSA_2048"
ALGORITHMS = (ECDSA_P256, RSA_2048)


class KeyStore(Protocol):
    """Holds the device's private key; the key never leaves it.

    `sign` uses FDMS's schemes over the given bytes (the hash is computed inside):
    ECDSA P-256 with SHA-256, DER-encoded; RSA-2048 PKCS#1 v1.5 with SHA-256.

    `install_certificate` accepts a certificate for the current key (stored beside it) or for the pending
    renewal key (switches to it, see below); any other is refused with BOX_CERT_MISMATCH and nothing changed.
    """

    @property
    def algorithm(self) -> str | None: ...

    def generate(self, algorithm: str, replace: bool = False) -> None: ...

    def public_key_pem(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...

    def certificate_request(self, common_name: str) -> bytes: ...

    def install_certificate(self, pem: bytes) -> None: ...

    def certificate_pem(self) -> bytes | None: ...

    # Certificate renewal with a new key. The pending key lives beside the current one, which keeps signing
    # (and serving TLS, which IssueCertificate itself needs) until `install_certificate` gets a certificate
    # for the pending key: then that key and certificate replace the current pair together, atomically
    # whatever instant the power is cut, and the old private key is destroyed.

    def begin_renewal(self, algorithm: str) -> bytes:
        """Generate a pending key beside the current one (replacing any earlier pending key) and return its
        PEM public key. The current key and certificate stay in force. BOX_KEY_MISSING without a current
        key."""
        ...

    def renewal_request(self, common_name: str) -> bytes:
        """A PEM CSR signed by the pending key (same subject rules as certificate_request).
        FiscalError BOX_NO_RENEWAL when there is no pending key."""
        ...

    @property
    def pending_algorithm(self) -> str | None: ...

    def cancel_renewal(self) -> None:
        """Destroy the pending key, if any."""
        ...

    def close(self) -> None: ...


class Clock(Protocol):
    """Where time comes from, so day limits are tested without waiting."""

    def now(self) -> float: ...


class Printer(Protocol):
    """A receipt printer. The box checks it, records the start of a print, prints, then records the end.

    `check` and `print_document` raise FiscalError with a BOX_PRINTER_ code (paper out, cover open, offline)
    when the printer can tell; `legible` turns any text into text its code page shows.
    """

    @property
    def columns(self) -> int: ...

    def legible(self, text: str) -> str: ...

    def check(self) -> None: ...

    def print_document(self, document: Any) -> None: ...


class SerialPort(Protocol):
    """A byte link to a device: a pyserial Serial, a pseudo-terminal, or a simulator in the same process."""

    def write(self, data: bytes) -> int | None: ...

    def read(self, size: int = 1) -> bytes: ...
