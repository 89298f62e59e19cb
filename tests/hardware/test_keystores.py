"""The key stores against real parts (SoftHSM2, files on disk, OpenSSL via `ssl`), checked as FDMS checks."""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from firmware.core.errors import FiscalError
from hardware import ALGORITHMS, ECDSA_P256, RSA_2048
from hardware.keystores import FileKeyStore, Pkcs11KeyStore

# The spec's own CN example (serial "SN: 001", device 187).
COMMON_NAME = "ZIMRA-SN: 001-0000000187"
# A receipt signature string in FDMS's format: signatures must be over exactly these bytes.
RECEIPT = b"321FISCALINVOICEZWL4322019-09-19T15:43:12945000A0250000B0.000350000C15.000150000D15.0001500000"
PASSPHRASE = b"correct horse battery staple"
KEY_LABEL = "fiscalbox-device"
STAGING_LABEL = KEY_LABEL + ".new"

# AlgorithmIdentifier DER as OpenSSL writes it: no parameters for ECDSA, NULL for RSA (RFC 5758, RFC 4055).
SIGNATURE_ALGORITHM_DER = {
    ECDSA_P256: bytes.fromhex("300a06082a8648ce3d040302"),
    RSA_2048: bytes.fromhex("300d06092a864886f70d01010b0500"),
}
SIGNATURE_ALGORITHM_OID = {
    ECDSA_P256: SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    RSA_2048: SignatureAlgorithmOID.RSA_WITH_SHA256,
}
OTHER = {ECDSA_P256: RSA_2048, RSA_2048: ECDSA_P256}


# --- helpers ------------------------------------------------------------------------------------------------


def verify(public_key: Any, signature: bytes, data: bytes) -> None:
    """FDMS's check: ECDSA (DER) or PKCS#1 v1.5, SHA-256 over the exact bytes; raises InvalidSignature."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    else:
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())


def new_private_key(algorithm: str) -> Any:
    if algorithm == ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def issue_certificate(public_key: Any, common_name: str, *, days: int = 365, issuer_key: Any = None) -> bytes:
    """A certificate shaped like FDMS's (clientAuth) for `public_key`.

    From a throwaway test CA, or self-signed when `issuer_key` is the subject's own private key.
    """
    self_signed = issuer_key is not None
    signer = issuer_key if self_signed else ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "ZW"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Zimbabwe Revenue Authority"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    issuer = subject if self_signed else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def certificate_for(store: Any, days: int = 365) -> bytes:
    """What FDMS would do: issue a certificate for the public key in the store's certificate request."""
    request = x509.load_pem_x509_csr(store.certificate_request(COMMON_NAME))
    return issue_certificate(request.public_key(), COMMON_NAME, days=days)


def reopen(store: Any, open_store: Callable[[], Any]) -> Any:
    if isinstance(store, Pkcs11KeyStore):
        store.close()
    return open_store()


