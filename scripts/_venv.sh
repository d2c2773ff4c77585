# Sourced by scripts/demo and scripts/test: create .venv and (re)install into it whenever
# pyproject.toml, a lock or this script changed since the last install. $1 = "[test]" for the
# test tools, "" for the application. The dependencies come from the exact, hashed lock
# (requirements/test.lock or requirements/app.lock, made by scripts/lock) with --require-hashes;
# then the project and the emulators (firmware_stubs/, the distribution pat-gateway-emulators)
# are installed editable with --no-deps, so nothing outside the lock comes in. The editable
# install is in setuptools' "compat" mode: a path in a .pth file rather than an import hook, so
# that type checkers (mypy, pyright) see `gateway` from any folder, as a plugin author's project
# does (decision 0039). Not the emulators: compat would put firmware_stubs/ itself on the path
# (its folders `raman`, `schedule`... as top-level modules); the default mode maps only
# `firmware_stubs` (which the repository's path gives as well).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
extras=${1:-}
case $extras in
    "[test]") lock=requirements/test.lock ;;
    "") lock=requirements/app.lock ;;
    *) echo "scripts/_venv.sh: extras must be \"[test]\" or \"\", not $extras" >&2; exit 2 ;;
esac
stamp=".venv/.installed${extras}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/_venv.sh -nt "$stamp" ] \
   || [ "$lock" -nt "$stamp" ] || [ firmware_stubs/pyproject.toml -nt "$stamp" ]; then
    echo "Installing PAT Gateway into .venv (log: .venv/install.log) ..." >&2
    pip=(.venv/bin/python -m pip install --disable-pip-version-check)
    if ! { "${pip[@]}" --upgrade pip \
           && "${pip[@]}" --require-hashes -r "$lock" \
           && "${pip[@]}" --no-deps --config-settings editable_mode=compat -e . \
           && "${pip[@]}" --no-deps -e ./firmware_stubs; \
         } > .venv/install.log 2>&1; then
        cat .venv/install.log >&2
        echo "installation failed; see above" >&2
        exit 1
    fi
    touch "$stamp"
fi
