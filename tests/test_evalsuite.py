"""Evaluation suite: registry, retrieval metrics, resumable runs, missing tasks never scored."""
import io
import json
import tarfile

import pytest
import torch

from schemas.tasks import DATACOMP, suite
from fixtures.shardmaker import COLOURS, image_bytes, make_task
from training.evalsuite import run_suite
from training.retrieval import recall_at


def test_registry_has_datacomps_38_scored_tasks():
    assert len(DATACOMP) == 40 and sum(t.scored for t in DATACOMP) == 38
    groups = {g: sum(1 for t in DATACOMP if t.group == g and t.scored) for g in
              ("ImageNet", "ImageNet dist. shifts", "VTAB", "Retrieval", "Other")}
    assert groups == {"ImageNet": 1, "ImageNet dist. shifts": 6, "VTAB": 13, "Retrieval": 3, "Other": 15}
    mpcr = {t.key for t in DATACOMP if t.metric == "mean_per_class_recall"}
    assert mpcr == {"vtab/caltech101", "fgvc_aircraft", "vtab/flowers", "vtab/pets"}
    assert len({t.key for t in DATACOMP}) == 40 and len({t.folder for t in DATACOMP}) == 40
    with pytest.raises(ValueError, match="unknown suite"):
        suite("imagenet")


def test_recall_at_k_hand_computed():
    # 3 images; texts 0,1 -> image 0, text 2 -> image 1, text 3 -> image 2
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.1, 0.7, 0.3], [0.5, 0.1, 0.4]])
    m = recall_at(scores, torch.tensor([0, 0, 1, 2]), ks=(1, 2))
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 4)  # texts 0 and 2 rank their image first
    assert m["image_retrieval_recall@2"] == pytest.approx(4 / 4)
    # image columns: img0 top text = 0 (own), img1 top = 1 (image 0's), img2 top = 3 (own, 0.4 > 0.3)
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert m["text_retrieval_recall@2"] == pytest.approx(1.0)
    assert m["mean_recall@1"] == pytest.approx((2 / 4 + 2 / 3) / 2)


def _retrieval_task(root):
    (root / "test").mkdir(parents=True)
    with tarfile.open(root / "test" / "0.tar", "w") as t:
        for i, colour in enumerate(COLOURS):
            for ext, data in (("png", image_bytes(colour, fmt="PNG", seed=i)), ("txt", f"a {colour} square".encode())):
                info = tarfile.TarInfo(f"s{i:07d}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    (root / "test" / "nshards.txt").write_text("1\n")


def test_suite_runs_resumes_and_reports_missing(tmp_path, monkeypatch):
    import schemas.tasks as tasks

    mini = [tasks._t("builtin/colours", "colours", "ImageNet"),
            tasks._t("builtin/colours_retrieval", "colours_retrieval", "Retrieval", "mean_recall@1", "retrieval"),
            tasks._t("builtin/absent", "absent", "VTAB"),
            tasks._t("special", "special", "Other", "worst_group_acc")]
    monkeypatch.setitem(tasks.SUITES, "mini", mini)
    make_task(tmp_path / "data" / "colours", per_class=3)
    _retrieval_task(tmp_path / "data" / "colours_retrieval")
    (tmp_path / "data" / "special").mkdir()
    res = tmp_path / "r.jsonl"
    s = run_suite("curate-tiny", tmp_path / "data", "mini", results=res, few_shot=1)
    status = {r["task"]: r["status"] for r in s["rows"]}
    assert status == {"builtin/colours": "ok", "builtin/colours_retrieval": "ok", "builtin/absent": "missing",
                      "special": "metric unavailable"}
    assert s["tasks_covered"] == 2 and s["tasks_scored"] == 4
    few = {r["task"]: r["few_shot"] for r in s["rows"]}
    assert few["builtin/colours"] is not None and few["builtin/colours_retrieval"] is None
    mains = [r["main"] for r in s["rows"] if r["main"] is not None]
    assert s["average"] == pytest.approx(sum(mains) / 2)
    assert "Average over 2 of 4 scored tasks" in res.with_suffix(".md").read_text()
    assert len(res.with_suffix(".csv").read_text().splitlines()) == 5
    lines = res.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["metrics"]["n_texts"] == 4
    again = run_suite("curate-tiny", tmp_path / "data", "mini", results=res)  # finished tasks are skipped
    assert len(res.read_text().splitlines()) == 2 and again["average"] == s["average"]


def test_results_record_registry_version_and_data_checksums(tmp_path, monkeypatch):
    """Two results files say whether they are comparable: the registry version and fingerprint, and
    each task's data checksum; a task whose data changed is scored again on resume."""
    import schemas.tasks as tasks
    from training.evalsuite import comparable

    monkeypatch.setitem(tasks.SUITES, "mini", [tasks._t("builtin/colours", "colours", "ImageNet")])
    make_task(tmp_path / "data" / "colours", per_class=3)
    res = tmp_path / "r.jsonl"
    a = run_suite("curate-tiny", tmp_path / "data", "mini", results=res)
    row = json.loads(res.read_text().splitlines()[0])
    assert row["registry_version"] == tasks.REGISTRY_VERSION and len(row["data_sha256"]) == 64
    assert a["registry_fingerprint"] == tasks.fingerprint(tasks.SUITES["mini"])
    assert "Task registry version" in res.with_suffix(".md").read_text()
    assert comparable(a, run_suite("curate-tiny", tmp_path / "data", "mini", results=res)) == []
    assert len(res.read_text().splitlines()) == 1  # same data: not scored again

    make_task(tmp_path / "data" / "colours", per_class=4)  # the task's data change
    b = run_suite("curate-tiny", tmp_path / "data", "mini", results=res)
    assert len(res.read_text().splitlines()) == 2  # scored again
    why = comparable(a, b)
    assert len(why) == 1 and "builtin/colours: its data differ" in why[0]
    monkeypatch.setattr(tasks, "REGISTRY_VERSION", tasks.REGISTRY_VERSION + 1)
    assert any("task registry" in w for w in comparable({**b, "registry_version": tasks.REGISTRY_VERSION}, b))
