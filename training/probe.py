"""Few-shot linear probe of a frozen image encoder: k labelled images per class, logistic regression.

Features are the L2-normalised image embeddings. Training images come from the task's ``train/``
split when it has one, otherwise k per class are drawn from ``test/`` and the probe is scored on the
rest. The L2 strength is picked by 2-fold cross-validation on the k-shot set (CLIP's probes sweep it
too). Same metrics as zero-shot.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from shardio import storage
from shardio.evaltask import has_split, task_name
from training.zeroshot import iter_batches, metrics, read_task

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


@torch.no_grad()
def features(model, preprocess, task_root: str | Path, device: str, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for images, labels in iter_batches(task_root, preprocess, 256, split):
        xs.append(model.encode_image(images.to(device), normalize=True).float().cpu())
        ys.append(labels)
    return torch.cat(xs), torch.cat(ys)


def fit(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, steps: int = 100) -> torch.nn.Linear:
    torch.manual_seed(0)
    clf = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.LBFGS(clf.parameters(), lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(clf(x), y) + l2 * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return clf


def pick_l2(x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    fold = torch.randperm(len(y), generator=g) % 2
    scores = []
    for l2 in L2_GRID:
        acc = 0.0
        for f in (0, 1):
            clf = fit(x[fold != f], y[fold != f], n_classes, l2)
            with torch.no_grad():
                acc += float((clf(x[fold == f]).argmax(1) == y[fold == f]).float().mean())
        scores.append(acc)
    return L2_GRID[int(np.argmax(scores))]


def k_shot(y: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    idx = [rng.choice(np.flatnonzero(y.numpy() == c), min(k, int((y == c).sum())), replace=False)
           for c in torch.unique(y).tolist()]
    return torch.from_numpy(np.sort(np.concatenate(idx)))


def linear_probe(checkpoint: str, task_root: str | Path, k: int = 10, seed: int = 0, device: str = "auto",
                 weights: str | None = None) -> dict:
    from training.model import load_for_eval

    t0 = time.time()
    clip, device = load_for_eval(checkpoint, weights, device)
    r = probe(clip, task_root, k, seed, device)
    return {"task": task_name(task_root), "checkpoint": storage.redact(str(checkpoint)), **r, "seconds": round(time.time() - t0, 2)}


def shot_split(task_root: str | Path, embed, k: int, seed: int):
    """(labelled x, y, scored x, y, where the labels came from): ``k`` per class of the task's ``train/``
    split when it has one, else ``k`` per class drawn from ``test/`` and scored on the rest.
    ``embed(split)`` gives a split's features and labels."""
    x, y = embed("test")
    if has_split(task_root, "train"):
        xt, yt = embed("train")
        sel = k_shot(yt, k, seed)
        return xt[sel], yt[sel], x, y, "train split"
    sel = k_shot(y, k, seed)
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[sel] = False
    return x[sel], y[sel], x[rest], y[rest], "k per class drawn from test, scored on the rest"


def probe(clip, task_root: str | Path, k: int = 10, seed: int = 0, device: str = "cpu") -> dict:
    """k-shot linear probe of a loaded model's image encoder on one classification task."""
    classnames, _ = read_task(task_root)
    xt, yt, x, y, source = shot_split(
        task_root, lambda split: features(clip.model, clip.preprocess_val, task_root, device, split), k, seed)
    l2 = pick_l2(xt, yt, len(classnames), seed)
    clf = fit(xt, yt, len(classnames), l2)
    with torch.no_grad():
        logits = clf(x)
    return {"k": k, "seed": seed, "l2": l2, "n_train": int(len(yt)), "n": int(len(y)), "train_source": source,
            "metrics": metrics(logits, y, len(classnames))}
