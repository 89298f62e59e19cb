"""Certificate renewal with a new key, in both key stores, against real files and real SoftHSM2 tokens.

The promise under test: the old key signs until a certificate for the new key is installed, then the new key
and its certificate are in force together, and an interruption at any step leaves a matching pair on the next
open (the new one once the commit point was passed).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import re
import shutil
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters
from pkcs11.util.x509 import decode_x509_certificate

from firmware.core.errors import FiscalError
from hardware import ECDSA_P256, RSA_2048
from hardware.keystores import FileKeyStore, Pkcs11KeyStore, _token_public_key_spki

COMMON_NAME = "ZIMRA-SN: 001-0000000187"
RECEIPT = b"321FISCALINVOICEZWL4322019-09-19T15:43:12945000A0250000B0.000350000C15.000150000D15.0001500000"
PASSPHRASE = b"correct horse battery staple"
LABEL = "fiscalbox-device"
ALL_LABELS = (LABEL, LABEL + ".next", LABEL + ".old", LABEL + ".new")
CA_KEY = ec.generate_private_key(ec.SECP256R1())


# --- helpers ------------------------------------------------------------------------------------------------


def public_key_of(pem: bytes) -> Any:
    """The public key in a PEM certificate or SubjectPublicKeyInfo."""
    if pem.startswith(b"-----BEGIN CERTIFICATE-----"):
        return x509.load_pem_x509_certificate(pem).public_key()
    return serialization.load_pem_public_key(pem)


def spki_pem(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def verifies(pem: bytes, signature: bytes, data: bytes = RECEIPT) -> bool:
    """FDMS's check of a device signature against a certificate's (or a public key's) key."""
    key = public_key_of(pem)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def certify(public_pem: bytes, days: int = 365) -> bytes:
    """What FDMS does with a request: a clientAuth certificate for its key, from a test CA."""
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")]))
        .public_key(public_key_of(public_pem))
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(CA_KEY, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def public_key_pem_of_stranger() -> bytes:
    return spki_pem(ec.generate_private_key(ec.SECP256R1()).public_key())


def fiscal_error(call: Callable[[], Any]) -> FiscalError:
    with pytest.raises(FiscalError) as caught:
        call()
    return caught.value


def assert_matching_pair(store: Any) -> bytes:
    """The store's certificate certifies the key it signs with; returns that certificate."""
    certificate = store.certificate_pem()
    assert certificate is not None
    assert spki_pem(public_key_of(certificate)) == store.public_key_pem()
    assert verifies(certificate, store.sign(RECEIPT))
    return bytes(certificate)


def files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


@contextlib.contextmanager
def raw_session(token: Any) -> Iterator[Any]:
    session = pkcs11.lib(token.module).get_token(token_label=token.label).open(rw=True, user_pin=token.pin)
    try:
        yield session
    finally:
        session.close()


def token_objects(token: Any) -> dict[str, list[tuple[ObjectClass, bytes]]]:
    """(class, CKA_ID) of every object under the store's labels; the store must be closed."""
    with raw_session(token) as session:
        return {
            label: sorted(
                (obj[Attribute.CLASS], obj[Attribute.ID])
                for obj in session.get_objects({Attribute.LABEL: label})
            )
            for label in ALL_LABELS
        }


def private_keys_at_rest(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> list[bytes]:
    """The public key (SPKI PEM) of every private key stored anywhere; a token store must be closed."""
    found = []
    if backend == "file":
        for path in (tmp_path / "keys").rglob("*"):
            data = path.read_bytes() if path.is_file() else b""
            if data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"):
                key = serialization.load_pem_private_key(data, password=PASSPHRASE)
                found.append(spki_pem(key.public_key()))
        return sorted(found)
    token = request.getfixturevalue("softhsm_token")
    with raw_session(token) as session:
        for private in list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})):
            publics = list(
                session.get_objects(
                    {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: private[Attribute.ID]}
                )
            )
            assert len(publics) == 1, "a private key on the token without exactly one public key"
            der = _token_public_key_spki(publics[0])
            found.append(spki_pem(serialization.load_der_public_key(der)))
    return sorted(found)


