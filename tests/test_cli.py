"""User errors are one or two lines and a non-zero exit, never a traceback (``--debug`` shows it)."""
import argparse
import fcntl
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.shardmaker import make_pool

ROOT = Path(__file__).parents[1]


def curate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "CURATE_KILL_AT": ""})


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_pool(root / "pool", n=10, per_shard=10)
    (root / "ok.yaml").write_text("filters: []\n")
    return root


def assert_short_error(r: subprocess.CompletedProcess, words: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert 1 <= len(lines) <= 3 and words in r.stderr, r.stderr


def test_out_naming_a_file(pool):
    (pool / "afile").write_text("x")
    assert_short_error(curate("run", "--pool", str(pool / "pool"), "--out", str(pool / "afile"),
                              "--config", str(pool / "ok.yaml")), "is a file")


def test_broken_yaml(pool):
    (pool / "bad.yaml").write_text("filters:\n  - {type: clip_score, fraction: [0.3\n" + "# pad\n" * 60)
    assert_short_error(curate("run", "--pool", str(pool / "pool"), "--out", str(pool / "o1"),
                              "--config", str(pool / "bad.yaml")), "not valid YAML")


def test_locked_output(pool):
    (pool / "o2").mkdir()
    with open(pool / "o2" / ".curate.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = curate("run", "--pool", str(pool / "pool"), "--out", str(pool / "o2"), "--config", str(pool / "ok.yaml"))
    assert_short_error(r, "being written by another run")


def test_missing_checkpoint_is_caught_before_work_and_leaves_nothing(pool):
    (pool / "ck.yaml").write_text(f"clip:\n  - {{model: {pool / 'no' / 'such' / 'checkpoint'}}}\n")
    r = curate("run", "--pool", str(pool / "pool"), "--out", str(pool / "o3"), "--config", str(pool / "ck.yaml"))
    assert_short_error(r, "checkpoint folder that does not exist")
    assert not (pool / "o3").exists()


def test_repeated_option_is_refused(pool):
    r = curate("run", "--pool", str(pool / "pool"), "--pool", str(pool), "--out", str(pool / "o4"),
               "--config", str(pool / "ok.yaml"))
    assert r.returncode == 2 and "--pool given more than once" in r.stderr


def test_debug_shows_the_traceback(pool):
    r = curate("--debug", "run", "--pool", str(pool / "pool"), "--out", str(pool / "afile"),
               "--config", str(pool / "ok.yaml"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_preset_by_name_runs_and_a_log_is_left(pool):
    r = curate("run", "--pool", str(pool / "pool"), "--out", str(pool / "o5"), "--config", "datacomp/no-filter")
    assert r.returncode == 0, r.stderr
    assert "published" in (pool / "o5" / "curate.log").read_text()


def test_a_broken_shard_is_reported_once(pool):
    """One warning line on the terminal (not the library's print, the run's log, the root logger open_clip
    configures and the CLI's summary: four copies in three formats before) and one line in curate.log."""
    broken = pool / "broken"
    make_pool(broken, n=20, per_shard=10)
    tar = broken / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    (pool / "tiny.yaml").write_text("clip:\n  - {model: curate-tiny, batch_size: 8}\nfilters: []\n")
    r = curate("run", "--pool", str(broken), "--out", str(pool / "o6"), "--config", str(pool / "tiny.yaml"))
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.replace("\r", "\n").splitlines() if str(tar) in x]
    assert len(lines) == 1 and lines[0].startswith("curate: WARNING: broken shard "), r.stderr
    assert "INFO" not in r.stderr and str(tar) not in r.stdout
    logged = [x for x in (pool / "o6" / "curate.log").read_text().splitlines() if str(tar) in x]
    assert len(logged) == 1 and "WARNING pipeline.run: broken shard" in logged[0]


def test_help_lists_every_command():
    from app.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = curate("--help").stdout
    listed = {line.split()[0] for line in text.splitlines() if line.startswith("    ") and line[4] != " "}
    assert set(sub.choices) == listed, text


def test_the_readme_commands_parse():
    from app.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    commands = [line.split("curate ", 1)[1].split("#")[0].strip() for line in readme.splitlines()
                if line.startswith(".venv/bin/curate ")]
    assert len(commands) >= 5  # run (twice), reshard, train, eval at least
    for c in commands:
        if not c.startswith("serve"):
            build_parser().parse_args(shlex.split(c))
