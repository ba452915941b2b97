"""bench/parity.py's side of DataComp: the wrapper that runs its ``baselines.py`` unchanged, offline and on
the CPU, WordNet for its NLTK, and one run of a baseline."""
from __future__ import annotations

import shutil
from pathlib import Path

from bench.scale_measure import measure
from bench.scale_peer import PEER, PEER_PY
from pipeline.captions import WORDNET_DIR

WRAPPER = PEER / "run_parity.py"
LEXNAMES = ("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
            "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
            "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
            "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
            "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
            "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
            "adj.ppl").split()

PEER_WRAPPER = '''"""DataComp's baselines.py, run unchanged, offline and on the CPU (written by bench/parity.py, whose
docstring lists what is wrapped): download() returns local files, nltk.download is a no-op, and with
PARITY_CPU=1 CUDA devices map to the CPU. No filtering code is replaced."""
import os
import sys

DATACOMP = os.environ["DATACOMP_DIR"]
sys.path.insert(0, DATACOMP)
import nltk  # noqa: E402
import torch  # noqa: E402
import baselines.apply_filter as _af  # noqa: E402
import baselines.utils as _utils  # noqa: E402

_download = _utils.download
LOCAL = {"fasttext": os.environ["DATACOMP_LID"], "imagenet21k_wordnet_ids": os.environ["PARITY_IN21K"],
         "small_centroids": os.environ.get("PARITY_CENTROIDS", "")}
for _i in range(5):
    LOCAL[f"in1k_clip_vit_l14_{_i}"] = os.path.join(os.environ.get("PARITY_TARGETS", ""), f"in1k_clip_vit_l14_{_i}.pt")


def download(name, root=None):
    return LOCAL[name] if LOCAL.get(name) else _download(name, root)


# at module level, so the spawned workers (which import this file as __mp_main__) get it too
_af.download = _utils.download = download
nltk.download = lambda *a, **k: True  # WordNet comes from NLTK_DATA

if os.environ.get("PARITY_CPU") == "1":
    _to = torch.Tensor.to

    def _cpu(d):
        return "cpu" if isinstance(d, str) and d.startswith("cuda") else d

    def to(self, *args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return _to(self, *[_cpu(a) for a in args], **kwargs)

    torch.Tensor.to = to
    torch.cuda.is_available = lambda: True

if __name__ == "__main__":
    path = os.path.join(DATACOMP, "baselines.py")
    sys.argv[0] = path
    exec(compile(open(path).read(), path, "exec"), {"__name__": "__main__", "__file__": path})
'''


def nltk_data(folder: Path) -> Path:
    """WordNet 3.0 for NLTK: Debian's database files, copied (NLTK refuses links out of its root), plus
    lexnames and an empty index.sense."""
    wn = folder / "corpora" / "wordnet"
    if (wn / "lexnames").is_file():
        return folder
    wn.mkdir(parents=True, exist_ok=True)
    for f in Path(WORDNET_DIR).iterdir():
        if f.is_file() and (f.name.startswith(("index.", "data.")) or f.suffix == ".exc" or f.name == "cntlist.rev"):
            shutil.copyfile(f, wn / f.name)
    pos = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
    (wn / "lexnames").write_text("".join(f"{i:02d}\t{n}\t{pos[n.split('.')[0]]}\n" for i, n in enumerate(LEXNAMES)))
    (wn / "index.sense").write_text("")
    return folder


def run_peer(name: str, args: list[str], pool: Path, work: Path, env: dict, timeout: float) -> dict:
    dst = work / "uids" / f"datacomp_{name}.npy"
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    log = work / "logs" / f"datacomp_{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    res = measure([str(PEER_PY), str(WRAPPER), "--metadata_dir", str(pool), "--save_path", str(dst),
                   "--num_workers", "1", *args], timeout, 8192, env=env, log=log)
    if res["status"] == "ok":
        res["uids"] = str(dst)
    return res
