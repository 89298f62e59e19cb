"""Where the device's private key lives: a PKCS#11 token, or an encrypted PKCS#8 file where none is fitted.

Both stores implement `hardware.KeyStore` and behave the same from the outside: the same error codes, the same
signature encodings FDMS accepts (ECDSA P-256 DER / RSA-2048 PKCS#1 v1.5, SHA-256 over the exact bytes) and
byte-for-byte the same certificate request layout, because one builder (`_certificate_request`) serves both.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
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


def _matching_certificate(pem: bytes, spki_der: bytes) -> x509.Certificate:
    """Parse `pem` and insist that it certifies our key; refusing here is what keeps a wrong cert out."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
        public_key = certificate.public_key()
    except (ValueError, TypeError) as exc:
        raise FiscalError(
            "BOX_CERT_INVALID",
            "The certificate could not be read; paste the whole PEM text FDMS returned, "
            "from -----BEGIN CERTIFICATE----- to -----END CERTIFICATE-----.",
        ) from exc
    if _spki_der(public_key) != spki_der:
        raise FiscalError(
            "BOX_CERT_MISMATCH",
            "This certificate was issued for a different key than the one in this box; nothing was changed. "
            "Request a certificate with this box's current certificate request.",
        )
    return certificate


def _key_missing() -> FiscalError:
    return FiscalError("BOX_KEY_MISSING", "This box has no signing key yet; generate one first.")