def files(directory: Path) -> list[str]:
    """Every file under `directory`, as sorted relative paths."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def fiscal_error(call: Callable[[], Any]) -> FiscalError:
    with pytest.raises(FiscalError) as caught:
        call()
    return caught.value


@contextlib.contextmanager
def raw_session(token: Any) -> Iterator[Any]:
    """A session of our own on the test token, to look at (or tamper with) what the store left there."""
    session = pkcs11.lib(token.module).get_token(token_label=token.label).open(rw=True, user_pin=token.pin)
    try:
        yield session
    finally:
        session.close()


def stage_ec_pair(session: Any) -> bytes:
    """Leave a key pair under the staging label, as an interrupted replacement would; returns its SPKI PEM."""
    parameters = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
    )
    public, _ = parameters.generate_keypair(
        store=True,
        label=STAGING_LABEL,
        id=os.urandom(16),
        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
        private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
    )
    key = serialization.load_der_public_key(encode_ec_public_key(public))
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def objects(session: Any, label: str, object_class: ObjectClass | None = None) -> list[Any]:
    attrs: dict[Attribute, Any] = {Attribute.LABEL: label}
    if object_class is not None:
        attrs[Attribute.CLASS] = object_class
    return list(session.get_objects(attrs))


# --- both stores, both algorithms ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_signature_verifies_over_the_exact_bytes(open_store: Callable[[], Any], algorithm: str) -> None:
    store = open_store()
    store.generate(algorithm)
    assert store.algorithm == algorithm
    public_key = serialization.load_pem_public_key(store.public_key_pem())
    if algorithm == ECDSA_P256:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        assert public_key.curve.name == "secp256r1"
    else:
        assert isinstance(public_key, rsa.RSAPublicKey)
        assert public_key.key_size == 2048

    signatures = [store.sign(RECEIPT) for _ in range(3)]
    for signature in signatures:
        verify(public_key, signature, RECEIPT)
    with pytest.raises(InvalidSignature):
        verify(public_key, signatures[0], RECEIPT + b"0")

    if algorithm == ECDSA_P256:
        # DER, as FDMS requires (it rejects raw r||s): re-encoding the decoded integers gives the same bytes.
        r, s = decode_dss_signature(signatures[0])
        assert encode_dss_signature(r, s) == signatures[0]
        assert signatures[0][0] == 0x30
    else:
        assert len(signatures[0]) == 256
        assert len(set(signatures)) == 1  # PKCS#1 v1.5 is deterministic


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_certificate_request_has_only_the_common_name(open_store: Callable[[], Any], algorithm: str) -> None:
    store = open_store()
    store.generate(algorithm)
    pem = store.certificate_request(COMMON_NAME)

    assert pem.startswith(b"-----BEGIN CERTIFICATE REQUEST-----\n")
    assert pem.rstrip().endswith(b"-----END CERTIFICATE REQUEST-----")
    request = x509.load_pem_x509_csr(pem)
    assert request.is_signature_valid
    assert [(attribute.oid, attribute.value) for attribute in request.subject] == [
        (NameOID.COMMON_NAME, COMMON_NAME)
    ]
    assert (
        request.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == store.public_key_pem()
    )
    assert request.signature_algorithm_oid == SIGNATURE_ALGORITHM_OID[algorithm]
    assert len(request.extensions) == 0
    parsed = asn1_csr.CertificationRequest.load(request.public_bytes(serialization.Encoding.DER))
    assert parsed["signature_algorithm"].dump() == SIGNATURE_ALGORITHM_DER[algorithm]
    assert parsed["certification_request_info"]["version"].native == "v1"
    assert len(parsed["certification_request_info"]["attributes"]) == 0


def test_certificate_request_refuses_a_bad_name(open_store: Callable[[], Any]) -> None:
    store = open_store()
    store.generate(ECDSA_P256)
    for name in ("", "Z" * 65, "ZIMRA-SN001\n-0000000187"):
        assert fiscal_error(partial(store.certificate_request, name)).code == "BOX_CSR_NAME"
    assert x509.load_pem_x509_csr(store.certificate_request("Z" * 64)).is_signature_valid


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_matching_certificate_is_installed_and_survives_reopening(
    open_store: Callable[[], Any], algorithm: str
) -> None:
    store = open_store()
    store.generate(algorithm)
    assert store.certificate_pem() is None
    certificate = certificate_for(store)

    store.install_certificate(certificate)
    assert store.certificate_pem() == certificate

    reopened = reopen(store, open_store)
    assert reopened.certificate_pem() == certificate
    assert reopened.algorithm == algorithm
    public_key = x509.load_pem_x509_certificate(reopened.certificate_pem()).public_key()
    verify(public_key, reopened.sign(RECEIPT), RECEIPT)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_mismatching_certificate_is_refused_and_changes_nothing(
    open_store: Callable[[], Any], algorithm: str
) -> None:
    store = open_store()
    store.generate(algorithm)
    public_pem = store.public_key_pem()
    installed = certificate_for(store)
    store.install_certificate(installed)

    for stranger in (new_private_key(algorithm), new_private_key(OTHER[algorithm])):
        wrong = issue_certificate(stranger.public_key(), COMMON_NAME)
        error = fiscal_error(partial(store.install_certificate, wrong))
        assert error.code == "BOX_CERT_MISMATCH"
        assert store.certificate_pem() == installed

    reopened = reopen(store, open_store)
    assert reopened.certificate_pem() == installed
    assert reopened.public_key_pem() == public_pem


def test_unreadable_certificate_is_refused(open_store: Callable[[], Any]) -> None:
    store = open_store()
    store.generate(ECDSA_P256)
    assert fiscal_error(lambda: store.install_certificate(b"not a certificate")).code == "BOX_CERT_INVALID"
    assert store.certificate_pem() is None
    assert reopen(store, open_store).certificate_pem() is None


def test_nothing_works_before_a_key_exists(open_store: Callable[[], Any]) -> None:
    store = open_store()
    assert store.algorithm is None
    assert store.certificate_pem() is None
    someone = issue_certificate(new_private_key(ECDSA_P256).public_key(), COMMON_NAME)
    for call in (
        lambda: store.sign(RECEIPT),
        store.public_key_pem,
        lambda: store.certificate_request(COMMON_NAME),
        lambda: store.install_certificate(someone),
    ):
        assert fiscal_error(call).code == "BOX_KEY_MISSING"


def test_unknown_algorithm_is_refused_and_makes_no_key(open_store: Callable[[], Any]) -> None:
    store = open_store()
    for algorithm in ("ECDSA_P384", "ED25519", "ecdsa_p256", ""):
        assert fiscal_error(partial(store.generate, algorithm)).code == "BOX_KEY_ALGORITHM"
    assert store.algorithm is None
    assert reopen(store, open_store).algorithm is None


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_existing_key_is_replaced_only_when_asked(open_store: Callable[[], Any], algorithm: str) -> None:
    store = open_store()
    store.generate(algorithm)
    before = store.public_key_pem()
    certificate = certificate_for(store)
    store.install_certificate(certificate)

    for again in (algorithm, OTHER[algorithm]):
        assert fiscal_error(partial(store.generate, again)).code == "BOX_KEY_EXISTS"
        assert store.public_key_pem() == before
        assert store.certificate_pem() == certificate

    store.generate(OTHER[algorithm], replace=True)
    after = store.public_key_pem()
    assert after != before
    assert store.algorithm == OTHER[algorithm]
    assert store.certificate_pem() is None  # it certified the old key
    verify(serialization.load_pem_public_key(after), store.sign(RECEIPT), RECEIPT)

    reopened = reopen(store, open_store)
    assert reopened.public_key_pem() == after
    assert reopened.algorithm == OTHER[algorithm]
    assert reopened.certificate_pem() is None
    old_key = x509.load_pem_x509_certificate(certificate).public_key()
    with pytest.raises(InvalidSignature):
        verify(old_key, reopened.sign(RECEIPT), RECEIPT)


# --- the encrypted file -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_key_file_is_owner_only_encrypted_and_written_whole(tmp_path: Path, algorithm: str) -> None:
    directory = tmp_path / "keys"
    old_umask = os.umask(0)  # even a careless umask must not make the key readable by others
    try:
        store = FileKeyStore(directory, PASSPHRASE)
        store.generate(algorithm)
    finally:
        os.umask(old_umask)

    data = store.key_path.read_bytes()
    assert stat.S_IMODE(store.key_path.stat().st_mode) == 0o600
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(data, password=None)
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(data, password=b"not the passphrase")
    key = serialization.load_pem_private_key(data, password=PASSPHRASE)
    assert (
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == store.public_key_pem()
    )
    assert files(directory) == ["current", "gen-1/device-key.pem", "gen-1/device-key.pub"]
    assert stat.S_IMODE((directory / "gen-1").stat().st_mode) == 0o700

    store.install_certificate(certificate_for(store))
    assert files(directory) == [
        "current",
        "gen-1/device-cert.pem",
        "gen-1/device-key.pem",
        "gen-1/device-key.pub",
    ]
    assert store.certificate_path.read_bytes() == store.certificate_pem()


def test_wrong_passphrase_is_refused_with_its_code(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path, PASSPHRASE)
    store.generate(ECDSA_P256)
    data = store.key_path.read_bytes()
    before = files(tmp_path)

    error = fiscal_error(lambda: FileKeyStore(tmp_path, b"correct horse battery stapler"))
    assert error.code == "BOX_KEY_PASSPHRASE"
    assert "correct horse" not in str(error)
    assert store.key_path.read_bytes() == data
    assert files(tmp_path) == before
    assert FileKeyStore(tmp_path, PASSPHRASE).algorithm == ECDSA_P256


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    assert fiscal_error(lambda: FileKeyStore(tmp_path, b"")).code == "BOX_KEY_PASSPHRASE"


def test_damaged_plain_or_foreign_key_files_are_refused(tmp_path: Path) -> None:
    key_path = tmp_path / "device-key.pem"
    key_path.write_bytes(
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    assert fiscal_error(lambda: FileKeyStore(tmp_path, PASSPHRASE)).code == "BOX_KEY_UNREADABLE"

    plain = new_private_key(ECDSA_P256).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path.write_bytes(plain)
    assert fiscal_error(lambda: FileKeyStore(tmp_path, PASSPHRASE)).code == "BOX_KEY_UNREADABLE"

    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE),
    )
    key_path.write_bytes(p384)
    assert fiscal_error(lambda: FileKeyStore(tmp_path, PASSPHRASE)).code == "BOX_KEY_ALGORITHM"


def test_key_is_decrypted_once_not_per_signature(tmp_path: Path) -> None:
    FileKeyStore(tmp_path, PASSPHRASE).generate(ECDSA_P256)
    store = FileKeyStore(tmp_path, PASSPHRASE)
    public_key = serialization.load_pem_public_key(store.public_key_pem())
    # If signing re-read the file, this would break it.
    store.key_path.write_bytes(b"gone")
    verify(public_key, store.sign(RECEIPT), RECEIPT)


def test_passphrase_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FISCALBOX_KEY_PASSPHRASE", "from the environment")
    store = FileKeyStore.from_environment(tmp_path)
    store.generate(ECDSA_P256)
    assert FileKeyStore(tmp_path, b"from the environment").public_key_pem() == store.public_key_pem()

    other = FileKeyStore.from_environment(
        tmp_path, "BOX_SECRET", environ={"BOX_SECRET": "from the environment"}
    )
    assert other.public_key_pem() == store.public_key_pem()

    monkeypatch.delenv("FISCALBOX_KEY_PASSPHRASE")
    error = fiscal_error(lambda: FileKeyStore.from_environment(tmp_path))
    assert error.code == "BOX_KEY_PASSPHRASE"
    assert "FISCALBOX_KEY_PASSPHRASE" in error.message


def test_tls_material_needs_a_key_and_a_certificate(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path, PASSPHRASE)
    assert fiscal_error(store.tls_key_material).code == "BOX_KEY_MISSING"
    store.generate(ECDSA_P256)
    assert fiscal_error(store.tls_key_material).code == "BOX_CERT_MISSING"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_encrypted_key_file_serves_mutual_tls_as_it_is(tmp_path: Path, algorithm: str) -> None:
    store = FileKeyStore(tmp_path / "keys", PASSPHRASE)
    store.generate(algorithm)
    # The test (not the box) decrypts the key once to self-sign a certificate for it.
    key = serialization.load_pem_private_key(store.key_path.read_bytes(), password=PASSPHRASE)
    device_certificate = issue_certificate(key.public_key(), COMMON_NAME, issuer_key=key)
    store.install_certificate(device_certificate)

    material = store.tls_key_material()
    assert material.keyfile == str(store.key_path)
    assert material.certfile == str(store.certificate_path)
    assert PASSPHRASE.decode() not in repr(material)

    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE  # this test is about the client's key; the server is ours
    client.load_cert_chain(material.certfile, material.keyfile, password=material.password)
    with pytest.raises(ssl.SSLError):
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
            material.certfile, material.keyfile, password=b"not the passphrase"
        )

    server_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "server-key.pem").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "server-cert.pem").write_bytes(
        issue_certificate(server_key.public_key(), "localhost", issuer_key=server_key)
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "server-cert.pem", tmp_path / "server-key.pem")
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cadata=device_certificate.decode())

    seen: dict[str, Any] = {}
    client_end, server_end = socket.socketpair()

    def serve() -> None:
        try:
            with server.wrap_socket(server_end, server_side=True) as tls:
                seen["peer"] = tls.getpeercert(binary_form=True)
                tls.sendall(b"ok")
        except Exception as exc:  # reported by the assertion below
            seen["error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    with client.wrap_socket(client_end) as tls:
        assert tls.recv(2) == b"ok"
    thread.join(timeout=10)

    assert "error" not in seen, seen.get("error")
    assert seen["peer"] == x509.load_pem_x509_certificate(device_certificate).public_bytes(
        serialization.Encoding.DER
    )
    assert files(tmp_path / "keys") == [
        "current",
        "gen-1/device-cert.pem",
        "gen-1/device-key.pem",
        "gen-1/device-key.pub",
    ]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_file_request_is_byte_for_byte_what_cryptography_builds(tmp_path: Path, algorithm: str) -> None:
    store = FileKeyStore(tmp_path, PASSPHRASE)
    store.generate(algorithm)
    key = serialization.load_pem_private_key(store.key_path.read_bytes(), password=PASSPHRASE)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    reference = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)]))
        .sign(key, hashes.SHA256())
    )
    ours = x509.load_pem_x509_csr(store.certificate_request(COMMON_NAME))
    assert ours.tbs_certrequest_bytes == reference.tbs_certrequest_bytes
    if algorithm == RSA_2048:  # deterministic signature: the whole request must match
        assert ours.public_bytes(serialization.Encoding.DER) == reference.public_bytes(
            serialization.Encoding.DER
        )


# --- the PKCS#11 token --------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_token_private_key_cannot_leave_the_token(softhsm_token: Any, algorithm: str) -> None:
    with Pkcs11KeyStore(softhsm_token.module, softhsm_token.label, softhsm_token.pin) as store:
        store.generate(algorithm)

    with raw_session(softhsm_token) as session:
        [private] = objects(session, KEY_LABEL, ObjectClass.PRIVATE_KEY)
        [public] = objects(session, KEY_LABEL, ObjectClass.PUBLIC_KEY)
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False
        assert private[Attribute.ALWAYS_SENSITIVE] is True
        assert private[Attribute.NEVER_EXTRACTABLE] is True
        assert private[Attribute.TOKEN] is True
        assert private[Attribute.PRIVATE] is True
        assert private[Attribute.SIGN] is True
        assert private[Attribute.DECRYPT] is False
        assert private[Attribute.ID] == public[Attribute.ID] != b""
        secret = Attribute.VALUE if algorithm == ECDSA_P256 else Attribute.PRIVATE_EXPONENT
        with pytest.raises(pkcs11.AttributeSensitive):
            private[secret]
        wrapping_key = session.generate_key(KeyType.AES, 256, capabilities=MechanismFlag.WRAP)
        with pytest.raises((pkcs11.KeyUnextractable, pkcs11.KeyNotWrappable)):
            wrapping_key.wrap_key(private, mechanism=pkcs11.Mechanism.AES_KEY_WRAP_PAD)


def test_token_pin_errors_are_told_apart(softhsm_token: Any, tmp_path: Path) -> None:
    token = softhsm_token
    error = fiscal_error(lambda: Pkcs11KeyStore(token.module, token.label, "0000"))
    assert error.code == "BOX_KEY_PASSPHRASE"
    assert "0000" not in str(error)
    assert fiscal_error(lambda: Pkcs11KeyStore(token.module, "no-such-token", token.pin)).code == "BOX_TOKEN"
    missing = str(tmp_path / "libmissing.so")
    assert fiscal_error(lambda: Pkcs11KeyStore(missing, token.label, token.pin)).code == "BOX_TOKEN"
    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        assert store.algorithm is None


def test_only_one_store_per_token_and_a_closed_store_refuses(softhsm_token: Any) -> None:
    token = softhsm_token
    store = Pkcs11KeyStore(token.module, token.label, token.pin)
    store.generate(ECDSA_P256)
    assert fiscal_error(lambda: Pkcs11KeyStore(token.module, token.label, token.pin)).code == "BOX_TOKEN"
    verify(serialization.load_pem_public_key(store.public_key_pem()), store.sign(RECEIPT), RECEIPT)

    store.close()
    store.close()
    assert fiscal_error(lambda: store.sign(RECEIPT)).code == "BOX_TOKEN"
    assert fiscal_error(lambda: store.generate(ECDSA_P256, replace=True)).code == "BOX_TOKEN"


def test_certificate_is_kept_on_the_token_beside_the_key(softhsm_token: Any) -> None:
    token = softhsm_token
    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        store.generate(ECDSA_P256)
        first = certificate_for(store, days=30)
        store.install_certificate(first)
        renewed = certificate_for(store, days=365)
        store.install_certificate(renewed)
        wrong = issue_certificate(new_private_key(ECDSA_P256).public_key(), COMMON_NAME)
        assert fiscal_error(lambda: store.install_certificate(wrong)).code == "BOX_CERT_MISMATCH"

    with raw_session(token) as session:
        [private] = objects(session, KEY_LABEL, ObjectClass.PRIVATE_KEY)
        certificates = list(session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE}))
        assert len(certificates) == 1
        assert certificates[0][Attribute.LABEL] == KEY_LABEL
        assert certificates[0][Attribute.ID] == private[Attribute.ID]
        assert certificates[0][Attribute.VALUE] == x509.load_pem_x509_certificate(renewed).public_bytes(
            serialization.Encoding.DER
        )

    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        assert store.certificate_pem() == renewed


def test_interrupted_replacement_before_its_commit_is_discarded(softhsm_token: Any) -> None:
    token = softhsm_token
    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        store.generate(ECDSA_P256)
        before = store.public_key_pem()
        certificate = certificate_for(store)
        store.install_certificate(certificate)
    with raw_session(token) as session:
        assert stage_ec_pair(session) != before  # power cut: new pair made, old key not yet deleted

    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        assert store.public_key_pem() == before
        assert store.certificate_pem() == certificate
        verify(serialization.load_pem_public_key(before), store.sign(RECEIPT), RECEIPT)
    with raw_session(token) as session:
        assert objects(session, STAGING_LABEL) == []
        assert len(objects(session, KEY_LABEL)) == 3  # private, public, certificate


@pytest.mark.parametrize("cut", ["after deleting the old key", "after relabelling the new private key"])
def test_interrupted_replacement_after_its_commit_is_completed(softhsm_token: Any, cut: str) -> None:
    token = softhsm_token
    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        store.generate(ECDSA_P256)
        before = store.public_key_pem()
        store.install_certificate(certificate_for(store))
    with raw_session(token) as session:
        staged = stage_ec_pair(session)
        [old_private] = objects(session, KEY_LABEL, ObjectClass.PRIVATE_KEY)
        old_private.destroy()
        if cut == "after relabelling the new private key":
            for leftover in objects(session, KEY_LABEL):
                leftover.destroy()
            [new_private] = objects(session, STAGING_LABEL, ObjectClass.PRIVATE_KEY)
            new_private[Attribute.LABEL] = KEY_LABEL

    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        assert store.public_key_pem() == staged != before
        assert store.certificate_pem() is None
        verify(serialization.load_pem_public_key(staged), store.sign(RECEIPT), RECEIPT)
    with raw_session(token) as session:
        assert objects(session, STAGING_LABEL) == []
        remaining = objects(session, KEY_LABEL)
        assert sorted(o[Attribute.CLASS] for o in remaining) == [
            ObjectClass.PUBLIC_KEY,
            ObjectClass.PRIVATE_KEY,
        ]
