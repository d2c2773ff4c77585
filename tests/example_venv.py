"""A fresh venv with an example plugin distribution (``examples/NAME``) installed editable, as a
plant installs a vendor's plugin: for tests/test_example_plugin.py and test_example_extras.py.

The fresh venv has no pip and no packages of its own: a ``.pth`` file adds this project's venv
(the gateway, its dependencies, pytest and pip) as a site folder behind it, so nothing is
downloaded and it takes seconds (decision 0039). The example is copied first, so its build
leaves nothing in the repository.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


def run(
    python: Path, *args: str, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def install_example(example: Path, root: Path) -> tuple[Path, Path]:
    """Copy ``example`` into ``root`` and install it editable into a fresh venv there; the
    venv's python and the copy."""
    source = root / example.name
    shutil.copytree(
        example, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root)
    ours = sysconfig.get_paths()["purelib"]
    (Path(site.stdout.strip()) / "_project_venv.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n"
    )
    installed = run(
        python,
        *("-m", "pip", "install", "--disable-pip-version-check", "--no-deps"),
        *("--no-build-isolation", "--no-index", "-e", str(source)),
        cwd=root,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python, source


def run_own_tests(python: Path, source: Path) -> subprocess.CompletedProcess[str]:
    """The example's own pytest run, its temporary folders inside the copy's (never beside
    another pytest run's)."""
    basetemp = f"--basetemp={source.parent / 'pytest-tmp'}"
    return run(python, "-m", "pytest", "-p", "no:cacheprovider", basetemp, cwd=source)


def count_tests(folder: Path) -> int:
    """The test functions written in ``folder``'s test files."""
    text = "".join(p.read_text() for p in sorted(folder.glob("test_*.py")))
    return text.count("\ndef test_") + text.count("\nasync def test_")


def assert_type_clean(python: Path, source: Path) -> None:
    """mypy --strict from the plugin's own folder, as its author runs it: ``gateway`` is found
    through the venv (decision 0039), so its types are checked, not skipped as missing."""
    checked = run(python, "-m", "mypy", "--strict", "--no-incremental", "src", "tests", cwd=source)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("Success: no issues found"), checked.stdout
