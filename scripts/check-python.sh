#!/usr/bin/env bash
# Install the project on another Python (3.12, 3.13) in its own venv and run the default tests there:
#   bash scripts/check-python.sh 3.12        (the Python must be on PATH as python3.12, or PYTHON=...)
# CI stays on 3.11 (scripts/test.sh); this is the check that the other versions install and pass.
set -euo pipefail
cd "$(dirname "$0")/.."
VER=${1:?give a Python version, e.g. 3.12}
PY=${PYTHON:-}
for c in "python$VER" "$HOME"/.pyenv/versions/"$VER"*/bin/python; do  # a pyenv shim may exist yet not run
  [ -z "$PY" ] && "$c" -c 'import sys' >/dev/null 2>&1 && PY=$c
done
[ -n "$PY" ] || { echo "no working python$VER found (set PYTHON=/path/to/python$VER)"; exit 2; }
VENV=.venv-py$VER
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
stamp=$VENV/.curate-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  start=$(date +%s)
  "$VENV/bin/pip" install -q -e '.[dev,dask]'
  echo "[check-python] installed in $(( $(date +%s) - start )) s: $("$VENV/bin/python" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)')"
  touch "$stamp"
fi
"$VENV/bin/lint-imports" --no-cache
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${@:2}"
