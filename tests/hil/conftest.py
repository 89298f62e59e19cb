"""The one fixture that chooses what the end-to-end bodies run against: `box`.

By default it is the virtual box (sim/box.py: the real service on a pseudo-terminal, the virtual printer, the
FDMS simulator), started once for the session, provisioned and registered. With FISCALBOX_HIL_PORT (the real
box's serial port or a pyserial URL) and FISCALBOX_HIL_KEY (an operator key enrolled on it, PEM) set, it is
that box; FISCALBOX_HIL_POS_KEY names a POS key enrolled on it (without one, a POS key is made and enrolled by
the operator for the session, and revoked after). The bodies only use the link: `BoxClient` and the
`fiscalbox` host tool.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hil_target import Target  # noqa: E402

from host_tools.link import new_key  # noqa: E402
from sim.box import VirtualBox  # noqa: E402


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
