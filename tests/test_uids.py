"""pipeline/uids.py: one sort of the uid halves gives DataComp's sorted uid array and the repeated uids."""
import numpy as np
import pandas as pd
import pytest

import pipeline.uids

from pipeline.uids import sorted_rows, uid_order


@pytest.mark.parametrize("parallel", [False, True])
def test_sorted_rows_is_a_stable_sort_by_both_halves_even_when_top_bits_tie(monkeypatch, parallel):
    if parallel:  # two halves sorted on two threads, then merged
        monkeypatch.setattr(pipeline.uids, "PARALLEL_SORT", 2)
    rng = np.random.default_rng(0)
    for n in (1, 2, 17, 1000, 5000):
        for spread in (3, 1 << 20, 1 << 62):  # tiny spreads: most keys tie on their top bits, many whole uids repeat
            hi = (rng.integers(0, spread, n, dtype=np.uint64) << np.uint64(1)) + np.uint64(1 << 62)
            lo = rng.integers(0, 4, n, dtype=np.uint64)
            want = np.lexsort((np.arange(n), lo, hi))
            assert (sorted_rows(hi, lo) == want).all(), (n, spread)


@pytest.mark.parametrize("parallel", [False, True])
def test_repeated_and_pairs_match_pandas_and_python(monkeypatch, parallel):
    if parallel:  # sorts and gathers on two threads
        monkeypatch.setattr(pipeline.uids, "PARALLEL_SORT", 2)
    rng = np.random.default_rng(1)
    pool = ["%032x" % int(x) for x in rng.integers(0, 2**62, 50)]
    uids = pd.Series([pool[i] for i in rng.integers(0, 50, 400)], dtype="str")
    usable = rng.random(400) > 0.3
    o = uid_order(uids)
    assert not o.upper
    assert (o.repeated(usable) == (uids.where(usable).duplicated(keep="first").to_numpy() & usable)).all()
    keep = usable & ~o.repeated(usable)
    want = sorted((int(u[:16], 16), int(u[16:], 16)) for u, k in zip(uids, keep) if k)
    assert o.pairs(keep).tolist() == want
    assert uid_order(pd.Series(["A" * 32, "a" * 32], dtype="str")).upper
    assert uid_order(pd.Series(["g" * 32], dtype="str")) is None
