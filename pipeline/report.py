"""A static HTML report of a curation run, for a person: one self-contained file, no server, no script.

``<out>/report.html`` holds: the counts; the setup (scorers, config hash, every filter instance with
its threshold and counts); input problems (broken and not-processed shards, samples listed but not
downloaded); matplotlib plots (inline SVG, with axes, counts and legends) of drops by reason, score
histograms with their thresholds and cluster sizes; the ground-truth confusion when the pool has a
``ground_truth.parquet`` beside its shards folder; examples at each score threshold (just kept / just
dropped); random examples kept and per first drop reason (an unusable sample shows only under its
ingest reason); duplicate groups side by side; and, given a training run, its loss curve and scores.
Every caption and name is HTML-escaped; thumbnails are small JPEGs inlined as data URIs.
"""
from __future__ import annotations

import base64
import html
import io
import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

PER_GRID = 12  # random examples per section
AT_THRESHOLD = 6  # just kept / just dropped per score filter
GROUPS = 6  # duplicate groups shown per filter
COLORS = {"kept": "#54a24b", "dropped": "#e45756", "other": "#bab0ac", "first": "#4c78a8", "any": "#9ecae9"}


def esc(x) -> str:
    return html.escape(str(x))


class Html(str):
    """Markup built here from escaped parts: a table cell that is not escaped again."""


def _num(v) -> str:
    return v if isinstance(v, Html) else f"{v:.4g}" if isinstance(v, float) else esc(v)


# ---- plots (matplotlib, inline SVG with real text) ----

def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _svg(fig) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "text.parse_math": False, "svg.hashsalt": "report"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})  # the same run, the same bytes
    text = buf.getvalue()
    return f'<div class="plot">{text[text.index("<svg"):]}</div>'


def _reason_plot(first: dict, every: dict) -> str:
    names = sorted(set(first) | set(every), key=lambda r: (-first.get(r, 0), -every.get(r, 0), r))
    if not names:
        return "<p>nothing dropped</p>"
    fig = _figure(7, 0.9 + 0.42 * len(names))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    for dy, key, counts, label in ((-0.2, "first", first, "first failing rule (counted in dropped)"),
                                   (0.2, "any", every, "failing the rule (any order)")):
        bars = ax.barh(y + dy, [counts.get(n, 0) for n in names], 0.4, color=COLORS[key], label=label)
        ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("samples")
    ax.set_title("Drops by reason")
    ax.legend(fontsize=8, loc="lower right")
    ax.margins(x=0.12)
    return _svg(fig)


def _score_plot(df: pd.DataFrame, column: str, fails: np.ndarray | None, threshold: float | None,
                title: str) -> str:
    usable = df["ingest_error"].isna().to_numpy()
    s = pd.to_numeric(df[column], errors="coerce").to_numpy(np.float64)
    ok = usable & np.isfinite(s)
    if not ok.any():
        return f"<p>no finite {esc(column)} values</p>"
    keep = df["keep"].to_numpy(bool)
    other = "dropped" if fails is None else "dropped by another rule"
    fails = np.zeros(len(df), bool) if fails is None else fails
    parts = [(s[ok & keep], "kept", COLORS["kept"]),
             (s[ok & fails], "dropped by this filter", COLORS["dropped"]),
             (s[ok & ~keep & ~fails], other, COLORS["other"])]
    parts = [p for p in parts if p[0].size]
    fig = _figure(7, 3.2)
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(s[ok], bins=min(40, max(5, int(ok.sum() ** 0.5) * 2)))
    # counted here (one pass each), drawn from the counts: matplotlib's own binning of 10M+ values is slow
    counts = [np.histogram(p[0], len(bins) - 1, (bins[0], bins[-1]))[0] for p in parts]  # even bins: no search
    ax.hist([bins[:-1]] * len(parts), bins=bins, weights=counts, stacked=True, color=[p[2] for p in parts],
            label=[f"{p[1]} ({p[0].size:,})" for p in parts])
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.4g}")
    ax.set_xlabel(column)
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _svg(fig)


def _size_plot(sizes: np.ndarray, column: str) -> str:
    fig = _figure(7, 3)
    ax = fig.add_subplot()
    ax.hist(sizes, bins=min(40, max(1, len(np.unique(sizes)))), color=COLORS["first"],
            label=f"{len(sizes):,} clusters, median {np.median(sizes):.0f}")
    ax.set_xlabel("samples in the cluster")
    ax.set_ylabel("clusters")
    ax.set_title(f"Cluster sizes ({column})")
    ax.legend(fontsize=8)
    return _svg(fig)


