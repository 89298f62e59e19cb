"""docs/box.toml and docs/configuration.md stay true: the example loads, names every key, and the file is
picked the way the docs say."""

from __future__ import annotations

import tomllib
from pathlib import Path

from click.testing import CliRunner

from firmware import config as configuration
from firmware.main import main

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLE = DOCS / "box.toml"


def test_the_example_loads_and_names_every_key_the_box_knows() -> None:
    loaded = configuration.load(EXAMPLE, environ={})
    written = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert {section: sorted(keys) for section, keys in written.items()} == {
        section: sorted(keys) for section, keys in configuration.DEFAULTS.items()
    }
    assert loaded.device["id"] == written["device"]["id"]


def test_the_docs_name_every_secret_variable() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    secrets = [
        (section, key, default)
        for section, values in configuration.DEFAULTS.items()
        for key, default in values.items()
        if key.endswith("_env")
    ]
    assert len(secrets) == 3
    for section, key, default in secrets:
        assert f"`[{section}] {key}`" in text and f"`{default}`" in text, key


def _config(path: Path, keys: Path, extra: str = "") -> str:
    path.write_text(f'[keys]\nstore = "file"\ndirectory = "{keys}"\n{extra}', encoding="utf-8")
    return str(path)


def test_config_option_environment_variable_and_overrides_pick_as_documented(tmp_path: Path) -> None:
    env = {"FISCALBOX_KEY_PASSPHRASE": "pass phrase"}
    chosen = _config(tmp_path / "chosen.toml", tmp_path / "by-env")
    result = CliRunner().invoke(main, ["key", "generate"], env={**env, "FISCALBOX_CONFIG": chosen})
    assert result.exit_code == 0, result.output
    assert any((tmp_path / "by-env").iterdir())
    # --config wins over FISCALBOX_CONFIG (which here names a file the box would refuse).
    bad = _config(tmp_path / "bad.toml", tmp_path / "bad", "colour = 1\n")
    good = _config(tmp_path / "good.toml", tmp_path / "by-option")
    result = CliRunner().invoke(
        main, ["--config", good, "key", "generate"], env={**env, "FISCALBOX_CONFIG": bad}
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["--config", bad, "key", "generate"], env=env)
    assert result.exit_code == 2 and "error BOX_CONFIG" in result.output and "keys.colour" in result.output
    # FISCALBOX_<SECTION>_<KEY> wins over the file; the passphrase's variable is named by keys.passphrase_env.
    moved = {
        "FISCALBOX_KEYS_DIRECTORY": str(tmp_path / "by-override"),
        "FISCALBOX_KEYS_PASSPHRASE_ENV": "SHOP",
    }
    result = CliRunner().invoke(main, ["--config", good, "key", "generate"], env={**moved, "SHOP": "x"})
    assert result.exit_code == 0, result.output
    assert any((tmp_path / "by-override").iterdir())
    result = CliRunner().invoke(main, ["--config", good, "key", "generate", "--replace"], env=moved)
    assert result.exit_code == 2 and "SHOP" in result.output
