"""shardio.tar / shardio.sidecar: every hostile tar is built here, on the fly, in tmp_path."""
from __future__ import annotations

import bz2
import gzip
import io
import os
import random
import tarfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardio.sidecar import Sidecar, read_sidecar
from shardio.tar import IMAGE_EXTS, TarReport, TarSample, iter_samples


# --- helpers -------------------------------------------------------------------------------------

def write_tar(path: Path, members, fmt=tarfile.USTAR_FORMAT, encoding="utf-8") -> Path:
    """``members``: (name, bytes) for regular files, or (name, type, linkname) for other types."""
    with tarfile.open(path, "w", format=fmt, encoding=encoding) as t:
        for m in members:
            info = tarfile.TarInfo(m[0])
            info.mtime = 0
            if len(m) == 2:
                info.size = len(m[1])
                t.addfile(info, io.BytesIO(m[1]))
            else:
                info.type, info.linkname = m[1], m[2]
                t.addfile(info)
    return path


def read(path) -> tuple[list[tuple[str, dict[str, bytes], bool]], TarReport]:
    report = TarReport(path=str(path))
    samples = list(iter_samples(path, report))
    assert all(isinstance(s, TarSample) for s in samples)
    assert report.samples == len(samples)
    return [(s.key, s.members, s.duplicate) for s in samples], report


def problems(path) -> dict[str, list[str]]:
    return {s.key: s.problems for s in iter_samples(path)}


# --- grouping ------------------------------------------------------------------------------------

def test_plain_tar(tmp_path):
    p = write_tar(tmp_path / "00000.tar", [("0001.jpg", b"i1"), ("0001.txt", b"t1"), ("0001.json", b"{}"),
                                           ("0002.png", b"i2"), ("0002.txt", b"t2")])
    samples, report = read(p)
    assert samples == [("0001", {"jpg": b"i1", "txt": b"t1", "json": b"{}"}, False),
                       ("0002", {"png": b"i2", "txt": b"t2"}, False)]
    assert report.error is None and report.skipped == [] and report.samples == 2
    assert IMAGE_EXTS[:2] == ("jpg", "jpeg") and all(e == e.lower() for e in IMAGE_EXTS)


def test_repeated_names_adjacent(tmp_path):
    p = write_tar(tmp_path / "s.tar", [("a.jpg", b"j1"), ("a.txt", b"t1"), ("a.jpg", b"j2"), ("a.txt", b"t2")])
    samples, report = read(p)
    assert samples == [("a", {"jpg": b"j1", "txt": b"t1"}, False), ("a", {"jpg": b"j2", "txt": b"t2"}, True)]
    assert report.error is None and report.samples == 2


def test_repeated_names_non_adjacent(tmp_path):
    p = write_tar(tmp_path / "s.tar", [("a.jpg", b"j1"), ("a.txt", b"t1"), ("b.jpg", b"bj"), ("b.txt", b"bt"),
                                       ("a.jpg", b"j2"), ("c.jpg", b"cj"), ("a.txt", b"t2"), ("a.txt", b"t3")])
    samples, report = read(p)
    assert samples == [("a", {"jpg": b"j1", "txt": b"t1"}, False),
                       ("b", {"jpg": b"bj", "txt": b"bt"}, False),
                       ("a", {"jpg": b"j2", "txt": b"t2"}, True),
                       ("c", {"jpg": b"cj"}, False),
                       ("a", {"txt": b"t3"}, True)]
    assert report.error is None


def test_repeat_goes_to_latest_occurrence(tmp_path):
    # a.txt joins the latest occurrence of a (the duplicate), which lacks txt
    p = write_tar(tmp_path / "s.tar", [("a.jpg", b"j1"), ("a.jpg", b"j2"), ("a.txt", b"t")])
    samples, _ = read(p)
    assert samples == [("a", {"jpg": b"j1"}, False), ("a", {"jpg": b"j2", "txt": b"t"}, True)]


