"""Zero-shot image-text retrieval the way CLIP_benchmark scores it.

Task folder: ``test/{i}.tar`` with an image + ``{key}.txt`` (one caption per line; an image may have
several). Scores = text @ image (normalised embeddings). Text-to-image recall@k: the caption's image
is in its top k. Image-to-text recall@k: at least one of the image's captions is in its top k.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shardio.evaltask import iter_split


def read_pairs(task_root: str | Path) -> tuple[list, list[str], list[int]]:
    images, texts, owner = [], [], []
    for _, img, s in iter_split(task_root, need="txt"):
        for line in s["txt"].decode("utf-8").splitlines():
            texts.append(line)
            owner.append(len(images))
        images.append(img)
    return images, texts, owner


def recall_at(scores: torch.Tensor, owner: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """``scores``: texts x images; ``owner[t]`` = index of text t's image."""
    from training.bootstrap import se_mean

    out, se = {}, {}
    n_img = scores.shape[1]
    for k in ks:
        kk = min(k, n_img)
        t2i_hits = (scores.topk(kk, dim=1).indices == owner[:, None]).any(1).float()
        top_texts = scores.topk(min(k, scores.shape[0]), dim=0).indices  # k x images
        i2t_hits = (owner[top_texts] == torch.arange(n_img)[None]).any(0).float()
        t2i, i2t = t2i_hits.mean(), i2t_hits.mean()
        # the two directions resampled apart (texts, images): SE of their mean
        se[f"mean_recall@{k}"] = 0.5 * float(np.hypot(se_mean(t2i_hits.numpy()), se_mean(i2t_hits.numpy())))
        out[f"image_retrieval_recall@{k}"] = float(t2i)  # CLIP_benchmark's names: text -> image
        out[f"text_retrieval_recall@{k}"] = float(i2t)  # image -> text
        out[f"mean_recall@{k}"] = float((t2i + i2t) / 2)
    out["se"] = se
    return out


@torch.no_grad()
def retrieve(clip, task_root: str | Path, batch_size: int = 256, device: str = "cpu") -> dict:
    images, texts, owner = read_pairs(task_root)
    from shardio.pixels import batch_transform

    batch = batch_transform(clip.preprocess_val)
    img = torch.cat([clip.model.encode_image(batch(images[i:i + batch_size])
                                             .to(device), normalize=True).float().cpu()
                     for i in range(0, len(images), batch_size)])
    txt = torch.cat([clip.model.encode_text(clip.tokenizer(texts[i:i + batch_size]).to(device), normalize=True)
                     .float().cpu() for i in range(0, len(texts), batch_size)])
    return {"n": len(images), "n_texts": len(texts), **recall_at(txt @ img.T, torch.tensor(owner))}
