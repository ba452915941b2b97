"""bench/gpu.py: its --smoke run (tiny, on the CPU) writes every figure the GPU run writes, with sane
values, to the path given (never bench/results/gpu.json); its helpers agree on known cases."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import gpu, gpu_helpers as h

ROOT = Path(__file__).resolve().parents[1]


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


@pytest.mark.slow  # ~40 s alone, ~105 s on a loaded 2-core machine; the global steps are checked unmarked below
def test_smoke_run_writes_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    p = subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "wrote" in p.stdout and "knn_d2" in p.stdout  # the figures are printed
    res = json.loads(out.read_text())
    assert res["smoke"] is True and out.resolve() != (ROOT / "bench" / "results" / "gpu.json").resolve()
    errors = {k: v["error"] for k, v in res.items() if isinstance(v, dict) and "error" in v}
    assert not errors, errors
    m = res["machine"]
    assert m["cores"] >= 1 and m["torch"] and m["faiss"] and m["faiss_kind"] and "gpu" in m and m["cpu"] is not None

    sc = res["scoring"]
    for k in ("annotate_per_s", "end_to_end_per_s", "towers_only_per_s", "cpu_ms_per_sample_besides_towers",
              "cores_to_feed_10k_per_s", "whole_pass_cpu_ms_per_sample"):
        assert positive(sc[k]), (k, sc[k])
    assert sc["samples"] == res["settings"]["samples"] and 0 < sc["kept"] < sc["samples"]
    assert sc["device"] == "cpu" and sc["weights"].startswith("random init")
    assert {"tar read", "decode", "towers"} <= set(sc["cpu_ms_per_sample_by_part"])

    gs = res["global_steps"]
    for step in ("kmeans", "semantic_dedup", "knn_d2"):
        assert positive(gs[step]["cpu_s"]) and positive(gs[step]["gpu_s"]), (step, gs[step])
    assert gs["kmeans"]["same_assignment_share"] > 0.95 and gs["kmeans"]["matched_assignment_share"] > 0.95
    assert gs["semantic_dedup"]["same_kept_set"] is True and gs["semantic_dedup"]["kept_decisions_agree_share"] == 1.0
    assert gs["semantic_dedup"]["cpu_kept"] < gs["n"]  # the planted near-copies go
    assert gs["knn_d2"]["neighbour_recall"] > 0.99 and 0 <= gs["knn_d2"]["same_neighbours_share"] <= 1
    assert gs["backends"]["cpu"] and gs["backends"]["gpu"]

    tr = res["training"]
    assert positive(tr["ours"]["samples_per_s"]) and tr["ours"]["steps"] == tr["steps"]
    assert tr["ours"]["peak_gpu_memory_gb"] is None  # no GPU in a smoke run
    peer = tr["open_clip_train"]
    assert "error" in peer or positive(peer["samples_per_s"]), peer  # recorded either way


def test_smoke_global_steps_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the smoke run hides the GPU; restored after
    out = tmp_path / "g.json"
    res = gpu.main(["--smoke", "--parts", "global_steps", "--vectors", "3000", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res, default=str))
    assert set(res) >= {"machine", "settings", "global_steps", "seconds"} and "scoring" not in res
    gs = res["global_steps"]
    assert "error" not in gs, gs
    assert gs["n"] == 3000 and gs["device"] == "cpu"
    for step in ("kmeans", "semantic_dedup", "knn_d2"):
        assert positive(gs[step]["cpu_s"]) and positive(gs[step]["gpu_s"])
    assert gs["kmeans"]["same_assignment_share"] > 0.99 and gs["semantic_dedup"]["same_kept_set"] is True
    assert gs["knn_d2"]["neighbour_recall"] > 0.99


def test_smoke_never_writes_the_results_file():
    p = subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke", "--out", "bench/results/gpu.json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "never writes" in p.stderr


def test_agreement_measures_and_the_cpu_fallbacks():
    x = h.clustered(3000, 64, 3, seed=1)
    assert x.shape == (3000, 64) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    cent, assign, which = h.kmeans_gpu(x, 3, 10, 0, "cpu")
    assert cent.shape == (3, 64) and "torch assignment" in which
    torch_cent = h.torch_kmeans(x, 3, 10, 0, "cpu")  # the last resort when faiss does not import
    relabelled = np.argmax(x @ torch_cent.T, axis=1)
    assert h.assignment_agreement(assign, relabelled)["matched_assignment_share"] > 0.99
    nb_f, how = h.d2_knn(x, assign, 5, "faiss")
    nb_t, _ = h.d2_knn(x, assign, 5, "torch")
    assert how and h.knn_agreement(nb_f, nb_t)["neighbour_recall"] > 0.99
    assert h.knn_agreement(np.array([[1, 2, 3], [4, 5, -1]]), np.array([[3, 2, 1], [4, 6, -1]])) == \
        {"neighbour_recall": 0.8, "same_neighbours_share": 0.5}
    assert h.assignment_agreement(np.array([0, 0, 1, 1, 2]), np.array([5, 5, 3, 3, 3])) == \
        {"same_assignment_share": 0.0, "matched_assignment_share": 0.8}
    with h.cpu_only():
        import torch

        assert not torch.cuda.is_available()