def test_folder_keys_sharing_a_basename(tmp_path):
    p = write_tar(tmp_path / "s.tar", [("cats/0001.jpg", b"cat"), ("dogs/0001.jpg", b"dog"),
                                       ("cats/0001.txt", b"a cat"), ("dogs/0001.txt", b"a dog"),
                                       ("0001.jpg", b"top")])
    samples, report = read(p)
    assert samples == [("cats/0001", {"jpg": b"cat", "txt": b"a cat"}, False),
                       ("dogs/0001", {"jpg": b"dog", "txt": b"a dog"}, False),
                       ("0001", {"jpg": b"top"}, False)]
    assert report.error is None


def test_dotted_folders_and_multi_dot_extensions(tmp_path):
    p = write_tar(tmp_path / "s.tar", [("train.v1/0001.jpg", b"i"), ("train.v1/0001.txt", b"t"),
                                       ("a/b/0001.seg.png", b"seg"), ("a/b/0001.jpg", b"j"),
                                       ("x.y.z/0002.tar.gz", b"gz")])
    samples, _ = read(p)
    assert samples == [("train.v1/0001", {"jpg": b"i", "txt": b"t"}, False),
                       ("a/b/0001", {"seg.png": b"seg", "jpg": b"j"}, False),
                       ("x.y.z/0002", {"tar.gz": b"gz"}, False)]


def test_non_adjacent_members_are_regrouped(tmp_path):
    p = write_tar(tmp_path / "s.tar", [("0.jpg", b"j0"), ("1.jpg", b"j1"), ("0.txt", b"t0"), ("2.jpg", b"j2"),
                                       ("1.txt", b"t1"), ("0.json", b"{0}")])
    samples, report = read(p)
    assert samples == [("0", {"jpg": b"j0", "txt": b"t0", "json": b"{0}"}, False),
                       ("1", {"jpg": b"j1", "txt": b"t1"}, False),
                       ("2", {"jpg": b"j2"}, False)]
    assert report.error is None and report.samples == 3


def test_case(tmp_path):
    p = write_tar(tmp_path / "s.tar", [("A.JPG", b"A"), ("A.Json", b"{A}"), ("a.jpg", b"a"), ("b.jpg", b"b1"),
                                       ("b.JPG", b"b2")])
    samples, _ = read(p)
    assert samples == [("A", {"jpg": b"A", "json": b"{A}"}, False), ("a", {"jpg": b"a"}, False),
                       ("b", {"jpg": b"b1"}, False), ("b", {"jpg": b"b2"}, True)]


def test_unsafe_names(tmp_path):
    p = write_tar(tmp_path / "s.tar", [("/etc/0001.jpg", b"abs"), ("../../up/0002.jpg", b"up"),
                                       ("a/./b/../0003.jpg", b"dots"), ("./0004.jpg", b"dot-slash"),
                                       ("a//0005.jpg", b"slashes"), ("/../", b"x"), ("..", b"y"), ("./", b"z")])
    samples, report = read(p)
    assert samples == [("etc/0001", {"jpg": b"abs"}, False), ("up/0002", {"jpg": b"up"}, False),
                       ("a/b/0003", {"jpg": b"dots"}, False), ("0004", {"jpg": b"dot-slash"}, False),
                       ("a/0005", {"jpg": b"slashes"}, False)]
    assert problems(p) == {"etc/0001": ["unsafe_name: '/etc/0001.jpg' read as 'etc/0001.jpg'"],
                           "up/0002": ["unsafe_name: '../../up/0002.jpg' read as 'up/0002.jpg'"],
                           "a/b/0003": ["unsafe_name: 'a/./b/../0003.jpg' read as 'a/b/0003.jpg'"],
                           "0004": [],  # a leading ./ is normal (tar -C dir .)
                           "a/0005": ["unsafe_name: 'a//0005.jpg' read as 'a/0005.jpg'"]}
    assert report.skipped == [("/../", "empty_name"), ("..", "empty_name"), ("./", "empty_name")]
    assert report.error is None
    for s in iter_samples(p):
        assert not s.key.startswith("/") and ".." not in s.key.split("/") and "." not in s.key.split("/")


