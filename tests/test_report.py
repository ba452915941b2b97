"""The curation report: matplotlib plots, setup and input-problem panels, ground-truth confusion,
examples at each threshold with their scores, duplicates side by side, escaped captions; and a
headless-Chromium screenshot that is not blank and uses the page's width."""
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.report import at_threshold, confusion, dup_groups, score_filters, write_report
from pipeline.run import run_curation
from fixtures.shardmaker import make_pool, uid

PLANT = {3: "corrupt", 5: "dup", 9: "swapped", 12: "german", 14: "short"}
NOISE = {"corrupt": "corrupt_image", "dup": "exact_duplicate", "swapped": "swapped_caption",
         "german": "non_english", "short": "junk_caption"}
BROWSER = shutil.which("chromium") or shutil.which("chromium-headless-shell") or shutil.which("chromium-browser")
CLIP = "clip_score[top0.5]"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("r")
    make_pool(tmp / "pool", n=40, per_shard=20, plant=PLANT)
    side = tmp / "pool" / "00000.parquet"  # two URLs img2dataset could not fetch
    t = pq.read_table(side)
    extra = pa.Table.from_pylist([{"key": f"9999{i}", "status": "failed_to_download"} for i in range(2)])
    pq.write_table(pa.concat_tables([t, extra], promote_options="default"), side)
    tar = tmp / "pool" / "00001.tar"
    tar.write_bytes(tar.read_bytes()[: int(tar.stat().st_size * 0.6)])  # broken: truncated
    truth = [{"uid": uid(i), "noise": NOISE.get(PLANT.get(i))} for i in range(40)]  # None: clean
    pd.DataFrame(truth).to_parquet(tmp / "ground_truth.parquet")  # beside the shards' folder, like the sample pool
    cfg = {"clip": [{"model": "curate-tiny", "batch_size": 16}],
           "filters": [{"type": "basic", "min_side": 24}, {"type": "exact_dedup"}, {"type": "near_dedup"},
                       {"type": "clip_score", "fraction": 0.5}]}
    m = run_curation(str(tmp / "pool"), tmp / "out", cfg, progress=False)
    df = pd.read_parquet(tmp / "out" / "metadata.parquet")
    return tmp, m, df, (tmp / "out" / "report.html").read_text()


def sections(page: str) -> dict[str, str]:
    """h2 title -> the page up to the next h2."""
    parts = re.split(r"<h2>", page)[1:]
    return {re.sub(r"<[^>]+>", "", p.split("</h2>")[0]): p for p in parts}


def test_counts_setup_and_input_problems(report):
    tmp, m, df, page = report
    assert f"<b>{m['samples_in']:,}</b> samples in" in page and f"<b>{m['kept']:,}</b> kept" in page
    setup = sections(page)["Setup"]
    assert m["config_hash"] in setup and "curate-tiny" in setup
    for name in ("basic", "exact_dedup", "near_dedup", CLIP):
        assert f"<td>{name}</td>" in setup
    assert f"<td>{m['thresholds'][CLIP]:.4g}</td>" in setup
    n = m["dropped_by_reason"]["basic:language"]
    assert f"basic:language: {n:,} / {m['failing_by_rule']['basic:language']:,}" in setup
    problems = sections(page)["Input problems"]
    [broken] = m["broken_shards"]
    assert broken["shard"] in problems and broken["error"][:30] in problems
    assert m["listed_not_downloaded"] == {"failed_to_download": 2}
    assert "<td>failed_to_download</td><td>2</td>" in problems
    assert f"missing from its tar: <b>{m['listed_missing_from_tar']}</b>" in problems


def test_plots_are_matplotlib_svgs_with_axes_counts_and_legends(report):
    tmp, m, df, page = report
    plots = re.findall(r'<div class="plot"><svg.*?</svg>', page, flags=re.S)
    assert len(plots) == 3  # drops by reason, the clip_score histogram, ground truth
    drops, hist, truth = plots
    assert "Drops by reason" in drops and ">samples</text>" in drops and "first failing rule" in drops
    assert f">{m['dropped_by_reason']['exact_dedup']}</text>" in drops  # the bar's count
    assert f"threshold {m['thresholds'][CLIP]:.4g}" in hist and ">clip_score</text>" in hist
    kept_scored = int((df["keep"] & df["clip_score"].notna()).sum())
    assert f"kept ({kept_scored:,})" in hist
    assert "kept / dropped by noise type" in truth and "% of the noise type" in truth and ">kept</text>" in truth
    assert f">clean ({len(df) - len(PLANT)})</text>" in truth  # null noise reads as clean


def test_ground_truth_confusion(report):
    tmp, m, df, page = report
    t = confusion(df, pd.read_parquet(tmp / "ground_truth.parquet"))
    assert t.loc["corrupt_image", ["samples", "dropped"]].tolist() == [1, 1]
    assert t.loc["exact_duplicate", "caught by (first rule)"] == "exact_dedup 1"
    assert t.loc["non_english", "caught by (first rule)"] == "basic:language 1"
    assert t["samples"].sum() == len(df) and t["kept"].sum() == m["kept"]
    assert t.loc["clean", "samples"] == len(df) - len(PLANT)  # every planted sample is in the intact shard
    sec = next(v for k, v in sections(page).items() if k.startswith("Ground truth"))
    assert "<td>exact_duplicate</td><td>1</td><td>0</td><td>1</td><td>100</td><td>exact_dedup 1</td>" in sec


