"""Image-tower probes for models without a usable text tower (SSL checkpoints): linear probe and k-NN.

k-NN is the weighted vote SimCLR / MoCo / DINO report (Wu et al. 2018): each scored image's ``k``
nearest labelled images by cosine similarity vote for their class with weight exp(sim / T), k=20,
T=0.07. Labelled images and scored images are chosen as training/probe.py chooses them (the task's
``train/`` split, or ``shots`` per class drawn from ``test/`` and scored on the rest); one feature
pass serves both probes, and zero-shot is added when the model has a trained text tower.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from shardio import storage
from shardio.evaltask import has_split, task_path
from training.probe import fit, pick_l2, shot_split
from training.zeroshot import metrics, read_task


def knn_logits(train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor, n_classes: int, k: int = 20,
               temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Class votes (N, n_classes) of L2-normalised features ``x`` against the labelled ``train_x``."""
    k = min(k, len(train_x))
    out = []
    for xs in x.split(chunk):
        sim, idx = (xs @ train_x.T).topk(k, dim=1)
        out.append(torch.zeros(len(xs), n_classes).scatter_add_(1, train_y[idx], (sim / temperature).exp()))
    return torch.cat(out)


@torch.no_grad()
def features(clip, task_root: str | Path, device: str, split: str = "test"):
    """L2-normalised image embeddings and labels of a split (batched eval transform)."""
    from training.probe import features as probe_features

    return probe_features(clip.model, clip.preprocess_val, task_root, device, split)


def is_image_only(checkpoint: str | Path) -> bool:
    from training.model import checkpoint_info, is_checkpoint_dir

    return is_checkpoint_dir(checkpoint) and bool(checkpoint_info(checkpoint).get("image_only"))


def image_probes(clip, task_root: str | Path, shots: int = 10, neighbours: int = 20, seed: int = 0,
                 device: str = "cpu") -> dict:
    """Linear probe and k-NN of a loaded model's image encoder on one classification task."""
    classnames, _ = read_task(task_root)
    n = len(classnames)
    xt, yt, x, y, source = shot_split(task_root, lambda split: features(clip, task_root, device, split), shots, seed)
    if len(y) == 0:
        raise ValueError(f"{task_root}: no images left to score after drawing {shots} per class")
    l2 = pick_l2(xt, yt, n, seed)
    with torch.no_grad():
        linear = metrics(fit(xt, yt, n, l2)(x), y, n)
    knn = metrics(knn_logits(xt, yt, x, n, neighbours), y, n)
    return {"shots": shots, "seed": seed, "n_train": int(len(yt)), "n": int(len(y)), "train_source": source,
            "linear": {"l2": l2, **linear}, "knn": {"k": neighbours, "temperature": 0.07, **knn}}


def probe_suite(checkpoint: str, data_root: str | Path, suite_name: str = "builtin", results: str | Path | None = None,
                only: list[str] | None = None, shots: int = 10, neighbours: int = 20, device: str = "auto",
                weights: str | None = None) -> dict:
    """The suite's classification tasks by linear probe and k-NN (plus zero-shot unless image-only).

    Appends one json line per task to ``results`` (default ``<checkpoint>/probe_<suite>.jsonl``; a bucket URL too),
    skips tasks already there, and returns the per-task rows with the means of each score."""
    from schemas.tasks import suite
    from training.runfolder import ResultsFile

    tasks = [t for t in suite(suite_name)
             if t.kind == "classification" and (not only or t.key in only or t.folder in only)]
    default = Path(checkpoint) if not storage.is_url(checkpoint) and Path(checkpoint).is_dir() else Path(".")
    with ResultsFile(results or default / f"probe_{suite_name}.jsonl") as out:
        return _probe_suite(checkpoint, data_root, suite_name, tasks, out, shots, neighbours, device, weights)


def _probe_suite(checkpoint, data_root, suite_name, tasks, out, shots, neighbours, device, weights) -> dict:
    from training.model import load_for_eval
    from training.zeroshot import classify

    label = storage.redact(str(checkpoint))  # a URL's signature is not written
    done = {r["task"]: r for r in out.rows() if r.get("checkpoint") == label}
    text = not is_image_only(checkpoint)
    clip = None
    for task in tasks:
        folder = task_path(data_root, task.folder)
        if task.key in done or not has_split(folder):
            continue
        if clip is None:
            clip, device = load_for_eval(checkpoint, weights, device)
        t0 = time.time()
        try:
            r = image_probes(clip, folder, shots, neighbours, device=device)
        except ValueError as e:  # e.g. one image per class: nothing left to score
            r = {"error": str(e)}
        if text:
            r["zero_shot"] = classify(clip, folder, device=device)
        r = {"task": task.key, "checkpoint": label, "metric": task.metric, **r,
             "seconds": round(time.time() - t0, 2)}
        out.append(r)
        done[task.key] = r
    rows = [done[t.key] for t in tasks if t.key in done]

    def mean(kind):
        vals = [r[kind][r["metric"]] for r in rows if kind in r]
        return sum(vals) / len(vals) if vals else None

    return {"checkpoint": label, "suite": suite_name, "results": out.label(), "rows": rows,
            "image_only": not text, "mean_linear": mean("linear"), "mean_knn": mean("knn"),
            "mean_zero_shot": mean("zero_shot") if text else None}
