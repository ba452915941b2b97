#!/usr/bin/env bash
# README command one: set up, then run the whole loop on the built-in sample pool.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/curate demo "$@"
