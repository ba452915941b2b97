"""What else curated data trains -> bench/results/ssl.json.

    .venv/bin/python -m bench.selfsup --threads 1     # ~15-20 min on 2 CPU cores
    .venv/bin/python -m bench.selfsup --threads 1 --only mae   # one objective, merged into the results

1. Image towers: SimCLR, MoCo v2, MAE and CLIP (curate-tiny) trained at equal samples seen on the sample
   pool's curated output (CLIP-score top 70%, scorer bootstrapped on the trusted split as in
   ``curate demo``) and on the unfiltered pool; linear probe and k-NN on Fashion-MNIST test
   (``--shots`` labelled images per class drawn from it, scored on the rest).
2. Adaptation: the CLIP trained on curated data, fine-tuned on the curated openclipart + emoji pairs:
   zero-shot on the clipart / emoji tasks before, after LoRA (rank 4, 16) and after full fine-tuning,
   plus a linear probe of the base; trainable-parameter share and peak RSS of each (own process).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from training.knn import image_probes
from training.lora import FinetuneConfig
from training.mae import MAEConfig
from training.mae import pretrain as mae_pretrain
from training.model import load_clip
from training.ssl import SSLConfig, pretrain
from training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "bench" / "results" / "ssl.json"
PY = sys.executable
OBJECTIVES = ("simclr", "moco", "mae", "clip")
SSL_SETTINGS = ("SimCLR (temperature 0.5), MoCo v2 (temperature 0.2, momentum 0.99, queue 4096), MAE (mask 75%, "
                "decoder 2 blocks of width 64, normalised-pixel loss, AdamW wd 0.05 beta2 0.95); training/ssl.py "
                "and training/mae.py defaults")
ADAPT_TASKS = ["openclipart_topics", "emoji_names", "openclipart_retrieval", "emoji_retrieval"]


def machine() -> dict:
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__}


def wait_for_pool(pool: Path) -> None:
    """Another engineer may be building the pool: wait for it rather than build twice."""
    tmp = pool.with_name(pool.name + ".tmp")
    while tmp.exists() and not (pool / "pool.json").is_file():
        print(f"waiting for {tmp} to finish...", flush=True)
        time.sleep(30)
    if not (pool / "pool.json").is_file():
        subprocess.run([PY, "-m", "app.cli", "build-pool", "--out", str(pool)], cwd=ROOT, check=True)


def curate(pool: Path, root: Path, out: Path, scorer_samples: int) -> tuple[str, dict]:
    """The curated shards: ``curate run`` with a CLIP-score config, or (if that command fails) the
    pool's clean samples by ground truth."""
    scorer = train(TrainConfig(train_data=str(pool / "trusted"), model="curate-tiny", out_dir=str(root / "scorer"),
                               samples_seen=scorer_samples, workers=0))
    config = root / "clip_score.json"
    config.write_text(json.dumps({"clip": [{"model": scorer["checkpoint"]}],
                                  "filters": [{"type": "clip_score", "fraction": 0.7}]}))
    t0 = time.time()
    p = subprocess.run([PY, "-m", "app.cli", "run", "--pool", str(pool / "shards"), "--out", str(out),
                        "--config", str(config)], cwd=ROOT, capture_output=True, text=True)
    if p.returncode == 0:
        manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
        shards = out / "current" / "shards" if (out / "current" / "shards").is_dir() else out / "shards"
        return str(shards), {"method": f"curate run, CLIP score top 70% (scorer: curate-tiny, {scorer_samples} "
                                       "samples seen on the trusted split)", "kept": manifest.get("kept"),
                             "seconds": round(time.time() - t0, 1)}
    print(f"curate run failed, using ground-truth clean samples instead:\n{p.stderr[-2000:]}", flush=True)
    import pandas as pd

    gt = pd.read_parquet(pool / "ground_truth.parquet")
    clean = set(gt.loc[gt["noise"].isna(), "uid"])
    n = subset(pool / "shards", out / "shards", lambda meta: meta.get("uid") in clean)
    return str(out / "shards"), {"method": "ground-truth clean samples (curate run failed)", "kept": n,
                                 "error": p.stderr[-500:]}


