"""What the simulated FDMS knows: the taxpayer, its branch, taxes, device models and devices, and faults.

A scenario is a TOML file (read with tomllib) or built in Python (`Scenario.default()`, `Scenario.from_dict`).
Every table and key is optional; missing ones take the defaults of `Scenario.default()`:

```toml
[server]
host = "127.0.0.1"
port = 0                    # 0 = pick a free port
admin_port = 0              # the plain-HTTP admin server on 127.0.0.1 (0 = a free port)
state_dir = "fdms-state"    # relative to the scenario file; keys, certificates and the SQLite state
zone = "Africa/Harare"      # local time of serverDate, fiscal day times, certificateValidTill
qr_url = "https://fdmstest.zimra.co.zw"
allowed_skew_seconds = 300  # how far in the future a receiptDate may be before RCPT031
certificate_days = 365      # validity of issued device certificates (a float: 0.001 is about 86 s)
strict_csr_subject = false  # true: a CSR subject may carry only C=ZW, O=Zimbabwe Revenue Authority,
                            # ST=Zimbabwe beside the CN (DEV03 else); false: any other fields are accepted
close_delay_seconds = 0.2   # CloseDay and SubmitFile are processed this long after they are accepted
failed_close_status = "FiscalDayCloseFailed"  # or "FiscalDayOpened": how GetStatus reports a failed close

[taxpayer]
name = "Fiscalbox Test Shop (Pvt) Ltd"
tin = "2000123456"          # 10 characters
vat_number = "220012345"    # 9 characters; leave it out for a taxpayer that is not a VAT payer
day_max_hours = 24
day_end_notification_hours = 2
reporting_frequency_minutes = 5

[branch]
name = "Head Office"
province = "Harare"
city = "Harare"
street = "Samora Machel Avenue"
house_no = "1"
district = "CBD"            # optional
phone = "+263242000000"     # optional
email = "shop@example.co.zw"  # optional

currencies = ["USD", "ZWG"]  # a top-level key: write it before the first [table]

[[taxes]]                   # GetConfig applicableTaxes
id = 1
name = "Exempt"             # no percent: exempt
valid_from = "2023-01-01"
[[taxes]]
id = 3
name = "Standard rated 15%"
percent = "15"              # a string (or a number), exact
valid_from = "2023-01-01"
valid_till = "2025-12-31"   # optional

[[models]]                  # DeviceModelName / DeviceModelVersion pairs FDMS knows (others: DEV06);
                            # without any [[models]], every pair is accepted
name = "fiscalbox"
version = "1.0"

[[devices]]
id = 10001
serial = "FB-0001"
activation_key = "ABCD1234" # 8 characters, compared case-insensitively
mode = "Online"             # or "Offline"
model = "fiscalbox"         # optional, informational

[[stock]]                   # ProductsStock Search: the taxpayer's goods and their stock
hs_code = "11022000"
name = "Maize meal 10kg"
quantity = "120"            # exact decimal text

[faults.SubmitReceipt]      # per endpoint name, or "*" for every endpoint
rate = 0.3                  # 0..1: the share of calls that get a fault
kinds = ["500", "reset"]    # latency, 404, 500, 502, 429, reset, lost
latency_ms = 200            # for "latency"
seed = 7                    # the same seed gives the same faults on the same calls
```
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAULT_KINDS = ("latency", "404", "500", "502", "429", "reset", "lost")
MODES = ("Online", "Offline")
# How GetStatus reports a close that failed: the Swagger's own status, or (as another FDMS implementation
# does) the day open again with the fiscalDayClosingErrorCode beside it.
FAILED_CLOSE_STATUSES = ("FiscalDayCloseFailed", "FiscalDayOpened")


class ScenarioError(ValueError):
    """A scenario that cannot be used, naming the key that is wrong."""


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 0
    admin_port: int = 0
    state_dir: str = "fdms-state"
    zone: str = "Africa/Harare"
    qr_url: str = "https://fdmstest.zimra.co.zw"
    allowed_skew_seconds: int = 300
    certificate_days: float = 365
    strict_csr_subject: bool = False
    close_delay_seconds: float = 0.2
    failed_close_status: str = "FiscalDayCloseFailed"


@dataclass
class Taxpayer:
    name: str = "Fiscalbox Test Shop (Pvt) Ltd"
    tin: str = "2000123456"
    vat_number: str | None = "220012345"
    day_max_hours: int = 24
    day_end_notification_hours: int = 2
    reporting_frequency_minutes: int = 5


@dataclass
class Branch:
    name: str = "Head Office"
    province: str = "Harare"
    city: str = "Harare"
    street: str = "Samora Machel Avenue"
    house_no: str = "1"
    district: str | None = None
    phone: str | None = "+263242000000"
    email: str | None = "shop@example.co.zw"


@dataclass
class Tax:
    id: int
    name: str
    percent: str | None = None  # exact decimal text; None = exempt
    valid_from: str = "2023-01-01"
    valid_till: str | None = None


@dataclass
class Model:
    name: str
    version: str


@dataclass
class Device:
    id: int
    serial: str
    activation_key: str
    mode: str = "Online"
    model: str | None = None


@dataclass
class StockItem:
    hs_code: str
    name: str
    quantity: str = "0"  # exact decimal text


def default_stock() -> list[StockItem]:
    return [
        StockItem("11022000", "Maize meal 10kg", "120"),
        StockItem("15179000", "Cooking oil 2l", "48"),
        StockItem("04012000", "Fresh milk 1l", "36.5"),
        StockItem("34011100", "Soap bar", "300"),
    ]


@dataclass
class FaultSpec:
    rate: float = 1.0
    kinds: list[str] = field(default_factory=lambda: ["500"])
    latency_ms: int = 0
    seed: int | None = None


def default_taxes() -> list[Tax]:
    return [
        Tax(1, "Exempt", None),
        Tax(2, "Zero rated 0%", "0"),
        Tax(3, "Standard rated 15%", "15"),
        Tax(517, "Standard rated 15.5%", "15.5"),
    ]


def default_devices() -> list[Device]:
    return [
        Device(10001, "FB-0001", "ABCD1234"),
        Device(10002, "FB-0002", "EFGH5678"),
        Device(10003, "FB-0003", "JKLM9012"),
        Device(10004, "FB-0004", "NPQR3456", mode="Offline"),
    ]


@dataclass
class Scenario:
    server: ServerSettings = field(default_factory=ServerSettings)
    taxpayer: Taxpayer = field(default_factory=Taxpayer)
    branch: Branch = field(default_factory=Branch)
    currencies: list[str] = field(default_factory=lambda: ["USD", "ZWG"])
    taxes: list[Tax] = field(default_factory=default_taxes)
    models: list[Model] = field(default_factory=list)  # empty: any model pair is accepted
    devices: list[Device] = field(default_factory=default_devices)
    stock: list[StockItem] = field(default_factory=default_stock)
    faults: dict[str, FaultSpec] = field(default_factory=dict)
    base_dir: Path | None = None  # where a relative state_dir is resolved (the scenario file's folder)

    @classmethod
    def default(cls) -> Scenario:
        """One VAT taxpayer, taxes 1 exempt / 2 zero-rated / 3 15% / 517 15.5%, USD and ZWG, any device
        model, devices 10001-10003 Online and 10004 Offline."""
        return cls()

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ScenarioError(f"{path}: {error}") from None
        return cls.from_dict(data, base_dir=path.resolve().parent)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Path | None = None) -> Scenario:
        """A scenario from the TOML's shape (see the module docstring); missing parts take the defaults."""
        scenario = cls(base_dir=base_dir)
        known = {
            "server",
            "taxpayer",
            "branch",
            "currencies",
            "taxes",
            "models",
            "devices",
            "stock",
            "faults",
        }
        unknown = set(data) - known
        if unknown:
            raise ScenarioError(f"unknown scenario keys: {', '.join(sorted(unknown))}")
        scenario.server = _table(ServerSettings, data.get("server", {}), "server")
        scenario.taxpayer = _table(Taxpayer, data.get("taxpayer", {}), "taxpayer")
        scenario.branch = _table(Branch, data.get("branch", {}), "branch")
        if "currencies" in data:
            scenario.currencies = [str(c).upper() for c in _list(data["currencies"], "currencies")]
        if "taxes" in data:
            scenario.taxes = [
                _table(Tax, _tax_row(row), f"taxes[{i}]")
                for i, row in enumerate(_list(data["taxes"], "taxes"))
            ]
        if "models" in data:
            scenario.models = [
                _table(Model, row, f"models[{i}]") for i, row in enumerate(_list(data["models"], "models"))
            ]
        if "devices" in data:
            scenario.devices = [
                _table(Device, row, f"devices[{i}]")
                for i, row in enumerate(_list(data["devices"], "devices"))
            ]
        if "stock" in data:
            scenario.stock = [
                _table(
                    StockItem,
                    {k: str(v) for k, v in row.items()} if isinstance(row, dict) else row,
                    f"stock[{i}]",
                )
                for i, row in enumerate(_list(data["stock"], "stock"))
            ]
        faults = data.get("faults", {})
        if not isinstance(faults, dict):
            raise ScenarioError("faults must be a table of endpoint tables")
        scenario.faults = {name: _table(FaultSpec, spec, f"faults.{name}") for name, spec in faults.items()}
        scenario.check()
        return scenario

    def copy(self) -> Scenario:
        return copy.deepcopy(self)

    def check(self) -> None:
        """Raise ScenarioError for values FDMS could never have."""
        if len(self.taxpayer.tin) != 10:
            raise ScenarioError("taxpayer.tin must have exactly 10 characters")
        if self.taxpayer.vat_number is not None and len(self.taxpayer.vat_number) != 9:
            raise ScenarioError("taxpayer.vat_number must have exactly 9 characters")
        seen: set[int] = set()
        for device in self.devices:
            if device.id in seen or not 0 < device.id < 10**10:
                raise ScenarioError(f"devices: id {device.id} is repeated or out of range")
            seen.add(device.id)
            if len(device.activation_key) != 8:
                raise ScenarioError(f"devices: activation_key of {device.id} must have 8 characters")
            if device.mode not in MODES:
                raise ScenarioError(f"devices: mode of {device.id} must be Online or Offline")
        for tax in self.taxes:
            if tax.percent is not None:
                try:
                    float(tax.percent)
                except ValueError:
                    raise ScenarioError(f"taxes: percent of tax {tax.id} is not a number") from None
        if self.server.failed_close_status not in FAILED_CLOSE_STATUSES:
            raise ScenarioError(
                f"server.failed_close_status must be one of {', '.join(FAILED_CLOSE_STATUSES)}"
            )
        for name, spec in self.faults.items():
            check_fault(name, spec)

    def state_path(self, override: str | Path | None = None) -> Path:
        path = Path(override) if override is not None else Path(self.server.state_dir)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return path

    def device(self, device_id: int) -> Device | None:
        for device in self.devices:
            if device.id == device_id:
                return device
        return None

    def knows_model(self, name: str | None, version: str | None) -> bool:
        return not self.models or any(m.name == name and m.version == version for m in self.models)


