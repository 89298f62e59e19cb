"""Fault injection per endpoint: what a flaky network or an overloaded FDMS does to a device.

Kinds (one is drawn per faulty call, from the spec's `kinds`):
- "latency": sleep `latency_ms`, then answer normally;
- "404", "500", "502": answer that status with a problem body, doing nothing (404: an FDMS without the
  endpoint);
- "429": answer 429 Too Many Requests with `Retry-After: 1`, doing nothing;
- "reset": close the connection with SO_LINGER 0 (a TCP RST) before doing anything;
- "lost": do the work and commit it, then reset the connection instead of answering (the answer is lost).

Whether a call is faulty is drawn with `random.Random(seed)` per endpoint, so the same seed and the same
sequence of calls give the same faults. Specs are keyed by endpoint name (e.g. "SubmitReceipt",
case-insensitive); "*" applies to every endpoint without a spec of its own.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from dataclasses import asdict, dataclass

from sim.fdms.scenario import FaultSpec, check_fault


@dataclass(frozen=True)
class Fault:
    kind: str
    latency_ms: int = 0


class Faults:
    def __init__(self, specs: dict[str, FaultSpec] | None = None) -> None:
        self._lock = threading.Lock()
        self._specs: dict[str, tuple[str, FaultSpec, random.Random]] = {}
        for name, spec in (specs or {}).items():
            self.set(name, spec)

    def set(self, endpoint: str, spec: FaultSpec) -> None:
        check_fault(endpoint, spec)
        with self._lock:
            self._specs[endpoint.lower()] = (endpoint, spec, random.Random(spec.seed))

    def clear(self, endpoint: str | None = None) -> None:
        with self._lock:
            if endpoint is None:
                self._specs.clear()
            else:
                self._specs.pop(endpoint.lower(), None)

    def snapshot(self) -> dict[str, dict[str, object]]:
        with self._lock:
            return {name: asdict(spec) for name, spec, _ in self._specs.values()}

    def draw(self, endpoint: str) -> Fault | None:
        """The fault for this call of `endpoint`, or None."""
        with self._lock:
            entry = self._specs.get(endpoint.lower()) or self._specs.get("*")
            if entry is None:
                return None
            _, spec, rng = entry
            if spec.rate <= 0 or rng.random() >= spec.rate:
                return None
            return Fault(rng.choice(spec.kinds), spec.latency_ms)


def reset_connection(sock: socket.socket) -> None:
    """Drop the connection with a TCP RST (SO_LINGER on, timeout 0), sending nothing else, not even TLS's
    close_notify."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
