"""Evaluate a checkpoint on a task suite (schemas/tasks.py), resumably, and aggregate as DataComp does.

Each finished task is appended to a jsonl at once; a rerun skips tasks already there for the same
checkpoint. A task without data is reported missing, never scored 0, and the average states how many
tasks it covers. Average = plain mean of the scored tasks' main metrics; group score = mean within
the group. Writes ``<results>.md`` and ``<results>.csv`` beside the jsonl.

The data root and the checkpoint may be URLs (``s3://...``): the tasks are streamed from the bucket,
the checkpoint copied once into the local cache (shardio/models.py); the results file may be a bucket
URL too (default ``eval_<suite>.jsonl`` in the working folder for a checkpoint that is not a local folder).
A URL is recorded without what may be a secret in it (``storage.redact``).
"""
from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

from schemas.tasks import GROUPS, REGISTRY_VERSION, SPECIAL, Task, fingerprint, suite
from shardio import storage
from shardio.evaltask import has_split, task_checksum, task_path
from training.runfolder import ResultsFile
from training.zeroshot import trained_on

log = logging.getLogger(__name__)


def _done(rows: list[dict], checkpoint: str) -> dict[str, dict]:
    return {r["task"]: r for r in rows if r.get("checkpoint") == checkpoint}


def evaluate_task(clip, task: Task, folder: Path, device: str, few_shot: int = 0) -> dict:
    from training.probe import probe
    from training.retrieval import retrieve
    from training.zeroshot import classify

    t0 = time.time()
    m = retrieve(clip, folder, device=device) if task.kind == "retrieval" else classify(clip, folder, device=device)
    se = m.pop("se", {})
    r = {"metrics": m, "main": m.get(task.metric), "se": se.get(task.metric)}
    if few_shot and task.kind == "classification":
        fs = probe(clip, folder, few_shot, device=device)
        r["few_shot"] = {**fs, "main": fs["metrics"].get(task.metric)}
    return {**r, "seconds": round(time.time() - t0, 2)}


def run_suite(checkpoint: str, data_root: str | Path, suite_name: str = "builtin", results: str | Path | None = None,
              only: list[str] | None = None, device: str = "auto", weights: str | None = None,
              few_shot: int = 0) -> dict:
    """``few_shot`` > 0 adds a k-shot linear probe beside zero-shot on classification tasks. ``results``: a
    jsonl path or bucket URL."""
    tasks = [t for t in suite(suite_name) if not only or t.key in only or t.folder in only]
    local_dir = not storage.is_url(checkpoint) and Path(checkpoint).is_dir()
    results = results or (Path(checkpoint) / f"eval_{suite_name}.jsonl" if local_dir else f"eval_{suite_name}.jsonl")
    with ResultsFile(results) as out:
        return _run_suite(checkpoint, data_root, suite_name, tasks, out, device, weights, few_shot)


def _run_suite(checkpoint, data_root, suite_name, tasks, out: ResultsFile, device, weights, few_shot) -> dict:
    from training.model import load_for_eval

    label = storage.redact(str(checkpoint))
    done = _done(out.rows(), label)
    dv = trained_on(checkpoint)
    clip = None
    t0 = time.time()
    for task in tasks:
        folder = task_path(data_root, task.folder)
        if task.metric in SPECIAL or not has_split(folder):
            continue  # missing, or needs annotations the wds layout lacks
        checksum = task_checksum(folder)
        old = done.get(task.key)
        if old and (old.get("registry_version"), old.get("data_sha256")) == (REGISTRY_VERSION, checksum):
            continue
        done.pop(task.key, None)  # scored on another registry version or other data: scored again
        if clip is None:
            clip, device = load_for_eval(checkpoint, weights, device)
        r = {"task": task.key, "checkpoint": label, "group": task.group, "metric": task.metric,
             "registry_version": REGISTRY_VERSION, "data_sha256": checksum,
             **evaluate_task(clip, task, folder, device, few_shot), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
             **({"data_version": dv} if dv else {})}
        out.append(r)
        done[task.key] = r
        log.info("%-45s %-22s %.4f  (%s s)", task.key, task.metric, r["main"], r["seconds"])
    summary = aggregate(tasks, done, data_root)
    summary.update(checkpoint=label, suite=suite_name, results=out.label(),
                   seconds=round(time.time() - t0, 1), registry_version=REGISTRY_VERSION,
                   registry_fingerprint=fingerprint(tasks), data_version=dv)
    summary["markdown"] = write_tables(summary, out.local)
    out.push(".md", ".csv")
    return summary