def close(store: Any) -> None:
    store.close()


def started(open_store: Callable[[], Any], algorithm: str = ECDSA_P256) -> tuple[Any, bytes]:
    """A store with a key and its certificate in force, as a registered box has; returns it and the cert."""
    store = open_store()
    store.generate(algorithm)
    certificate = certify(store.public_key_pem(), days=30)
    store.install_certificate(certificate)
    return store, certificate


# --- both stores --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"), [(ECDSA_P256, ECDSA_P256), (ECDSA_P256, RSA_2048), (RSA_2048, ECDSA_P256)]
)
def test_renewal_switches_key_and_certificate_together(
    open_store: Callable[[], Any],
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    old: str,
    new: str,
) -> None:
    store, old_certificate = started(open_store, old)
    old_public = store.public_key_pem()
    assert store.pending_algorithm is None

    new_public = store.begin_renewal(new)
    assert new_public != old_public
    assert store.pending_algorithm == new
    csr = x509.load_pem_x509_csr(store.renewal_request(COMMON_NAME))
    assert csr.is_signature_valid  # signed by the pending key itself
    assert spki_pem(csr.public_key()) == new_public
    assert [(a.oid, a.value) for a in csr.subject] == [(NameOID.COMMON_NAME, COMMON_NAME)]
    assert fiscal_error(lambda: store.renewal_request("")).code == "BOX_CSR_NAME"

    # Until the new certificate is installed, everything is the old key's: receipts, TLS, requests.
    assert store.algorithm == old
    assert store.public_key_pem() == old_public
    assert assert_matching_pair(store) == old_certificate
    assert spki_pem(x509.load_pem_x509_csr(store.certificate_request(COMMON_NAME)).public_key()) == old_public

    close(store)
    assert private_keys_at_rest(backend, request, tmp_path) == sorted([old_public, new_public])
    store = open_store()  # a restart mid-renewal keeps both
    assert store.pending_algorithm == new
    assert spki_pem(x509.load_pem_x509_csr(store.renewal_request(COMMON_NAME)).public_key()) == new_public
    assert assert_matching_pair(store) == old_certificate

    new_certificate = certify(new_public)
    store.install_certificate(new_certificate)
    assert store.algorithm == new
    assert store.pending_algorithm is None
    assert store.public_key_pem() == new_public
    assert assert_matching_pair(store) == new_certificate
    assert not verifies(old_certificate, store.sign(RECEIPT))
    assert fiscal_error(lambda: store.renewal_request(COMMON_NAME)).code == "BOX_NO_RENEWAL"
    assert fiscal_error(lambda: store.install_certificate(old_certificate)).code == "BOX_CERT_MISMATCH"

    close(store)
    assert private_keys_at_rest(backend, request, tmp_path) == [new_public]  # the old key is gone
    store = open_store()
    assert store.algorithm == new
    assert store.pending_algorithm is None
    assert assert_matching_pair(store) == new_certificate


def test_a_certificate_for_neither_key_is_refused_and_changes_nothing(
    open_store: Callable[[], Any], backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store, certificate = started(open_store)
    old_public = store.public_key_pem()
    new_public = store.begin_renewal(ECDSA_P256)
    for stranger in (ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)):
        wrong = certify(spki_pem(stranger.public_key()))
        assert fiscal_error(lambda: store.install_certificate(wrong)).code == "BOX_CERT_MISMATCH"  # noqa: B023
        assert store.public_key_pem() == old_public
        assert store.pending_algorithm == ECDSA_P256
        assert assert_matching_pair(store) == certificate
    assert fiscal_error(lambda: store.install_certificate(b"garbage")).code == "BOX_CERT_INVALID"

    close(store)
    assert private_keys_at_rest(backend, request, tmp_path) == sorted([old_public, new_public])
    store = open_store()
    assert store.public_key_pem() == old_public
    assert assert_matching_pair(store) == certificate
    store.install_certificate(certify(new_public))  # the renewal itself is unharmed
    assert store.public_key_pem() == new_public