def subset(src, dst: Path, keep) -> int:
    """Copy the samples whose json passes ``keep`` into new shards; returns the count."""
    from shardio.shards import ShardWriter, expand

    n = 0
    with ShardWriter(dst, 1000) as w:
        for path in expand(src):
            with tarfile.open(path) as t:
                groups: dict[str, dict[str, bytes]] = {}
                for m in t.getmembers():
                    if m.isfile():
                        key, ext = m.name.split(".", 1)
                        groups.setdefault(key, {})[ext] = t.extractfile(m).read()
            for key, members in groups.items():
                if keep(json.loads(members.get("json", b"{}"))):
                    w.write_raw(key, members)
                    n += 1
    return n


def fresh(run: Path) -> Path:
    """A run folder emptied first: a finished run left there would be resumed at its end, not measured."""
    shutil.rmtree(run, ignore_errors=True)
    return run


def train_one(objective: str, **common) -> dict:
    if objective == "clip":
        return train(TrainConfig(**common))
    if objective == "mae":
        return mae_pretrain(MAEConfig(**common))
    return pretrain(SSLConfig(objective=objective, **common))


def towers(data: dict[str, str], root: Path, task: Path, samples: int, shots: int, objectives=OBJECTIVES) -> dict:
    out = {}
    for name, shards in data.items():
        for objective in objectives:
            run = fresh(root / f"{name}_{objective}")
            r = train_one(objective, train_data=shards, out_dir=str(run), samples_seen=samples, workers=0)
            clip = load_clip(r["checkpoint"])
            clip.model.eval()
            t0 = time.time()
            p = image_probes(clip, task, shots=shots, neighbours=20)
            out[f"{name}/{objective}"] = {
                "linear_probe_acc1": round(p["linear"]["acc1"], 4), "knn_acc1": round(p["knn"]["acc1"], 4),
                "final_loss": round(r["final_loss"], 4), "samples_per_s": r["samples_per_s"],
                "train_seconds": r["train_seconds"], "probe_seconds": round(time.time() - t0, 1),
                "n_scored": p["n"], "n_labelled": p["n_train"], "checkpoint": r["checkpoint"]}
            print(name, objective, out[f"{name}/{objective}"], flush=True)
    return out


def zero_shot(checkpoint: str, eval_root: Path, results: Path) -> dict:
    from training.evalsuite import run_suite

    s = run_suite(checkpoint, eval_root, "builtin", results=results, only=ADAPT_TASKS)
    return {r["task"].split("/")[-1]: None if r["main"] is None else round(r["main"], 4) for r in s["rows"]}


