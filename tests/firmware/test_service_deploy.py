"""firmware/deploy: the systemd unit parses and runs the installed command on the installed configuration;
the udev rule names both serial lines."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from firmware.main import main

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "firmware" / "deploy"


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """The unit as systemd reads it: sections of keys, a key given twice kept twice."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), line
            current = sections.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        assert equals and current is not None, f"not a setting: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_unit_runs_the_installed_command_on_the_installed_configuration(tmp_path: Path) -> None:
    text = (DEPLOY / "fiscalbox.service").read_text()
    service = unit_settings(text)["Service"]
    program, *args = service["ExecStart"][0].split()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(program).name == "fiscalbox-device" and scripts["fiscalbox-device"] == "firmware.main:main"
    assert args == ["--config", "/etc/fiscalbox/box.toml", "run"] and "run" in main.commands  # type: ignore[attr-defined]
    assert service["Restart"] == ["on-failure"] and service["User"] == ["fiscalbox"]
    assert service["EnvironmentFile"] == ["/etc/fiscalbox/secrets.env"]
    assert service["KillSignal"] == ["SIGTERM"] and service["ProtectSystem"] == ["strict"]
    assert service["StateDirectory"] == ["fiscalbox"]
    assert "WantedBy" in unit_settings(text)["Install"]
    unit = unit_settings(text)["Unit"]
    # no receipt on a stale clock: started after the time is synchronised (a Pi has no RTC)
    assert "time-sync.target" in unit["After"][0].split() and "time-sync.target" in unit["Wants"][0].split()
    # the devices it drives: gadget serial, USB-serial and the Pi's own serial printers, the TPM
    assert service["DevicePolicy"] == ["closed"]
    allowed = {entry.split()[0] for entry in service["DeviceAllow"]}
    assert {"char-ttyGS", "char-ttyUSB", "char-ttyACM", "char-ttyS", "char-ttyAMA", "char-tpmrm"} <= allowed
    readme = (DEPLOY / "README.md").read_text()
    assert (
        "install -m 0600 -o root -g root firmware/deploy/secrets.env.example /etc/fiscalbox/secrets.env"
        in readme
    )
    for step in (
        "systemctl enable systemd-time-wait-sync",
        "adduser fiscalbox tss",
        "adduser fiscalbox softhsm",
    ):
        assert step in readme, step
    verify = shutil.which("systemd-analyze")
    if verify is not None:  # systemd's own check, with the command where this checkout has it
        here = Path(sys.executable).with_name("fiscalbox-device")
        (tmp_path / "fiscalbox.service").write_text(text.replace(program, str(here)))
        checked = subprocess.run(
            [verify, "verify", str(tmp_path / "fiscalbox.service")], capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stderr


def test_the_udev_rule_names_the_link_and_the_printer() -> None:
    rules = [
        line
        for line in (DEPLOY / "99-fiscalbox.rules").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    link = [r for r in rules if 'KERNEL=="ttyGS0"' in r]
    assert len(link) == 1 and 'SYMLINK+="fiscalbox-link"' in link[0]
    printer = [r for r in rules if 'SYMLINK+="fiscalbox-printer"' in r]
    assert [r for r in printer if 'SYMLINK=="serial0"' in r]  # the Pi's own serial: a TTL printer
    assert printer and all('SUBSYSTEM=="tty"' in r and 'GROUP="fiscalbox"' in r for r in rules)
    for rule in rules:  # udev's syntax: KEY or KEY{attribute}, an operator, a quoted value; comma-separated
        for part in rule.split(", "):
            assert re.fullmatch(r'[A-Z]+(\{[A-Za-z_]+\})?(==|\+=|=)"[^"]*"', part), part