def _truth_plot(t: pd.DataFrame) -> str:
    """Share kept / dropped per noise type (bars of equal length), labelled with the counts."""
    fig = _figure(7, 1.1 + 0.4 * len(t))
    ax = fig.add_subplot()
    y = np.arange(len(t))
    share = 100 * t["kept"] / t["samples"]
    for left, width, n, key in ((0, share, t["kept"], "kept"), (share, 100 - share, t["dropped"], "dropped")):
        bars = ax.barh(y, width, left=left, color=COLORS[key], label=key)
        ax.bar_label(bars, [f"{v:,}" if w >= 8 else "" for v, w in zip(n, width)], label_type="center", fontsize=7)
    ax.set_yticks(y, [f"{i} ({n:,})" for i, n in zip(t.index, t["samples"])], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the noise type's samples")
    ax.set_title("Ground truth: kept / dropped by noise type")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.5 / len(t)), ncols=2)
    return _svg(fig)


def _line_plot(xs: list, ys: list, xlabel: str, ylabel: str, title: str) -> str:
    fig = _figure(7, 3)
    ax = fig.add_subplot()
    ax.plot(xs, ys, color=COLORS["first"], label=f"{ylabel}: {ys[0]:.3f} -> {ys[-1]:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _svg(fig)


# ---- tables and panels ----

def _table(head: list[str], rows: list[list], cls: str = "") -> str:
    out = [f"<table class='{cls}'><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{_num(c)}</td>" for c in r) + "</tr>" for r in rows]
    return "".join(out) + "</table>"


def _setup(manifest: dict) -> str:
    first, every = manifest.get("dropped_by_reason", {}), manifest.get("failing_by_rule", {})
    scorers = [[s.get("column"), s.get("model") or "", s.get("checkpoint") or "", s.get("precomputed") or ""]
               for s in manifest.get("scorers", [])]
    rows = []
    for name, f in manifest.get("filters", {}).items():
        skip = {"type", "reasons", "columns", "seconds", "threshold"}  # (older manifests held seconds)
        params = ", ".join(f"{k}={_num(v)}" for k, v in f.items() if k not in skip and v is not None)
        reasons = Html("<br>".join(f"{esc(r)}: {first.get(r, 0):,} / {every.get(r, 0):,}" for r in f.get("reasons", [])))
        rows.append([name, f.get("type"), f.get("threshold", ""), params, reasons])
    cfg = json.dumps(manifest.get("config", {}), indent=1, default=str)
    return (f"<section class='panel'><h2>Setup</h2><p>Config hash <code>{esc(manifest.get('config_hash'))}</code>, "
            f"{len(manifest.get('input_shards', [])):,} input shards.</p><h3>Scorers</h3>"
            + (_table(["column", "model", "checkpoint", "precomputed"], scorers) if scorers else "<p>none</p>")
            + "<h3>Filters (in order; unusable samples drop first)</h3>"
            + (_table(["instance", "type", "threshold", "parameters and results",
                       "reason: dropped (first rule) / failing"], rows) if rows else "<p>none</p>")
            + _plugins(manifest)
            + f"<details><summary>full config</summary><pre>{esc(cfg)}</pre></details></section>")


def _plugins(manifest: dict) -> str:
    rows = [[u["kind"], u["type"], u["qualname"], f"{u['package']} {u['version']}"]
            for u in manifest.get("plugins", [])]
    return ("<h3>Plug-ins (from installed packages)</h3>"
            + _table(["kind", "type", "class", "package"], rows)) if rows else ""


def _inputs(manifest: dict) -> str:
    broken = [[b["shard"], b["error"], b["samples_recovered"]] for b in manifest.get("broken_shards", [])]
    skipped = [[f["shard"], f["error"]] for f in manifest.get("not_processed_shards", [])]
    listed = manifest.get("listed_not_downloaded", {})
    extra = [[k, v] for k, v in manifest.get("skipped_members", {}).items()]
    side = [[s["shard"], s["error"]] for s in manifest.get("sidecar_errors", [])]
    return ("<section class='panel'><h2>Input problems</h2>"
            f"<h3>Broken shards ({len(broken)}): samples before the damage were curated</h3>"
            + (_table(["shard", "error", "samples recovered"], broken) if broken else "<p>none</p>")
            + f"<h3>Not processed shards ({len(skipped)}): failed after retries, left out</h3>"
            + (_table(["shard", "error"], skipped) if skipped else "<p>none</p>")
            + f"<h3>Listed but not downloaded ({sum(listed.values()):,})</h3>"
            + (_table(["img2dataset status", "samples"], sorted(listed.items())) if listed else "<p>none</p>")
            + f"<p>Listed in a shard's parquet but missing from its tar: "
              f"<b>{manifest.get('listed_missing_from_tar', 0):,}</b></p>"
            + (("<h3>Skipped tar members</h3>" + _table(["reason", "members"], extra)) if extra else "")
            + (("<h3>Sidecar errors</h3>" + _table(["shard", "error"], side)) if side else "")
            + "</section>")


