"""`fiscalbox-device`: configuration loading and giving the box its identity, with real key stores."""

import datetime
import json

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firmware import config as configuration
from firmware.core.errors import FiscalError
from firmware.main import main

ENV = {"FISCALBOX_KEY_PASSPHRASE": "pass phrase"}


def write_config(tmp_path, extra=""):
    path = tmp_path / "box.toml"
    path.write_text(
        '[device]\nid = 187\nserial = "SN: 001"\n\n'
        f'[keys]\nstore = "file"\ndirectory = "{tmp_path / "keys"}"\n' + extra
    )
    return str(path)


def run(config_path, *args, env=None):
    return CliRunner().invoke(main, ["--config", config_path, *args], env=env or ENV)


def issue(csr_pem: bytes) -> bytes:
    """What FDMS does with a request: a certificate for its public key, signed by a CA."""
    csr = x509.load_pem_x509_csr(csr_pem)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test FDMS CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_name)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_defaults_file_and_environment_layer(tmp_path):
    path = write_config(tmp_path)
    cfg = configuration.load(path, environ={"FISCALBOX_DEVICE_ID": "42", "FISCALBOX_KEYS_STORE": "pkcs11"})
    assert cfg.device["serial"] == "SN: 001"
    assert cfg.device["id"] == 42
    assert cfg.keys["store"] == "pkcs11"
    assert cfg.keys["passphrase_env"] == "FISCALBOX_KEY_PASSPHRASE"


@pytest.mark.parametrize(
    "text, where",
    [
        ('[device]\nid = "187"\n', "device.id"),
        ("[device]\ncolour = 1\n", "device.colour"),
        ("[printer]\nx = 1\n", "printer.x"),
        ("[usb]\nport = 1\n", "usb"),
        ("[device\n", None),
    ],
)
def test_bad_configuration_is_refused_clearly(tmp_path, text, where):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(FiscalError) as caught:
        configuration.load(path, environ={})
    assert caught.value.code == "BOX_CONFIG"
    assert caught.value.field == where


def test_environment_values_are_checked(tmp_path):
    with pytest.raises(FiscalError) as caught:
        configuration.load(None, environ={"FISCALBOX_DEVICE_ID": "one"})
    assert caught.value.field == "device.id"


def test_file_store_identity_from_key_to_certificate(tmp_path):
    path = write_config(tmp_path)
    generated = run(path, "key", "generate")
    assert generated.exit_code == 0, generated.output
    assert generated.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    again = run(path, "key", "generate")
    assert again.exit_code == 2 and "BOX_KEY_EXISTS" in again.stderr
    csr_result = run(path, "key", "csr")
    csr = x509.load_pem_x509_csr(csr_result.stdout.encode())
    assert csr.subject.rfc4514_string() == "CN=ZIMRA-SN: 001-0000000187"
    assert csr.is_signature_valid
    cert_path = tmp_path / "cert.pem"
    cert_path.write_bytes(issue(csr_result.stdout.encode()))
    installed = run(path, "key", "install-cert", str(cert_path))
    assert installed.exit_code == 0, installed.output
    shown = json.loads(run(path, "key", "show", "--json").stdout)
    assert shown["algorithm"] == "ECDSA_P256"
    assert shown["certificate"]["subject"] == "CN=ZIMRA-SN: 001-0000000187"


def test_a_certificate_for_another_key_is_refused(tmp_path):
    path = write_config(tmp_path)
    run(path, "key", "generate", "--algorithm", "rsa")
    other = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(other, hashes.SHA256())
    )
    cert_path = tmp_path / "other.pem"
    cert_path.write_bytes(issue(csr.public_bytes(serialization.Encoding.PEM)))
    result = run(path, "key", "install-cert", str(cert_path))
    assert result.exit_code == 2 and "BOX_CERT_MISMATCH" in result.stderr
    assert "none installed" in run(path, "key", "show").stdout


def test_missing_secret_names_the_variable(tmp_path):
    result = run(write_config(tmp_path), "key", "generate", env={"FISCALBOX_KEY_PASSPHRASE": ""})
    assert result.exit_code == 2
    assert "FISCALBOX_KEY_PASSPHRASE" in result.stderr and "BOX_CONFIG" in result.stderr


def test_csr_needs_the_device_identity(tmp_path):
    path = tmp_path / "box.toml"
    path.write_text(f'[keys]\ndirectory = "{tmp_path / "keys"}"\n')
    run(str(path), "key", "generate")
    result = run(str(path), "key", "csr")
    assert result.exit_code == 2 and "device.id" in result.stderr


def test_token_store_is_chosen_by_configuration(tmp_path, softhsm_token):
    extra = f'pkcs11_module = "{softhsm_token.module}"\ntoken_label = "{softhsm_token.label}"\n'
    path = write_config(tmp_path, extra)
    env = {"FISCALBOX_TOKEN_PIN": softhsm_token.pin, "FISCALBOX_KEYS_STORE": "pkcs11"}
    assert run(path, "key", "generate", env=env).exit_code == 0
    csr = x509.load_pem_x509_csr(run(path, "key", "csr", env=env).stdout.encode())
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey) and csr.is_signature_valid
    assert not (tmp_path / "keys").exists()  # nothing written beside the token