def test_examples_at_the_threshold_are_the_nearest_and_show_their_scores(report):
    tmp, m, df, page = report
    [(name, col, t, fails)] = score_filters(df, m["filters"])
    assert (name, col, t) == (CLIP, "clip_score", m["thresholds"][CLIP])
    kept, dropped = at_threshold(df, col, t, fails)
    s = df["clip_score"].to_numpy()
    assert len(kept) == len(dropped) == 6
    assert (s[kept] >= t).all() and (s[dropped] < t).all()
    usable = df["ingest_error"].isna().to_numpy()
    others = np.setdiff1d(np.flatnonzero(usable & (s >= t)), kept)
    assert np.abs(s[others] - t).min() >= np.abs(s[kept] - t).max()  # nothing nearer was left out
    sec = sections(page)[f"At the threshold: {CLIP} (clip_score {t:.5f})"]
    just_kept, just_dropped = sec.split("just dropped")
    for rows, part in ((kept, just_kept), (dropped, just_dropped)):
        for i in rows:
            assert f"clip_score {s[i]:.5f}" in part


def test_unusable_samples_show_only_under_their_ingest_reason(report):
    tmp, m, df, page = report
    [bad] = df.loc[df["ingest_error"].notna(), "ingest_error"].tolist()
    reason = bad.split(":")[0]
    where = [k for k, v in sections(page).items() if bad[:40] in v]
    assert where == [f"dropped: {reason} {m['dropped_by_reason'][reason]} samples (1 random examples)"]


def test_duplicates_are_shown_side_by_side(report):
    tmp, m, df, page = report
    groups = dict((name, gs) for name, _, gs in dup_groups(df, m["filters"]))
    first, copy = df.index[df["uid"] == uid(4)][0], df.index[df["uid"] == uid(5)][0]
    assert groups["exact_dedup"] == [(first, [copy])]
    assert (first, [copy]) in groups["near_dedup"]
    sec = next(v for k, v in sections(page).items() if k.startswith("Duplicates"))
    assert sec.count("kept by this filter") == sum(len(g) for g in groups.values()) and "rms 0.000" in sec


def test_not_processed_shards_and_a_rewritten_report_from_the_published_metadata(report, tmp_path):
    tmp, m, df, page = report
    m = json.loads((tmp / "out" / "manifest.json").read_text())
    m["not_processed_shards"] = [{"shard": "/data/pool/00042.tar", "error": "OSError: disk <gone>"}]
    path = write_report(tmp_path, df, m["input_shards"], m)  # as `curate report` does: drop_reasons as arrays
    problems = sections(path.read_text())["Input problems"]
    assert "Not processed shards (1)" in problems and "OSError: disk &lt;gone&gt;" in problems
    (tmp_path / "again").mkdir()
    assert write_report(tmp_path / "again", df, m["input_shards"], m).read_bytes() == path.read_bytes()


def test_captions_are_escaped(tmp_path):
    from shardio.shards import ShardWriter
    from fixtures.shardmaker import image_bytes

    with ShardWriter(tmp_path / "pool", 10) as w:
        for i in range(4):
            w.write(f"{i:09d}", image_bytes("red", seed=i), "jpg", '<script>alert("x")</script> & <b>bold</b>',
                    {"uid": uid(i)})
    run_curation(str(tmp_path / "pool"), tmp_path / "out", {"filters": []}, progress=False)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;" in page


@pytest.mark.skipif(BROWSER is None, reason="no Chromium binary (chromium or chromium-headless-shell) on PATH; "
                                            "apt-get install -y chromium to run this test")
def test_report_screenshot_in_headless_chromium_is_not_blank(report):
    from PIL import Image

    tmp, m, df, page = report
    shot = tmp / "report.png"
    r = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
                        f"--screenshot={shot}", "--window-size=1400,3000", (tmp / "out" / "report.html").as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert shot.is_file(), r.stderr[-2000:]
    assert [line for line in r.stderr.splitlines() if "CONSOLE" in line] == []  # the page has no script
    px = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert px.shape == (3000, 1400) and px.std() > 20  # not one flat colour
    assert px[:1200, 900:].std() > 10  # the right side holds content too (full page width)


def test_nearest_rows_is_the_stable_sorts_first_n():
    from pipeline.report import nearest_rows

    rng = np.random.default_rng(0)
    for n in (0, 1, 5, 30):
        for m in (0, 3, 50, 1000):
            d = rng.integers(0, 5, 2000).astype(float)  # many ties
            rows = np.sort(rng.choice(2000, m, replace=False))
            assert (nearest_rows(rows, d, n) == rows[np.argsort(d[rows], kind="stable")[:n]]).all()


def test_at_threshold_is_each_sides_stable_nearest():
    """The sampled band gives what a full stable sort of each side gives: ties, NaN and inf scores,
    ingest errors, a side with fewer than n rows, an empty side, and bands the sample misses."""
    rng = np.random.default_rng(1)
    for case in range(120):
        size = int(rng.choice([1, 7, 100, 5000, 40000]))
        s = np.round(rng.normal(0, 1, size), int(rng.integers(0, 4)))  # coarse rounding: many ties
        s[rng.random(size) < 0.05] = np.nan
        s[rng.random(size) < 0.02] = np.inf
        err = np.where(rng.random(size) < 0.1, "unreadable", None)
        t = float(rng.choice([0.0, 0.5, 3.0, -9.0]))
        fails = (s < t) if case % 3 else rng.random(size) < float(rng.choice([0.0, 0.001, 0.5, 1.0]))
        df = pd.DataFrame({"x": s, "ingest_error": err})
        n = int(rng.choice([1, 6, 50]))
        ok = pd.isna(err) & np.isfinite(s)
        dist = np.abs(s - t)
        want = tuple(list(r[np.argsort(dist[r], kind="stable")[:n]]) for r in (np.flatnonzero(ok & ~fails),
                                                                              np.flatnonzero(ok & fails)))
        assert at_threshold(df, "x", t, fails, n) == want, case
