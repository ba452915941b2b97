"""A sample pool of web-like image-text pairs from real offline data, with seeded noise and ground truth."""
from pipeline.pool.build import build_pool
from pipeline.pool.sources import is_holdout

__all__ = ["build_pool", "is_holdout"]
