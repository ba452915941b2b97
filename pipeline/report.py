"""A static HTML report of a curation run: one self-contained file, no server, no script.

``<out>/report.html``: counts; kept / dropped per reason; the CLIP-score histogram with the
threshold; cluster sizes; example images (kept, and dropped per reason) with their captions;
near-duplicate groups; and, when given a training run, its loss curve and evaluation table.
Every caption and name is HTML-escaped; images are small JPEG thumbnails inlined as data URIs.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

PER_GRID = 12
COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d"]


def _bars(items: list[tuple[str, float]], title: str, fmt="{:,.0f}") -> str:
    w, left, bar = 720, 200, 18
    top = max([v for _, v in items] + [1])
    h = 30 + len(items) * (bar + 6)
    out = [f'<svg width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">']
    for i, (name, v) in enumerate(items):
        y = 20 + i * (bar + 6)
        x = (w - left - 80) * v / top
        out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{html.escape(str(name))}</text>'
                   f'<rect x="{left}" y="{y}" width="{x:.1f}" height="{bar}" fill="{COLORS[i % len(COLORS)]}"/>'
                   f'<text x="{left + x + 4:.1f}" y="{y + 13}">{fmt.format(v)}</text>')
    return "\n".join(out + ["</svg>"])


def _histogram(values: np.ndarray, threshold: float | None, title: str, bins: int = 40) -> str:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "<p>no scores</p>"
    counts, edges = np.histogram(values, bins=bins)
    w, h, pad = 720, 200, 30
    top = counts.max() or 1
    bw = (w - 2 * pad) / bins
    out = [f'<svg width="{w}" height="{h + 30}" role="img" aria-label="{html.escape(title)}">']
    for i, c in enumerate(counts):
        bh = (h - pad) * c / top
        out.append(f'<rect x="{pad + i * bw:.1f}" y="{h - bh:.1f}" width="{bw - 1:.1f}" height="{bh:.1f}" fill="#4c78a8"/>')
    def xpos(v):
        return pad + (v - edges[0]) / (edges[-1] - edges[0] or 1) * (w - 2 * pad)
    out.append(f'<text x="{pad}" y="{h + 18}">{edges[0]:.3f}</text>'
               f'<text x="{w - pad}" y="{h + 18}" text-anchor="end">{edges[-1]:.3f}</text>')
    if threshold is not None and np.isfinite(threshold):
        x = xpos(threshold)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="10" y2="{h}" stroke="#e45756" stroke-width="2"/>'
                   f'<text x="{x + 4:.1f}" y="20" fill="#e45756">threshold {threshold:.4f}</text>')
    return "\n".join(out + ["</svg>"])


def _line(xs: list[float], ys: list[float], title: str) -> str:
    if len(xs) < 2:
        return ""
    w, h, pad = 720, 200, 40
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    pts = " ".join(f"{pad + (x - x0) / ((x1 - x0) or 1) * (w - 2 * pad):.1f},"
                   f"{h - pad / 2 - (y - y0) / ((y1 - y0) or 1) * (h - pad):.1f}" for x, y in zip(xs, ys))
    return (f'<svg width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">'
            f'<polyline points="{pts}" fill="none" stroke="#4c78a8" stroke-width="1.5"/>'
            f'<text x="{pad}" y="14">{html.escape(title)}: {ys[0]:.3f} at step {xs[0]:.0f} -> {ys[-1]:.3f} at step {xs[-1]:.0f}</text></svg>')


def _thumbs(df: pd.DataFrame, shards: list[str], wanted: set[str]) -> dict[str, str]:
    """uid -> data URI of a 96 px JPEG thumbnail; reads only the shards holding wanted samples, and
    each only up to its last wanted sample."""
    from shardio.decode import decode_image
    from pipeline.ingest import read_shard
    from shardio.shards import shard_id

    need = df.loc[df["uid"].isin(wanted)].groupby("shard")["uid"].apply(set).to_dict()
    out: dict[str, str] = {}
    for path in shards:
        todo = need.get(shard_id(path), set())
        for s in read_shard(path) if todo else ():
            if not todo:
                break
            todo.discard(s.uid)
            if s.uid in wanted and s.uid not in out and s.image is not None:
                im, _ = decode_image(s.image)
                if im is None:
                    continue
                im.thumbnail((96, 96))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=80)
                out[s.uid] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    return out


def _cell(uid: str, caption: str, thumbs: dict[str, str], note: str = "") -> str:
    img = (f'<img src="{thumbs[uid]}" alt="{html.escape(caption[:80])}">' if uid in thumbs
           else '<div class="noimg">no image</div>')
    return (f'<figure>{img}<figcaption>{html.escape(caption[:120])}'
            f'{"<br><small>" + html.escape(note) + "</small>" if note else ""}</figcaption></figure>')


def write_report(out: str | Path, df: pd.DataFrame, shards: list[str], manifest: dict,
                 train_dir: str | Path | None = None, seed: int = 0) -> Path:
    out = Path(out)
    rng = np.random.default_rng(seed)
    pick = {}
    kept = df.index[df["keep"]].to_numpy()
    pick["kept"] = list(rng.choice(kept, min(PER_GRID, len(kept)), replace=False)) if len(kept) else []
    for reason, g in df[~df["keep"]].groupby("drop_reason"):
        pick[f"dropped: {reason}"] = list(rng.choice(g.index.to_numpy(), min(PER_GRID, len(g)), replace=False))
    groups = []
    for col in ("near_dup_of", "semdedup_dup_of"):
        if col in df:
            dups = df[df[col].notna()]
            for rep, g in list(dups.groupby(col))[:6]:
                groups.append((col, rep, list(g["uid"])[:5]))
    uid_of = df["uid"]
    wanted = {uid_of[i] for rows in pick.values() for i in rows} | {u for _, r, us in groups for u in [r, *us]}
    thumbs = _thumbs(df, shards, wanted)
    caption = dict(zip(df["uid"], df["caption"].fillna("")))

    parts = [f"<h1>Curation report: <code>{html.escape(str(out))}</code></h1>",
             f"<p><b>{manifest['samples_in']:,}</b> samples in, <b>{manifest['kept']:,}</b> kept, "
             f"<b>{manifest['dropped']:,}</b> dropped ({manifest['kept'] / max(manifest['samples_in'], 1):.1%} kept).</p>",
             "<h2>Dropped by reason (first failing rule)</h2>",
             _bars(sorted(manifest["dropped_by_reason"].items(), key=lambda kv: -kv[1]), "dropped by reason"),
             "<h2>Every failing rule</h2>",
             _bars(sorted(manifest.get("failing_by_rule", {}).items(), key=lambda kv: -kv[1]), "failing by rule")]
    for name, info in manifest.get("thresholds", {}).items():
        col = info.get("column") if isinstance(info, dict) else None
        if col and col in df:
            parts += [f"<h2>{html.escape(col)} histogram ({html.escape(name)})</h2>",
                      _histogram(df[col].to_numpy(np.float64), info.get("threshold"), col)]
    for col in ("semdedup_cluster", "image_cluster"):
        if col in df and (df[col] >= 0).any():
            sizes = df.loc[df[col] >= 0, col].value_counts().to_numpy()
            parts += [f"<h2>Cluster sizes ({html.escape(col)}: {len(sizes)} clusters, median {int(np.median(sizes))})</h2>",
                      _histogram(sizes.astype(np.float64), None, "cluster sizes", bins=min(40, len(sizes)))]
    for title, rows in pick.items():
        parts.append(f"<h2>{html.escape(title)} ({len(rows)} random examples)</h2><div class='grid'>")
        for i in rows:
            r = df.loc[i]
            note = "" if r["keep"] else ", ".join(r["drop_reasons"])
            parts.append(_cell(r["uid"], caption[r["uid"]], thumbs, note))
        parts.append("</div>")
    if groups:
        parts.append("<h2>Duplicate groups (kept first)</h2>")
        for col, rep, members in groups:
            parts.append(f"<div class='grid dup'><span class='tag'>{html.escape(col)}</span>")
            parts.append(_cell(rep, caption.get(rep, ""), thumbs, "kept"))
            parts += [_cell(u, caption.get(u, ""), thumbs, "dropped") for u in members]
            parts.append("</div>")
    if train_dir:
        parts += _training(Path(train_dir))
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>curate report</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    path = out / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def _training(train: Path) -> list[str]:
    parts = []
    metrics = train / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if "loss" in r and "step" in r]
        parts += ["<h2>Training curve</h2>", _line([r["step"] for r in rows], [r["loss"] for r in rows], "loss")]
    for res in sorted(train.glob("**/eval*.jsonl")) + sorted(train.glob("results.jsonl")):
        rows = [json.loads(x) for x in res.read_text().splitlines() if x.strip()]
        if rows:
            parts.append(f"<h2>Evaluation ({html.escape(res.name)})</h2><table><tr><th>task</th><th>metric</th><th>value</th></tr>")
            for r in rows:
                val = r.get("main", (r.get("metrics") or {}).get("acc1"))
                parts.append(f"<tr><td>{html.escape(str(r.get('task')))}</td><td>{html.escape(str(r.get('metric', 'acc1')))}</td>"
                             f"<td>{'' if val is None else f'{val:.4f}'}</td></tr>")
            parts.append("</table>")
    return parts


CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
h2{margin-top:28px;font-size:18px}svg text{font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin:6px 0}
figure{margin:0;width:120px}figure img,.noimg{width:96px;height:96px;object-fit:contain;background:#f4f4f4;display:block}
.noimg{font-size:11px;color:#888;text-align:center;line-height:96px}
figcaption{font-size:11px;word-wrap:break-word}.dup{border-left:3px solid #f58518;padding-left:8px}
.tag{font-size:11px;color:#f58518;width:100%}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"""