def _key_exists() -> FiscalError:
    return FiscalError(
        "BOX_KEY_EXISTS",
        "This box already has a signing key; replacing it makes its certificate useless, "
        "so ask for replacement explicitly.",
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


class FileKeyStore:
    """The device key in an encrypted PKCS#8 PEM file (`device-key.pem`, 0600), its certificate beside it.

    For boxes without a token. The key is decrypted once, when the store opens (or on `generate`), and kept in
    memory: a receipt signature costs a signature, not a PBKDF2 run. Both files are replaced atomically.
    """

    KEY_FILE = "device-key.pem"
    CERT_FILE = "device-cert.pem"

    def __init__(self, directory: str | os.PathLike[str], passphrase: bytes) -> None:
        if not isinstance(passphrase, bytes) or not passphrase:
            raise FiscalError(
                "BOX_KEY_PASSPHRASE",
                "The key passphrase is empty; set one in the configuration or FISCALBOX_KEY_PASSPHRASE.",
            )
        self._directory = Path(directory)
        self._passphrase = passphrase
        self._lock = threading.Lock()
        self._key: _PrivateKey | None = None
        self._algorithm: str | None = None
        self._spki: bytes = b""
        self._certificate: bytes | None = None
        if self.key_path.exists():
            self._load_key()
            self._load_certificate()

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
        return cls(directory, passphrase.encode("utf-8"))

    @property
    def key_path(self) -> Path:
        return self._directory / self.KEY_FILE

    @property
    def certificate_path(self) -> Path:
        return self._directory / self.CERT_FILE

    @property
    def algorithm(self) -> str | None:
        return self._algorithm

    def generate(self, algorithm: str, replace: bool = False) -> None:
        """Make a new key and save it encrypted; refuses to overwrite a key unless `replace` is given.

        Replacing also removes the certificate, which belonged to the old key and can no longer be used.
        """
        _check_algorithm(algorithm)
        with self._lock:
            if self._key is not None and not replace:
                raise _key_exists()
            key: _PrivateKey = (
                ec.generate_private_key(ec.SECP256R1())
                if algorithm == ECDSA_P256
                else rsa.generate_private_key(public_exponent=65537, key_size=2048)
            )
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(self._passphrase),
            )
            try:
                self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise FiscalError(
                    "BOX_KEY_STORAGE",
                    f"The key folder could not be created ({exc.strerror}); check the storage card.",
                ) from exc
            _write_atomically(self.key_path, pem, 0o600)
            self._use_key(key)
            self._certificate = None
            # A certificate left behind (a power cut right here) no longer matches and is ignored on load.
            with contextlib.suppress(OSError):
                self.certificate_path.unlink()
                _fsync_directory(self._directory)

    def public_key_pem(self) -> bytes:
        if self._key is None:
            raise _key_missing()
        return _spki_pem(self._spki)

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256 (DER) or RSA-2048 PKCS#1 v1.5, SHA-256 over `data` itself."""
        if self._key is None:
            raise _key_missing()
        return signatures.sign(self._key, data)

    def certificate_request(self, common_name: str) -> bytes:
        if self._key is None or self._algorithm is None:
            raise _key_missing()
        return _certificate_request(common_name, self._spki, self._algorithm, self.sign)

    def install_certificate(self, pem: bytes) -> None:
        """Save the certificate FDMS issued, but only if it is for this store's key."""
        with self._lock:
            if self._key is None:
                raise _key_missing()
            certificate = _matching_certificate(pem, self._spki)
            normalized = certificate.public_bytes(serialization.Encoding.PEM)
            _write_atomically(self.certificate_path, normalized, 0o644)
            self._certificate = normalized

    def certificate_pem(self) -> bytes | None:
        return self._certificate

    def close(self) -> None:
        """Nothing to release: the key lives in memory until the process ends."""

    def tls_key_material(self) -> TlsKeyMaterial:
        """Paths and password for mutual TLS: `ctx.load_cert_chain(m.certfile, m.keyfile, m.password)`."""
        if self._key is None:
            raise _key_missing()
        if self._certificate is None:
            raise FiscalError(
                "BOX_CERT_MISSING",
                "This box has no certificate yet; register the device with FDMS first.",
            )
        return TlsKeyMaterial(str(self.certificate_path), str(self.key_path), self._passphrase)

    def _use_key(self, key: _PrivateKey) -> None:
        self._spki = _spki_der(key.public_key())
        self._algorithm = _algorithm_of(key.public_key())
        self._key = key

    def _load_key(self) -> None:
        try:
            data = self.key_path.read_bytes()
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
                f"{self.key_path} is not encrypted, so it was not written by this box; "
                "restore the key from a backup or generate a new one.",
            ) from exc
        except ValueError as exc:
            if _is_encrypted_pkcs8(data):
                raise FiscalError(
                    "BOX_KEY_PASSPHRASE",
                    "The key passphrase is wrong (or the key file is damaged); "
                    "check the passphrase in the configuration or FISCALBOX_KEY_PASSPHRASE.",
                ) from exc
            raise FiscalError(
                "BOX_KEY_UNREADABLE",
                f"{self.key_path} is damaged; restore the key from a backup or generate a new one.",
            ) from exc
        if (
            not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
            or _algorithm_of(key.public_key()) is None
        ):
            raise FiscalError(
                "BOX_KEY_ALGORITHM",
                f"{self.key_path} holds a key type FDMS does not accept; "
                "generate an ECDSA P-256 or RSA-2048 key.",
            )
        self._use_key(key)

    def _load_certificate(self) -> None:
        """Load the certificate if it is for the current key; a stale or unreadable one counts as none."""
        try:
            pem = self.certificate_path.read_bytes()
            certificate = _matching_certificate(pem, self._spki)
        except (OSError, FiscalError):
            return
        self._certificate = certificate.public_bytes(serialization.Encoding.PEM)


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


