"""Real parts shared by every test folder: a fresh SoftHSM2 token per test."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest

SOFTHSM_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/arm-linux-gnueabihf/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)

TOKEN_LABEL = "fiscal"
USER_PIN = "1234"
SO_PIN = "5678"


def find_softhsm_module() -> str:
    """The SoftHSM2 PKCS#11 module; `make system` installs it, so its absence is an error, not a skip."""
    for candidate in (os.environ.get("SOFTHSM2_MODULE", ""), *SOFTHSM_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return candidate
    raise RuntimeError("libsofthsm2.so not found: install softhsm2 (make system) or set SOFTHSM2_MODULE")


@dataclass(frozen=True)
class SoftToken:
    module: str
    label: str
    pin: str
    so_pin: str


@pytest.fixture
def softhsm_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftToken]:
    """A freshly initialized SoftHSM2 token whose files live in this test's tmp_path."""
    module = find_softhsm_module()
    util = shutil.which("softhsm2-util")
    assert util, "softhsm2-util not found: install softhsm2 (make system)"
    token_dir = tmp_path / "tokens"
    token_dir.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {token_dir}\nobjectstore.backend = file\nlog.level = ERROR\n"
        "slots.removable = false\n"
    )
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    subprocess.run(
        [util, "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", USER_PIN, "--so-pin", SO_PIN],
        check=True,
        capture_output=True,
    )
    # python-pkcs11 keeps one initialized library per process; SoftHSM2 reads SOFTHSM2_CONF in C_Initialize,
    # so re-initialize it to see this test's token (and none of the previous test's sessions).
    lib = pkcs11.lib(module)
    lib.reinitialize()
    yield SoftToken(module, TOKEN_LABEL, USER_PIN, SO_PIN)
    lib.finalize()
