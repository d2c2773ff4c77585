# Sourced by scripts/demo and scripts/test: create .venv and (re)install the package into it
# whenever pyproject.toml changed since the last install. $1 = pip extras, e.g. "[test]".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
extras=${1:-}
stamp=".venv/.installed${extras}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
    touch "$stamp"
fi
