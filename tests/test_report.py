"""The curation report: a static page with the right content, escaped captions, and no console
errors in headless Chromium (a screenshot is taken)."""
import shutil
import subprocess

import pandas as pd
import pytest

from pipeline.run import run_curation
from tests.shardmaker import make_pool, uid

PLANT = {3: "corrupt", 5: "dup", 9: "swapped"}
BROWSER = shutil.which("chromium-headless-shell") or shutil.which("chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("r")
    make_pool(tmp / "pool", n=40, per_shard=20, plant=PLANT)
    # a caption that would run as script if it were not escaped
    meta = tmp / "pool" / "00000.parquet"
    cfg = {"clip": [{"model": "curate-tiny", "batch_size": 16}],
           "filters": [{"type": "exact_dedup"}, {"type": "semantic_dedup", "clusters": 2, "eps": 0.001, "keep": "first"},
                       {"type": "clip_score", "fraction": 0.5}]}
    m = run_curation(str(tmp / "pool"), tmp / "out", cfg, progress=False)
    return tmp, m, (tmp / "out" / "report.html").read_text()


def test_report_shows_counts_reasons_histogram_and_examples(report):
    tmp, m, page = report
    assert f"<b>{m['samples_in']:,}</b> samples in" in page and f"<b>{m['kept']:,}</b> kept" in page
    for reason in m["dropped_by_reason"]:
        assert f"dropped: {reason}" in page
    assert "clip_score histogram" in page and "threshold" in page
    assert "Cluster sizes (semdedup_cluster" in page and "Duplicate groups" in page
    assert page.count("data:image/jpeg;base64,") >= 12
    df = pd.read_parquet(tmp / "out" / "metadata.parquet")
    assert m["report"].endswith("report.html") and len(df) == 40


def test_captions_are_escaped(tmp_path):
    from pipeline.shards import ShardWriter
    from tests.shardmaker import image_bytes

    with ShardWriter(tmp_path / "pool", 10) as w:
        for i in range(4):
            w.write(f"{i:09d}", image_bytes("red", seed=i), "jpg", '<script>alert("x")</script> & <b>bold</b>',
                    {"uid": uid(i)})
    run_curation(str(tmp_path / "pool"), tmp_path / "out", {"filters": []}, progress=False)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;" in page


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium (scripts/setup.sh installs chromium-headless-shell as root)")
def test_report_renders_in_headless_chromium_without_console_errors(report):
    tmp, m, page = report
    shot = tmp / "report.png"
    r = subprocess.run([BROWSER, "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                        f"--screenshot={shot}", "--window-size=1200,2400", (tmp / "out" / "report.html").as_uri()],
                       capture_output=True, text=True, timeout=120)
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console  # the page has no script: any console message is an error
    assert shot.is_file() and shot.stat().st_size > 20_000
