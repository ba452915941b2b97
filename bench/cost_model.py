"""A cost model from bench/scale_small.py's measured steps: per step, CPU-seconds and peak memory per
million rows, bytes read per row, cost exponents between the smallest and largest sizes that ran, and a
projection to DataComp medium (128M) and large (1.28B) on a Dask cluster, checked against 2-worker Dask
runs (``projection_error_at_4m``).

How a run splits on a cluster (pipeline/run.py): annotate is per shard (any worker, no shuffle); decide,
export and the report run in one process over the whole table (the client). So a projection gives
``worker_hours`` (all CPU-seconds), ``wall_hours`` with W workers (the annotate share spread over W
workers' cores, the rest serial) and the peak memory of the client (linear in rows above the measured
start-up) and of a worker (one shard at a time: as measured). The global steps' exponents come from
their own runs; a step that timed out at the largest size is projected from the sizes that ran. A step
whose local runs read a metadata pool in place (pipeline/direct.py: no filter, CLIP score) is projected
as if that read spread over the workers; a cluster annotates it instead, at a higher cost a row (the
basic step's), so the Dask check leaves it out.
"""
from __future__ import annotations

import math

SIZES = {"medium_128m": 128_000_000, "large_1_28b": 1_280_000_000}
NODES = {"this_kind": 2, "16_core": 16}  # cores a worker node has
WORKERS = (8, 32)
TARGETS = {"exponent_max": 1.1, "largest_process_mb_max": 4000, "ours_vs_datacomp_seconds_max": 0.8,
           "projection_error_at_4m_max": 0.25, "identical_uids": True}


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Log-log slope between the first and last point (None with fewer than two)."""
    if len(xs) < 2 or ys[0] <= 0 or ys[-1] <= 0:
        return None
    return round(math.log(ys[-1] / ys[0]) / math.log(xs[-1] / xs[0]), 3)


def _ok(res: dict, step: str) -> list[tuple[int, dict]]:
    return sorted((int(n), row[step]) for n, row in res.get("by_size", {}).items()
                  if row.get(step, {}).get("status") == "ok")


def per_step(res: dict, step: str, bytes_per_row: dict) -> dict | None:
    runs = _ok(res, step)
    if not runs:
        return None
    ns = [n for n, _ in runs]
    n, r = runs[-1]
    start = r.get("startup_rss_mb") or 0.0
    peak = r.get("peak_rss_mb") or 0.0
    out = {"largest_size_ok": n, "seconds_exponent": slope(ns, [x["seconds"] for _, x in runs]),
           "cpu_exponent": slope(ns, [x["cpu_seconds"] for _, x in runs]),
           "peak_rss_exponent": slope(ns, [x["peak_rss_mb"] - start for _, x in runs]),
           "cpu_seconds_per_million_rows": round(r["cpu_seconds"] / (n / 1e6), 2),
           "seconds_per_million_rows": round(r["seconds"] / (n / 1e6), 2),
           "peak_rss_mb_per_million_rows": round((peak - start) / (n / 1e6), 1),
           "startup_rss_mb": start, "bytes_read_per_row": bytes_per_row.get(step)}
    ann = r.get("annotate_seconds") or 0.0
    out["annotate_share"] = round(min(1.0, ann / max(r.get("run_seconds") or r["seconds"], 1e-9)), 3)
    return out


def project(cost: dict, rows: int) -> dict:
    """Worker-hours, wall hours on W workers of each node kind, and peak memory, at ``rows``."""
    n = cost["largest_size_ok"]
    cpu_n = cost["cpu_seconds_per_million_rows"] * n / 1e6
    b = max(cost["cpu_exponent"] or 1.0, 1.0)  # never project below linear
    cpu = cpu_n * (rows / n) ** b
    mem = cost["startup_rss_mb"] + cost["peak_rss_mb_per_million_rows"] * rows / 1e6 * \
        (rows / n) ** max((cost["peak_rss_exponent"] or 1.0) - 1.0, 0.0)
    par = cost["annotate_share"]
    wall = {f"{kind}_x{w}": round((cpu * par / (w * cores) + cpu * (1 - par)) / 3600, 2)
            for kind, cores in NODES.items() for w in WORKERS}
    return {"worker_hours": round(cpu / 3600, 2), "wall_hours": wall, "client_peak_mb": round(mem),
            "fits_24gb_client": mem < 24 * 1024, "cpu_exponent_used": b}


def dask_check(res: dict) -> dict:
    """Each Dask step at 4M projected from its 1M Dask run, against the measured 4M Dask run. A run costs
    a fixed part (start-up, plan, the client's finish) plus a part per row: the per-row seconds are the
    local runs' slope between their smallest and largest sizes, the fixed part is what the 1M Dask run
    took beyond that. (The power law from the one point, ``power_law_4m_s``, counts the fixed part 4
    times; it is kept beside for comparison.)"""
    dask = res.get("dask", {})
    out = {}
    for step in dask.get("1000000", {}):
        a, m = dask["1000000"][step], dask.get("4000000", {}).get(step, {})
        cost = res.get("cost_per_step", {}).get(step)
        local = _ok(res, step)
        if a.get("status") != "ok" or m.get("status") != "ok" or not cost or len(local) < 2:
            continue
        if any(r.get("read_in_place") for _, r in local):  # one machine reads it in place, a cluster annotates
            continue
        (n0, r0), (n1, r1) = local[0], local[-1]
        per_row = (r1["seconds"] - r0["seconds"]) / (n1 - n0)
        proj = a["seconds"] + per_row * 3_000_000
        power = a["seconds"] * 4.0 ** (cost["seconds_exponent"] or 1.0)
        out[step] = {"dask_1m_s": a["seconds"], "per_million_rows_s": round(per_row * 1e6, 2),
                     "fixed_s": round(a["seconds"] - per_row * 1e6, 2), "projected_4m_s": round(proj, 2),
                     "measured_4m_s": m["seconds"], "error": round(abs(proj - m["seconds"]) / m["seconds"], 3),
                     "power_law_4m_s": round(power, 2),
                     "power_law_error": round(abs(power - m["seconds"]) / m["seconds"], 3)}
    return out


def model(res: dict) -> dict:
    """The summary fields of scale_small.json, from its ``by_size`` (and ``dask``) so far."""
    steps = list(res.get("steps", {}))
    bpr = bytes_read(res)
    cost = {s: c for s in steps if (c := per_step(res, s, bpr))}
    out = {"cost_per_step": cost, "cost_exponents_1m_to_n_max": {s: c["cpu_exponent"] for s, c in cost.items()}}
    out["projected"] = {name: {s: project(c, rows) for s, c in cost.items()} for name, rows in SIZES.items()}
    top = str(res.get("n_max"))
    row = res.get("by_size", {}).get(top, {})
    ratio, same = {}, {}
    for n, r in res.get("by_size", {}).items():
        for key, p in r.items():
            if key.startswith("datacomp:") and p.get("status") == "ok":
                same[f"{n}:{key[9:]}"] = p.get("identical_to_ours")
    for key, p in row.items():
        ours = row.get(key[9:], {})
        if key.startswith("datacomp:") and p.get("status") == "ok" and ours.get("status") == "ok":
            ratio[key[9:]] = round(ours["seconds"] / p["seconds"], 3)
    ours_peaks = [r.get("peak_rss_mb") or 0 for k, r in row.items() if not k.startswith("datacomp:")
                  and r.get("status") == "ok"]
    out.update({"ours_vs_datacomp_seconds": ratio, "datacomp_identical": same,
                "largest_process_mb_at_n_max": max(ours_peaks) if ours_peaks else None})
    out["cost_per_step"] = cost
    checks = dask_check({**res, "cost_per_step": cost})
    out["dask_projection_check"] = checks
    out["projection_error_at_4m"] = max((c["error"] for c in checks.values()), default=None)
    out["targets"] = TARGETS
    exps = [out["cost_exponents_1m_to_n_max"].get(s) for s in steps]  # a step without one (one size) fails it
    out["targets_met"] = {
        "exponents": bool(exps) and all(e is not None and e <= TARGETS["exponent_max"] for e in exps),
        "largest_process_mb": out["largest_process_mb_at_n_max"] is not None
        and out["largest_process_mb_at_n_max"] <= TARGETS["largest_process_mb_max"],
        "ours_vs_datacomp_seconds": bool(ratio) and max(ratio.values()) <= TARGETS["ours_vs_datacomp_seconds_max"],
        "datacomp_identical": bool(same) and all(same.values()),
        "projection_error_at_4m": out["projection_error_at_4m"] is not None
        and out["projection_error_at_4m"] <= TARGETS["projection_error_at_4m_max"]}
    return out


def bytes_read(res: dict) -> dict:
    """Bytes of the pool's files a step reads per row: its parquet columns (the file's bytes shared out by
    the columns' compressed sizes) plus 1,536 bytes a float16 L/14 embedding member it maps."""
    pq_cols = res.get("pool", {}).get("parquet_bytes_per_row_by_column", {})
    out = {}
    for step, cfg in res.get("steps", {}).items():
        cols = {"uid", "text", "original_width", "original_height"}
        cols |= {f"clip_{c.get('precomputed')}_similarity_score" for c in cfg.get("clip", [])}
        types = {f["type"] for f in cfg.get("filters", [])}
        emb = 0
        if types & {"image_based", "semantic_dedup", "d2_pruning", "norm_sim"}:
            emb = 1536
        if "neg_clip_loss" in types:
            emb = 3072
        out[step] = round(sum(pq_cols.get(c, 0.0) for c in cols) + emb, 1)
    return out


def _cell(r: dict | None) -> str:
    if not r:
        return "-"
    if r.get("status") != "ok":
        return f"{r.get('status')} ({r.get('seconds', 0):.0f} s)"
    return f"{r['seconds']:.1f} / {r['cpu_seconds']:.1f} / {r['peak_rss_mb']:,.0f}"


def table(res: dict) -> str:
    """The bench/README table: per step and size wall s / CPU s / peak MB, ours and DataComp's."""
    sizes = [str(n) for n in res.get("sizes", [])]
    label = {"1000000": "1M", "4000000": "4M", "12800000": "12.8M"}
    head = "| step | " + " | ".join(f"ours {label.get(n, n)}" for n in sizes) + " | " + \
        " | ".join(f"DataComp {label.get(n, n)}" for n in sizes) + " | cpu exp | identical |"
    lines = [head, "|" + "---|" * (len(sizes) * 2 + 3)]
    by = res.get("by_size", {})
    for step in res.get("steps", {}):
        ours = [_cell(by.get(n, {}).get(step)) for n in sizes]
        theirs = [_cell(by.get(n, {}).get(f"datacomp:{step}")) for n in sizes]
        same = [by.get(n, {}).get(f"datacomp:{step}", {}).get("identical_to_ours") for n in sizes]
        same = "-" if all(s is None for s in same) else ("yes" if all(s for s in same if s is not None) else "NO")
        exp = res.get("cost_per_step", {}).get(step, {}).get("cpu_exponent")
        lines.append(f"| {step} | " + " | ".join(ours + theirs) + f" | {exp if exp is not None else '-'} | {same} |")
    return "\n".join(lines)


def projection_table(res: dict) -> str:
    """Projected worker-hours, wall hours (8 / 32 workers of this kind, 8 16-core nodes) and client peak."""
    lines = ["| step | rows | worker-hours | wall h, 8 x 2-core | wall h, 32 x 2-core | wall h, 8 x 16-core | "
             "client peak GB |", "|---|---|---|---|---|---|---|"]
    for name, rows in SIZES.items():
        for step, p in res.get("projected", {}).get(name, {}).items():
            w = p["wall_hours"]
            lines.append(f"| {step} | {rows / 1e6:,.0f}M | {p['worker_hours']:,} | {w['this_kind_x8']:,} | "
                         f"{w['this_kind_x32']:,} | {w['16_core_x8']:,} | {p['client_peak_mb'] / 1024:,.1f} |")
    return "\n".join(lines)


def dask_table(res: dict) -> str:
    """The Dask check: each step's 4M run projected from its 1M run, against the measured one."""
    lines = ["| step | Dask 1M s | fixed s | s per 1M rows | projected 4M s | measured 4M s | error | "
             "power law 4M s (error) |", "|---|---|---|---|---|---|---|---|"]
    for step, c in res.get("dask_projection_check", {}).items():
        lines.append(f"| {step} | {c['dask_1m_s']} | {c['fixed_s']} | {c['per_million_rows_s']} | "
                     f"{c['projected_4m_s']} | {c['measured_4m_s']} | {c['error']:.1%} | "
                     f"{c['power_law_4m_s']} ({c['power_law_error']:.1%}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    res = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/scale_small.json").read_text())
    print(table(res))
    print()
    print(projection_table(res))
    print()
    print(dask_table(res))
