"""Zero-shot classification the way CLIP_benchmark does it, on a task in its webdataset layout.

Task folder: ``classnames.txt``, ``zeroshot_classification_templates.txt`` (``{c}`` marks the class),
``test/nshards.txt`` and ``test/{0..n-1}.tar`` holding ``{key}.png|jpg|webp`` + ``{key}.cls``.
Classifier = mean of the normalised template embeddings per class, renormalised; metrics are top-1,
top-5 (top-k capped at the class count) and mean per-class recall (balanced accuracy).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from shardio import storage
from shardio.evaltask import iter_split, read_lines, split_shards, task_name, task_path


def read_task(task_root: str | Path) -> tuple[list[str], list[str]]:
    """Class names and templates; the test split must be there too (a folder or a URL)."""
    need = [task_path(task_root, "classnames.txt"), task_path(task_root, "zeroshot_classification_templates.txt")]
    missing = [storage.redact(str(p)) for p in need if not storage.is_file(p)]
    if missing:
        raise FileNotFoundError(f"{storage.redact(str(task_root))} is not a task in CLIP_benchmark's wds layout: "
                                f"missing {', '.join(missing)}")
    split_shards(task_root)
    classnames, templates = read_lines(need[0]), read_lines(need[1])
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise ValueError(f"templates without {{c}} in {need[1]}: {bad}")
    return classnames, templates


@torch.no_grad()
def classifier(model, tokenizer, classnames: list[str], templates: list[str], device: str) -> torch.Tensor:
    weights = []
    for c in classnames:
        emb = model.encode_text(tokenizer([t.format(c=c) for t in templates]).to(device), normalize=True)
        emb = emb.mean(0)
        weights.append(emb / emb.norm())
    return torch.stack(weights, dim=1)  # (dim, classes)


def iter_batches(task_root: str | Path, preprocess, batch_size: int, split: str = "test"):
    from shardio.pixels import batch_transform

    batch = batch_transform(preprocess)
    images, labels = [], []
    for _, img, s in iter_split(task_root, split, need="cls"):
        images.append(img)
        labels.append(int(s["cls"]))
        if len(images) == batch_size:
            yield batch(images), torch.tensor(labels)
            images, labels = [], []
    if images:
        yield batch(images), torch.tensor(labels)


def metrics(logits: torch.Tensor, target: torch.Tensor, n_classes: int) -> dict[str, float]:
    k = min(5, n_classes)
    topk = logits.topk(k, dim=1).indices
    correct = topk == target[:, None]
    pred = topk[:, 0]
    recalls = [float((pred[target == c] == c).float().mean()) for c in range(n_classes) if (target == c).any()]
    return {"acc1": float(correct[:, 0].float().mean()), "acc5": float(correct.any(1).float().mean()),
            "mean_per_class_recall": float(np.mean(recalls))}


def standard_errors(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Bootstrap standard errors of top-1 accuracy and mean per-class recall."""
    from training.bootstrap import se_mean, se_mean_per_class_recall

    hits = (logits.argmax(1) == target).numpy()
    return {"acc1": se_mean(hits), "mean_per_class_recall": se_mean_per_class_recall(hits, target.numpy())}


def classify(clip, task_root: str | Path, batch_size: int = 256, device: str = "cpu") -> dict:
    """Zero-shot classification metrics of a loaded model on one task folder."""
    classnames, templates = read_task(task_root)
    from tqdm import tqdm

    w = classifier(clip.model, clip.tokenizer, classnames, templates, device)
    logits, target = [], []
    bar = tqdm(desc=task_name(task_root), unit="img", leave=False, mininterval=2)  # progress inside a task
    for images, labels in iter_batches(task_root, clip.preprocess_val, batch_size):
        with torch.no_grad():
            img = clip.model.encode_image(images.to(device), normalize=True)
        logits.append((100.0 * img @ w).float().cpu())
        target.append(labels)
        bar.update(len(labels))
    bar.close()
    logits_t, target_t = torch.cat(logits), torch.cat(target)
    return {"n": int(len(target_t)), "templates": len(templates), **metrics(logits_t, target_t, len(classnames)),
            "se": standard_errors(logits_t, target_t)}


def evaluate_zeroshot(checkpoint: str, task_root: str | Path, batch_size: int = 256, device: str = "auto",
                      weights: str | None = None) -> dict:
    """``checkpoint``: a checkpoint folder or model name; ``weights``: a weights file for that name."""
    from training.model import load_for_eval

    t0 = time.time()
    clip, device = load_for_eval(checkpoint, weights, device)
    m = classify(clip, task_root, batch_size, device)
    n, templates, se = m.pop("n"), m.pop("templates"), m.pop("se")
    dv = trained_on(checkpoint)
    return {"task": task_name(task_root), "checkpoint": storage.redact(str(checkpoint)), "n": n, "metrics": m, "se": se,
            "templates": templates, "seconds": round(time.time() - t0, 2), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **({"data_version": dv} if dv else {})}


def trained_on(checkpoint: str | Path) -> dict | None:
    """The curated version ``{out, version, manifest_sha256}`` a checkpoint folder records it was trained
    on; None when it records none (plain shards, another trainer, a model name)."""
    from training.model import checkpoint_info, is_checkpoint_dir

    if not is_checkpoint_dir(checkpoint):
        return None
    try:
        return (checkpoint_info(checkpoint).get("train") or {}).get("data_version")
    except (OSError, ValueError, AttributeError):
        return None


def append_result(path: str | Path, record: dict) -> None:
    """Append one json line and fsync, so a crash never leaves a half-written result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
