#!/usr/bin/env bash
# One setup for everything: real demo data (Debian packages, when root with apt) + a venv with
# the pinned stack. Safe to rerun; it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_PKGS="dataset-fashion-mnist openclipart-png openclipart-svg fonts-noto-color-emoji chromium-headless-shell wordnet-base
  fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-croscore fonts-urw-base35 fonts-texgyre fonts-open-sans
  fonts-roboto-unhinted fonts-hack fonts-comic-neue fonts-cantarell fonts-symbola adwaita-icon-theme gnome-icon-theme
  mate-icon-theme tango-icon-theme famfamfam-flag-png unicode-data iso-codes"
missing=""
for p in $DATA_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing real demo data:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null \
      || echo "[setup] WARNING: apt-get failed; the sample pool falls back to synthetic images"
  else
    echo "[setup] NOTE: real demo data missing:$missing"
    echo "[setup]       as root run: apt-get update && apt-get install -y$missing"
    echo "[setup]       until then the sample pool is built from synthetic images."
  fi
fi

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.curate-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing the Python stack into .venv (pins in pyproject.toml)"
  .venv/bin/pip install -q -e '.[dev,dask]'
  touch "$stamp"
fi
.venv/bin/python -c "from shardio.compat import ensure_torchvision as e; e(); import open_clip, webdataset, faiss, prefect" \
  || { echo "[setup] ERROR: the stack does not import; see messages above"; exit 1; }
echo "[setup] ready: .venv"
