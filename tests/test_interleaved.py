"""mmc4-style assignment: equals the brute-force optimum, drops planted distractors, accounts for every
image; shards in and out in the documented layout (a colour scorer stands in for CLIP)."""
import io
import itertools
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.interleaved import Settings, assign, run_interleave

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "cyan": (0, 255, 255), "magenta": (255, 0, 255), "black": (0, 0, 0), "white": (255, 255, 255)}


def brute_force(sim: np.ndarray) -> float:
    n_img, n_txt = sim.shape
    if n_img <= n_txt:
        return max(sum(sim[i, p[i]] for i in range(n_img)) for p in itertools.permutations(range(n_txt), n_img))
    return max(sum(sim[p[j], j] for j in range(n_txt)) for p in itertools.permutations(range(n_img), n_txt))


def test_assignment_is_the_brute_force_optimum_on_random_documents():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sim = rng.uniform(-0.2, 0.6, size=(int(rng.integers(1, 6)), int(rng.integers(1, 6))))
        match, why = assign(sim, min_sim=-1.0)
        used = match[match >= 0]
        assert len(set(used.tolist())) == len(used)  # one-to-one
        assert len(used) == min(sim.shape)
        assert sum(sim[i, j] for i, j in enumerate(match) if j >= 0) == pytest.approx(brute_force(sim))
        assert why.count("unmatched") == max(0, sim.shape[0] - sim.shape[1])


def test_threshold_and_unmatched_images():
    sim = np.array([[0.30, 0.10], [0.05, 0.12], [0.20, 0.25]])
    match, why = assign(sim, min_sim=0.2)
    assert match.tolist() == [0, -1, 1] and why == [None, "unmatched", None]
    match, why = assign(sim, min_sim=0.28)
    assert why == [None, "unmatched", "low_similarity"]
    match, why = assign(sim, min_sim=0.1, keep_unmatched=True)  # mmc4: leftovers take their best sentence
    assert match.tolist() == [0, 1, 1] and why == [None, None, None]


class ColourScorer:
    """An image's colour and the colour a sentence names, as one-hot rows (no colour: a flat row)."""
    names = list(COLOURS)

    def embed_images(self, images):
        out = np.zeros((len(images), len(self.names)), np.float32)
        for r, im in enumerate(images):
            out[r, list(COLOURS.values()).index(im.getpixel((0, 0)))] = 1
        return out

    def embed_texts(self, texts):
        out = np.full((len(texts), len(self.names)), 1 / np.sqrt(len(self.names)), np.float32)
        for r, t in enumerate(texts):
            hit = [i for i, c in enumerate(self.names) if c in t.lower()]
            if hit:
                out[r] = 0
                out[r, hit[0]] = 1
        return out


def _png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), COLOURS[colour]).save(buf, "PNG")
    return buf.getvalue()


# doc -> (sentences, images as (name, colour or None for corrupt bytes, expected sentence or reason))
DOCS = {
    "d0": (["A red barn at dawn.", "The sea is blue today.", "Some text with no picture."],
           [("a.png", "blue", 1), ("b.png", "red", 0), ("c.png", "green", "low_similarity")]),
    "d1": (["Green hills.", "A yellow taxi."],
           [("x.jpg", "yellow", 1), ("y.png", "green", 0), ("z.png", "magenta", "unmatched"),
            ("w.png", None, "decode")]),
    "d2": (["White snow everywhere.", "Black cat on a wall.", "Cyan paint."],
           [("p.png", "black", 1), ("q.png", "cyan", 2)]),
    "d3": (["Nothing here has a picture."], [("m.png", "magenta", "low_similarity")]),
}


@pytest.fixture()
def shard(tmp_path):
    path = tmp_path / "docs" / "00000.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w") as tar:
        for key, (sents, images) in DOCS.items():
            doc = {"url": f"http://example.com/{key}", "text_list": sents,
                   "image_info": [{"image_name": n} for n, _, _ in images]}
            members = {f"{key}.json": json.dumps(doc).encode()}
            members.update({f"{key}.{n}": _png(c) if c else b"\x89PNG broken" for n, c, _ in images})
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _read(path):
    out = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def test_shard_in_shard_out_with_every_image_accounted_for(shard, tmp_path):
    s = run_interleave(str(shard.parent), tmp_path / "out", ColourScorer(), Settings(min_sim=0.5))
    assert s["images_in"] == 10 and s["images_kept"] == 6
    assert s["images_dropped"] == {"low_similarity": 2, "unmatched": 1, "decode": 1}
    assert s["documents_in"] == 4 and s["documents_written"] == 3  # d3 has no image left
    out = _read(tmp_path / "out" / "shards" / "00000.tar")
    assert set(out) == {"d0", "d1", "d2"}
    for key, (sents, images) in DOCS.items():
        if key not in out:
            continue
        doc = json.loads(out[key]["json"])
        assert doc["text_list"] == sents and doc["url"].endswith(key)
        expect = {n: want for n, _, want in images}
        kept = {i["image_name"]: i["matched_text_index"] for i in doc["image_info"]}
        assert kept == {n: w for n, w in expect.items() if isinstance(w, int)}
        assert all(i["matched_sim"] == pytest.approx(1.0) for i in doc["image_info"])
        assert np.array(doc["similarity_matrix"]).shape == (len(kept), len(sents))
        dropped = {d["image_name"]: d["reason"] for d in doc["curation"]["dropped_images"]}
        assert dropped == {n: w for n, w in expect.items() if isinstance(w, str)}
        assert set(out[key]) == {"json", *kept}  # kept images travel, dropped ones do not
    docs = pd.read_parquet(tmp_path / "out" / "documents.parquet").set_index("key")
    assert docs.loc["d1", ["kept", "dropped_unmatched", "dropped_decode"]].tolist() == [2, 1, 1]
    assert not docs.loc["d3", "written"]
    assert [i["status"] for i in json.loads(docs.loc["d3", "images"])] == ["low_similarity"]


def test_documents_below_min_images_are_not_written(shard, tmp_path):
    s = run_interleave(str(shard), tmp_path / "out", ColourScorer(), Settings(min_sim=0.5, min_images=3))
    assert s["documents_written"] == 0 and s["images_kept"] == 0
    assert s["images_in_documents_not_written"] == 6


def test_auto_threshold_drops_the_planted_distractors(shard, tmp_path):
    s = run_interleave(str(shard), tmp_path / "out", ColourScorer(), Settings())
    assert 0 < s["thresholds"]["00000"] < 1.0  # off-document pairs: mostly 0, some 1 (shared colours)
    assert s["images_dropped"]["low_similarity"] == 2 and s["images_kept"] == 6


def test_flow_writes_what_the_library_writes(shard, tmp_path, prefect_server):
    from flows.interleave import interleave
    from pipeline.interleaved import run_interleave
    from schemas.config import ClipModel

    spec = ClipModel(model="curate-tiny").model_dump_json()  # random weights, seeded: the same model twice
    lib = run_interleave(str(shard), tmp_path / "lib", spec, Settings(min_sim=0.0), scorer_name="curate-tiny")
    flow = interleave(str(shard), str(tmp_path / "flow"), "curate-tiny", min_sim=0.0)
    assert {k: v for k, v in flow.items() if k != "seconds"} == {k: v for k, v in lib.items() if k != "seconds"}
    tars = [(tmp_path / run / "shards" / "00000.tar").read_bytes() for run in ("flow", "lib")]
    assert tars[0] == tars[1]
