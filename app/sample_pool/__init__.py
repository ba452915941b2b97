"""The built-in sample pool: real offline data (Debian packages) with seeded web noise."""
from app.sample_pool.build import build_pool

__all__ = ["build_pool"]