def test_a_certificate_for_the_current_key_still_installs_during_a_renewal(
    open_store: Callable[[], Any],
) -> None:
    store, _ = started(open_store)
    new_public = store.begin_renewal(ECDSA_P256)
    reissued = certify(store.public_key_pem(), days=90)
    store.install_certificate(reissued)
    assert assert_matching_pair(store) == reissued
    assert store.pending_algorithm == ECDSA_P256
    store.install_certificate(certify(new_public))
    assert store.public_key_pem() == new_public


def test_cancel_and_restart_a_renewal(
    open_store: Callable[[], Any], backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store, certificate = started(open_store)
    old_public = store.public_key_pem()
    store.cancel_renewal()  # nothing to cancel: fine

    first = store.begin_renewal(ECDSA_P256)
    second = store.begin_renewal(RSA_2048)  # replaces the first
    assert store.pending_algorithm == RSA_2048
    assert fiscal_error(lambda: store.install_certificate(certify(first))).code == "BOX_CERT_MISMATCH"

    store.cancel_renewal()
    assert store.pending_algorithm is None
    assert fiscal_error(lambda: store.renewal_request(COMMON_NAME)).code == "BOX_NO_RENEWAL"
    assert fiscal_error(lambda: store.install_certificate(certify(second))).code == "BOX_CERT_MISMATCH"
    assert assert_matching_pair(store) == certificate

    close(store)
    assert private_keys_at_rest(backend, request, tmp_path) == [old_public]
    store = open_store()
    assert store.pending_algorithm is None
    assert store.public_key_pem() == old_public


def test_renewal_needs_a_key_and_an_accepted_algorithm(open_store: Callable[[], Any]) -> None:
    store = open_store()
    assert fiscal_error(lambda: store.begin_renewal(ECDSA_P256)).code == "BOX_KEY_MISSING"
    assert fiscal_error(lambda: store.renewal_request(COMMON_NAME)).code == "BOX_NO_RENEWAL"
    store.generate(ECDSA_P256)
    for algorithm in ("ECDSA_P384", "ED25519", ""):
        assert fiscal_error(lambda: store.begin_renewal(algorithm)).code == "BOX_KEY_ALGORITHM"  # noqa: B023
    assert store.pending_algorithm is None


def test_replacing_the_key_drops_a_renewal(
    open_store: Callable[[], Any], backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store, _ = started(open_store)
    pending = store.begin_renewal(ECDSA_P256)
    store.generate(ECDSA_P256, replace=True)
    replaced = store.public_key_pem()
    assert store.pending_algorithm is None
    assert store.certificate_pem() is None
    assert fiscal_error(lambda: store.install_certificate(certify(pending))).code == "BOX_CERT_MISMATCH"
    close(store)
    assert private_keys_at_rest(backend, request, tmp_path) == [replaced]


# --- the file store -----------------------------------------------------------------------------------------


def write_old_layout(directory: Path) -> tuple[bytes, bytes]:
    """A key folder exactly as the store wrote it before generations: device-key.pem + device-cert.pem."""
    directory.mkdir(mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE),
    )
    (directory / "device-key.pem").write_bytes(key_pem)
    (directory / "device-key.pem").chmod(0o600)
    certificate = certify(spki_pem(key.public_key()))
    (directory / "device-cert.pem").write_bytes(certificate)
    return spki_pem(key.public_key()), certificate


def contents(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in files(directory)}


def tls_loads(store: FileKeyStore) -> None:
    """OpenSSL itself refuses a certificate whose key is not the key file's."""
    material = store.tls_key_material()
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
        material.certfile, material.keyfile, material.password
    )


