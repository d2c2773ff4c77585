# Sourced by scripts/demo and scripts/test: create .venv and (re)install the package into it
# whenever pyproject.toml (or this script) changed since the last install. $1 = pip extras,
# e.g. "[test]". The editable install is in setuptools' "compat" mode: a path in a .pth file
# rather than an import hook, so that type checkers (mypy, pyright) see `gateway` from any
# folder, as a plugin author's project does (decision 0039).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
extras=${1:-}
stamp=".venv/.installed${extras}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/_venv.sh -nt "$stamp" ]; then
    echo "Installing PAT Gateway into .venv (log: .venv/install.log) ..." >&2
    if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip \
           && .venv/bin/python -m pip install --disable-pip-version-check \
               --config-settings editable_mode=compat -e ".${extras}"; \
         } > .venv/install.log 2>&1; then
        cat .venv/install.log >&2
        echo "installation failed; see above" >&2
        exit 1
    fi
    touch "$stamp"
fi
