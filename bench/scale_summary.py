"""bench/scale.py's summary of its results: exponents, decide's peak RSS, DataComp parity and time
ratios, the targets met, and the printed table."""
from __future__ import annotations

import json

from bench.scale_measure import ROOT, fit_exponent, rel
from bench.scale_peer import PEER_BASELINES, PEER_NAMES

TARGETS = {"exponent_max": 1.1, "decide_peak_rss_mb_max": 1500, "ours_vs_datacomp_seconds_max": 1.0,
           "identical_uids": True, "near_dedup_samples_per_s_min": 5000, "near_dedup_precision_recall_min": 0.95}
# near dedup needs pixels and planted copies, so its figure comes from the pool benchmark's results file
CURATION = ROOT / "bench" / "results" / "curation.json"


def summarize(res: dict, sizes: list[int], steps: list[str]) -> dict:
    """exponents, decide peak at n_max, DataComp parity and time ratios, targets."""
    by, top = res["by_size"], str(sizes[-1])
    ok = lambda r: r is not None and r.get("status") == "ok"  # noqa: E731

    def exps(prefix: str, key: str = "seconds") -> dict:
        out = {}
        for step in steps:
            rs = [by.get(str(n), {}).get(prefix + step) for n in sizes]
            got = [(n, r[key]) for n, r in zip(sizes, rs) if ok(r)]
            out[step] = fit_exponent([g[0] for g in got], [g[1] for g in got]) if len(got) == len(sizes) else None
        return out

    peer_steps = lambda d: {k: v for k, v in d.items() if k in PEER_BASELINES}  # noqa: E731
    res["exponents"] = exps("")
    # CPU seconds (the step's processes and their children): less moved by other work on a shared machine
    res["cpu_exponents"] = exps("", "cpu_seconds")
    res["datacomp_exponents"] = peer_steps(exps("datacomp:"))
    res["datacomp_cpu_exponents"] = peer_steps(exps("datacomp:", "cpu_seconds"))
    peaks = {s: by.get(top, {}).get(s, {}).get("decide_peak_rss_mb") for s in steps}
    peaks = {s: p for s, p in peaks.items() if p is not None}
    res["decide_peak_rss_mb_by_step"] = peaks
    res["decide_peak_rss_mb_1m"] = max(peaks.values()) if peaks else None
    res["decide_peak_rss_at_n"] = sizes[-1]
    identical, ratio = {}, {}
    for step in PEER_BASELINES:
        if step not in steps:
            continue
        same = []
        for n in sizes:
            ours, theirs = by.get(str(n), {}).get(step), by.get(str(n), {}).get(f"datacomp:{step}")
            if ok(ours) and ok(theirs):
                eq = (ROOT / ours["uids_file"]).read_bytes() == (ROOT / theirs["uids_file"]).read_bytes()
                theirs["identical_to_ours"] = eq
                same.append(eq)
                if str(n) == top:
                    ratio[PEER_NAMES[step]] = round(ours["seconds"] / theirs["seconds"], 3)
        if same:
            identical[PEER_NAMES[step]] = all(same)
    res["datacomp_identical"] = identical
    res["ours_vs_datacomp_seconds"] = ratio
    near = json.loads(CURATION.read_text()).get("near_dedup") if CURATION.is_file() else None
    if near:
        res["near_dedup"] = {**near, "source": rel(CURATION)}
        res["near_dedup_samples_per_s"] = near["samples_per_s"]
    exps_ok = [e for e in res["exponents"].values() if e is not None]
    res["targets"] = TARGETS
    res["targets_met"] = {
        "exponents": bool(exps_ok) and all(e <= TARGETS["exponent_max"] for e in exps_ok)
        and len(exps_ok) == len(steps),
        "decide_peak_rss": res["decide_peak_rss_mb_1m"] is not None
        and res["decide_peak_rss_mb_1m"] <= TARGETS["decide_peak_rss_mb_max"]
        and all(by.get(top, {}).get(s, {}).get("status") == "ok" for s in steps),
        "ours_vs_datacomp_seconds": bool(ratio) and all(r <= TARGETS["ours_vs_datacomp_seconds_max"]
                                                        for r in ratio.values()),
        "datacomp_identical": bool(identical) and all(identical.values()),
        "dask_identical": res.get("dask_identical"),
        "near_dedup": bool(near) and near["samples_per_s"] >= TARGETS["near_dedup_samples_per_s_min"]
        and min(near["precision"], near["recall"]) >= TARGETS["near_dedup_precision_recall_min"],
    }
    return res


def table(res: dict, sizes: list[int], steps: list[str]) -> str:
    by = res["by_size"]

    def cell(r):
        if r is None:
            return "-"
        if r["status"] != "ok":
            return r["status"]
        return f"{r['seconds']:.1f}s {r['peak_rss_mb']:.0f}MB"

    head = ["step"] + [f"n={n:,}" for n in sizes] + ["exp", "cpu exp", f"decide MB@{sizes[-1]:,}"]
    rows = []
    for step in steps:
        top = by.get(str(sizes[-1]), {}).get(step) or {}
        rows.append([step] + [cell(by.get(str(n), {}).get(step)) for n in sizes]
                    + [str(res["exponents"].get(step)), str(res["cpu_exponents"].get(step)),
                       str(top.get("decide_peak_rss_mb", "-"))])
        if step in PEER_BASELINES and any(f"datacomp:{step}" in by.get(str(n), {}) for n in sizes):
            theirs = [by.get(str(n), {}).get(f"datacomp:{step}") for n in sizes]
            same = {r.get("identical_to_ours") for r in theirs if r and r.get("status") == "ok"}
            rows.append([f"  DataComp {PEER_NAMES[step]}"] + [cell(r) for r in theirs]
                        + [str(res["datacomp_exponents"].get(step)), str(res["datacomp_cpu_exponents"].get(step)),
                           f"identical={all(same) if same else '-'}"])
    if "dask" in res:
        d = res["dask"]
        rows.append(["clip_score_l14 on Dask (2 workers)"] + ["-"] * (len(sizes) - 1)
                    + [cell(d), "", "", f"identical={res.get('dask_identical')}"])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    lines = [fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)]
    lines.append(f"ours / DataComp seconds at n={sizes[-1]:,}: {res['ours_vs_datacomp_seconds']}")
    lines.append(f"targets met: {res['targets_met']}")
    return "\n".join(lines)