def test_a_store_in_the_old_layout_opens_unchanged_and_renews(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    public, certificate = write_old_layout(directory)
    before = contents(directory)

    store = FileKeyStore(directory, PASSPHRASE)
    assert store.algorithm == ECDSA_P256
    assert store.public_key_pem() == public
    assert assert_matching_pair(store) == certificate
    assert store.key_path == directory / "device-key.pem"
    tls_loads(store)
    assert contents(directory) == before  # opening wrote nothing

    new_public = store.begin_renewal(ECDSA_P256)
    assert files(directory) == ["device-cert.pem", "device-key.pem", "renewal-key.pem"]
    assert FileKeyStore(directory, PASSPHRASE).pending_algorithm == ECDSA_P256
    new_certificate = certify(new_public)
    store.install_certificate(new_certificate)
    assert files(directory) == [
        "current",
        "gen-1/device-cert.pem",
        "gen-1/device-key.pem",
        "gen-1/device-key.pub",
    ]
    assert store.key_path == directory / "gen-1" / "device-key.pem"
    tls_loads(store)
    reopened = FileKeyStore(directory, PASSPHRASE)
    assert reopened.public_key_pem() == new_public
    assert assert_matching_pair(reopened) == new_certificate


def test_damaged_pointer_is_refused_not_guessed(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path, PASSPHRASE)
    store.generate(ECDSA_P256)
    (tmp_path / "current").write_bytes(b"gen-7\n")
    assert fiscal_error(lambda: FileKeyStore(tmp_path, PASSPHRASE)).code == "BOX_KEY_UNREADABLE"
    (tmp_path / "current").write_bytes(b"../elsewhere\n")
    assert fiscal_error(lambda: FileKeyStore(tmp_path, PASSPHRASE)).code == "BOX_KEY_UNREADABLE"
    assert files(tmp_path) == [
        "current",
        "gen-1/device-key.pem",
        "gen-1/device-key.pub",
    ]  # nothing removed on a refusal


FILE_OPERATIONS = ("mkdir", "replace", "fsync", "unlink", "rmdir")


class FileFaults:
    """Make the k-th file operation (mkdir, rename, fsync, unlink, rmdir) fail with EIO, and with a power cut
    every later one too; logs the operations that succeeded as (operation, file name)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, k: int, power_cut: bool) -> None:
        self.done: list[tuple[str, str]] = []
        self.calls = 0
        for name in FILE_OPERATIONS:
            monkeypatch.setattr(os, name, self.wrap(name, getattr(os, name), k, power_cut))

    def wrap(self, name: str, real: Callable[..., Any], k: int, power_cut: bool) -> Callable[..., Any]:
        def operation(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == k or (power_cut and self.calls > k):
                raise OSError(errno.EIO, "injected failure")
            result = real(*args, **kwargs)
            target = args[1] if name == "replace" else args[0]
            self.done.append(
                (name, os.path.basename(target) if isinstance(target, str | os.PathLike) else "")
            )
            return result

        return operation


def generation_layout(names: list[str]) -> list[str]:
    """File names with the generation number blanked, since a retried switch uses a fresh one."""
    return sorted(re.sub(r"^gen-\d+/", "gen-N/", name) for name in names)


@pytest.mark.parametrize("layout", ["old layout", "generations"])
def test_file_switch_leaves_a_matching_pair_whatever_step_the_power_is_cut_at(
    tmp_path: Path, layout: str
) -> None:
    base = tmp_path / "base"
    if layout == "old layout":
        old_public, old_certificate = write_old_layout(base)
        old_files = ["device-cert.pem", "device-key.pem"]
    else:
        store, old_certificate = started(lambda: FileKeyStore(base, PASSPHRASE))
        old_public = store.public_key_pem()
        old_files = ["current", "gen-1/device-cert.pem", "gen-1/device-key.pem", "gen-1/device-key.pub"]
    new_public = FileKeyStore(base, PASSPHRASE).begin_renewal(ECDSA_P256)
    new_certificate = certify(new_public)
    new_files = ["current", "gen-N/device-cert.pem", "gen-N/device-key.pem", "gen-N/device-key.pub"]

    outcomes = []
    for k in range(1, 100):
        directory = tmp_path / f"cut-{k}"
        shutil.copytree(base, directory)
        store = FileKeyStore(directory, PASSPHRASE)
        with pytest.MonkeyPatch.context() as monkeypatch:
            faults = FileFaults(monkeypatch, k, power_cut=True)
            try:
                store.install_certificate(new_certificate)
            except FiscalError as exc:
                assert exc.code == "BOX_KEY_STORAGE"
        pointer_moved = ("replace", "current") in faults.done

        reopened = FileKeyStore(directory, PASSPHRASE)
        assert_matching_pair(reopened)
        tls_loads(reopened)
        if pointer_moved:
            assert reopened.public_key_pem() == new_public
            assert reopened.certificate_pem() == new_certificate
            assert reopened.pending_algorithm is None
            assert generation_layout(files(directory)) == new_files
        else:
            assert reopened.public_key_pem() == old_public
            assert reopened.certificate_pem() == old_certificate
            assert reopened.pending_algorithm == ECDSA_P256  # the renewal can simply be finished
            assert files(directory) == [*old_files, "renewal-key.pem"]
            reopened.install_certificate(new_certificate)
            assert reopened.public_key_pem() == new_public
        outcomes.append(pointer_moved)
        if faults.calls < k:  # the install ended before a k-th operation: every step has been cut
            break
    assert outcomes.count(False) >= 4  # cuts before the commit: key, cert, pointer writes
    assert outcomes.count(True) >= 3  # cuts after it: the pointer's fsync, removing the old key ...


def test_file_switch_failing_at_one_step_leaves_the_box_working(tmp_path: Path) -> None:
    """A storage error (not a power cut) at any one step: the running store keeps a matching pair, and
    trying again completes the renewal."""
    base = tmp_path / "base"
    write_old_layout(base)
    new_public = FileKeyStore(base, PASSPHRASE).begin_renewal(ECDSA_P256)
    new_certificate = certify(new_public)

    for k in range(1, 100):
        directory = tmp_path / f"fail-{k}"
        shutil.copytree(base, directory)
        store = FileKeyStore(directory, PASSPHRASE)
        with pytest.MonkeyPatch.context() as monkeypatch:
            faults = FileFaults(monkeypatch, k, power_cut=False)
            try:
                store.install_certificate(new_certificate)
            except FiscalError:
                assert_matching_pair(store)
                tls_loads(store)
                store.install_certificate(new_certificate)  # trying again
        assert store.public_key_pem() == new_public
        assert assert_matching_pair(store) == new_certificate
        reopened = FileKeyStore(directory, PASSPHRASE)
        assert reopened.public_key_pem() == new_public
        assert generation_layout(files(directory)) == [
            "current",
            "gen-N/device-cert.pem",
            "gen-N/device-key.pem",
            "gen-N/device-key.pub",
        ]
        if faults.calls < k:
            break


# --- the PKCS#11 token --------------------------------------------------------------------------------------


def test_token_keeps_the_pending_pair_under_its_own_label(softhsm_token: Any) -> None:
    token = softhsm_token
    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        store.generate(ECDSA_P256)
        store.install_certificate(certify(store.public_key_pem()))
        store.begin_renewal(ECDSA_P256)
    objects = token_objects(token)
    [(_, current_id)] = [o for o in objects[LABEL] if o[0] == ObjectClass.PRIVATE_KEY]
    assert [c for c, i in objects[LABEL] if i == current_id] == sorted(
        [ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.CERTIFICATE]
    )
    [(_, pending_id), _] = objects[LABEL + ".next"]
    assert pending_id != current_id
    assert sorted(c for c, _ in objects[LABEL + ".next"]) == [ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY]
    with raw_session(token) as session:
        [private] = session.get_objects(
            {Attribute.LABEL: LABEL + ".next", Attribute.CLASS: ObjectClass.PRIVATE_KEY}
        )
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False


def write_old_token_layout(session: Any) -> tuple[bytes, bytes]:
    """A token as the store left it before renewal existed: one pair and its certificate under the label."""
    key_id = os.urandom(16)
    parameters = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
    )
    public, _ = parameters.generate_keypair(
        store=True,
        label=LABEL,
        id=key_id,
        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
        private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
    )
    public_pem = spki_pem(serialization.load_der_public_key(_token_public_key_spki(public)))
    certificate = certify(public_pem)
    template = decode_x509_certificate(
        x509.load_pem_x509_certificate(certificate).public_bytes(serialization.Encoding.DER)
    )
    template.update({Attribute.TOKEN: True, Attribute.LABEL: LABEL, Attribute.ID: key_id})
    session.create_object(template)
    return public_pem, certificate


def test_a_token_in_the_old_layout_opens_and_renews(softhsm_token: Any) -> None:
    token = softhsm_token
    with raw_session(token) as session:
        public, certificate = write_old_token_layout(session)
    before = token_objects(token)
    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        assert store.public_key_pem() == public
        assert assert_matching_pair(store) == certificate
    assert token_objects(token) == before
    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        new_public = store.begin_renewal(ECDSA_P256)
        store.install_certificate(certify(new_public))
    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        assert store.public_key_pem() == new_public
        assert_matching_pair(store)
    objects = token_objects(token)
    assert [len(objects[label]) for label in ALL_LABELS] == [3, 0, 0, 0]


class TokenFaults:
    """Make the k-th token change (create, relabel, destroy) a store makes fail as a removed token does, and
    with a power cut every later one too; logs the changes that succeeded as (operation, label, class, id)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, k: int, power_cut: bool) -> None:
        self.done: list[tuple[str, str, Any, bytes]] = []
        self.calls = 0
        self.k = k
        self.power_cut = power_cut
        real_relabel = Pkcs11KeyStore._relabel
        real_destroy = Pkcs11KeyStore._destroy
        real_create = Pkcs11KeyStore._create_certificate

        def relabel(store: Pkcs11KeyStore, obj: Any, label: str) -> None:
            what = ("relabel", label, obj[Attribute.CLASS], obj[Attribute.ID])
            self.step()
            real_relabel(store, obj, label)
            self.done.append(what)

        def destroy(store: Pkcs11KeyStore, obj: Any) -> None:
            what = ("destroy", obj[Attribute.LABEL], obj[Attribute.CLASS], obj[Attribute.ID])
            self.step()
            real_destroy(store, obj)
            self.done.append(what)

        def create(store: Pkcs11KeyStore, session: Any, der: bytes, label: str, key_id: bytes) -> None:
            self.step()
            real_create(store, session, der, label, key_id)
            self.done.append(("create", label, ObjectClass.CERTIFICATE, key_id))

        monkeypatch.setattr(Pkcs11KeyStore, "_relabel", relabel)
        monkeypatch.setattr(Pkcs11KeyStore, "_destroy", destroy)
        monkeypatch.setattr(Pkcs11KeyStore, "_create_certificate", create)

    def step(self) -> None:
        self.calls += 1
        if self.calls == self.k or (self.power_cut and self.calls > self.k):
            raise pkcs11.exceptions.DeviceRemoved()


