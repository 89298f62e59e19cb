"""Registration, certificates, authentication and the HTTP surface of the FDMS simulator."""

from __future__ import annotations

import email.utils
import ssl
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fdms_rig import Device, FakeClock, Response, make_csr, request

from firmware.core import fdms
from sim.fdms.scenario import Model
from sim.fdms.server import FdmsSimulator


def test_register_device_issues_a_client_certificate_for_the_csr_key(device: Device) -> None:
    assert device.cert_path is not None
    cert = x509.load_pem_x509_certificate(device.cert_path.read_bytes())
    assert cert.version == x509.Version.v3
    assert cert.public_key().public_numbers() == device.key.public_key().public_numbers()
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "ZIMRA-FB-0001-0000010001"
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment and usage.key_encipherment
    assert not usage.key_cert_sign
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 364 <= days <= 366


SPEC_EXTRA = [
    x509.NameAttribute(NameOID.COUNTRY_NAME, "ZW"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Zimbabwe Revenue Authority"),
    x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Zimbabwe"),
]
FISCGUY_EXTRA = [  # the subject fiscguy's CSR carries beside the CN
    x509.NameAttribute(NameOID.COUNTRY_NAME, "ZW"),
    x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Harare"),
    x509.NameAttribute(NameOID.LOCALITY_NAME, "Harare"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Some Shop (Pvt) Ltd"),
    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "FDMS"),
]


@pytest.mark.parametrize("strict", [False, True])
def test_the_spec_s_extra_subject_fields_are_accepted(
    new_device: Callable[[int], Device], sim: FdmsSimulator, strict: bool
) -> None:
    sim.scenario.server.strict_csr_subject = strict
    made = new_device(10002)
    answer = made.register(make_csr(made.key, fdms.csr_common_name(made.serial, 10002), SPEC_EXTRA))
    assert answer.status == 200, answer.body


def test_other_subject_fields_are_accepted_unless_the_scenario_is_strict(
    new_device: Callable[[int], Device], sim: FdmsSimulator
) -> None:
    made = new_device(10002)
    csr = make_csr(made.key, fdms.csr_common_name(made.serial, 10002), FISCGUY_EXTRA)
    sim.scenario.server.strict_csr_subject = True
    refused = made.register(csr)
    assert (refused.status, refused.code) == (422, "DEV03")
    assert "stateOrProvinceName" in refused.body["detail"]
    sim.scenario.server.strict_csr_subject = False
    answer = made.register(csr)
    assert answer.status == 200, answer.body
    assert made.register(make_csr(made.key, "ZIMRA-FB-0002-10002", FISCGUY_EXTRA)).code == "DEV03"


@pytest.mark.parametrize(
    "common_name, extra",
    [
        ("ZIMRA-FB-0001-10001", []),  # ID not padded to 10 digits
        ("ZIMRA-FB-9999-0000010001", []),  # another serial
        ("ZIMRA-FB-0001-0000010002", []),  # another device
        ("ZIMRA-FB-0001-0000010001", [x509.NameAttribute(NameOID.COMMON_NAME, "ZIMRA-FB-0001-0000010001")]),
    ],
)
def test_a_bad_csr_subject_is_dev03(
    new_device: Callable[[int], Device], common_name: str, extra: list[x509.NameAttribute]
) -> None:
    made = new_device(10001)
    answer = made.register(make_csr(made.key, common_name, extra))
    assert (answer.status, answer.code) == (422, "DEV03")
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert made.sim.device_summary(10001)["certificates"] == 0


def test_a_csr_that_is_not_pem_or_not_self_signed_is_dev03(new_device: Callable[[int], Device]) -> None:
    made = new_device(10001)
    assert made.register("not a csr").code == "DEV03"
    good = made.csr()
    tampered = good.replace(good.splitlines()[5], good.splitlines()[5][::-1])
    assert made.register(tampered).code == "DEV03"


def test_a_wrong_activation_key_is_dev02_and_case_does_not_matter(
    new_device: Callable[[int], Device],
) -> None:
    made = new_device(10001)
    assert made.register(key="ZZZZ9999").code == "DEV02"
    assert made.register(key=made.sim.activation_keys[10001].lower()).status == 200


def test_unknown_device_is_dev01(new_device: Callable[[int], Device], sim: FdmsSimulator) -> None:
    answer = request(
        sim, "POST", "/Public/v1/777/RegisterDevice", {"activationKey": "x", "certificateRequest": "y"}
    )
    assert (answer.status, answer.code) == (422, "DEV01")


def test_any_model_pair_registers_by_default(sim: FdmsSimulator, new_device: Callable[[int], Device]) -> None:
    made = new_device(10002)
    body = {"activationKey": sim.activation_keys[10002], "certificateRequest": made.csr()}
    foreign = {"DeviceModelName": "Server", "DeviceModelVersion": "v1"}
    answer = request(sim, "POST", "/Public/v1/10002/RegisterDevice", body, headers=foreign)
    assert answer.status == 200, answer.body
    missing = request(sim, "POST", "/Public/v1/10002/RegisterDevice", body, headers={})
    assert missing.code == "DEV06" and "DeviceModelVersion" in missing.body["detail"]


def test_unknown_or_missing_model_is_dev06_and_names_what_was_received(
    sim: FdmsSimulator, device: Device
) -> None:
    sim.scenario.models = [Model("fiscalbox", "1.0")]
    body = {"activationKey": sim.activation_keys[10002], "certificateRequest": "irrelevant"}
    wrong = {"DeviceModelName": "fiscalbox", "DeviceModelVersion": "9.9"}
    refused = request(sim, "POST", "/Public/v1/10002/RegisterDevice", body, headers=wrong)
    assert refused.code == "DEV06"
    assert "'fiscalbox'" in refused.body["detail"] and "'9.9'" in refused.body["detail"]
    assert "'1.0'" in refused.body["detail"]  # and the pairs it knows
    assert request(sim, "POST", "/Public/v1/10002/RegisterDevice", body, headers={}).code == "DEV06"
    # device calls: a wrong pair is DEV06, no headers at all is accepted
    assert device.call("GET", "GetConfig", headers=wrong).code == "DEV06"
    assert device.call("GET", "GetConfig", headers={}).status == 200


def test_device_calls_need_a_certificate_issued_to_that_device(
    sim: FdmsSimulator, device: Device, new_device: Callable[[int], Device]
) -> None:
    other = new_device(10002)
    assert other.register().status == 200
    assert request(sim, "GET", "/Device/v1/10001/GetConfig").status == 401
    stolen = request(sim, "GET", "/Device/v1/10001/GetConfig", cert=other.cert)
    assert stolen.status == 401
    assert stolen.body["title"] == "Unauthorized" and stolen.body["operationID"]
    assert request(sim, "GET", "/Device/v1/10002/GetConfig", cert=other.cert).status == 200


def test_an_expired_certificate_is_401_and_a_renewed_one_works(
    sim: FdmsSimulator, clock: FakeClock, device: Device
) -> None:
    old = device.cert
    sim.scenario.server.certificate_days = 400
    renewed = device.call("POST", "IssueCertificate", {"certificateRequest": device.csr()})
    assert renewed.status == 200, renewed.body
    device.install(renewed.body["certificate"])
    # both are usable until the old one expires
    assert request(sim, "POST", "/Device/v1/10001/Ping", cert=old).status == 200
    clock.advance(370 * 86400)
    assert request(sim, "POST", "/Device/v1/10001/Ping", cert=old).status == 401
    assert device.call("POST", "Ping").status == 200
    config = device.call("GET", "GetConfig").body
    assert config["certificateValidTill"] > "2027-04"


def test_a_certificate_can_be_issued_to_expire_soon(
    sim: FdmsSimulator, clock: FakeClock, device: Device
) -> None:
    first = device.cert
    sim.scenario.server.certificate_days = 60 / 86400
    renewed = device.call("POST", "IssueCertificate", {"certificateRequest": device.csr()})
    device.install(renewed.body["certificate"])
    assert device.call("POST", "Ping").status == 200
    assert device.call("GET", "GetConfig").body["certificateValidTill"] == "2026-03-10T08:01:00"
    clock.advance(120)
    assert device.call("POST", "Ping").status == 401
    assert request(sim, "POST", "/Device/v1/10001/Ping", cert=first).status == 200


def test_issue_certificate_with_a_bad_csr_is_dev03(device: Device) -> None:
    answer = device.call("POST", "IssueCertificate", {"certificateRequest": device.csr("ZIMRA-X-0000010001")})
    assert answer.code == "DEV03"


def test_a_client_certificate_from_another_ca_is_refused_at_the_tls_layer(
    sim: FdmsSimulator, tmp_path, device: Device
) -> None:
    from sim.fdms.ca import TestCA

    stranger = TestCA(tmp_path / "stranger")
    issued = stranger.issue_device(device.csr(), device.serial, 10001, sim.now(), 10)
    cert_path = tmp_path / "stranger-cert.pem"
    cert_path.write_text(issued.pem)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(sim, "GET", "/Device/v1/10001/GetConfig", cert=(cert_path, device.key_path))


def test_routes_are_case_insensitive_and_wrong_methods_or_paths_are_refused(device: Device) -> None:
    sim = device.sim
    cert = device.cert
    assert request(sim, "GET", "/device/V1/10001/getconfig", cert=cert).status == 200
    assert request(sim, "GET", "/DEVICE/v1/10001/GETSTATUS", cert=cert).status == 200
    wrong = request(sim, "GET", "/Device/v1/10001/OpenDay", cert=cert)
    assert wrong.status == 405 and wrong.headers["allow"] == "POST"
    assert request(sim, "GET", "/Device/v1/10001/NoSuchThing", cert=cert).status == 404
    assert request(sim, "GET", "/Device/v2/10001/GetConfig", cert=cert).status == 404


def test_malformed_json_is_400_with_errors(device: Device) -> None:
    answer = device.call("POST", "OpenDay", b"{not json")
    assert answer.status == 400
    assert answer.body["errors"] and answer.body["status"] == 400
    missing = device.call("POST", "OpenDay", {"fiscalDayNo": 1})
    assert missing.status == 400 and "fiscalDayOpened" in missing.body["errors"]
    receipt = device.call("POST", "SubmitReceipt", {"receipt": {"receiptType": "Nonsense"}})
    assert receipt.status == 400 and receipt.body["errors"]


def test_every_answer_has_a_date_and_an_operation_id(
    sim: FdmsSimulator, clock: FakeClock, device: Device
) -> None:
    answer = device.call("POST", "Ping")
    assert answer.body["reportingFrequency"] == 5
    assert answer.headers["operationid"] == answer.body["operationID"]
    assert email.utils.parsedate_to_datetime(answer.headers["date"]).timestamp() == int(clock.now())
    problem = request(sim, "GET", "/nowhere")
    assert problem.status == 404 and problem.headers["operationid"] and "date" in problem.headers
    assert sim.device_summary(10001)["lastPing"] == "2026-03-10T08:00:00"


def test_verify_taxpayer_information(sim: FdmsSimulator) -> None:
    body = {"activationKey": "abcd1234", "deviceSerialNo": "FB-0001"}
    answer = request(sim, "POST", "/Public/v1/10001/VerifyTaxpayerInformation", body)
    assert answer.status == 200
    assert answer.body["taxPayerTIN"] == "2000123456" and answer.body["vatNumber"] == "220012345"
    assert answer.body["deviceBranchAddress"]["houseNo"] == "1"
    body["activationKey"] = "WRONG123"
    assert request(sim, "POST", "/Public/v1/10001/VerifyTaxpayerInformation", body).code == "DEV02"


def test_server_certificate_and_thumbprint(sim: FdmsSimulator) -> None:
    answer = request(sim, "GET", "/Public/v1/GetServerCertificate", headers={})
    assert answer.status == 200
    signing = x509.load_pem_x509_certificate(answer.body["certificate"][0].encode())
    assert fdms_thumbprint(signing) == sim.certificate_thumbprint
    found = request(
        sim, "GET", f"/Public/v1/GetServerCertificate?thumbprint={sim.certificate_thumbprint.lower()}"
    )
    assert found.status == 200
    assert request(sim, "GET", "/Public/v1/GetServerCertificate?thumbprint=" + "0" * 40).status == 404
    key = signing.public_key()
    text = "sign me"
    signed = sim.ca.sign(text)
    import base64

    key.verify(
        base64.b64decode(signed["signature"]),
        text.encode(),
        padding.PKCS1v15(),
        signing.signature_hash_algorithm,
    )  # type: ignore[union-attr, arg-type]


def fdms_thumbprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA1()).hex().upper()