def child(code: str) -> dict:
    """Run python code in its own process (so its peak RSS is its own); its last line is JSON."""
    p = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def adapt(base: str, curated: str, pool: Path, root: Path, samples: int) -> dict:
    import pandas as pd

    gt = pd.read_parquet(pool / "ground_truth.parquet")
    wanted = set(gt.loc[gt["source"].isin(["openclipart", "emoji"]), "uid"])
    n = subset(curated, root / "adapt_shards", lambda meta: meta.get("uid") in wanted)
    eval_root = pool / "eval"
    out = {"data": f"{n} curated openclipart + emoji pairs", "samples_seen": samples,
           "before": {"zero_shot": zero_shot(base, eval_root, root / "zs_before.jsonl")}}
    for name, rank in (("lora_r4", 4), ("lora_r16", 16), ("full_finetune", 0)):
        run = fresh(root / name)
        t0 = time.time()
        p = subprocess.run([PY, "-m", "app.cli", "finetune", "--checkpoint", base, "--data", str(root / "adapt_shards"),
                            "--out", str(run), "--lora", str(rank), "--samples-seen", str(samples), "--batch-size", "128",
                            "--workers", "0"], cwd=ROOT, capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(p.stderr[-3000:])
        r = json.loads((run / "result.json").read_text())
        lr = FinetuneConfig(**json.loads((run / "train_config.json").read_text())).peak_lr()
        out[name] = {"zero_shot": zero_shot(r["checkpoint"], eval_root, root / f"zs_{name}.jsonl"),
                     "trainable_params": r["trainable_params"], "trainable_share": r["trainable_share"],
                     "peak_rss_mb": r["peak_rss_mb"], "lr": lr, "final_loss": round(r["final_loss"], 4),
                     "train_seconds": r["train_seconds"], "wall_seconds": round(time.time() - t0, 1)}
        print(name, out[name], flush=True)
    task = eval_root / "openclipart_topics"
    out["linear_probe"] = child(
        "import json; from training.model import load_clip; from training.knn import image_probes; "
        "from training.lora import peak_rss_mb, count_parameters; from training.zeroshot import read_task; "
        f"c = load_clip({base!r}); c.model.eval(); p = image_probes(c, {str(task)!r}, shots=10); "
        f"n = len(read_task({str(task)!r})[0]); d = c.model_cfg['embed_dim']; tot = count_parameters(c.model)['total_params']; "
        "print(json.dumps({'openclipart_topics': {'mean_per_class_recall': round(p['linear']['mean_per_class_recall'], 4), "
        "'acc1': round(p['linear']['acc1'], 4), 'n_labelled': p['n_train'], 'n_scored': p['n']}, "
        "'emoji_names': 'n/a: one image per class, nothing left to score after drawing labelled ones', "
        "'trainable_params': (d + 1) * n, 'trainable_share': round((d + 1) * n / tot, 6), 'peak_rss_mb': peak_rss_mb()}))")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default="data/sample_pool")
    ap.add_argument("--root", default="runs/bench-ssl", help="work folder (runs, shards)")
    ap.add_argument("--curated", default="runs/ssl-curated", help="curation output folder")
    ap.add_argument("--samples-seen", type=int, default=20_000, help="per image-tower run")
    ap.add_argument("--adapt-samples-seen", type=int, default=8_000, help="per fine-tuning run")
    ap.add_argument("--scorer-samples-seen", type=int, default=40_000, help="scorer budget (as curate demo)")
    ap.add_argument("--shots", type=int, default=100, help="labelled Fashion-MNIST images per class for the probes")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads here and in the subprocesses (default: torch's); 1 helps on a busy machine")
    ap.add_argument("--only", nargs="+", choices=OBJECTIVES, default=None,
                    help="train and probe only these image towers and merge them into --out's results "
                         "(the adaptation part is kept as it is)")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
    os.chdir(ROOT)
    t0 = time.time()
    pool, root = Path(a.pool), Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    wait_for_pool(pool)
    curated, curation = curate(pool, root, Path(a.curated), a.scorer_samples_seen)
    data = {"curated": curated, "pool": str(pool / "shards")}
    if a.only:
        mergeable(Path(a.out), a)
        return merge(Path(a.out), towers(data, root, pool / "eval" / "fashion_mnist", a.samples_seen, a.shots, a.only),
                     curation, a, time.time() - t0, load0)
    res = {"machine": machine(), "settings": settings(a), "curation": curation}
    res["image_towers"] = towers(data, root, pool / "eval" / "fashion_mnist", a.samples_seen, a.shots)
    base = res["image_towers"]["curated/clip"]["checkpoint"]
    res["adaptation"] = {"base": base, **adapt(base, curated, pool, root, a.adapt_samples_seen)}
    res["seconds"] = round(time.time() - t0, 1)
    res["machine"]["load_average_1min_start_end"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


def settings(a) -> dict:
    return {"model": "curate-tiny", "batch_size": 256, "samples_seen": a.samples_seen, "ssl": SSL_SETTINGS,
            "probe_task": "fashion_mnist (test split)", "probe_shots_per_class": a.shots,
            "knn": "k=20, weighted vote exp(sim/0.07)",
            "linear_probe": "logistic regression, L2 by 2-fold CV (training/probe.py)"}


def mergeable(out: Path, a) -> None:
    """``--only`` adds to results measured at the same budget and probe, or to none."""
    old = json.loads(out.read_text()).get("settings", {}) if out.is_file() else {}
    for key, mine in (("samples_seen", a.samples_seen), ("probe_shots_per_class", a.shots)):
        if old.get(key, mine) != mine:
            raise ValueError(f"{out} was measured with {key} {old[key]}, not {mine}: rerun every objective "
                             "or write to another --out")


def merge(out: Path, towers_now: dict, curation: dict, a, seconds: float, load0) -> None:
    """Add (or replace) the ``--only`` towers in an existing results file, noting the partial rerun
    (with its curation, which should keep what the first run kept)."""
    res = json.loads(out.read_text()) if out.is_file() else {"machine": machine(), "image_towers": {}}
    res["settings"] = settings(a)
    res.setdefault("curation", curation)
    res["image_towers"].update(towers_now)
    res.setdefault("partial_reruns", []).append({
        "only": a.only, "curation": curation, "seconds": round(seconds, 1), "load_average_1min_start_end": [round(load0[0], 2),
                                                                                      round(os.getloadavg()[0], 2)]})
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res["image_towers"][k] for k in towers_now}, indent=2))


if __name__ == "__main__":
    main()
