"""The one fixture that chooses what the end-to-end bodies run against: `box`.

By default it is the virtual box (sim/box.py: the real service on a pseudo-terminal, the virtual printer, the
FDMS simulator), started once for the session, provisioned and registered. With FISCALBOX_HIL_PORT (the real
box's serial port or a pyserial URL) and FISCALBOX_HIL_KEY (an operator key enrolled on it, PEM) set, it is
that box; FISCALBOX_HIL_POS_KEY names a POS key enrolled on it (without one, a POS key is made and enrolled by
the operator for the session, and revoked after). The bodies only use the link: `BoxClient` and the
`fiscalbox` host tool.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from host_tools.link import new_key
from sim.box import VirtualBox


@dataclass
class Target:
    """A box on the other end of a serial line, and the host keys that may talk to it."""

    port: str
    keys: dict[str, Path]
    virtual: VirtualBox | None = None
    clients: dict[str, Any] = field(default_factory=dict)

    def client(self, role: str = "pos") -> Any:
        """The `BoxClient` signing with the `role` key (one per role, kept open for the session)."""
        from host_tools.link import BoxClient

        if role not in self.clients:
            self.clients[role] = BoxClient(self.port, self.keys[role].read_bytes(), timeout=30)
        return self.clients[role]

    def fiscalbox(
        self, *args: str, role: str = "operator", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """The host tool as a person runs it (`fiscalbox --port P --key K ARGS`); the line is its own."""
        self.close_clients()
        command = [sys.executable, "-m", "host_tools.cli", "--port", self.port, "--key", str(self.keys[role])]
        result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, check=False)
        if check:
            assert result.returncode == 0, f"fiscalbox {' '.join(args)}: {result.stderr or result.stdout}"
        return result

    def fiscalbox_json(self, *args: str, role: str = "operator") -> Any:
        return json.loads(self.fiscalbox(*args, "--json", role=role).stdout)

    def close_clients(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self.clients.clear()


@pytest.fixture(scope="session")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    port = os.environ.get("FISCALBOX_HIL_PORT") or _labgrid_port(os.environ.get("LG_ENV"))
    operator = os.environ.get("FISCALBOX_HIL_KEY")
    if port or operator or os.environ.get("FISCALBOX_HIL_REAL"):
        if not (port and operator):
            pytest.exit(
                "the HIL lane needs FISCALBOX_HIL_PORT and FISCALBOX_HIL_KEY both (see tests/hil/README.md)",
                2,
            )
        yield from _real_box(port, Path(operator), tmp_path_factory.mktemp("hil"))
        return
    with VirtualBox(tmp_path_factory.mktemp("vbox")) as virtual:
        target = Target(virtual.port, dict(virtual.keys), virtual)
        yield target
        target.close_clients()


def _labgrid_port(env_file: str | None) -> str | None:
    """The RawSerialPort (or NetworkSerialPort, as an RFC 2217 URL) of a labgrid environment's target."""
    if not env_file:
        return None
    import yaml

    targets = yaml.safe_load(Path(env_file).read_text())["targets"]
    resources = next(iter(targets.values()))["resources"]
    if "RawSerialPort" in resources:
        return str(resources["RawSerialPort"]["port"])
    remote = resources["NetworkSerialPort"]
    return f"rfc2217://{remote['host']}:{remote['port']}"


def _real_box(port: str, operator: Path, scratch: Path) -> Iterator[Target]:
    keys = {"operator": operator}
    given = os.environ.get("FISCALBOX_HIL_POS_KEY")
    made = None
    if given:
        keys["pos"] = Path(given)
    else:  # a POS key for this session only
        keys["pos"] = scratch / "pos.pem"
        new_key(keys["pos"])
    target = Target(port, keys)
    if not given:
        made = target.client("operator").enroll(keys["pos"].read_bytes(), "pos", "HIL session")
    yield target
    if made is not None:
        target.client("operator").revoke(made["kid"])
    target.close_clients()