def check_fault(name: str, spec: FaultSpec) -> None:
    if not 0.0 <= spec.rate <= 1.0:
        raise ScenarioError(f"faults.{name}: rate must be between 0 and 1")
    if not spec.kinds:
        raise ScenarioError(f"faults.{name}: kinds must not be empty")
    for kind in spec.kinds:
        if kind not in FAULT_KINDS:
            raise ScenarioError(f"faults.{name}: unknown kind {kind!r} (one of {', '.join(FAULT_KINDS)})")
    if spec.latency_ms < 0:
        raise ScenarioError(f"faults.{name}: latency_ms must not be negative")


def _tax_row(row: Any) -> Any:
    if isinstance(row, dict) and isinstance(row.get("percent"), (int, float)):
        row = dict(row)
        row["percent"] = str(row["percent"])
    return row


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ScenarioError(f"{where} must be a list")
    return value


def _table(kind: Any, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise ScenarioError(f"{where} must be a table")
    fields = kind.__dataclass_fields__
    unknown = set(values) - set(fields)
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    args = {}
    for key, value in values.items():
        if key == "kinds":
            value = [str(v) for v in _list(value, f"{where}.kinds")]
        args[key] = value
    try:
        return kind(**args)
    except TypeError as error:
        raise ScenarioError(f"{where}: {error}") from None
