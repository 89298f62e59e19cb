"""Where the device's private key lives: a PKCS#11 token, or an encrypted PKCS#8 file where none is fitted.

Both stores implement `hardware.KeyStore` and behave the same from the outside: the same error codes, the same
signature encodings FDMS accepts (ECDSA P-256 DER / RSA-2048 PKCS#1 v1.5, SHA-256 over the exact bytes) and
byte-for-byte the same certificate request layout, because one builder (`_certificate_request`) serves both.

Both renew the same way: `begin_renewal` makes a pending key beside the current one, `renewal_request` is its
certificate request, and `install_certificate` with a certificate for the pending key switches to that key and
certificate together, with one commit point that recovery on open finishes or rolls back around (see each
store's class docstring), so no power cut leaves a key with another key's certificate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pkcs11
from asn1crypto import core as asn1_core
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_ecdsa_signature, encode_named_curve_parameters
from pkcs11.util.x509 import decode_x509_certificate

from firmware.core.errors import FiscalError
from hardware import ALGORITHMS, ECDSA_P256, RSA_2048, signatures

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# X.520 upper bound for a common name; FDMS's CN=ZIMRA-<serial>-<10 digits> fits well inside it.
_MAX_COMMON_NAME = 64


@dataclass(frozen=True)
class TlsKeyMaterial:
    """What `ssl.SSLContext.load_cert_chain` needs to use the encrypted key file as it is on disk.

    OpenSSL decrypts the PKCS#8 file itself, so no decrypted copy of the key is ever written anywhere.
    The password is kept out of `repr` so that logging this object cannot leak it.
    """

    certfile: str
    keyfile: str
    password: bytes = field(repr=False)


# --- shared by both stores ---------------------------------------------------------------------------------


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise FiscalError(
            "BOX_KEY_ALGORITHM",
            f"The key type {algorithm!r} is not one FDMS accepts; choose {' or '.join(ALGORITHMS)}.",
        )


def _check_common_name(common_name: str) -> None:
    if (
        not isinstance(common_name, str)
        or not 1 <= len(common_name) <= _MAX_COMMON_NAME
        or not common_name.isprintable()
    ):
        raise FiscalError(
            "BOX_CSR_NAME",
            f"The certificate name must be 1 to {_MAX_COMMON_NAME} printable characters, "
            "like ZIMRA-<serial>-<device ID as 10 digits>; check the serial number and device ID.",
        )


def _algorithm_of(public_key: Any) -> str | None:
    """Which FDMS algorithm a public key belongs to, or None if FDMS would not accept it."""
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP256R1):
        return ECDSA_P256
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 2048:
        return RSA_2048
    return None


def _spki_der(public_key: Any) -> bytes:
    """The canonical SubjectPublicKeyInfo DER, the one form in which two public keys are compared."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _spki_pem(spki_der: bytes) -> bytes:
    return asn1_pem.armor("PUBLIC KEY", spki_der)


def _certificate_request(
    common_name: str, spki_der: bytes, algorithm: str, sign: Callable[[bytes], bytes]
) -> bytes:
    """A PKCS#10 request whose subject is only CN=<common_name>, signed by `sign` (the private key stays put).

    Built with asn1crypto rather than cryptography's builder because a token key cannot be handed to
    cryptography; the layout equals what cryptography/OpenSSL produce (UTF8String CN, empty attributes,
    NULL parameters for RSA only), which a test checks byte for byte.
    """
    _check_common_name(common_name)
    info = asn1_csr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": asn1_x509.Name.build({"common_name": common_name}),
            "subject_pk_info": asn1_keys.PublicKeyInfo.load(spki_der),
            "attributes": [],
        }
    )
    # sha256_rsa gets its NULL parameters from asn1crypto; ecdsa-with-SHA256 must have none.
    signature_algorithm = {ECDSA_P256: "sha256_ecdsa", RSA_2048: "sha256_rsa"}[algorithm]
    request = asn1_csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": {"algorithm": signature_algorithm},
            "signature": sign(info.dump()),
        }
    )
    return asn1_pem.armor("CERTIFICATE REQUEST", request.dump())


def _matching_certificate(pem: bytes, *spki_ders: bytes) -> tuple[x509.Certificate, int]:
    """Parse `pem` and insist that it certifies one of our keys; refusing here is what keeps a wrong cert out.

    `spki_ders` are the keys it may be for (the current key, then a renewal's pending key); the index of the
    one it certifies comes back with the certificate.
    """
    try:
        certificate = x509.load_pem_x509_certificate(pem)
        public_key = certificate.public_key()
    except (ValueError, TypeError) as exc:
        raise FiscalError(
            "BOX_CERT_INVALID",
            "The certificate could not be read; paste the whole PEM text FDMS returned, "
            "from -----BEGIN CERTIFICATE----- to -----END CERTIFICATE-----.",
        ) from exc
    certified = _spki_der(public_key)
    if certified not in spki_ders:
        raise FiscalError(
            "BOX_CERT_MISMATCH",
            "This certificate was issued for a different key than the one in this box (or the one it is "
            "renewing to); nothing was changed. Request a certificate with this box's current certificate "
            "request.",
        )
    return certificate, spki_ders.index(certified)


def _key_missing() -> FiscalError:
    return FiscalError("BOX_KEY_MISSING", "This box has no signing key yet; generate one first.")


def _key_exists() -> FiscalError:
    return FiscalError(
        "BOX_KEY_EXISTS",
        "This box already has a signing key; replacing it makes its certificate useless, "
        "so ask for replacement explicitly (`key generate --replace`).",
    )


