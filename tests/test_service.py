"""``patgw service unit|winsw``: the definitions a plant installs, checked as far as this
machine can: the systemd unit by ``systemd-analyze verify`` (systemd's own parser), both
definitions' command lines run here. Not proven here: a real systemd or Windows service
manager starting and stopping the gateway, the hardening's effect on it, WinSW's Ctrl+C."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import patgw, write_config

from gateway.runtime.supervisor import STOP_BOUND_S


@pytest.fixture
def site() -> Iterator[Path]:
    """A folder outside /tmp, which a unit's PrivateTmp= hides (in /dev/shm; removed after)."""
    root = Path(tempfile.mkdtemp(prefix="patgw-service-", dir="/dev/shm"))
    try:
        yield root
    finally:
        shutil.rmtree(root)


def state_config(folder: Path) -> Path:
    """A configuration whose writes all go to ``folder/data``."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(
        folder / "gateway.yaml",
        {"area": "r1", "store": {"path": "data/s.sqlite"}, "data_dir": "data"},
    )


def unit_settings(unit: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI"):  # CI can install it: never let a skip hide the check there
            pytest.fail("systemd-analyze is missing: apt-get install systemd")
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return found


@pytest.mark.parametrize("folder", ["state", "state dir with 100% spaces"])
def test_the_systemd_unit_is_hardened_and_systemd_accepts_it(
    tmp_path: Path, site: Path, folder: str
) -> None:
    config = state_config(site / folder)
    result = patgw("service", "unit", str(config), "--user", "patgw")
    assert result.returncode == 0, result.stderr
    settings = unit_settings(result.stdout)
    state = str(site / folder / "data")
    assert settings["User"] == ["patgw"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["ProtectHome"] == ["yes"]
    assert settings["PrivateTmp"] == ["yes"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["KillSignal"] == ["SIGTERM"]
    # Writable: the state folder, and the host's lock folder (the store lock's host-wide half).
    assert [shlex.split(v.replace("%%", "%")) for v in settings["ReadWritePaths"]] == [
        [state],
        ["-/run/lock"],
    ]
    assert float(settings["TimeoutStopSec"][0].removesuffix("s")) > STOP_BOUND_S

    unit = tmp_path / "patgw.service"
    unit.write_text(result.stdout)
    verify = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # No warning either: systemd ignores a setting it cannot parse, with a warning only.
    assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", "")

    # The unit's own command lines, as systemd splits them, work.
    for key, extra in (("ExecStartPre", []), ("ExecStart", ["--for", "1"])):
        argv = [w.replace("%%", "%") for w in shlex.split(settings[key][0])] + extra
        ran = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert ran.returncode == 0, (key, ran.stderr)
    assert (site / folder / "data" / "s.sqlite").exists()


def test_the_winsw_definition_runs_the_gateway_and_stops_it_in_time(tmp_path: Path) -> None:
    config = state_config(tmp_path / "site")
    result = patgw("service", "winsw", str(config), "--name", "patgw-r1")
    assert result.returncode == 0, result.stderr
    service = ET.fromstring(result.stdout)
    assert service.findtext("id") == "patgw-r1"
    assert service.findtext("workingdirectory") == str(tmp_path / "site" / "data")
    assert service.findtext("serviceaccount/username") == "NT AUTHORITY\\LocalService"
    stop = service.findtext("stoptimeout") or ""
    assert stop.endswith(" sec") and float(stop.removesuffix(" sec")) > STOP_BOUND_S
    assert [e.get("action") for e in service.findall("onfailure")] == ["restart", "restart"]
    argv = [service.findtext("executable") or ""]
    argv += [e.text or "" for e in service.findall("argument")]
    assert argv[0] == str(Path(sys.executable).absolute())
    ran = subprocess.run(
        [*argv, "--for", "1"], capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr


def test_a_write_outside_the_state_folder_is_refused_naming_it(site: Path) -> None:
    config = state_config(site / "site")
    result = patgw("service", "unit", str(config), "--state-dir", str(site / "elsewhere"))
    assert result.returncode == 2
    problems = result.stderr.strip().splitlines()
    assert problems[0] == (
        f"store.path: {site / 'site' / 'data' / 's.sqlite'} is outside the service's state"
        f" folder {site / 'elsewhere'} (the only one it may write: choose it with --state-dir)"
    )
    assert [p.split(":")[0] for p in problems] == [
        "store.path",
        "data_dir",
        "audit.path",
        "audit.key",
        "audit.anchor_file",
    ]
    home = patgw("service", "unit", str(config), "--state-dir", "/home/patgw")
    assert (home.returncode, home.stderr) == (
        2,
        "--state-dir: /home/patgw is in a home folder: use /var/lib/patgw\n",
    )


def test_files_in_the_units_private_tmp_are_refused() -> None:
    in_tmp = state_config(Path(tempfile.mkdtemp(dir="/tmp")))
    try:
        result = patgw("service", "unit", str(in_tmp), "--state-dir", "/var/tmp/patgw")
    finally:
        shutil.rmtree(in_tmp.parent)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"config: {in_tmp} is in /tmp, which the service does not see (PrivateTmp=yes)",
        "--state-dir: /var/tmp/patgw is in /var/tmp, which the service does not see"
        " (PrivateTmp=yes)",
    ]