def test_get_config_follows_the_scenario(device: Device) -> None:
    config = device.call("GET", "GetConfig").body
    taxes = {t["taxID"]: t for t in config["applicableTaxes"]}
    assert "taxPercent" not in taxes[1] and taxes[2]["taxPercent"] == 0
    assert taxes[3]["taxPercent"] == 15 and taxes[517]["taxPercent"] == 15.5
    assert config["deviceOperatingMode"] == "Online" and config["qrUrl"] == "https://fdmstest.zimra.co.zw"
    assert config["taxPayerDayMaxHrs"] == 24 and config["taxpayerDayEndNotificationHrs"] == 2
    device.sim.set_mode(10001, "Offline")
    assert device.call("GET", "GetConfig").body["deviceOperatingMode"] == "Offline"


def test_many_devices_at_once(sim: FdmsSimulator, new_device: Callable[[int], Device]) -> None:
    import threading

    devices = [new_device(i) for i in (10001, 10002, 10003)]
    for made in devices:
        assert made.register().status == 200
        assert made.open_day().status == 200
    bodies = {made.device_id: [made.receipt() for _ in range(5)] for made in devices}
    failures: list[object] = []

    def run(made: Device) -> None:
        for body in bodies[made.device_id]:
            answer = made.submit(body)
            if answer.status != 200 or answer.body.get("validationErrors"):
                failures.append(answer.body)

    threads = [threading.Thread(target=run, args=(made,)) for made in devices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    for made in devices:
        assert sim.device_summary(made.device_id)["receiptsHeld"] == 5


def test_the_stock_list_filters_sorts_and_pages(device: Device, sim: FdmsSimulator) -> None:
    def search(query: str = "") -> Response:
        path = f"/ProductsStock/v1/{device.device_id}/Search" + (f"?{query}" if query else "")
        return request(sim, "GET", path, cert=device.cert)

    everything = search().body
    assert everything["total"] == len(sim.scenario.stock) == len(everything["rows"])
    assert [r["hsCode"] for r in everything["rows"]] == sorted(s.hs_code for s in sim.scenario.stock)
    milk = search("goodName=MILK").body["rows"]
    assert [(r["goodName"], r["quantity"]) for r in milk] == [("Fresh milk 1l", 36.5)]
    assert milk[0]["taxPayerName"] == sim.scenario.taxpayer.name
    assert [r["hsCode"] for r in search("hsCode=1").body["rows"]] == ["11022000", "15179000"]
    by_quantity = search("sort=quantity&order=desc").body["rows"]
    assert [r["quantity"] for r in by_quantity] == [300, 120, 48, 36.5]
    page = search("offset=1&limit=2").body
    assert page["total"] == 4 and [r["hsCode"] for r in page["rows"]] == ["11022000", "15179000"]
    assert search("limit=101").status == 400 and search("sort=price").status == 400
    assert request(sim, "GET", f"/productsstock/v1/{device.device_id}/search").status == 401  # mTLS
