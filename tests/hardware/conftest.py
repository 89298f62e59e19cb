"""Real key stores for the hardware tests: a fresh SoftHSM2 token per test, a key folder in tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hardware.keystores import FileKeyStore, Pkcs11KeyStore

PASSPHRASE = b"correct horse battery staple"


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
        token: Any = request.getfixturevalue("softhsm_token")

        def open_token_store() -> Pkcs11KeyStore:
            store = Pkcs11KeyStore(token.module, token.label, token.pin)
            opened.append(store)
            return store

        yield open_token_store
    else:
        yield lambda: FileKeyStore(tmp_path / "keys", PASSPHRASE)
    for store in opened:
        store.close()
