"""The simulator's own test CA: root, HTTPS server certificate, FDMS's RSA signing key, device certificates.

Everything lives in `<state_dir>/ca/` as PEM files, created on first start and reused afterwards, so a device
registered against one run of the simulator still works after a restart:

- root.pem / root-key.pem: the CA (EC P-256). Devices trust root.pem (`FdmsSimulator.ca_cert_path`); device
  certificates, the server's TLS certificate and the FDMS signing certificate are issued by it.
- server.pem / server-key.pem: TLS server certificate for 127.0.0.1 and localhost (and the configured host).
- fdms-signing.pem / fdms-signing-key.pem: FDMS's RSA-2048 key for receiptServerSignature and
  fiscalDayServerSignature (PKCS#1 v1.5, SHA-256); its SHA-1 thumbprint is `certificateThumbprint`.

These are test keys for a simulator; they are stored unencrypted (mode 0600) and never logged.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from firmware.core import fdms

log = logging.getLogger(__name__)

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME: the TLS layer checks the chain, the simulator checks the dates itself
# so that an expired device certificate gets FDMS's 401 answer (and follows the simulated clock).
_NO_CHECK_TIME = 0x200000

ALLOWED_RDNS = {
    NameOID.COUNTRY_NAME: "ZW",
    NameOID.ORGANIZATION_NAME: "Zimbabwe Revenue Authority",
    NameOID.STATE_OR_PROVINCE_NAME: "Zimbabwe",
}


class CertificateRequestError(Exception):
    """A certificate request FDMS refuses (DEV03); the message says why."""


@dataclass(frozen=True)
class IssuedCertificate:
    pem: str
    serial: str  # hex, upper case
    device_id: int
    not_before: float  # UNIX seconds
    not_after: float


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def serial_hex(serial: int) -> str:
    return format(serial, "X")


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 over the DER certificate, 40 upper-case hex characters (FDMS's certificateThumbprint)."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # FDMS names its certificate by SHA-1


class TestCA:
    """Loads the CA from `directory`, creating whatever is missing."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, hosts: tuple[str, ...] = ()) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.root_cert_path = directory / "root.pem"
        self.server_cert_path = directory / "server.pem"
        self.server_key_path = directory / "server-key.pem"
        self.signing_cert_path = directory / "fdms-signing.pem"
        root_key_path = directory / "root-key.pem"
        signing_key_path = directory / "fdms-signing-key.pem"
        now = dt.datetime.now(dt.UTC)
        if not (self.root_cert_path.exists() and root_key_path.exists()):
            log.info("creating the simulator's root CA in %s", directory)
            root_key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "fiscalbox FDMS simulator root CA"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fiscalbox simulator"),
                ]
            )
            root = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(root_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
                )
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), False)
                .sign(root_key, hashes.SHA256())
            )
            _write_private(root_key_path, _key_pem(root_key))
            self.root_cert_path.write_bytes(root.public_bytes(serialization.Encoding.PEM))
            for stale in (self.server_cert_path, self.signing_cert_path):
                stale.unlink(missing_ok=True)
        loaded = serialization.load_pem_private_key(root_key_path.read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        self._root_key = loaded
        self.root = x509.load_pem_x509_certificate(self.root_cert_path.read_bytes())

        wanted_hosts = ("127.0.0.1", "localhost", *hosts)
        if not self.server_cert_path.exists() or not self._covers(wanted_hosts):
            self._make_server_cert(wanted_hosts, now)

        if not (self.signing_cert_path.exists() and signing_key_path.exists()):
            log.info("creating the FDMS signing key")
            signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            cert = (
                self._builder(_name("FDMS simulator signing"), signing_key.public_key(), now, 3650)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True
                )
                .sign(self._root_key, hashes.SHA256())
            )
            _write_private(signing_key_path, _key_pem(signing_key))
            self.signing_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key = serialization.load_pem_private_key(signing_key_path.read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self._signing_key = key
        self.signing_cert = x509.load_pem_x509_certificate(self.signing_cert_path.read_bytes())
        self.thumbprint = thumbprint(self.signing_cert)

    # -----------------------------------------------------------------------------------------------------
    # the server

    def _covers(self, hosts: tuple[str, ...]) -> bool:
        cert = x509.load_pem_x509_certificate(self.server_cert_path.read_bytes())
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        names = set(san.get_values_for_type(x509.DNSName))
        names |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        return all(host in names for host in hosts if host not in ("", "0.0.0.0", "::"))

    def _make_server_cert(self, hosts: tuple[str, ...], now: dt.datetime) -> None:
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            if host in ("", "0.0.0.0", "::"):
                continue
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._builder(_name("fdms simulator"), key.public_key(), now, 3650)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._root_key, hashes.SHA256())
        )
        _write_private(self.server_key_path, _key_pem(key))
        self.server_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _builder(
        self, subject: x509.Name, public_key: object, now: dt.datetime, days: float
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.root.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._root_key.public_key()), False
            )
        )

    def server_context(self) -> ssl.SSLContext:
        """TLS 1.2+, the server certificate, client certificates requested but optional and checked against
        the root (their dates are checked per request, against the simulated clock)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.server_cert_path, self.server_key_path)
        context.load_verify_locations(cafile=str(self.root_cert_path))
        context.verify_mode = ssl.CERT_OPTIONAL
        context.verify_flags = ssl.VerifyFlags(int(context.verify_flags) | _NO_CHECK_TIME)
        return context

    # -----------------------------------------------------------------------------------------------------
    # FDMS signatures

    def sign(self, text: str) -> dict[str, str]:
        """SignatureDataEx over `text`: {hash, signature, certificateThumbprint}."""
        signature = self._signing_key.sign(text.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
        return {
            "hash": fdms.hash_b64(text),
            "signature": base64.b64encode(signature).decode("ascii"),
            "certificateThumbprint": self.thumbprint,
        }

    def chain_pem(self) -> list[str]:
        return [
            self.signing_cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            self.root.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        ]

    # -----------------------------------------------------------------------------------------------------
    # device certificates

    def issue_device(
        self,
        csr_pem: object,
        serial_no: str,
        device_id: int,
        now: float,
        days: float,
        strict_subject: bool = False,
    ) -> IssuedCertificate:
        """A device certificate from a PEM CSR whose subject CN is exactly ZIMRA-<serial>-<10-digit id>;
        CertificateRequestError else. Other subject fields (fiscguy sends C, ST, L, O, OU) are accepted,
        whatever their values; with `strict_subject` only C=ZW, O=Zimbabwe Revenue Authority, ST=Zimbabwe
        are, each once, as the spec words it (whether FDMS itself is that strict is unknown)."""
        if not isinstance(csr_pem, str) or "BEGIN CERTIFICATE REQUEST" not in csr_pem:
            raise CertificateRequestError("certificateRequest must be a PEM certificate request")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise CertificateRequestError("certificateRequest is not a readable PKCS#10 request") from None
        try:
            valid = csr.is_signature_valid
        except (ValueError, InvalidSignature, TypeError):
            valid = False
        if not valid:
            raise CertificateRequestError("the request's signature does not verify")
        key = csr.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(key.curve, ec.SECP256R1):
                raise CertificateRequestError("an EC key must be on P-256")
        elif isinstance(key, rsa.RSAPublicKey):
            if key.key_size != 2048:
                raise CertificateRequestError("an RSA key must have 2048 bits")
        else:
            raise CertificateRequestError("the key must be EC P-256 or RSA-2048")
        want_cn = fdms.csr_common_name(serial_no, device_id)
        common_names = []
        for attribute in csr.subject:
            value = attribute.value if isinstance(attribute.value, str) else None
            if attribute.oid == NameOID.COMMON_NAME:
                common_names.append(value)
            elif strict_subject and ALLOWED_RDNS.get(attribute.oid) != value:
                raise CertificateRequestError(
                    f"subject field {attribute.oid._name} is not allowed with that value"
                )
        if common_names != [want_cn]:
            raise CertificateRequestError(f"subject CN must be exactly {want_cn}")
        oids = [a.oid for a in csr.subject]
        if strict_subject and len(oids) != len(set(oids)):
            raise CertificateRequestError("a subject field is repeated")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "ZW"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Zimbabwe Revenue Authority"),
                x509.NameAttribute(NameOID.COMMON_NAME, want_cn),
            ]
        )
        not_before = now - 300
        not_after = now + days * 86400
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.root.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(not_before))
            .not_valid_after(_utc(not_after))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, True, True, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._root_key.public_key()), False
            )
            .sign(self._root_key, hashes.SHA256())
        )
        return IssuedCertificate(
            pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            serial=serial_hex(cert.serial_number),
            device_id=device_id,
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
        )

    def client_identity(self, der: bytes) -> tuple[int, str, float, float] | None:
        """(device ID from the CN, serial, not_before, not_after) of a client certificate this CA issued to a
        device, or None. The TLS layer has already checked the chain; this checks the issuer again."""
        try:
            cert = x509.load_der_x509_certificate(der)
            root_key = self.root.public_key()
            assert isinstance(root_key, ec.EllipticCurvePublicKey)
            root_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
        except (ValueError, InvalidSignature, AssertionError):
            return None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(names) != 1 or not isinstance(names[0].value, str):
            return None
        cn = names[0].value
        if not cn.startswith("ZIMRA-") or len(cn) < 17 or cn[-11] != "-" or not cn[-10:].isdigit():
            return None
        return (
            int(cn[-10:]),
            serial_hex(cert.serial_number),
            cert.not_valid_before_utc.timestamp(),
            cert.not_valid_after_utc.timestamp(),
        )