def aggregate(tasks: list[Task], done: dict[str, dict], data_root: str | Path) -> dict:
    rows = []
    for t in tasks:
        r = done.get(t.key)
        fs = (r or {}).get("few_shot", {}).get("main")
        if r is not None:
            status, main = "ok", r["main"]
        elif t.metric in SPECIAL and storage.is_dir(task_path(data_root, t.folder)):
            status, main = "metric unavailable", None
        else:
            status, main = "missing", None
        rows.append({"task": t.key, "group": t.group, "metric": t.metric, "scored": t.scored, "status": status,
                     "main": main, "se": (r or {}).get("se"), "few_shot": fs,
                     "registry_version": (r or {}).get("registry_version"), "data_sha256": (r or {}).get("data_sha256")})
    scored = [r for r in rows if r["scored"]]
    have = [r for r in scored if r["main"] is not None]
    groups = {}
    for g in GROUPS:
        vals = [r["main"] for r in have if r["group"] == g]
        total = sum(1 for r in scored if r["group"] == g)
        if total:
            groups[g] = {"mean": sum(vals) / len(vals) if vals else None, "tasks": len(vals), "of": total,
                         "se": _se([r for r in have if r["group"] == g])}
    return {"rows": rows, "groups": groups, "average": sum(r["main"] for r in have) / len(have) if have else None,
            "average_se": _se(have), "tasks_covered": len(have), "tasks_scored": len(scored)}


def comparable(a: dict, b: dict) -> list[str]:
    """Why two suite summaries (run_suite's) cannot be compared task for task: a different registry, or
    a task whose data differs. Empty when they can."""
    why = []
    if (a.get("registry_version"), a.get("registry_fingerprint")) != (b.get("registry_version"), b.get("registry_fingerprint")):
        why.append(f"task registry {a.get('registry_version')}/{a.get('registry_fingerprint')} vs "
                   f"{b.get('registry_version')}/{b.get('registry_fingerprint')}")
    sums = {r["task"]: r.get("data_sha256") for r in b.get("rows", [])}
    for r in a.get("rows", []):
        other = sums.get(r["task"])
        if r.get("data_sha256") and other and r["data_sha256"] != other:
            why.append(f"{r['task']}: its data differ (sha256 {r['data_sha256'][:12]} vs {other[:12]})")
    return why


def _se(rows: list[dict]) -> float | None:
    """Bootstrap standard error of the rows' plain mean (tasks resampled apart; None if one lacks it)."""
    from training.bootstrap import se_of_mean

    ses = [r.get("se") for r in rows]
    return None if not ses or None in ses else round(se_of_mean(ses), 5)


def write_tables(s: dict, results: Path) -> str:
    """``<results>.md`` and ``.csv`` beside the jsonl; returns the markdown."""
    def fmt(v):
        return "" if v is None else f"{v:.4f}"

    dv = s.get("data_version")
    lines = [f"# {s['suite']} suite: `{s['checkpoint']}`", "",
             f"Task registry version {s.get('registry_version')} (fingerprint `{s.get('registry_fingerprint')}`); "
             "each task's data sha256 is in the jsonl and csv.", ""]
    if dv:
        lines += [f"Trained on curated `{dv['out']}` version `{dv['version']}` "
                  f"(manifest sha256 `{str(dv.get('manifest_sha256'))[:12]}`)", ""]
    lines += [f"Average over {s['tasks_covered']} of {s['tasks_scored']} scored tasks: **{fmt(s['average'])}** "
              f"(bootstrap SE {fmt(s.get('average_se'))})", "",
              "| group | mean | bootstrap SE | tasks |", "|---|---|---|---|"]
    lines += [f"| {g} | {fmt(v['mean'])} | {fmt(v.get('se'))} | {v['tasks']} of {v['of']} |" for g, v in s["groups"].items()]
    lines += ["", "| task | group | main metric | zero-shot | bootstrap SE | few-shot probe | status |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['group']} | {r['metric']} | {fmt(r['main'])} | {fmt(r.get('se'))} | {fmt(r['few_shot'])} "
              f"| {r['status']} |" for r in s["rows"]]
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    with open(results.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["task", "group", "metric", "scored", "status", "main", "se", "few_shot",
                                           "registry_version", "data_sha256"])
        w.writeheader()
        w.writerows(s["rows"])
    return "\n".join(lines) + "\n"
