"""The per-shard pass decodes each image once, at the smallest scale its consumers need (issue #17)."""
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import pipeline.annotate as annotate
import shardio.decode as decode
from pipeline.neardup import SIDE
from schemas.config import ClipModel
from shardio.decode import open_image, to_rgb
from shardio.shards import ShardWriter

TINY = ClipModel(model="curate-tiny", batch_size=8)


def picture(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus noise: JPEG-like content, not flat."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w, 1), y * 255 // max(h, 1), (x + y) * 127 // max(w + h, 1)], -1)
    return np.clip(base + rng.integers(-25, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str = "JPEG", mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(params=["simplejpeg", "pillow"])
def decoder(request, monkeypatch):
    """Both JPEG paths: simplejpeg (when installed) and Pillow's draft."""
    if request.param == "pillow":
        monkeypatch.setattr(decode, "simplejpeg", None)
    elif decode.simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    return request.param


def test_drafted_decode_gives_the_header_size(decoder):
    im, size, err = open_image(encode(picture(512, 384)), 32)
    assert err is None and size == (512, 384)
    assert im.mode == "RGB" and im.size == (64, 48)  # 1/8 scale inside libjpeg


@pytest.mark.parametrize("w,h", [(1000, 600), (513, 257), (300, 200), (256, 256), (2000, 37), (31, 500), (1, 1)])
@pytest.mark.parametrize("side", [32, 224])
def test_large_jpeg_is_reduced_but_never_below_the_need(decoder, w, h, side):
    im, size, err = open_image(encode(picture(w, h)), side, reduce=True)
    assert err is None and size == (w, h)
    if min(w, h) >= side:
        assert min(im.size) >= side  # the transform resizes the shorter side to `side`
        assert min(im.size) < 2 * side  # and nothing larger than needed is kept
    else:
        assert im.size == (w, h)  # too small to reduce: decoded in full
    assert im.size[0] * h == pytest.approx(im.size[1] * w, rel=0.1)  # aspect kept


@pytest.mark.parametrize("w,h,side,want", [(256, 256, 224, (224, 224)), (320, 256, 224, (280, 224)),
                                            (200, 200, 64, (75, 75)), (512, 512, 224, (256, 256)),
                                            (256, 256, 64, (64, 64)), (100, 100, 224, (100, 100))])
def test_annotate_decodes_jpegs_at_the_smallest_eighth_scale(w, h, side, want):
    if decode.simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    data = encode(picture(w, h), quality=95)
    im, size, err = open_image(data, side, reduce=True)
    assert err is None and size == (w, h) and im.size == want  # ceil(side * M / 8), both sides >= side
    full = np.asarray(open_image(data)[0].resize(want, Image.BICUBIC), float)
    assert np.abs(np.asarray(im, float) - full).mean() < 4  # a scaled decode, not other content
    assert open_image(data, side)[0].size == tuple(-(-v // decode.draft_scale(w, h, side)) for v in (w, h))


def test_simplejpeg_gives_pillows_pixels():
    if decode.simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    cases = [(picture(300, 200), "RGB", {}), (picture(517, 333, 1), "L", {}), (picture(640, 480, 2), "RGB",
             {"progressive": True}), (picture(255, 129, 3), "RGB", {"subsampling": 0})]
    for arr, mode, kw in cases:
        data = encode(arr, mode=mode, quality=90, **kw)
        for side in (None, 32, 100, 224):
            fast = decode._fast_jpeg(data, side)
            assert fast is not None
            pil = Image.open(io.BytesIO(data))
            if side:
                pil.draft("RGB", (side, side))
            assert np.array_equal(np.asarray(fast[0]), np.asarray(to_rgb(pil)))


def test_broken_and_unusual_jpegs_take_pillows_path_and_reason(monkeypatch):
    good = encode(picture(300, 200))
    cases = [good[: len(good) // 2], good[:600] + b"\0" * 64 + good[664:], encode(picture(300, 200), mode="CMYK")]
    assert all(decode._fast_jpeg(data, 32) is None for data in cases)  # simplejpeg declines: Pillow decides
    ours = [open_image(data, 32)[1:] for data in cases]
    monkeypatch.setattr(decode, "simplejpeg", None)
    assert ours == [open_image(data, 32)[1:] for data in cases]
    assert ours[0][1].startswith("decode: broken image data") and ours[2][1] is None


@pytest.mark.parametrize("fmt,mode,kw", [("PNG", "RGBA", {}), ("PNG", "L", {}), ("WEBP", "RGB", {"quality": 90}),
                                         ("GIF", "P", {}), ("BMP", "RGB", {})])
def test_other_formats_are_box_reduced_after_a_full_decode(fmt, mode, kw):
    data = encode(picture(300, 140), fmt, mode, **kw)
    im, size, err = open_image(data, 32, reduce=True)
    full, _, _ = open_image(data)
    assert err is None and size == (300, 140) and full.size == (300, 140)
    assert im.mode == "RGB" and im.size == (75, 35)  # reduce(4): both sides stay >= 32
    assert np.array_equal(np.asarray(im), np.asarray(full.reduce(4)))
    assert open_image(data, 32)[0].size == (300, 140)  # without reduce: as before


def test_decode_side_covers_every_consumer():
    class Scorer:
        def __init__(self, side):
            self.input_side = side

    assert annotate.decode_side([]) == 2 * SIDE  # the thumbnail alone: reduced from twice its side
    assert annotate.decode_side([Scorer(16)]) == 2 * SIDE
    assert annotate.decode_side([Scorer(32), Scorer(224)]) == 224
    assert annotate.decode_side([Scorer(224), Scorer(None)]) is None  # a transform we cannot read: full decode


def mixed_pool(folder) -> str:
    """One shard: big and small JPEGs (colour, grey, CMYK, progressive), PNG/WebP/GIF, broken images."""
    jpg = encode(picture(400, 300))
    items = [("jpg", jpg), ("jpg", encode(picture(257, 515, 1), mode="L")), ("jpg", encode(picture(64, 48, 2))),
             ("jpg", encode(picture(300, 300, 3), mode="CMYK")), ("jpg", encode(picture(640, 360, 4), progressive=True)),
             ("png", encode(picture(200, 90, 5), "PNG", "RGBA")), ("webp", encode(picture(333, 250, 6), "WEBP")),
             ("gif", encode(picture(128, 128, 7), "GIF", "P")), ("jpg", jpg[: len(jpg) // 2]),
             ("jpg", b"not an image at all"), ("jpg", b""), ("jpg", encode(picture(20, 10, 8)))]
    with ShardWriter(folder, 100) as w:
        for i, (ext, data) in enumerate(items):
            w.write(f"{i:09d}", data, ext, f"a picture number {i}", {"url": f"https://example.com/{i}"})
    return str(folder / "00000.tar")


def test_ingest_columns_match_a_full_decode_pass(tmp_path, monkeypatch):
    shard = mixed_pool(tmp_path / "pool")
    annotate.annotate_shard(shard, tmp_path / "drafted", [TINY])
    full_decode = decode.open_image
    monkeypatch.setattr(annotate, "open_image", lambda data, side=None, reduce=False: full_decode(data))
    annotate.annotate_shard(shard, tmp_path / "full", [TINY])

    ours = pq.read_table(tmp_path / "drafted" / "columns" / "ingest" / "00000.parquet")
    theirs = pq.read_table(tmp_path / "full" / "columns" / "ingest" / "00000.parquet")
    assert ours.to_pydict() == theirs.to_pydict()  # width/height are the full decode's, errors the same
    assert ours.column("width").to_pylist()[:3] == [400, 257, 64]
    assert [e is not None for e in ours.column("ingest_error").to_pylist()] == [False] * 8 + [True] * 3 + [False]

    # pixel-level: thumbnails and scores move a little (documented tolerance in bench/results/annotate.json)
    t_ours, t_full = (np.load(tmp_path / d / "thumbs" / "00000.npy").astype(int) for d in ("drafted", "full"))
    assert np.abs(t_ours - t_full).mean() < 2
    s_ours, s_full = (pq.read_table(tmp_path / d / "columns" / "clip_score" / "00000.parquet").column("clip_score")
                      .to_numpy() for d in ("drafted", "full"))
    assert np.array_equal(np.isnan(s_ours), np.isnan(s_full))
    assert np.nanmax(np.abs(s_ours - s_full)) < 0.05


def test_rerun_skips_and_decode_side_is_in_the_cache_key(tmp_path, monkeypatch):
    shard = mixed_pool(tmp_path / "pool")
    assert annotate.annotate_shard(shard, tmp_path / "run", [TINY])["ran"] == ["ingest", "thumbs", "clip_score"]
    assert annotate.annotate_shard(shard, tmp_path / "run", [TINY])["ran"] == []
    monkeypatch.setattr(annotate, "decode_side", lambda scorers: 128)  # as if a larger scorer joined
    assert annotate.annotate_shard(shard, tmp_path / "run", [TINY])["ran"] == ["ingest", "thumbs", "clip_score"]


def test_scorer_prepared_batches_equal_plain_embedding():
    from pipeline.clip_stage import get_scorer

    sc = get_scorer(TINY.model_dump_json())
    assert sc.input_side == 32
    ims = [Image.fromarray(picture(w, h, i)) for i, (w, h) in enumerate([(32, 32), (64, 40), (300, 200)])]
    caps = ["a red square", "ein Bild", ""]
    img, txt, score = sc.embed_prepared([sc.prepare(im) for im in ims], caps)
    # open_clip's own path: its transform image by image, its tokenizer, its towers
    import open_clip
    import torch

    with torch.no_grad():
        ref_img = sc.model.encode_image(torch.stack([sc.preprocess(im) for im in ims]), normalize=True).numpy()
        ref_txt = sc.model.encode_text(open_clip.get_tokenizer("curate-tiny")(caps), normalize=True).numpy()
    np.testing.assert_allclose(img, ref_img, atol=1e-5)
    np.testing.assert_allclose(txt, ref_txt, atol=1e-5)
    np.testing.assert_allclose(score, (ref_img * ref_txt).sum(1), atol=1e-5)
    np.testing.assert_allclose(sc.pixels(ims).numpy(), sc._pixels_on_device([sc.prepare(im) for im in ims]).numpy())
    assert sc._to_device(sc.pixels(ims)).device.type == "cpu"


def test_fast_tokenizer_gives_open_clips_ids():
    import open_clip

    from pipeline.clip_stage import FastTokenizer, fast_tokenizer

    texts = ["a photo of a cat", "  Lots   of\tspace\n", "", "café crème", "Tom &amp; Jerry", "fish & chips",
             "<b>bold</b> 'quoted' it's", "Ã©tÃ© mojibake", "日本語のキャプション", "emoji 🙂 here", "ﬁne ligature",
             "x\x00y\x1b[31mred", "word " * 5000, "a-b_c.d/e:f;g!h?i", "<start_of_text> inside", "ＷＩＤＥ text"]
    for ctx in (12, 77):  # curate-tiny's context, ViT-B-32's
        base = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
        fast = fast_tokenizer(base)
        assert isinstance(fast, FastTokenizer)
        assert fast(texts).tolist() == base(texts).tolist()
    assert fast_tokenizer(open_clip.tokenizer.SimpleTokenizer(clean="canonicalize")).__class__.__name__ == "SimpleTokenizer"