def renewal_ready(token: Any) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """Old key and certificate in force, a pending key and its certificate at hand; the store is closed."""
    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        store.generate(ECDSA_P256, replace=True)
        old_certificate = certify(store.public_key_pem())
        store.install_certificate(old_certificate)
        old_public = store.public_key_pem()
        new_public = store.begin_renewal(ECDSA_P256)
    [(_, new_id), _] = token_objects(token)[LABEL + ".next"]
    return old_public, old_certificate, new_public, certify(new_public), new_id


def test_token_switch_leaves_a_matching_pair_whatever_step_the_power_is_cut_at(softhsm_token: Any) -> None:
    token = softhsm_token
    outcomes = []
    for k in range(1, 100):
        old_public, old_certificate, new_public, new_certificate, new_id = renewal_ready(token)
        with pytest.MonkeyPatch.context() as monkeypatch:
            faults = TokenFaults(monkeypatch, k, power_cut=True)
            store = Pkcs11KeyStore(token.module, token.label, token.pin)
            try:
                store.install_certificate(new_certificate)
            except FiscalError as exc:
                assert exc.code == "BOX_TOKEN"
            store.close()
        committed = ("relabel", LABEL, ObjectClass.PRIVATE_KEY, new_id) in faults.done

        with Pkcs11KeyStore(token.module, token.label, token.pin) as store:  # recovery on open
            assert_matching_pair(store)
            if committed:
                assert store.public_key_pem() == new_public
                assert store.certificate_pem() == new_certificate
                assert store.pending_algorithm is None
            else:
                assert store.public_key_pem() == old_public
                assert store.certificate_pem() == old_certificate
                assert store.pending_algorithm == ECDSA_P256
        objects = token_objects(token)
        [in_force] = {key_id for _, key_id in objects[LABEL]}  # one pair and its certificate, nothing else
        assert len(objects[LABEL]) == 3
        assert (in_force == new_id) == committed
        assert objects[LABEL + ".old"] == objects[LABEL + ".new"] == []
        pending = [] if committed else [(ObjectClass.PUBLIC_KEY, new_id), (ObjectClass.PRIVATE_KEY, new_id)]
        assert objects[LABEL + ".next"] == sorted(pending)
        outcomes.append(committed)
        if faults.calls < k:
            break
    assert outcomes.count(False) == 3  # cut at: creating the certificate, retiring the old key, the commit
    assert outcomes.count(True) >= 5  # cut while tidying: the new key's other objects, destroying the old key


