"""Every command in README.md's code blocks works as written on a fresh clone: its program and
subcommand exist, its flags parse, and every preset, config and relative path it names exists in the
checkout or is made by an earlier block (the Prefect block itself runs in tests/test_readme_prefect.py,
slow)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.readme_commands import PLACEHOLDERS, ROOT, Command, commands, curate_argv, option, program

PATH_OPTIONS = ("--pool", "--data", "--checkpoint", "--uids", "--docs", "--data-root", "--run", "--train",
                "--init", "--task", "--scorer")
MAKES = ("--out", "--root")  # what a command writes


def _parse_curate(argv: list[str]):
    from app.cli import build_parser

    if argv[:1] == ["serve"]:
        from app.cli_serve import parser

        return parser("curate serve").parse_args(argv[1:])
    return build_parser().parse_args(argv)


def _made(cmds: list[Command]) -> list[tuple[int, str]]:
    """(order, path) for every folder a command writes: --out / --root, and the demo's defaults."""
    from app.cli import build_parser

    demo = build_parser().parse_args(["demo"])
    out = []
    for c in cmds:
        if program(c.argv) == "bash" and c.argv[1:] == ["scripts/demo.sh"]:
            out += [(c.order, demo.root), (c.order, demo.pool)]
        args = curate_argv(c.argv)
        if args:
            out += [(c.order, option(args, m)) for m in MAKES if option(args, m)]
    return out


def _exists_or_made(value: str, order: int, made: list[tuple[int, str]]) -> bool:
    if value.startswith("/") or "://" in value or value in PLACEHOLDERS:
        return True  # the user's own data (README says so next to it)
    path = value.split("{")[0].split("*")[0]
    if (ROOT / path).exists():
        return True
    return any(b < order and (path == m or path.startswith(m.rstrip("/") + "/")) for b, m in made)


CMDS = commands()


def test_readme_has_the_headline_commands():
    lines = [c.line for c in CMDS]
    assert "bash scripts/demo.sh" in lines and "bash scripts/test.sh" in lines
    assert any(c.argv[-3:] == ["deployment", "run", "curate/laion-subset"] for c in CMDS)


@pytest.mark.parametrize("cmd", [c for c in CMDS if curate_argv(c.argv) is not None], ids=lambda c: c.line[:70])
def test_curate_command_parses_and_names_what_exists(cmd):
    from pipeline.config import resolve

    args = curate_argv(cmd.argv)
    try:
        a = _parse_curate(args)
    except SystemExit:
        pytest.fail(f"README block {cmd.block}: `{cmd.line}` does not parse")
    made = _made(CMDS)
    config = option(args, "--config")
    if config and config not in PLACEHOLDERS and not config.startswith("/"):
        resolve(config)  # a preset name or a file in the checkout; raises with the list otherwise
    for name in PATH_OPTIONS:
        value = option(args, name)
        if value is not None:
            assert _exists_or_made(value, cmd.order, made), \
                f"README block {cmd.block}: `{cmd.line}`: {name} {value} neither exists nor is made by an earlier block"
    if getattr(a, "preset", None) and a.command in ("train",):
        from training.presets import PRESETS

        assert a.preset in PRESETS, f"`{cmd.line}`: no training preset {a.preset!r}"


def test_scripts_and_sourced_files_exist():
    for c in CMDS:
        if program(c.argv) in ("bash", "source", "."):
            assert (ROOT / c.argv[1]).is_file(), f"`{c.line}`: {c.argv[1]} is not in the checkout"


def test_pip_extras_exist():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for c in CMDS:
        for tok in c.argv:
            if tok.startswith(".[") and program(c.argv).endswith("pip"):
                for e in tok[2:-1].split(","):
                    assert e in extras, f"`{c.line}`: no extra [{e}] in pyproject.toml"


def test_bench_modules_and_their_flags_exist():
    for c in CMDS:
        if program(c.argv) != "bench":
            continue
        name = c.argv[2]
        spec = importlib.util.find_spec(name)
        assert spec is not None, f"`{c.line}`: no module {name}"
        src = Path(spec.origin).read_text()
        for tok in c.argv[3:]:
            if tok.startswith("--"):
                assert f'"{tok.split("=")[0]}"' in src, f"`{c.line}`: {name} has no option {tok}"