def _no_renewal() -> FiscalError:
    return FiscalError(
        "BOX_NO_RENEWAL",
        "No certificate renewal is under way (or it was cancelled); start one, which makes the new key "
        "first.",
    )


# --- encrypted PKCS#8 file ----------------------------------------------------------------------------------


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` so that after a power cut it holds either the old or the new bytes, never a mix.

    The temporary file is created with `mode` already set (mkstemp makes it 0600), so a key is never
    readable by others, not even for an instant.
    """
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        _fsync_directory(path.parent)
    except OSError as exc:
        raise FiscalError(
            "BOX_KEY_STORAGE",
            f"{path.name} could not be saved ({exc.strerror}); "
            "check that the storage card is writable and not full.",
        ) from exc


def _is_encrypted_pkcs8(data: bytes) -> bool:
    """Whether `data` is encrypted PKCS#8 PEM; if so, a failed decryption means a wrong passphrase."""
    try:
        kind, _, der = asn1_pem.unarmor(data)
        if kind != "ENCRYPTED PRIVATE KEY":
            return False
        asn1_keys.EncryptedPrivateKeyInfo.load(der).native  # noqa: B018 (forces a full parse)
    except (ValueError, TypeError):
        return False
    return True


def _storage_error(what: str, exc: OSError) -> FiscalError:
    return FiscalError(
        "BOX_KEY_STORAGE",
        f"{what} failed ({exc.strerror}); check that the storage card is writable and not full.",
    )


def _unlink_if_present(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


# A generation folder: one key and its certificate. Numbers only grow, so a name is never reused.
_GENERATION = re.compile(r"gen-([1-9][0-9]{0,8})\Z")


@dataclass(frozen=True)
class _SoftKey:
    """A key decrypted in memory, what is derived from it, and its encrypted PKCS#8 PEM as stored."""

    key: _PrivateKey
    algorithm: str
    spki: bytes
    encrypted_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class _Generation:
    """The key in force, its certificate and the folder holding both; replaced as one object, so a thread
    reading it never sees one key with another key's certificate."""

    folder: Path
    key: _SoftKey
    certificate: bytes | None


class FileKeyStore:
    """The device key in an encrypted PKCS#8 PEM file (0600), its certificate beside it.

    For boxes without a token. Keys are decrypted when the store opens (or when made) and kept in memory:
    a receipt signature costs a signature, not a PBKDF2 run.

    Layout of `directory`:

        current                  "gen-<n>": the generation in force (absent: the older layout below is)
        gen-<n>/device-key.pem   the key in force, encrypted PKCS#8 (0600)
        gen-<n>/device-cert.pem  its certificate, when installed
        renewal-key.pem          a renewal's pending key, encrypted PKCS#8 (0600)
        device-key.pem, device-cert.pem
                                 the layout before generations, in force while `current` is absent, so a box
                                 upgraded in the field opens its store unchanged

    A new key (from `generate`, or a renewal's pending key with its certificate) is written complete into a
    fresh generation folder, and is in force once `current` is replaced (temporary file, fsync, rename, fsync
    of the folder): that rename is the one commit point. Only then are the old key's files removed.

    Recovery (on open, and after every commit) trusts `current` alone: generation folders it does not name,
    the older layout's files once it exists, and temporary files are leftovers of a switch that never
    committed or of the key it retired, and are removed. A renewal key equal to the key in force is what a
    committed switch left behind, and is removed too.
    """

    KEY_FILE = "device-key.pem"
    PUBLIC_FILE = "device-key.pub"  # the key's public half in the clear, for commands that only read
    CERT_FILE = "device-cert.pem"
    POINTER_FILE = "current"
    RENEWAL_FILE = "renewal-key.pem"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        passphrase: bytes,
        passphrase_env: str = "FISCALBOX_KEY_PASSPHRASE",
    ) -> None:
        # `passphrase_env` only names, in messages, where the passphrase came from: it is never in a file
        if not isinstance(passphrase, bytes) or not passphrase:
            raise FiscalError(
                "BOX_KEY_PASSPHRASE",
                f"The key passphrase is empty: set it in the environment variable {passphrase_env} "
                "(the one [keys] passphrase_env names).",
            )
        self._directory = Path(directory)
        self._passphrase = passphrase
        self._passphrase_env = passphrase_env
        self._lock = threading.Lock()
        self._current: _Generation | None = None
        self._pending: _SoftKey | None = None
        self._recover()

    @classmethod
    def from_environment(
        cls,
        directory: str | os.PathLike[str],
        env_var: str = "FISCALBOX_KEY_PASSPHRASE",
        environ: Mapping[str, str] | None = None,
    ) -> FileKeyStore:
        """Open the store with the passphrase from an environment variable (e.g. set by systemd)."""
        passphrase = (os.environ if environ is None else environ).get(env_var, "")
        if not passphrase:
            raise FiscalError(
                "BOX_KEY_PASSPHRASE",
                f"The key passphrase is not set; put it in the environment variable {env_var} "
                "and restart the box.",
            )
        return cls(directory, passphrase.encode("utf-8"), env_var)

    @classmethod
    def public_only(cls, directory: str | os.PathLike[str]) -> PublicKeys:
        """The key in force's public half and its certificate, read without the passphrase: what a command
        that only reads (status, audit) needs to check the journal's signatures."""
        store = Path(directory)
        name = cls._pointer_name(store)
        folder = store if name is None else store / name
        certificate = None
        with contextlib.suppress(OSError):
            certificate = (folder / cls.CERT_FILE).read_bytes()
        public = None
        with contextlib.suppress(OSError):
            public = (folder / cls.PUBLIC_FILE).read_bytes()
        if public is None and certificate is not None:
            with contextlib.suppress(ValueError):
                cert = x509.load_pem_x509_certificate(certificate)
                public = _spki_pem(_spki_der(cert.public_key()))
        return PublicKeys(public, certificate)

    @property
    def key_path(self) -> Path:
        """The file of the key in force (it moves to a new generation folder when the key changes)."""
        return self._folder() / self.KEY_FILE

    @property
    def certificate_path(self) -> Path:
        return self._folder() / self.CERT_FILE

    @property
    def algorithm(self) -> str | None:
        current = self._current
        return None if current is None else current.key.algorithm

    @property
    def pending_algorithm(self) -> str | None:
        pending = self._pending
        return None if pending is None else pending.algorithm

    def generate(self, algorithm: str, replace: bool = False) -> None:
        """Make a new key and save it encrypted; refuses to replace a key unless `replace` is given.

        Replacing drops the old key's certificate (it certifies the old key) and any renewal under way.
        """
        _check_algorithm(algorithm)
        with self._lock:
            if self._current is not None and not replace:
                raise _key_exists()
            key = self._new_key(algorithm)
            try:
                self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise _storage_error("Creating the key folder", exc) from exc
            self._cancel_renewal_locked()
            self._commit(key, None)

    def public_key_pem(self) -> bytes:
        return _spki_pem(self._in_force().key.spki)

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256 (DER) or RSA-2048 PKCS#1 v1.5, SHA-256 over `data` itself."""
        return signatures.sign(self._in_force().key.key, data)

    def certificate_request(self, common_name: str) -> bytes:
        key = self._in_force().key
        return _certificate_request(common_name, key.spki, key.algorithm, partial(signatures.sign, key.key))

    def install_certificate(self, pem: bytes) -> None:
        """Save the certificate FDMS issued: for the key in force, beside it; for a renewal's pending key, by
        switching to that key and this certificate together (see the class). Refused for any other key."""
        with self._lock:
            current = self._in_force()
            pending = self._pending
            candidates = (current.key.spki,) if pending is None else (current.key.spki, pending.spki)
            certificate, which = _matching_certificate(pem, *candidates)
            normalized = certificate.public_bytes(serialization.Encoding.PEM)
            if which == 0:
                _write_atomically(current.folder / self.CERT_FILE, normalized, 0o644)
                self._current = dataclasses.replace(current, certificate=normalized)
                return
            assert pending is not None
            self._commit(pending, normalized)
            self._pending = None
            with contextlib.suppress(OSError):  # recovery removes it if this does not (it equals the new key)
                if _unlink_if_present(self._directory / self.RENEWAL_FILE):
                    _fsync_directory(self._directory)

    def certificate_pem(self) -> bytes | None:
        current = self._current
        return None if current is None else current.certificate

    def begin_renewal(self, algorithm: str) -> bytes:
        """Make a pending key (replacing an earlier one) and return its PEM public key; the key in force and
        its certificate stay in force until a certificate for the pending key is installed."""
        _check_algorithm(algorithm)
        with self._lock:
            self._in_force()
            key = self._new_key(algorithm)
            _write_atomically(self._directory / self.RENEWAL_FILE, key.encrypted_pem, 0o600)
            self._pending = key
            return _spki_pem(key.spki)

    def renewal_request(self, common_name: str) -> bytes:
        """A certificate request for the pending key, signed by it (subject rules as certificate_request)."""
        pending = self._pending
        if pending is None:
            raise _no_renewal()
        return _certificate_request(
            common_name, pending.spki, pending.algorithm, partial(signatures.sign, pending.key)
        )

    def cancel_renewal(self) -> None:
        """Remove the pending key, if any."""
        with self._lock:
            self._cancel_renewal_locked()

    def close(self) -> None:
        """Nothing to release: the keys live in memory until the process ends."""

    def tls_key_material(self) -> TlsKeyMaterial:
        """Paths and password for mutual TLS: `ctx.load_cert_chain(m.certfile, m.keyfile, m.password)`.

        The paths are those of the key in force; load them before installing a renewed certificate, which
        moves the key to a new folder and removes the old one.
        """
        current = self._in_force()
        if current.certificate is None:
            raise FiscalError(
                "BOX_CERT_MISSING",
                "This box has no certificate yet; register the device with FDMS first.",
            )
        return TlsKeyMaterial(
            str(current.folder / self.CERT_FILE), str(current.folder / self.KEY_FILE), self._passphrase
        )

    # -- internals ------------------------------------------------------------------------------------------

    def _in_force(self) -> _Generation:
        current = self._current
        if current is None:
            raise _key_missing()
        return current

    def _folder(self) -> Path:
        current = self._current
        return self._directory if current is None else current.folder

    def _new_key(self, algorithm: str) -> _SoftKey:
        key: _PrivateKey = (
            ec.generate_private_key(ec.SECP256R1())
            if algorithm == ECDSA_P256
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self._passphrase),
        )
        return _SoftKey(key, algorithm, _spki_der(key.public_key()), encrypted)

    def _cancel_renewal_locked(self) -> None:
        try:
            if _unlink_if_present(self._directory / self.RENEWAL_FILE):
                _fsync_directory(self._directory)
        except OSError as exc:
            raise _storage_error("Removing the renewal key", exc) from exc
        self._pending = None

    def _commit(self, key: _SoftKey, certificate: bytes | None) -> None:
        """Put `key` (and its certificate) in force: a new generation folder, then the pointer, then tidy."""
        try:
            numbers = [int(m.group(1)) for e in self._directory.iterdir() if (m := _GENERATION.match(e.name))]
            name = f"gen-{max(numbers, default=0) + 1}"
            folder = self._directory / name
            folder.mkdir(mode=0o700)
            _fsync_directory(self._directory)
        except OSError as exc:
            raise _storage_error("Creating a key folder", exc) from exc
        _write_atomically(folder / self.KEY_FILE, key.encrypted_pem, 0o600)
        _write_atomically(folder / self.PUBLIC_FILE, _spki_pem(key.spki), 0o644)
        if certificate is not None:
            _write_atomically(folder / self.CERT_FILE, certificate, 0o644)
        # The commit point. If this raises after the rename (a failed fsync), the files of both keys are
        # still there, and whichever the pointer names after a restart is a complete, matching pair.
        _write_atomically(self._directory / self.POINTER_FILE, f"{name}\n".encode(), 0o644)
        self._current = _Generation(folder, key, certificate)
        with contextlib.suppress(OSError):  # what is left is removed by the next commit or open
            self._tidy(name)

    def _recover(self) -> None:
        """Open the generation `current` names (or the older layout), then remove what it does not need."""
        name = self._read_pointer()
        folder = self._directory if name is None else self._directory / name
        key_path = folder / self.KEY_FILE
        if key_path.exists():
            key = self._load_key(key_path)
            self._current = _Generation(folder, key, self._load_certificate(folder, key.spki))
            if name is not None and not (folder / self.PUBLIC_FILE).exists():
                with contextlib.suppress(OSError):  # a store made before the public file existed
                    _write_atomically(folder / self.PUBLIC_FILE, _spki_pem(key.spki), 0o644)
        elif name is not None:
            raise FiscalError(
                "BOX_KEY_UNREADABLE",
                f"{self._directory / self.POINTER_FILE} names {name}, which holds no key; "
                "restore the key folder from a backup or generate a new key.",
            )
        with contextlib.suppress(OSError):
            self._tidy(name)
        self._pending = self._load_renewal_key()

    def _read_pointer(self) -> str | None:
        return self._pointer_name(self._directory)

    @classmethod
    def _pointer_name(cls, directory: Path) -> str | None:
        path = directory / cls.POINTER_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise FiscalError(
                "BOX_KEY_STORAGE",
                f"{path} could not be read ({exc.strerror}); check the storage card.",
            ) from exc
        name = data.decode("ascii", "replace").strip()
        if not _GENERATION.match(name):
            raise FiscalError(
                "BOX_KEY_UNREADABLE",
                f"{path} is damaged; restore the key folder from a backup or generate a new key.",
            )
        return name

    def _tidy(self, current: str | None) -> None:
        """Remove what the state `current` names does not need; raises OSError (callers ignore it: what is
        in force is decided by the pointer alone, and the next open tidies again)."""
        removed = False
        for entry in sorted(self._directory.iterdir(), key=lambda e: (e.name != self.KEY_FILE, e.name)):
            if _GENERATION.match(entry.name) and entry.is_dir() and not entry.is_symlink():
                if entry.name != current:
                    self._remove_generation(entry)
                    removed = True
            elif (current is not None and entry.name in (self.KEY_FILE, self.CERT_FILE)) or self._temporary(
                entry.name
            ):
                entry.unlink()
                removed = True
        if current is not None:
            folder = self._directory / current
            leftovers = [entry for entry in folder.iterdir() if self._temporary(entry.name)]
            for entry in leftovers:
                entry.unlink()
            if leftovers:
                _fsync_directory(folder)
        if removed:
            _fsync_directory(self._directory)

    def _remove_generation(self, folder: Path) -> None:
        """Remove a generation folder, its key file first."""
        for entry in sorted(folder.iterdir(), key=lambda e: e.name != self.KEY_FILE):
            entry.unlink()
        folder.rmdir()

    def _temporary(self, name: str) -> bool:
        """A temporary file `_write_atomically` left behind (interrupted before its rename)."""
        ours = (self.KEY_FILE, self.CERT_FILE, self.POINTER_FILE, self.RENEWAL_FILE)
        return name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in ours)

    def _load_key(self, path: Path) -> _SoftKey:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FiscalError(
                "BOX_KEY_STORAGE",
                f"The key file could not be read ({exc.strerror}); check the storage card.",
            ) from exc
        try:
            key = serialization.load_pem_private_key(data, password=self._passphrase)
        except TypeError as exc:  # the file is not encrypted: not something this box ever writes
            raise FiscalError(
                "BOX_KEY_UNREADABLE",
                f"{path} is not encrypted, so it was not written by this box; "
                "restore the key from a backup or generate a new one.",
            ) from exc
        except ValueError as exc:
            if _is_encrypted_pkcs8(data):
                raise FiscalError(
                    "BOX_KEY_PASSPHRASE",
                    "The key passphrase is wrong (or the key file is damaged): check the value of the "
                    f"environment variable {self._passphrase_env} (the one [keys] passphrase_env names).",
                ) from exc
            raise FiscalError(
                "BOX_KEY_UNREADABLE",
                f"{path} is damaged; restore the key from a backup or generate a new one.",
            ) from exc
        algorithm = _algorithm_of(key.public_key())
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) or algorithm is None:
            raise FiscalError(
                "BOX_KEY_ALGORITHM",
                f"{path} holds a key type FDMS does not accept; generate an ECDSA P-256 or RSA-2048 key.",
            )
        return _SoftKey(key, algorithm, _spki_der(key.public_key()), data)

    def _load_certificate(self, folder: Path, spki: bytes) -> bytes | None:
        """The certificate in `folder` if it is for `spki`; a stale or unreadable one counts as none."""
        try:
            certificate, _ = _matching_certificate((folder / self.CERT_FILE).read_bytes(), spki)
        except (OSError, FiscalError):
            return None
        return certificate.public_bytes(serialization.Encoding.PEM)

    def _load_renewal_key(self) -> _SoftKey | None:
        """The pending key; one equal to the key in force is a committed switch's leftover and is removed.

        An unreadable one counts as none (a renewal just starts again), and is left for the next
        `begin_renewal` or `cancel_renewal` to replace or remove.
        """
        path = self._directory / self.RENEWAL_FILE
        if self._current is None or not path.exists():
            return None
        try:
            key = self._load_key(path)
        except FiscalError:
            return None
        if key.spki == self._current.key.spki:
            with contextlib.suppress(OSError):
                path.unlink()
                _fsync_directory(self._directory)
            return None
        return key


class PublicKeys:
    """The public half of a key store, for a box opened only to read: it can check signatures, never make
    one."""

    def __init__(self, public_key_pem: bytes | None, certificate_pem: bytes | None) -> None:
        self._public = public_key_pem
        self._certificate = certificate_pem
        key = None
        if public_key_pem is not None:
            with contextlib.suppress(ValueError):
                key = serialization.load_pem_public_key(public_key_pem)
        self._algorithm = None if key is None else _algorithm_of(key)

    @property
    def algorithm(self) -> str | None:
        return self._algorithm

    @property
    def pending_algorithm(self) -> str | None:
        return None

    def public_key_pem(self) -> bytes:
        if self._public is None or self._algorithm is None:
            raise FiscalError(
                "BOX_KEY_MISSING",
                "No device public key can be read without the passphrase (the key store has neither its "
                "public key file nor a certificate): register the box, set the key passphrase, or give "
                "--public-key.",
            )
        return self._public

    def certificate_pem(self) -> bytes | None:
        return self._certificate

    def _read_only(self, *_: Any, **__: Any) -> Any:
        raise FiscalError(
            "BOX_READ_ONLY", "This command only reads: it cannot sign or change the device key."
        )

    sign = generate = certificate_request = install_certificate = _read_only
    begin_renewal = renewal_request = cancel_renewal = _read_only

    def close(self) -> None:
        """Nothing to release."""


# --- PKCS#11 token ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _token_errors(action: str) -> Iterator[None]:
    """Turn a token failure into a sentence; PKCS#11 errors carry only their class name, so name it."""
    try:
        yield
    except pkcs11.PKCS11Error as exc:
        raise FiscalError(
            "BOX_TOKEN",
            f"The key token failed while {action} ({type(exc).__name__}); "
            "check that it is fitted and working, then restart the box.",
        ) from exc


def _token_public_key_spki(public_key: Any) -> bytes:
    """SubjectPublicKeyInfo DER of a token public key, normalized (and validated) by `cryptography`."""
    if public_key.key_type == KeyType.EC:
        point = public_key[Attribute.EC_POINT]
        # PKCS#11 says DER OCTET STRING around the point; some tokens return the raw 65-byte point.
        if len(point) != 65:
            point = asn1_core.OctetString.load(point).native
        info = asn1_keys.PublicKeyInfo(
            {
                "algorithm": {
                    "algorithm": "ec",
                    "parameters": asn1_keys.ECDomainParameters.load(public_key[Attribute.EC_PARAMS]),
                },
                "public_key": point,
            }
        )
    elif public_key.key_type == KeyType.RSA:
        rsa_key = asn1_keys.RSAPublicKey(
            {
                "modulus": int.from_bytes(public_key[Attribute.MODULUS], "big"),
                "public_exponent": int.from_bytes(public_key[Attribute.PUBLIC_EXPONENT], "big"),
            }
        )
        info = asn1_keys.PublicKeyInfo.wrap(rsa_key, "rsa")
    else:
        raise ValueError("not an EC or RSA key")
    return _spki_der(serialization.load_der_public_key(info.dump()))


@dataclass(frozen=True)
class _TokenKey:
    """A key pair on the token: the private key's handle and what was read from its public half once."""

    private: Any
    key_id: bytes
    algorithm: str
    spki: bytes
    mechanism: Mechanism


class Pkcs11KeyStore:
    """The device key on a PKCS#11 token (SoftHSM2 in tests, a TPM via tpm2-pkcs11 on a box).

    The key is generated on the token, sensitive and never extractable; signing and the certificate request's
    signature happen inside it. One session is opened and logged in on construction, reused until `close()`.

    The installed certificate is stored on the token too (CKO_CERTIFICATE, same label and CKA_ID as the key):
    the device identity is then one thing. A `pkcs11:` URI finds key and certificate together for an OpenSSL
    pkcs11 provider doing mutual TLS, and backing up or swapping the token moves both.

    Labels (CKA_LABEL), with `<label>` the key label: `<label>` the key in force, its public key and
    certificate; `<label>.next` a renewal's pending pair; `<label>.new` a replacement key (`generate`) before
    its commit; `<label>.old` the key in force while a renewal switches. Each pair has its own random CKA_ID,
    which its certificate shares. `_settle` (run on every open, and to finish every change) says how an
    interrupted change is finished or rolled back.

    PKCS#11 login is per process, so only one store per token may be open at a time in a process.
    """

    def __init__(
        self,
        module_path: str,
        token_label: str,
        pin: str,
        key_label: str = "fiscalbox-device",
        pin_env: str = "FISCALBOX_TOKEN_PIN",
    ) -> None:
        self._key_label = key_label
        self._staging_label = key_label + ".new"
        self._renewal_label = key_label + ".next"
        self._retired_label = key_label + ".old"
        self._lock = threading.Lock()
        self._session: Any = None
        self._current: _TokenKey | None = None
        self._pending: _TokenKey | None = None
        self._certificate: bytes | None = None

        try:
            lib = pkcs11.lib(module_path)
            token = lib.get_token(token_label=token_label)
            self._mechanisms = frozenset(token.slot.get_mechanisms())
        except pkcs11.NoSuchToken as exc:
            raise FiscalError(
                "BOX_TOKEN",
                f"No key token labelled {token_label!r} was found; check that it is fitted and initialized.",
            ) from exc
        except pkcs11.PKCS11Error as exc:
            raise FiscalError(
                "BOX_TOKEN",
                f"The key token's driver {module_path} could not be used ({type(exc).__name__}); "
                "check the configured module path and that the token is fitted.",
            ) from exc
        try:
            self._session = token.open(rw=True, user_pin=pin)
        except (pkcs11.PinIncorrect, pkcs11.PinLenRange) as exc:
            raise FiscalError(
                "BOX_KEY_PASSPHRASE",
                f"The key token's PIN is wrong: correct the environment variable {pin_env} (the one "
                "[keys] pin_env names) before trying again, since repeated wrong PINs lock the token.",
            ) from exc
        except pkcs11.PinLocked as exc:
            raise FiscalError(
                "BOX_TOKEN",
                "The key token is locked after too many wrong PINs; its security officer must unlock it.",
            ) from exc
        except pkcs11.UserAlreadyLoggedIn as exc:
            raise FiscalError(
                "BOX_TOKEN",
                "The key token is already open in this program; close the other key store first.",
            ) from exc
        except pkcs11.PKCS11Error as exc:
            raise FiscalError(
                "BOX_TOKEN",
                f"The key token could not be opened ({type(exc).__name__}); "
                "check that it is fitted and working.",
            ) from exc
        try:
            with _token_errors("reading the device key"):
                self._settle()
                self._load()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Pkcs11KeyStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def algorithm(self) -> str | None:
        current = self._current
        return None if current is None else current.algorithm

    @property
    def pending_algorithm(self) -> str | None:
        pending = self._pending
        return None if pending is None else pending.algorithm

    def close(self) -> None:
        """Log out and close the session; the store cannot sign afterwards."""
        with self._lock:
            session, self._session = self._session, None
            if session is not None:
                with contextlib.suppress(pkcs11.PKCS11Error):
                    session.close()

    def generate(self, algorithm: str, replace: bool = False) -> None:
        """Make a new key pair on the token; refuses to replace a key unless `replace` is given.

        The new pair is made under "<label>.new" first; deleting the old private key is the commit point, and
        `_settle` (also run on every open) finishes or discards a replacement a power cut interrupted.
        Replacing removes the old key's certificate and any renewal under way as well.
        """
        _check_algorithm(algorithm)
        with self._lock:
            session = self._open_session()
            if self._current is not None and not replace:
                raise _key_exists()
            self._check_token_algorithm(algorithm)
            with _token_errors("generating the device key"):
                self._discard(self._staging_label)
                self._discard(self._renewal_label)
                self._pending = None
                self._generate_pair(session, algorithm, self._staging_label)
                if self._current is not None:
                    self._destroy(self._current.private)  # the commit point
                    self._current = None
                self._settle()
                self._load()

    def public_key_pem(self) -> bytes:
        return _spki_pem(self._in_force().spki)

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256 (DER) or RSA-2048 PKCS#1 v1.5, SHA-256 over `data` itself, inside the token."""
        with self._lock:
            self._open_session()
            return self._sign_with(self._in_force(), data)

    def certificate_request(self, common_name: str) -> bytes:
        """A PKCS#10 request signed on the token: the request info is built here and only its DER goes in."""
        with self._lock:
            self._open_session()
            key = self._in_force()
            return _certificate_request(common_name, key.spki, key.algorithm, partial(self._sign_with, key))

    def install_certificate(self, pem: bytes) -> None:
        """Store the certificate on the token: for the key in force, beside it (the new one is written before
        the old one is deleted, so a power cut never leaves the box without one); for a renewal's pending key,
        by switching to that key and this certificate together (see `_switch`). Refused for any other key."""
        with self._lock:
            session = self._open_session()
            current = self._in_force()
            pending = self._pending
            candidates = (current.spki,) if pending is None else (current.spki, pending.spki)
            certificate, which = _matching_certificate(pem, *candidates)
            der = certificate.public_bytes(serialization.Encoding.DER)
            if which == 0:
                with _token_errors("saving the certificate"):
                    old = self._objects(self._key_label, ObjectClass.CERTIFICATE)
                    self._create_certificate(session, der, self._key_label, current.key_id)
                    for previous in old:
                        self._destroy(previous)
                self._certificate = certificate.public_bytes(serialization.Encoding.PEM)
                return
            assert pending is not None
            with _token_errors("switching to the renewed key"):
                try:
                    self._switch(session, current, pending, der)
                except BaseException:
                    # Finish or roll back now, so this process goes on with a matching pair; if the token
                    # refuses, the next open does it.
                    with contextlib.suppress(pkcs11.PKCS11Error, FiscalError):
                        self._settle()
                        self._load()
                    raise

    def certificate_pem(self) -> bytes | None:
        return self._certificate

    def begin_renewal(self, algorithm: str) -> bytes:
        """Make a pending key pair under "<label>.next" (replacing an earlier one) and return its PEM public
        key; the key in force and its certificate stay in force until a certificate for it is installed."""
        _check_algorithm(algorithm)
        with self._lock:
            session = self._open_session()
            self._in_force()
            self._check_token_algorithm(algorithm)
            with _token_errors("generating the renewal key"):
                self._pending = None
                self._discard(self._renewal_label)
                self._generate_pair(session, algorithm, self._renewal_label)
                pending = self._read_pair(self._renewal_label)
            if pending is None:  # the token did not keep what it just made
                raise FiscalError(
                    "BOX_TOKEN", "The key token did not keep the renewal key; check that it is working."
                )
            self._pending = pending
            return _spki_pem(pending.spki)

    def renewal_request(self, common_name: str) -> bytes:
        """A certificate request for the pending key, signed by it on the token."""
        with self._lock:
            self._open_session()
            pending = self._pending
            if pending is None:
                raise _no_renewal()
            return _certificate_request(
                common_name, pending.spki, pending.algorithm, partial(self._sign_with, pending)
            )

    def cancel_renewal(self) -> None:
        """Destroy the pending key pair, if any."""
        with self._lock:
            self._open_session()
            with _token_errors("removing the renewal key"):
                self._pending = None
                self._discard(self._renewal_label)

    # -- internals; all called with self._lock held (a PKCS#11 session must not be used by two threads) --

    def _open_session(self) -> Any:
        if self._session is None:
            raise FiscalError("BOX_TOKEN", "The key token has been closed; restart the box.")
        return self._session

    def _in_force(self) -> _TokenKey:
        current = self._current
        if current is None:
            raise _key_missing()
        return current

    def _check_token_algorithm(self, algorithm: str) -> None:
        generation = Mechanism.EC_KEY_PAIR_GEN if algorithm == ECDSA_P256 else Mechanism.RSA_PKCS_KEY_PAIR_GEN
        if generation not in self._mechanisms or self._sign_mechanism(algorithm) is None:
            raise FiscalError(
                "BOX_KEY_ALGORITHM",
                f"This key token cannot make or use {algorithm} keys; choose the other key type.",
            )

    def _sign_mechanism(self, algorithm: str) -> Mechanism | None:
        """CKM_ECDSA_SHA256 when offered, else CKM_ECDSA over a host-side SHA-256 (SoftHSM2 2.6 has no
        CKM_ECDSA_SHA256); CKM_SHA256_RSA_PKCS for RSA."""
        preferences = {
            ECDSA_P256: (Mechanism.ECDSA_SHA256, Mechanism.ECDSA),
            RSA_2048: (Mechanism.SHA256_RSA_PKCS,),
        }[algorithm]
        return next((m for m in preferences if m in self._mechanisms), None)

    def _sign_with(self, key: _TokenKey, data: bytes) -> bytes:
        with _token_errors("signing"):
            if key.mechanism == Mechanism.ECDSA:
                raw = key.private.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
            else:
                raw = key.private.sign(data, mechanism=key.mechanism)
        if key.algorithm == ECDSA_P256:
            return encode_ecdsa_signature(raw)  # FDMS wants DER, the token gives r||s
        return raw

    def _switch(self, session: Any, current: _TokenKey, pending: _TokenKey, der: bytes) -> None:
        """Put the pending key and its certificate in force, in an order `_settle` can always finish or undo:

        1. the certificate is created under "<label>.next", with the pending key's CKA_ID;
        2. the private key in force is relabelled "<label>.old";
        3. the pending private key is relabelled "<label>": the commit point;
        4. `_settle` gives the new key's public key and certificate the label, and destroys the old key's
           objects (private key first).
        Until 3, the old key signs; the old private key is destroyed only after it.
        """
        self._create_certificate(session, der, self._renewal_label, pending.key_id)
        self._relabel(current.private, self._retired_label)
        self._relabel(pending.private, self._key_label)
        self._settle()
        self._load()

    def _settle(self) -> None:
        """Finish or roll back a change a power cut (or a token error) interrupted.

        The private keys decide. A private key under "<label>" is the key in force. If there is none, one
        under "<label>.old" is a renewal switch stopped before its commit (step 3 of `_switch`): it is
        relabelled back, and the renewal stays pending; failing that, one under "<label>.new" is a replacement
        whose commit (deleting the old private key) happened: it takes the label. Then every object under
        these four labels with the key in force's CKA_ID takes "<label>"; under "<label>.next" a complete
        pending pair (one private and one public key, one CKA_ID, not the one in force) stays; everything else
        (the retired key, uncommitted replacements, orphan halves, a certificate made for a switch that did
        not commit) is destroyed, private keys first. Each step leaves a state this rule maps to the same
        outcome, so an interrupted `_settle` is finished by the next.
        """
        current = self._one(self._key_label, ObjectClass.PRIVATE_KEY)
        if current is None:
            for label in (self._retired_label, self._staging_label):
                found = self._objects(label, ObjectClass.PRIVATE_KEY)
                if len(found) == 1:
                    self._relabel(found[0], self._key_label)
                    current = found[0]
                    break
        current_id = current[Attribute.ID] if current is not None else None
        pending_id = self._pending_pair_id(current_id)
        leftovers = []
        for label in (self._key_label, self._retired_label, self._staging_label, self._renewal_label):
            for obj in self._objects(label):
                object_id = obj[Attribute.ID]
                if current_id is not None and object_id == current_id:
                    if label != self._key_label:
                        self._relabel(obj, self._key_label)
                elif not (
                    label == self._renewal_label
                    and object_id == pending_id
                    and obj[Attribute.CLASS] != ObjectClass.CERTIFICATE
                ):
                    leftovers.append(obj)
        leftovers.sort(key=lambda obj: obj[Attribute.CLASS] != ObjectClass.PRIVATE_KEY)
        for obj in leftovers:
            self._destroy(obj)

    def _pending_pair_id(self, current_id: bytes | None) -> bytes | None:
        privates = [
            obj
            for obj in self._objects(self._renewal_label, ObjectClass.PRIVATE_KEY)
            if obj[Attribute.ID] != current_id
        ]
        if len(privates) != 1:
            return None
        pending_id: bytes = privates[0][Attribute.ID]
        publics = [
            obj
            for obj in self._objects(self._renewal_label, ObjectClass.PUBLIC_KEY)
            if obj[Attribute.ID] == pending_id
        ]
        return pending_id if len(publics) == 1 else None

    # The token operations that change what is stored, one method each (the crash tests interrupt them).

    def _relabel(self, obj: Any, label: str) -> None:
        obj[Attribute.LABEL] = label

    def _destroy(self, obj: Any) -> None:
        obj.destroy()

    def _create_certificate(self, session: Any, der: bytes, label: str, key_id: bytes) -> None:
        template = decode_x509_certificate(der)
        template.update(
            {Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.LABEL: label, Attribute.ID: key_id}
        )
        session.create_object(template)

    def _discard(self, label: str) -> None:
        """Destroy everything under `label`, private keys first."""
        found = self._objects(label)
        found.sort(key=lambda obj: obj[Attribute.CLASS] != ObjectClass.PRIVATE_KEY)
        for obj in found:
            self._destroy(obj)

    def _objects(self, label: str, object_class: ObjectClass | None = None) -> list[Any]:
        attrs: dict[Attribute, Any] = {Attribute.LABEL: label}
        if object_class is not None:
            attrs[Attribute.CLASS] = object_class
        return list(self._open_session().get_objects(attrs))

    def _one(self, label: str, object_class: ObjectClass) -> Any:
        found = self._objects(label, object_class)
        if len(found) > 1:
            raise FiscalError(
                "BOX_TOKEN",
                f"The key token holds {len(found)} keys labelled {label!r}; "
                "remove the extra ones with the token's tools.",
            )
        return found[0] if found else None

    def _generate_pair(self, session: Any, algorithm: str, label: str) -> None:
        """A signing-only pair under `label` with a fresh CKA_ID, sensitive and never extractable."""
        common = {
            "id": os.urandom(16),
            "label": label,
            "store": True,
            "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
            "private_template": {
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.PRIVATE: True,
                Attribute.DECRYPT: False,
                Attribute.UNWRAP: False,
                Attribute.DERIVE: False,
            },
            "public_template": {Attribute.ENCRYPT: False, Attribute.WRAP: False},
        }
        if algorithm == ECDSA_P256:
            parameters = session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                local=True,
            )
            parameters.generate_keypair(**common)
        else:
            session.generate_keypair(KeyType.RSA, 2048, **common)

    def _read_pair(self, label: str) -> _TokenKey | None:
        """The pair under `label`: its private key, and its public key read once."""
        private = self._one(label, ObjectClass.PRIVATE_KEY)
        if private is None:
            return None
        public = self._one(label, ObjectClass.PUBLIC_KEY)
        if public is None:
            raise FiscalError(
                "BOX_KEY_UNREADABLE",
                f"The key token holds the private key {label!r} without its public key; generate a new key.",
            )
        try:
            spki = _token_public_key_spki(public)
            algorithm = _algorithm_of(serialization.load_der_public_key(spki))
        except ValueError:
            algorithm = None
        if algorithm is None:
            raise FiscalError(
                "BOX_KEY_ALGORITHM",
                f"The key {label!r} on the token is of a type FDMS does not accept; "
                "generate an ECDSA P-256 or RSA-2048 key.",
            )
        mechanism = self._sign_mechanism(algorithm)
        if mechanism is None:
            raise FiscalError(
                "BOX_KEY_ALGORITHM",
                f"This key token cannot sign with its {algorithm} key the way FDMS requires; "
                "generate a key of the other type.",
            )
        return _TokenKey(private, private[Attribute.ID], algorithm, spki, mechanism)

    def _load(self) -> None:
        """Find the key in force, its certificate and a pending renewal key (unusable counts as none)."""
        self._current = self._read_pair(self._key_label)
        self._certificate = self._load_certificate() if self._current is not None else None
        self._pending = None
        if self._current is not None:
            with contextlib.suppress(FiscalError):
                self._pending = self._read_pair(self._renewal_label)

    def _load_certificate(self) -> bytes | None:
        """The newest certificate on the token for this key (two exist only if an install was interrupted)."""
        assert self._current is not None
        best: x509.Certificate | None = None
        for obj in self._objects(self._key_label, ObjectClass.CERTIFICATE):
            try:
                certificate = x509.load_der_x509_certificate(obj[Attribute.VALUE])
                if _spki_der(certificate.public_key()) != self._current.spki:
                    continue
            except (ValueError, TypeError):
                continue
            if best is None or certificate.not_valid_after_utc > best.not_valid_after_utc:
                best = certificate
        return None if best is None else best.public_bytes(serialization.Encoding.PEM)