def test_token_switch_failing_at_one_step_is_settled_at_once(softhsm_token: Any) -> None:
    """A token error (not a power cut) at any one step: the store finishes or undoes the switch right away, so
    the running box has a matching pair, and trying again completes the renewal."""
    token = softhsm_token
    for k in range(1, 100):
        old_public, _, new_public, new_certificate, _ = renewal_ready(token)
        with pytest.MonkeyPatch.context() as monkeypatch:
            faults = TokenFaults(monkeypatch, k, power_cut=False)
            with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
                try:
                    store.install_certificate(new_certificate)
                except FiscalError:
                    assert_matching_pair(store)
                    assert store.public_key_pem() in (old_public, new_public)
                    if store.public_key_pem() == old_public:
                        store.install_certificate(new_certificate)
                assert store.public_key_pem() == new_public
                assert assert_matching_pair(store) == new_certificate
        objects = token_objects(token)
        assert [len(objects[label]) for label in ALL_LABELS] == [3, 0, 0, 0]
        if faults.calls < k:
            break


@pytest.mark.parametrize("leftover", ["public key only", "certificate only"])
def test_token_half_made_pending_key_is_removed_on_open(softhsm_token: Any, leftover: str) -> None:
    token = softhsm_token
    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        store.generate(ECDSA_P256)
        certificate = certify(store.public_key_pem())
        store.install_certificate(certificate)
        store.begin_renewal(ECDSA_P256)
    with raw_session(token) as session:  # what a power cut inside C_GenerateKeyPair or a switch might leave
        for obj in list(session.get_objects({Attribute.LABEL: LABEL + ".next"})):
            if leftover == "certificate only" or obj[Attribute.CLASS] == ObjectClass.PRIVATE_KEY:
                obj.destroy()
        if leftover == "certificate only":
            der = x509.load_pem_x509_certificate(certify(public_key_pem_of_stranger())).public_bytes(
                serialization.Encoding.DER
            )
            template = decode_x509_certificate(der)
            template.update({Attribute.TOKEN: True, Attribute.LABEL: LABEL + ".next", Attribute.ID: b"x"})
            session.create_object(template)
    with Pkcs11KeyStore(token.module, token.label, token.pin) as store:
        assert store.pending_algorithm is None
        assert assert_matching_pair(store) == certificate
    assert token_objects(token)[LABEL + ".next"] == []
