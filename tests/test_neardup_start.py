"""Near dedup's cheap test before alignment (pipeline/neardup.py, step 2a) on real Fashion-MNIST
products and copies planted as the sample pool plants them: it settles pairs, never one that
alignment puts within the settle RMS, and every decision equals the one without it."""
import io

import numpy as np
import pytest
from PIL import Image

import pipeline.neardup as nd
from app.sample_pool import sources
from app.sample_pool.noise import near_copy

pytestmark = pytest.mark.skipif(not sources.real_data_status()["fashion_mnist"], reason="no Fashion-MNIST data")
ND = {"max_rms": 4.5, "ratio": 0.75, "ratio_max_rms": 7.0}
SETTLE = max(ND["max_rms"], ND["ratio_max_rms"] / ND["ratio"])


@pytest.fixture(scope="module")
def thumbs():
    images, _ = sources.fmnist("train")
    rng = np.random.default_rng(0)
    recs = [{"image": sources.encode(sources.fmnist_image(a))} for a in images[:800]]
    data = [r["image"] for r in recs] + [near_copy(r, rng)[0] for r in recs[:80]]
    return np.stack([nd.thumbnail(Image.open(io.BytesIO(b))) for b in data])


def test_start_rms_settles_only_pairs_alignment_puts_beyond_settle(thumbs):
    desc, mean, norm = nd.descriptors(thumbs, stats=True)
    trip = nd.candidates(desc, np.ones(len(thumbs), bool), 5)
    aligned = nd.aligned_rms(thumbs, trip, nd.view_params(), SETTLE)
    start = nd.start_rms(desc, mean, norm, trip)
    settled = start > SETTLE + nd.START_MARGIN
    assert settled.mean() > 0.1  # it does settle pairs (look-alike products)
    assert (aligned[settled] > SETTLE).all()  # and none that alignment brings within reach of a decision
    near = aligned <= SETTLE  # the margin's reason: such pairs start well below the margin above their RMS
    assert (start[near] - aligned[near]).max() < nd.START_MARGIN


def test_decisions_equal_those_without_the_cheap_test(thumbs, monkeypatch):
    fast = nd.near_duplicates(thumbs, np.ones(len(thumbs), bool), **ND)
    monkeypatch.setattr(nd, "START_MARGIN", np.inf)
    full = nd.near_duplicates(thumbs, np.ones(len(thumbs), bool), **ND)
    assert (fast.duplicate_of == full.duplicate_of).all()
    copies = fast.duplicate_of[800:]
    assert (copies >= 0).mean() > 0.9  # the planted copies are found