class Pkcs11KeyStore:
    """The device key on a PKCS#11 token (SoftHSM2 in tests, a TPM via tpm2-pkcs11 on a box).

    The key is generated on the token, sensitive and never extractable; signing and the certificate request's
    signature happen inside it. One session is opened and logged in on construction, reused until `close()`.

    The installed certificate is stored on the token too (CKO_CERTIFICATE, same label and CKA_ID as the key):
    the device identity is then one thing. A `pkcs11:` URI finds key and certificate together for an OpenSSL
    pkcs11 provider doing mutual TLS, and backing up or swapping the token moves both.

    PKCS#11 login is per process, so only one store per token may be open at a time in a process.
    """

    def __init__(
        self, module_path: str, token_label: str, pin: str, key_label: str = "fiscalbox-device"
    ) -> None:
        self._key_label = key_label
        self._staging_label = key_label + ".new"
        self._lock = threading.Lock()
        self._session: Any = None
        self._private: Any = None
        self._key_id: bytes = b""
        self._algorithm: str | None = None
        self._spki: bytes = b""
        self._mechanism: Mechanism | None = None
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
                "The key token's PIN is wrong; correct it in the configuration before trying again, "
                "since repeated wrong PINs lock the token.",
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
        return self._algorithm

    def close(self) -> None:
        """Log out and close the session; the store cannot sign afterwards."""
        with self._lock:
            session, self._session = self._session, None
            self._private = None
            if session is not None:
                with contextlib.suppress(pkcs11.PKCS11Error):
                    session.close()

    def generate(self, algorithm: str, replace: bool = False) -> None:
        """Make a new key pair on the token; refuses to replace a key unless `replace` is given.

        The new pair is made under a staging label first; deleting the old private key is the commit point,
        and `_settle` (also run on every open) finishes or discards a replacement a power cut interrupted.
        Replacing removes the old key's certificate as well.
        """
        _check_algorithm(algorithm)
        with self._lock:
            session = self._open_session()
            if self._private is not None and not replace:
                raise _key_exists()
            generation = (
                Mechanism.EC_KEY_PAIR_GEN if algorithm == ECDSA_P256 else Mechanism.RSA_PKCS_KEY_PAIR_GEN
            )
            if generation not in self._mechanisms or self._sign_mechanism(algorithm) is None:
                raise FiscalError(
                    "BOX_KEY_ALGORITHM",
                    f"This key token cannot make or use {algorithm} keys; choose the other key type.",
                )
            with _token_errors("generating the device key"):
                for leftover in self._objects(label=self._staging_label):
                    leftover.destroy()
                self._generate_pair(session, algorithm)
                old = self._private
                if old is not None:
                    old.destroy()  # the commit point
                self._private = None
                self._settle()
                self._load()

    def public_key_pem(self) -> bytes:
        if self._algorithm is None:
            raise _key_missing()
        return _spki_pem(self._spki)

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256 (DER) or RSA-2048 PKCS#1 v1.5, SHA-256 over `data` itself, inside the token."""
        with self._lock:
            return self._sign_locked(data)

    def certificate_request(self, common_name: str) -> bytes:
        """A PKCS#10 request signed on the token: the request info is built here and only its DER goes in."""
        with self._lock:
            self._open_session()
            if self._private is None or self._algorithm is None:
                raise _key_missing()
            return _certificate_request(common_name, self._spki, self._algorithm, self._sign_locked)

    def install_certificate(self, pem: bytes) -> None:
        """Store the certificate on the token next to the key, if it is for this key; the new one is written
        before the old one is deleted, so a power cut never leaves the box without one."""
        with self._lock:
            session = self._open_session()
            if self._private is None:
                raise _key_missing()
            certificate = _matching_certificate(pem, self._spki)
            der = certificate.public_bytes(serialization.Encoding.DER)
            with _token_errors("saving the certificate"):
                old = list(self._objects(label=self._key_label, object_class=ObjectClass.CERTIFICATE))
                template = decode_x509_certificate(der)
                template.update(
                    {
                        Attribute.TOKEN: True,
                        Attribute.PRIVATE: False,
                        Attribute.LABEL: self._key_label,
                        Attribute.ID: self._key_id,
                    }
                )
                session.create_object(template)
                for previous in old:
                    previous.destroy()
            self._certificate = certificate.public_bytes(serialization.Encoding.PEM)

    def certificate_pem(self) -> bytes | None:
        return self._certificate

    # -- internals; all called with self._lock held (a PKCS#11 session must not be used by two threads) --

    def _open_session(self) -> Any:
        if self._session is None:
            raise FiscalError("BOX_TOKEN", "The key token has been closed; restart the box.")
        return self._session

    def _sign_mechanism(self, algorithm: str) -> Mechanism | None:
        """CKM_ECDSA_SHA256 when offered, else CKM_ECDSA over a host-side SHA-256 (SoftHSM2 2.6 has no
        CKM_ECDSA_SHA256); CKM_SHA256_RSA_PKCS for RSA."""
        preferences = {
            ECDSA_P256: (Mechanism.ECDSA_SHA256, Mechanism.ECDSA),
            RSA_2048: (Mechanism.SHA256_RSA_PKCS,),
        }[algorithm]
        return next((m for m in preferences if m in self._mechanisms), None)

    def _sign_locked(self, data: bytes) -> bytes:
        self._open_session()
        if self._private is None:
            raise _key_missing()
        with _token_errors("signing"):
            if self._mechanism == Mechanism.ECDSA:
                raw = self._private.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
            else:
                raw = self._private.sign(data, mechanism=self._mechanism)
        if self._algorithm == ECDSA_P256:
            return encode_ecdsa_signature(raw)  # FDMS wants DER, the token gives r||s
        return raw

    def _objects(self, label: str, object_class: ObjectClass | None = None) -> list[Any]:
        attrs: dict[Attribute, Any] = {Attribute.LABEL: label}
        if object_class is not None:
            attrs[Attribute.CLASS] = object_class
        return list(self._session.get_objects(attrs))

    def _one(self, object_class: ObjectClass) -> Any:
        found = self._objects(label=self._key_label, object_class=object_class)
        if len(found) > 1:
            raise FiscalError(
                "BOX_TOKEN",
                f"The key token holds {len(found)} keys labelled {self._key_label!r}; "
                "remove the extra ones with the token's tools.",
            )
        return found[0] if found else None

    def _generate_pair(self, session: Any, algorithm: str) -> None:
        """A signing-only pair under the staging label, sensitive and never extractable."""
        common = {
            "id": os.urandom(16),
            "label": self._staging_label,
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

    def _settle(self) -> None:
        """Finish or discard a key replacement that was interrupted, so exactly one key carries the label.

        No private key under the label but one under the staging label means the old key was already
        deleted (the commit point): the staged pair takes the label and the old key's leftovers go. Otherwise
        the staged objects belong to a replacement that never committed, except those sharing the committed
        key's CKA_ID (a power cut between relabelling the private and the public key).
        """
        current = self._one(ObjectClass.PRIVATE_KEY)
        staged = self._objects(label=self._staging_label, object_class=ObjectClass.PRIVATE_KEY)
        if current is None and len(staged) == 1:
            for leftover in self._objects(label=self._key_label):
                leftover.destroy()
            staged[0][Attribute.LABEL] = self._key_label
            current = staged[0]
        current_id = current[Attribute.ID] if current is not None else None
        for obj in self._objects(label=self._staging_label):
            if current_id is not None and obj[Attribute.ID] == current_id:
                obj[Attribute.LABEL] = self._key_label
            else:
                obj.destroy()

    def _load(self) -> None:
        """Find the key, its public half and its certificate; the public key is read once and kept."""
        private = self._one(ObjectClass.PRIVATE_KEY)
        if private is None:
            self._private, self._algorithm, self._spki, self._mechanism = None, None, b"", None
            self._key_id, self._certificate = b"", None
            return
        public = self._one(ObjectClass.PUBLIC_KEY)
        if public is None:
            raise FiscalError(
                "BOX_KEY_UNREADABLE",
                f"The key token holds the private key {self._key_label!r} without its public key; "
                "generate a new key.",
            )
        try:
            spki = _token_public_key_spki(public)
            algorithm = _algorithm_of(serialization.load_der_public_key(spki))
        except ValueError:
            algorithm = None
        if algorithm is None:
            raise FiscalError(
                "BOX_KEY_ALGORITHM",
                f"The key {self._key_label!r} on the token is of a type FDMS does not accept; "
                "generate an ECDSA P-256 or RSA-2048 key.",
            )
        mechanism = self._sign_mechanism(algorithm)
        if mechanism is None:
            raise FiscalError(
                "BOX_KEY_ALGORITHM",
                f"This key token cannot sign with its {algorithm} key the way FDMS requires; "
                "generate a key of the other type.",
            )
        self._private, self._algorithm, self._spki, self._mechanism = private, algorithm, spki, mechanism
        self._key_id = private[Attribute.ID]
        self._certificate = self._load_certificate()

    def _load_certificate(self) -> bytes | None:
        """The newest certificate on the token for this key (two exist only if an install was interrupted)."""
        best: x509.Certificate | None = None
        for obj in self._objects(label=self._key_label, object_class=ObjectClass.CERTIFICATE):
            try:
                certificate = x509.load_der_x509_certificate(obj[Attribute.VALUE])
                if _spki_der(certificate.public_key()) != self._spki:
                    continue
            except (ValueError, TypeError):
                continue
            if best is None or certificate.not_valid_after_utc > best.not_valid_after_utc:
                best = certificate
        return None if best is None else best.public_bytes(serialization.Encoding.PEM)