def test_unsafe_name_merges_with_its_safe_twin(tmp_path):
    p = write_tar(tmp_path / "s.tar", [("x/0001.jpg", b"j"), ("/x/0001.txt", b"t"), ("../x/0001.jpg", b"j2")])
    samples, _ = read(p)
    assert samples == [("x/0001", {"jpg": b"j", "txt": b"t"}, False), ("x/0001", {"jpg": b"j2"}, True)]


def test_non_utf8_name(tmp_path):
    p = write_tar(tmp_path / "s.tar", [("caf\xe9/0001.jpg", b"j")], encoding="latin-1")
    samples, report = read(p)
    assert samples == [("caf\\xe9/0001", {"jpg": b"j"}, False)]
    (note,) = problems(p)["caf\\xe9/0001"]
    assert note.startswith("undecodable_name:")
    samples[0][0].encode("utf-8")  # the key is always encodable


def test_non_file_members_are_skipped(tmp_path):
    p = write_tar(tmp_path / "s.tar", [("d", tarfile.DIRTYPE, ""), ("d/0001.jpg", b"j"),
                                       ("d/0001.png", tarfile.SYMTYPE, "0001.jpg"),
                                       ("d/0001.webp", tarfile.LNKTYPE, "d/0001.jpg"),
                                       ("d/0002.jpg", tarfile.SYMTYPE, "/etc/passwd"),
                                       ("fifo.jpg", tarfile.FIFOTYPE, ""), ("dev.jpg", tarfile.CHRTYPE, ""),
                                       ("d/0001.txt", b"t")])
    samples, report = read(p)
    assert samples == [("d/0001", {"jpg": b"j", "txt": b"t"}, False)]
    assert report.skipped == [("d", "directory"), ("d/0001.png", "symlink"), ("d/0001.webp", "hardlink"),
                              ("d/0002.jpg", "symlink"), ("fifo.jpg", "special_file"),
                              ("dev.jpg", "special_file")]
    assert report.error is None


def test_names_without_a_key(tmp_path):
    p = write_tar(tmp_path / "s.tar", [("README", b"r"), ("0001.", b"x"), ("d/._0001.jpg", b"apple"),
                                       (".DS_Store", b"ds"), ("0001.jpg", b"j")])
    samples, report = read(p)
    assert samples == [("0001", {"jpg": b"j"}, False)]
    assert report.skipped == [("README", "no_extension"), ("0001.", "no_extension"),
                              ("d/._0001.jpg", "hidden_file"), (".DS_Store", "hidden_file")]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names(tmp_path, fmt):
    folder = "/".join(["a_rather_long_folder_name_%02d" % i for i in range(4)])  # 127 chars
    assert len(folder) > 100
    base = "k" * 90 if fmt != tarfile.USTAR_FORMAT else "k" * 60  # ustar: prefix <= 155, name <= 100
    p = write_tar(tmp_path / "s.tar", [(f"{folder}/{base}.jpg", b"j"), (f"{folder}/{base}.txt", b"t"),
                                       ("short.jpg", b"s")], fmt=fmt)
    samples, report = read(p)
    assert samples == [(f"{folder}/{base}", {"jpg": b"j", "txt": b"t"}, False), ("short", {"jpg": b"s"}, False)]
    assert report.error is None


def test_pax_unicode_name(tmp_path):
    p = write_tar(tmp_path / "s.tar", [("ünïcödé/日本.jpg", b"j"), ("ünïcödé/日本.txt", b"t")],
                  fmt=tarfile.PAX_FORMAT)
    samples, _ = read(p)
    assert samples == [("ünïcödé/日本", {"jpg": b"j", "txt": b"t"}, False)]


def test_concatenated_tars(tmp_path):
    a = write_tar(tmp_path / "a.tar", [("0001.jpg", b"a1"), ("0001.txt", b"ta")]).read_bytes()
    b = write_tar(tmp_path / "b.tar", [("0002.jpg", b"b2"), ("0001.jpg", b"b1")]).read_bytes()
    p = tmp_path / "cat.tar"
    p.write_bytes(a + b)
    samples, report = read(p)
    assert samples == [("0001", {"jpg": b"a1", "txt": b"ta"}, False), ("0002", {"jpg": b"b2"}, False),
                       ("0001", {"jpg": b"b1"}, True)]
    assert report.error is None


