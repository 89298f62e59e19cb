"""Real key stores for the hardware tests: a fresh SoftHSM2 token per test, a key folder in tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pkcs11
import pytest

from hardware.keystores import FileKeyStore, Pkcs11KeyStore

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
PASSPHRASE = b"correct horse battery staple"


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


@pytest.fixture(params=["file", "pkcs11"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Open (or reopen) the store under test on the same storage; token stores are closed after the test.

    Reopening a token store requires closing the previous one first, as on a real box (one login per process).
    """
    opened: list[Pkcs11KeyStore] = []
    if backend == "pkcs11":
        token: SoftToken = request.getfixturevalue("softhsm_token")

        def open_token_store() -> Pkcs11KeyStore:
            store = Pkcs11KeyStore(token.module, token.label, token.pin)
            opened.append(store)
            return store

        yield open_token_store
    else:
        yield lambda: FileKeyStore(tmp_path / "keys", PASSPHRASE)
    for store in opened:
        store.close()