def ground_truth_path(shards: list[str]) -> Path | None:
    """``<shards dir>/../ground_truth.parquet`` of the first input folder that has one."""
    for d in dict.fromkeys(Path(s).parent for s in shards):
        p = d.parent / "ground_truth.parquet"
        if p.is_file():
            return p
    return None


def confusion(df: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per noise type: samples, kept, dropped, % dropped and the first drop reasons that caught them."""
    labels = truth.drop_duplicates("uid").set_index("uid")["noise"].fillna("clean")  # null noise = clean
    d = df.assign(noise=df["uid"].map(labels).fillna("(not in ground truth)").to_numpy())
    t = d.groupby("noise").agg(samples=("keep", "size"), kept=("keep", "sum"))
    t["dropped"] = t["samples"] - t["kept"]
    t["% dropped"] = (100 * t["dropped"] / t["samples"]).round(1)
    top = d[~d["keep"]].groupby("noise")["drop_reason"].agg(
        lambda r: ", ".join(f"{k} {v}" for k, v in r.value_counts().loc[lambda c: c > 0].head(3).items()))
    t["caught by (first rule)"] = top.reindex(t.index).fillna("")
    return t.sort_values(["samples"], ascending=False)


def _truth(df: pd.DataFrame, shards: list[str]) -> str:
    path = ground_truth_path(shards)
    if path is None:
        return ""
    t = confusion(df, pd.read_parquet(path, columns=["uid", "noise"]))
    rows = [[i, *r] for i, r in zip(t.index, t.itertuples(index=False))]
    clean = t.loc["clean"] if "clean" in t.index else None
    noisy = t.drop(index=["clean", "(not in ground truth)"], errors="ignore")
    line = (f"<p>Clean samples dropped: <b>{int(clean['dropped']):,}</b> of {int(clean['samples']):,}; noisy samples "
            f"kept: <b>{int(noisy['kept'].sum()):,}</b> of {int(noisy['samples'].sum()):,}.</p>") if clean is not None else ""
    return (f"<section><h2>Ground truth (<code>{esc(path)}</code>)</h2>{line}<div class='plots'>"
            f"{_truth_plot(t)}<div>{_table(['noise', *t.columns], rows)}</div></div></section>")


# ---- examples ----

def score_filters(df: pd.DataFrame, filters: dict) -> list[tuple[str, str, float, np.ndarray]]:
    """(instance, score column, threshold, fails mask) of every filter that cuts a score at a threshold."""
    from pipeline.decide import failing

    out = []
    for name, f in filters.items():
        col = f"{name}.score" if f"{name}.score" in df else f.get("column")
        if "threshold" in f and col in df:
            fails = failing(df["drop_reasons"], f["reasons"])
            out.append((name, col, float(f["threshold"]), fails))
    return out


def at_threshold(df: pd.DataFrame, col: str, t: float, fails: np.ndarray, n: int = AT_THRESHOLD):
    """Row indices of the usable samples nearest the threshold: (just kept, just dropped) by this filter."""
    s = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
    dist = np.abs(s - t)
    dist[~(df["ingest_error"].isna().to_numpy() & np.isfinite(s))] = np.inf  # never shown
    # a band of the smallest distances, its edge taken from every 64th row and widened until each side
    # holds n rows (then it holds that side's n nearest) or the band is every usable row: 0.06 s at
    # 12.8M rows, where partitioning each side whole took 0.26 s
    sample, k = dist[::64], 4 * n
    while True:
        cut = np.partition(sample, k)[k] if k < sample.size else np.inf
        band = np.flatnonzero(dist <= cut if np.isfinite(cut) else np.isfinite(dist))
        sides = (band[~fails[band]], band[fails[band]])
        if not np.isfinite(cut) or all(len(b) >= n for b in sides):
            return tuple(list(nearest_rows(b, dist, n)) for b in sides)
        k *= 8


def nearest_rows(rows: np.ndarray, dist: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` rows of smallest ``dist``, ties in row order (a stable sort's first ``n``, without
    sorting them all)."""
    d = dist[rows]
    if len(d) > n > 0:
        cut = np.partition(d, n - 1)[n - 1]
        rows, d = rows[d <= cut], d[d <= cut]
    return rows[np.argsort(d, kind="stable")[:n]]


def _thumbs(df: pd.DataFrame, shards: list[str], wanted: set[int], side: int = 112) -> dict[int, str]:
    """row -> data URI of a JPEG thumbnail; reads only the shards holding wanted rows, each only up to
    its last wanted sample."""
    from pipeline.ingest import read_shard
    from pipeline.metadata import is_metadata
    from shardio.decode import decode_image
    from shardio.shards import shard_id

    shards = [p for p in shards if not is_metadata(p)]  # a DataComp parquet has no images (a URL's would be
    if not shards:  # fetched whole)
        return {}
    key_col = "key" if "key" in df else "uid"  # a decisions table of a metadata pool: the key is the uid
    rows = sorted(wanted)  # positions (the report's table has a plain range index)
    need: dict[str, dict[str, int]] = {}
    for i, sid, key in zip(rows, df["shard"].iloc[rows].tolist(), df[key_col].iloc[rows].tolist()):
        need.setdefault(sid, {}).setdefault(key, i)
    out: dict[int, str] = {}
    for path in shards:
        todo = dict(need.get(shard_id(path), {}))
        for s in read_shard(path) if todo else ():
            i = todo.pop(s.key, None)
            if i is not None and s.image is not None:
                im, _ = decode_image(s.image)
                if im is not None:
                    im.thumbnail((side, side))
                    buf = io.BytesIO()
                    im.save(buf, "JPEG", quality=80)
                    out[i] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
            if not todo:
                break
    return out


def _cell(df: pd.DataFrame, i: int, thumbs: dict, scores: list[str], note: str = "",
          captions: dict | None = None) -> str:
    r = df.loc[i]
    caption = captions.get(i) if captions is not None else r.get("caption")  # a decisions table has none
    caption = "" if pd.isna(caption) else str(caption)
    img = (f'<img src="{thumbs[i]}" alt="{esc(caption[:80])}">' if i in thumbs
           else '<div class="noimg">no image</div>')
    lines = [f"{c} {r[c]:.5f}" for c in scores if pd.notna(r[c])]
    if pd.notna(r.get("ingest_error")):
        lines.append(str(r["ingest_error"])[:100])
    elif not r["keep"]:
        lines.append("dropped: " + ", ".join(r["drop_reasons"]))
    if note:
        lines.append(note)
    status = "kept" if r["keep"] else "dropped"
    return (f'<figure class="{status}">{img}<figcaption><span class="cap">{esc(caption[:160])}</span>'
            + "".join(f"<small>{esc(x)}</small>" for x in lines) + "</figcaption></figure>")


def dup_groups(df: pd.DataFrame, filters: dict, n: int = GROUPS) -> list[tuple[str, str, list[tuple[int, list[int]]]]]:
    """Per dedup filter: (instance, distance column, [(kept row, duplicate rows)]), biggest groups first.
    Groups come from the filters' ``*.dup_of`` columns; exact_dedup groups by sha256."""
    from pipeline.decide import failing

    usable = df["ingest_error"].isna().to_numpy()
    out = []
    for name, f in filters.items():
        dcol = next((c for c in f.get("columns", []) if c.endswith(".dup_of") and c in df), None)
        if dcol is not None:
            dist = next((c for c in f["columns"] if c != dcol and c.rsplit(".", 1)[-1] in ("rms", "max_sim")), "")
            g = df.loc[df[dcol].notna(), dcol]
        elif f.get("type") == "exact_dedup" and "sha256" in df:
            dist = ""
            dropped = failing(df["drop_reasons"], f.get("reasons", []))
            firsts = df[usable & ~dropped].drop_duplicates("sha256").set_index("sha256")["uid"]
            g = df.loc[dropped, "sha256"].map(firsts).dropna()
        else:
            continue
        groups = sorted(((rep, list(rows.index)) for rep, rows in g.groupby(g)), key=lambda x: (-len(x[1]), x[1][0]))[:n]
        first_row = _first_rows(df, usable, {rep for rep, _ in groups})
        if groups:
            out.append((name, dist, [(first_row[rep], rows[:5]) for rep, rows in groups if first_row.get(rep) is not None]))
    return out


def _first_rows(df: pd.DataFrame, usable: np.ndarray, uids: set) -> dict:
    """uid -> the first usable row holding it, for the given uids only."""
    if not uids:
        return {}
    hit = usable & df["uid"].isin(list(uids)).to_numpy()
    out: dict = {}
    for i, u in zip(df.index[hit], df["uid"][hit]):
        out.setdefault(u, i)
    return out


# ---- the page ----

def write_report(out: str | Path, df: pd.DataFrame, shards: list[str], manifest: dict,
                 train_dir: str | Path | None = None, seed: int = 0, captions=None) -> Path:
    """``captions(rows) -> {row: caption}``: where the captions are when ``df`` has none (a lean decide's)."""
    from pipeline.decide import as_lists

    out = Path(out)
    df = df.reset_index(drop=True)
    df["drop_reasons"] = pd.arrays.ArrowExtensionArray(as_lists(df["drop_reasons"]))
    rng = np.random.default_rng(seed)
    filters = manifest.get("filters", {})
    scorer_cols = [s["column"] for s in manifest.get("scorers", []) if s.get("column") in df]
    score_cols = scorer_cols + [f"{n}.score" for n in filters if f"{n}.score" in df]
    cuts = score_filters(df, filters)

    def sample(rows) -> list[int]:
        rows = np.asarray(rows)
        return sorted(rng.choice(rows, min(PER_GRID, len(rows)), replace=False).tolist()) if len(rows) else []

    grids = [("Kept (random)", sample(df.index[df["keep"]]), "")]
    for reason, n in sorted(manifest.get("dropped_by_reason", {}).items(), key=lambda kv: -kv[1]):
        grids.append((f"dropped: {reason}", sample(df.index[df["drop_reason"] == reason]), f"{n:,} samples"))
    near = [(name, *at_threshold(df, col, t, fails)) for name, col, t, fails in cuts]
    dups = dup_groups(df, filters)
    wanted = {i for _, rows, _ in grids for i in rows} | {i for _, a, b in near for i in a + b}
    wanted |= {i for _, _, gs in dups for rep, rows in gs for i in [rep, *rows]}
    thumbs = _thumbs(df, shards, wanted)
    caps = captions(sorted(wanted)) if captions is not None and "caption" not in df else None
    cell = partial(_cell, captions=caps)

    n_in = manifest["samples_in"]
    pools = ", ".join(dict.fromkeys(str(Path(s).parent) for s in shards)) or "(no shards)"
    parts = [f"<h1>Curation report</h1><p class='sub'>pool <code>{esc(pools)}</code> &middot; config "
             f"<code>{esc(manifest.get('config_hash'))}</code></p>",
             f"<div class='cards'><div><b>{n_in:,}</b> samples in</div><div><b>{manifest['kept']:,}</b> kept</div>"
             f"<div><b>{manifest['dropped']:,}</b> dropped</div><div><b>{manifest['kept'] / max(n_in, 1):.1%}</b> "
             "kept</div></div>",
             "<div class='setup'>", _setup(manifest), _inputs(manifest), "</div>",
             "<h2>Drops and scores</h2><div class='plots'>",
             _reason_plot(manifest.get("dropped_by_reason", {}), manifest.get("failing_by_rule", {}))]
    for name, col, t, fails in cuts:
        parts.append(_score_plot(df, col, fails, t, f"{col} histogram ({name})"))
    for col in scorer_cols:
        if col not in {c for _, c, _, _ in cuts}:
            parts.append(_score_plot(df, col, None, None, f"{col} histogram (no threshold)"))
    for col in [c for f in filters.values() for c in f.get("columns", []) if c.endswith(".cluster") and c in df]:
        sizes = df.loc[df[col] >= 0, col].value_counts().to_numpy()
        if sizes.size:
            parts.append(_size_plot(sizes, col))
    parts += ["</div>", _truth(df, shards)]
    for (name, col, t, _), (_, kept, dropped) in zip(cuts, near):
        parts.append(f"<h2>At the threshold: {esc(name)} ({esc(col)} {t:.5f})</h2><div class='two'>"
                     f"<div><h3>just kept</h3><div class='grid'>"
                     + "".join(cell(df, i, thumbs, score_cols) for i in kept)
                     + "</div></div><div><h3>just dropped</h3><div class='grid'>"
                     + "".join(cell(df, i, thumbs, score_cols) for i in dropped) + "</div></div></div>")
    for title, rows, note in grids:
        parts.append(f"<h2>{esc(title)} <small>{esc(note)} ({len(rows)} random examples)</small></h2>"
                     "<div class='grid'>" + "".join(cell(df, i, thumbs, score_cols) for i in rows) + "</div>")
    if dups:
        parts.append("<h2>Duplicates: the kept sample first, then its duplicates</h2><div class='two'>")
        for name, dist, groups in dups:
            parts.append(f"<div><h3>{esc(name)}</h3>")
            for rep, rows in groups:
                parts.append("<div class='grid dup'>" + cell(df, rep, thumbs, score_cols, "kept by this filter")
                             + "".join(cell(df, i, thumbs, score_cols, f"{dist.rsplit('.', 1)[-1]} "
                                             f"{df.at[i, dist]:.3f}" if dist else "") for i in rows) + "</div>")
            parts.append("</div>")
        parts.append("</div>")
    if train_dir:
        parts += _training(Path(train_dir))
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>curate report</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    path = out / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(page, encoding="utf-8", errors="backslashreplace")  # a shard path with non-UTF-8 bytes
    tmp.replace(path)
    return path


def _training(train: Path) -> list[str]:
    parts = []
    cfg = train / "train_config.json"
    dv = (json.loads(cfg.read_text()).get("data_version") if cfg.is_file() else None) or {}
    if dv:  # the curated version the run read (training/train.py records it)
        parts.append(f"<h2>Training</h2><p class='sub'>Trained on <code>{esc(dv.get('out'))}</code> version "
                     f"<b>{esc(dv.get('version'))}</b> (manifest sha256 "
                     f"<code>{esc(str(dv.get('manifest_sha256'))[:12])}</code>)</p>")
    metrics = train / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if "loss" in r and "step" in r]
        if len(rows) >= 2:
            parts += [("" if dv else "<h2>Training</h2>") + "<div class='plots'>",
                      _line_plot([r["step"] for r in rows], [r["loss"] for r in rows], "step", "loss",
                                 f"Training loss ({train.name})"), "</div>"]
    for res in sorted(train.glob("**/eval*.jsonl")) + sorted(train.glob("results.jsonl")):
        rows = [json.loads(x) for x in res.read_text().splitlines() if x.strip()]
        if rows:
            table = []
            for r in rows:
                val = r.get("main", (r.get("metrics") or {}).get("acc1"))
                table.append([r.get("task"), r.get("metric", "acc1"), "" if val is None else f"{val:.4f}"])
            parts.append(f"<h2>Evaluation ({esc(res.name)})</h2>" + _table(["task", "metric", "value"], table))
    return parts