def test_unknown_member_type_reads_as_a_file(tmp_path):
    # tarfile and GNU tar read members of an unknown type as regular files; so do we
    p = write_tar(tmp_path / "s.tar", [("0001.jpg", b"j"), ("0001.txt", b"t")])
    raw = bytearray(p.read_bytes())
    hdr = 512 + 512  # second header
    raw[hdr + 156:hdr + 157] = b"Z"
    raw[hdr + 148:hdr + 156] = b"        "
    raw[hdr + 148:hdr + 156] = b"%06o\0 " % sum(raw[hdr:hdr + 512])
    p.write_bytes(bytes(raw))
    samples, report = read(p)
    assert samples == [("0001", {"jpg": b"j", "txt": b"t"}, False)] and report.error is None


# --- compression ---------------------------------------------------------------------------------

def test_gzip(tmp_path):
    raw = write_tar(tmp_path / "plain.tar", [("0.jpg", b"j0"), ("1.jpg", b"j1"), ("0.txt", b"t0")]).read_bytes()
    expected = [("0", {"jpg": b"j0", "txt": b"t0"}, False), ("1", {"jpg": b"j1"}, False)]
    for name in ("s.tar.gz", "s.tgz", "gzipped-but-named.tar"):
        p = tmp_path / name
        p.write_bytes(gzip.compress(raw))
        samples, report = read(p)
        assert samples == expected, name
        assert report.error is None


def test_gzip_big_enough_to_spill_to_disk(tmp_path, monkeypatch):
    import shardio.tar as mod
    monkeypatch.setattr(mod, "SPOOL_MAX_BYTES", 4096)
    members = [(f"{i:04d}.jpg", os.urandom(3000)) for i in range(20)]
    p = tmp_path / "s.tar.gz"
    p.write_bytes(gzip.compress(write_tar(tmp_path / "plain.tar", members).read_bytes()))
    samples, report = read(p)
    assert samples == [(n[:4], {"jpg": d}, False) for n, d in members] and report.error is None


