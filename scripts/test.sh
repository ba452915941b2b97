#!/usr/bin/env bash
# README command two: set up, then run the default (fast) test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/lint-imports --no-cache  # package boundaries (pyproject.toml [tool.importlinter])
exec .venv/bin/python -m pytest -q "$@"
