"""Scenario files for the FDMS simulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.fdms.scenario import Scenario, ScenarioError

EXAMPLE = Path(__file__).resolve().parents[3] / "sim" / "fdms" / "example.toml"


def test_the_example_scenario_loads() -> None:
    scenario = Scenario.load(EXAMPLE)
    assert scenario.currencies == ["USD", "ZWG"]
    assert {t.id: t.percent for t in scenario.taxes} == {1: None, 2: "0", 3: "15", 517: "15.5"}
    assert scenario.device(10004) is not None and scenario.device(10004).mode == "Offline"  # type: ignore[union-attr]
    assert scenario.knows_model("fiscalbox", "1.0") and scenario.knows_model("Server", "v1")  # any pair
    assert scenario.state_path() == (EXAMPLE.parent / "../../out/fdms-state")
    assert [(s.hs_code, s.quantity) for s in scenario.stock] == [("11022000", "120"), ("15179000", "48")]


def test_missing_parts_take_the_defaults_and_numbers_become_exact_text(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text('[[taxes]]\nid = 9\nname = "Odd"\npercent = 14.5\n[faults.Ping]\nkinds = ["429"]\n')
    scenario = Scenario.load(config)
    assert scenario.taxes[0].percent == "14.5" and scenario.taxpayer.vat_number == "220012345"
    assert scenario.faults["Ping"].kinds == ["429"] and scenario.faults["Ping"].rate == 1.0
    assert scenario.state_path() == tmp_path / "fdms-state"
    assert scenario.state_path(tmp_path / "elsewhere") == tmp_path / "elsewhere"


def test_models_restrict_the_pairs_accepted() -> None:
    scenario = Scenario.from_dict({"models": [{"name": "fiscalbox", "version": "1.0"}]})
    assert scenario.knows_model("fiscalbox", "1.0") and not scenario.knows_model("fiscalbox", "2.0")


@pytest.mark.parametrize(
    "data",
    [
        {"taxpayer": {"tin": "123"}},
        {"devices": [{"id": 1, "serial": "S", "activation_key": "short"}]},
        {"devices": [{"id": 1, "serial": "S", "activation_key": "ABCDEFGH", "mode": "Sometimes"}]},
        {"faults": {"Ping": {"kinds": ["explode"]}}},
        {"faults": {"Ping": {"rate": 2}}},
        {"server": {"colour": "blue"}},
        {"whatever": 1},
        {"taxes": [{"id": 1, "name": "x", "percent": "lots"}]},
    ],
)
def test_impossible_scenarios_are_refused(data: dict) -> None:
    with pytest.raises(ScenarioError):
        Scenario.from_dict(data)