def member_spans(raw: bytes):
    """(name, header offset, data offset, size) of every member, from tarfile reading the intact tar."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        return [(m.name, m.offset, m.offset_data, m.size) for m in t.getmembers()]


def expected_after_cut(raw: bytes, cut: int):
    """The samples a reader must yield from ``raw[:cut]``: every member whose data is complete, by key."""
    out: dict[str, dict[str, bytes]] = {}
    for name, _, off, size in member_spans(raw):
        if off + size <= cut:
            key, ext = name.split(".", 1)
            out.setdefault(key, {})[ext] = raw[off:off + size]
    return [(k, v, False) for k, v in out.items()]


def test_truncated_gzip(tmp_path):
    rng = random.Random(3)
    members = [(f"{i:03d}.{ext}", rng.randbytes(rng.randint(200, 3000)))
               for i in range(8) for ext in ("jpg", "txt")]
    raw = write_tar(tmp_path / "plain.tar", members).read_bytes()
    gz = gzip.compress(raw)
    for cut in (len(gz) // 3, len(gz) // 2, len(gz) - 9, 5):
        p = tmp_path / f"cut{cut}.tar.gz"
        p.write_bytes(gz[:cut])
        d = zlib.decompressobj(wbits=31)
        got = d.decompress(gz[:cut])  # what a decompressor recovers from the cut stream
        samples, report = read(p)
        assert samples == expected_after_cut(raw, len(got)), cut
        assert report.error.startswith("truncated"), report.error
    assert samples == []  # cut inside the gzip header


def test_other_compression_is_not_a_tar(tmp_path):
    raw = write_tar(tmp_path / "plain.tar", [("0.jpg", b"j")]).read_bytes()
    p = tmp_path / "s.tar.bz2"
    p.write_bytes(bz2.compress(raw))
    samples, report = read(p)
    assert samples == [] and report.error.startswith("not_a_tar") and "bzip2" in report.error


def test_gzip_of_garbage(tmp_path):
    p = tmp_path / "s.tar.gz"
    p.write_bytes(b"\x1f\x8b" + os.urandom(500))
    samples, report = read(p)
    assert samples == [] and report.error.split(":")[0] in ("not_a_tar", "truncated")


# --- damaged and degenerate files ----------------------------------------------------------------

def test_empty_tar(tmp_path):
    p = write_tar(tmp_path / "s.tar", [])
    assert p.stat().st_size > 0
    samples, report = read(p)
    assert samples == [] and report.error is None and report.skipped == []


def test_zero_byte_file(tmp_path):
    p = tmp_path / "s.tar"
    p.write_bytes(b"")
    samples, report = read(p)
    assert samples == [] and report.error == "empty_file: 0 bytes"


@pytest.mark.parametrize("content", [
    random.Random(0).randbytes(5000),
    random.Random(1).randbytes(300),
    b"url\tcaption\nhttp://example.com/a.jpg\ta dog\n" * 40,
    b"hello\n",
])
def test_not_a_tar(tmp_path, content):
    p = tmp_path / "s.tar"
    p.write_bytes(content)
    samples, report = read(p)
    assert samples == [] and report.error.startswith("not_a_tar"), report.error


def test_missing_file(tmp_path):
    samples, report = read(tmp_path / "nope.tar")
    assert samples == [] and report.error.startswith("unreadable")


def test_corrupt_header_mid_file(tmp_path):
    p = write_tar(tmp_path / "s.tar", [("0.jpg", b"j0"), ("0.txt", b"t0"), ("1.jpg", b"j1"), ("1.txt", b"t1")])
    raw = bytearray(p.read_bytes())
    spans = member_spans(bytes(raw))
    third = spans[2][1]
    raw[third:third + 512] = random.Random(0).randbytes(512)
    p.write_bytes(bytes(raw))
    samples, report = read(p)
    assert samples == [("0", {"jpg": b"j0", "txt": b"t0"}, False)]
    assert report.error.startswith("corrupt") and f"byte {third}" in report.error


def test_garbage_after_the_end_marker(tmp_path):
    p = write_tar(tmp_path / "s.tar", [("0.jpg", b"j0")])
    p.write_bytes(p.read_bytes() + b"junk" * 300)
    samples, report = read(p)
    assert samples == [("0", {"jpg": b"j0"}, False)]
    assert report.error.startswith("corrupt")


def test_error_known_before_the_first_sample(tmp_path):
    raw = write_tar(tmp_path / "s.tar", [("0.jpg", b"j" * 2000), ("1.jpg", b"k" * 2000)]).read_bytes()
    p = tmp_path / "cut.tar"
    p.write_bytes(raw[:3200])  # inside 1.jpg's data (bytes 3072..5072)
    report = TarReport(path=str(p))
    it = iter_samples(p, report)
    first = next(it)
    assert first.key == "0" and report.error.startswith("truncated")
    assert report.skipped == [("1.jpg", "truncated_member")]
    assert list(it) == [] and report.samples == 1
    assert [s.key for s in iter_samples(p)] == ["0"]  # report is optional


def five_sample_tar(tmp_path) -> bytes:
    rng = random.Random(7)
    members = []
    for i in range(5):
        members.append((f"{i:04d}.jpg", rng.randbytes([0, 511, 512, 513, 1800][i])))
        members.append((f"{i:04d}.txt", b"caption %d" % i))
        if i == 2:
            members.append((f"{i:04d}.json", b"{}"))
    return write_tar(tmp_path / "five.tar", members).read_bytes()


def test_truncated_at_many_offsets(tmp_path):
    raw = five_sample_tar(tmp_path)
    spans = member_spans(raw)
    eof_marker = max(off + -(-size // 512) * 512 for _, _, off, size in spans)
    assert raw[eof_marker:eof_marker + 1024] == bytes(1024)
    cuts = set(range(0, len(raw) + 1, 97))
    for _, hdr, off, size in spans:  # and every boundary, +-1
        cuts.update(x + d for x in (hdr, off, off + size) for d in (-1, 0, 1))
    cuts.update((eof_marker - 1, eof_marker, eof_marker + 1, eof_marker + 511, eof_marker + 512, len(raw) - 1))
    p = tmp_path / "cut.tar"
    for cut in sorted(c for c in cuts if 0 <= c <= len(raw)):
        p.write_bytes(raw[:cut])
        samples, report = read(p)
        assert samples == expected_after_cut(raw, cut), cut
        if cut == 0:
            assert report.error == "empty_file: 0 bytes"
        elif cut < eof_marker + 512:
            assert report.error is not None and report.error.startswith("truncated"), (cut, report.error)
        else:  # only end-of-archive padding is missing: nothing lost
            assert report.error is None, (cut, report.error)
        cut_member = [name for name, _, off, size in spans if off <= cut < off + size]  # header whole, data not
        assert report.skipped == [(n, "truncated_member") for n in cut_member], cut


def test_truncated_pax_tar_at_many_offsets(tmp_path):
    members = [("p" * 120 + f"/{i}.jpg", bytes([i]) * (300 * i + 1)) for i in range(3)]
    raw = write_tar(tmp_path / "pax.tar", members, fmt=tarfile.PAX_FORMAT).read_bytes()
    spans = member_spans(raw)
    p = tmp_path / "cut.tar"
    for cut in range(1, spans[-1][2] + spans[-1][3] + 1, 61):
        p.write_bytes(raw[:cut])
        samples, report = read(p)
        want = [(name.rsplit(".", 1)[0], {"jpg": raw[off:off + size]}, False)
                for name, _, off, size in spans if off + size <= cut]
        assert samples == want, cut
        assert report.error.startswith("truncated"), (cut, report.error)


# --- sidecar -------------------------------------------------------------------------------------

def test_sidecar_success_and_failed_rows(tmp_path):
    pq.write_table(pa.Table.from_pylist([
        {"key": "000000000", "status": "success", "caption": "a dog", "url": "http://a"},
        {"key": "000000001", "status": "failed_to_download", "caption": "x", "url": "http://b"},
        {"key": "000000002", "status": "success", "caption": "a cat", "url": "http://c"},
        {"key": "000000003", "status": "failed_to_download", "caption": "y", "url": "http://d"},
        {"key": "000000004", "status": "failed_to_resize", "caption": "z", "url": "http://e"},
    ]), tmp_path / "00000.parquet")
    for name in ("00000.tar", "00000.tar.gz", "00000.tgz"):
        sc = read_sidecar(tmp_path / name)
        assert sc.error is None and sc.path == str(tmp_path / "00000.parquet")
        assert set(sc.rows) == {"000000000", "000000002"}
        assert sc.rows["000000002"]["caption"] == "a cat"
        assert sc.not_downloaded == {"failed_to_download": 2, "failed_to_resize": 1}


def test_sidecar_without_status_column_and_int_keys(tmp_path):
    pq.write_table(pa.table({"key": [0, 1], "caption": ["a", "b"]}), tmp_path / "00001.parquet")
    sc = read_sidecar(tmp_path / "00001.tar")
    assert sc.error is None and set(sc.rows) == {"0", "1"} and sc.not_downloaded == {}
    assert sc.rows["1"]["caption"] == "b"


def test_sidecar_truncated(tmp_path):
    pq.write_table(pa.table({"key": ["a"] * 100, "status": ["success"] * 100}), tmp_path / "00002.parquet")
    data = (tmp_path / "00002.parquet").read_bytes()
    (tmp_path / "00002.parquet").write_bytes(data[: len(data) // 2])
    sc = read_sidecar(tmp_path / "00002.tar")
    assert sc.rows == {} and sc.path == str(tmp_path / "00002.parquet")
    assert sc.error and str(tmp_path / "00002.parquet") in sc.error


def test_sidecar_not_parquet(tmp_path):
    (tmp_path / "00003.parquet").write_text("key,status\na,success\n")
    sc = read_sidecar(tmp_path / "00003.tar")
    assert sc.rows == {} and sc.error and "00003.parquet" in sc.error


def test_sidecar_absent(tmp_path):
    assert read_sidecar(tmp_path / "00004.tar") == Sidecar(rows={}, not_downloaded={}, error=None, path=None)


def test_random_damage_never_raises(tmp_path):
    """Flipped bytes and cuts anywhere (plain and gzip): the reader reports the damage, never raises."""
    raw = five_sample_tar(tmp_path)
    originals = {name: raw[off:off + size] for name, _, off, size in member_spans(raw)}
    rng = random.Random(11)
    p = tmp_path / "damaged.tar"
    for _ in range(300):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data[:rng.randrange(len(data) + 1)] if rng.random() < 0.5 else data)
        if rng.random() < 0.2:
            data = gzip.compress(data)[:rng.randrange(1, 2000)]
        p.write_bytes(data)
        report = TarReport(path=str(p))
        for s in iter_samples(p, report):
            assert s.members
        assert report.error is None or report.error.split(":")[0] in (
            "truncated", "corrupt", "not_a_tar", "empty_file"), report.error
    p.write_bytes(raw)  # and the intact shard still reads whole
    assert {f"{s.key}.{e}": d for s in iter_samples(p) for e, d in s.members.items()} == originals


def _both_paths(path, monkeypatch):
    """Samples read by the direct header walk and by tarfile alone (the walk turned off)."""
    import shardio.tar as tar

    fast = [(s.key, s.members, s.problems, s.duplicate) for s in tar.iter_samples(path)]
    with monkeypatch.context() as m:
        m.setattr(tar, "_plain_members", lambda pread, size: None)
        slow = [(s.key, s.members, s.problems, s.duplicate) for s in tar.iter_samples(path)]
    return fast, slow


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_direct_header_walk_reads_what_tarfile_reads(tmp_path, monkeypatch, fmt):
    import shardio.tar as tar

    path = tmp_path / "s.tar"
    long_dir = "d" * 90 + "/" + "e" * 60  # > 100 chars: ustar's prefix field, GNU / pax long names
    names = ["0001.jpg", "0001.txt", f"{long_dir}/0002.jpg", f"{long_dir}/0002.txt", "0001.jpg", "café/0003.json"]
    with tarfile.open(path, "w", format=fmt) as t:
        for i, name in enumerate(names):
            data = bytes([i]) * (i * 300 + 1)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    fast, slow = _both_paths(path, monkeypatch)
    assert fast == slow and len(fast) == 4 and fast[2][3] is True  # the repeated 0001.jpg
    data = path.read_bytes()
    plain = tar._plain_members(lambda o, n: data[o:o + n], len(data))
    if fmt == tarfile.USTAR_FORMAT:  # the walk itself read it (prefix joined), not tarfile
        assert [m[0] for m in plain] == names and all(data[o:o + n] == bytes([i]) * n
                                                      for i, (_, o, n) in enumerate(plain))
    else:  # GNU long-name and pax members: handed to tarfile
        assert plain is None


def test_direct_header_walk_hands_odd_archives_to_tarfile(tmp_path, monkeypatch):
    import shardio.tar as tar

    good = tmp_path / "a.tar"
    with tarfile.open(good, "w", format=tarfile.USTAR_FORMAT) as t:
        for name in ("1.jpg", "1.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            t.addfile(info, io.BytesIO(b"abc"))
    raw = good.read_bytes()
    cases = {"concatenated": raw + raw, "cut": raw[:700], "no end block": raw[:1536],
             "bad checksum": raw[:148] + b"0000000\0" + raw[156:]}
    for name, data in cases.items():
        p = tmp_path / f"{name}.tar"
        p.write_bytes(data)
        size = len(data)
        assert tar._plain_members(lambda o, n, d=data: d[o:o + n], size) is None, name
        fast, slow = _both_paths(p, monkeypatch)
        assert fast == slow, name