CSS = """body{font-family:system-ui,sans-serif;margin:16px 24px;color:#222}
h1{margin:0 0 4px}h2{margin-top:28px;font-size:19px;border-bottom:1px solid #ddd}h3{font-size:15px;margin:12px 0 4px}
h2 small{font-weight:normal;color:#666;font-size:13px}.sub{color:#555;margin:0 0 12px}
.cards{display:flex;gap:12px;flex-wrap:wrap}.cards div{background:#f4f6f8;padding:10px 16px;border-radius:6px}
.cards b{font-size:22px;display:block}
.two{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:8px 24px}
.setup{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:8px 32px}.setup table{width:100%}
@media (max-width:1000px){.setup{grid-template-columns:minmax(0,1fr)}}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:12px}
.plot svg{width:100%;height:auto}
.grid{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start;margin:6px 0}
figure{margin:0;width:140px;border-top:3px solid #ccc;padding-top:4px}figure.kept{border-color:#54a24b}
figure.dropped{border-color:#e45756}
figure img,.noimg{width:112px;height:112px;object-fit:contain;background:#f4f4f4;display:block}
.noimg{font-size:11px;color:#888;text-align:center;line-height:112px}
figcaption{font-size:11px;overflow-wrap:anywhere}figcaption small{display:block;color:#555}
.dup{border-left:3px solid #f58518;padding-left:8px}
table{border-collapse:collapse;font-size:13px;margin:4px 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;overflow-wrap:break-word}th{hyphens:none}
pre{font-size:11px;background:#f7f7f7;padding:8px;overflow:auto;max-height:400px}"""
