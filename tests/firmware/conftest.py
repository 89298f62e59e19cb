"""Fixtures: a real box on disk (see box_rig.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from box_rig import SETTINGS, Rig

from firmware.box import Box


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    yield made
    made.close()


@pytest.fixture
def box(rig: Rig) -> Box:
    """A provisioned box with day 1 open."""
    made = rig.box()
    made.provision(SETTINGS)
    made.open_day()
    rig.clock.advance(60)
    return made