def test_prefect_commands_and_deployment_names():
    from flows.curate import curate
    from flows.nightly import curate_train_eval
    from flows.serve import NAMES
    from flows.train_eval import train_eval

    flows = {"laion-subset": curate.name, "on-curated": train_eval.name, "nightly": curate_train_eval.name}
    served = {f"{flows[n]}/{n}" for n in NAMES}
    prefect = [c for c in CMDS if program(c.argv) == "prefect"]
    assert prefect
    helps: dict[tuple, str] = {}
    for c in prefect:
        words = [t for t in c.argv[1:] if not t.startswith("-")]
        if words[:2] == ["deployment", "run"]:
            assert words[2] in served, f"`{c.line}`: no served deployment {words[2]} (served: {sorted(served)})"
            words = words[:2]
        else:
            words = [w for w in words if not w[0].isdigit()][:2]
        if tuple(words) not in helps:
            r = subprocess.run([str(Path(sys.executable).parent / "prefect"), *words, "--help"], capture_output=True,
                               text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT),
                                                         "PREFECT_HOME": str(ROOT / ".prefect-readme-test")})
            assert r.returncode == 0, f"`prefect {' '.join(words)} --help` failed: {r.stderr[-500:]}"
            helps[tuple(words)] = r.stdout
        for tok in c.argv[1:]:
            if tok.startswith("--"):
                assert tok.split("=")[0] in helps[tuple(words)], f"`{c.line}`: prefect has no option {tok}"


def test_deployment_defaults_name_what_the_demo_makes():
    """The drift that broke `prefect deployment run curate/laion-subset`: its default config named a
    scorer folder the demo no longer writes."""
    from flows.curate import DEFAULT_CONFIG, DEFAULT_POOL
    from pipeline.config import load_config
    from schemas.checkpoint import demo_scorer_path

    made = _made(CMDS)
    demo = next(c.order for c in CMDS if c.line == "bash scripts/demo.sh")
    assert _exists_or_made(DEFAULT_POOL, demo + 1, made), DEFAULT_POOL
    for name in (DEFAULT_CONFIG, "laion-subset", "no-filter"):
        for spec in load_config(name).clip:
            if spec.model and "/" in spec.model and not (ROOT / spec.model).exists():
                assert spec.model == demo_scorer_path(), f"{name}: scorer {spec.model} is not the demo's scorer"


def test_demo_writes_its_scorer_where_the_alias_points(tmp_path, monkeypatch):
    """`demo-scorer` and the folder the demo trains its filtering network into come from one place."""
    import app.sample_pool
    import training.train
    from app.demo import run_demo
    from schemas.checkpoint import DEMO_SCORER, demo_scorer_path
    from schemas.config import ClipModel

    class Stop(Exception):
        pass

    seen = []

    def first_training(cfg, *a, **k):
        seen.append(cfg.out_dir)
        raise Stop

    monkeypatch.setattr(app.sample_pool, "build_pool", lambda *a, **k: {"counts": {"pool": 10}})
    monkeypatch.setattr(training.train, "train", first_training)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Stop):
        run_demo()  # the defaults a user gets from `curate demo`
    assert f"{seen[0]}/final" == demo_scorer_path() == ClipModel(model=DEMO_SCORER).model


def test_missing_demo_scorer_says_run_the_demo(tmp_path):
    from fixtures.shardmaker import make_pool

    make_pool(tmp_path / "pool", n=4, per_shard=4)
    r = subprocess.run([sys.executable, "-m", "app.cli", "run", "--pool", str(tmp_path / "pool"), "--out", str(tmp_path / "o"),
                        "--config", "laion-subset"], capture_output=True, text=True, cwd=tmp_path,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "run `bash scripts/demo.sh`" in r.stderr and "runs/demo/dfn/final" in r.stderr, r.stderr


def test_readme_is_a_users_guide():
    """Under 2,500 words, with "How it fits together" among the first sections (results live in bench/)."""
    text = (ROOT / "README.md").read_text()
    assert len(text.split()) < 2500, len(text.split())
    heads = [x for x in text.splitlines() if x.startswith("## ")]
    assert "## How it fits together" in heads[:3], heads
