"""What the HIL bodies talk to: a box on the other end of a serial line and the host keys it knows."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.box import VirtualBox


@dataclass
class Target:
    """A box on the other end of a serial line, and the host keys that may talk to it."""

    port: str
    keys: dict[str, Path]
    virtual: VirtualBox | None = None
    clients: dict[str, Any] = field(default_factory=dict)

    def client(self, role: str = "pos") -> Any:
        """The `BoxClient` signing with the `role` key (one per role, kept for the session). The port is
        held by one client at a time (BoxClient locks it), so the other roles' clients let go of it first."""
        from host_tools.link import BoxClient

        for other, client in self.clients.items():
            if other != role:
                client.close()  # opened again at its next call
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
