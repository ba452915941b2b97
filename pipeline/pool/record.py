"""One pool sample as it is built: the written bytes and caption plus what the ground truth needs."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass


def make_uid(seed: int, source: str, item: str, copy: str = "") -> str:
    """DataComp-style 128-bit uid (32 hex characters), stable for a seed."""
    return hashlib.sha256(f"{seed}/{source}/{item}/{copy}".encode()).hexdigest()[:32]


@dataclass
class Record:
    uid: str
    source: str  # fashion_mnist | openclipart | emoji | synthetic
    item: str  # id inside the source: train/123, food/fruit/apple.png, U+1F600
    label: str  # class name, openclipart topic or English emoji name
    caption: str  # as written
    clean_caption: str  # the correct one
    image: bytes
    ext: str  # jpg | png
    original_size: tuple[int, int]  # of the source image before resizing
    url: str
    noise: str | None = None
    noise_detail: str | None = None
    noise_of: str | None = None  # uid of the original (duplicates) or an eval-set reference


def new_record(seed: int, source: str, item: str, label: str, caption: str, image: bytes, ext: str,
               original_size: tuple[int, int], url: str) -> Record:
    return Record(make_uid(seed, source, item), source, item, label, caption, caption, image, ext,
                  original_size, url)
