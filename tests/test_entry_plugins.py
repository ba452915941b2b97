"""Filters, stages and objectives from another installed package (entry points ``curate.filters`` /
``curate.stages`` / ``curate.objectives``): found, validated and run like built-in ones, in worker
processes too, and recorded with their package's version; a broken or clashing plug-in stops with
one line naming it. Each case runs `curate` in a subprocess whose
path holds a package installed the way pip installs one (a ``.dist-info`` with ``entry_points.txt``)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from fixtures.shardmaker import image_bytes, uid
from shardio.shards import ShardWriter

CURATE = Path(sys.executable).with_name("curate")

FILTERS = '''
from typing import Literal
from pipeline.filters import Context, Filter, Result


class DigitRule(Filter):
    """A shared base class: no type of its own, so no filter."""
    checks = ("has_digit",)
    outputs = {"digits": "int32"}


class NoDigits(DigitRule):
    """Drop captions holding a digit."""
    type: Literal["no_digits"]

    def compute(self, ctx: Context) -> Result:
        n = ctx.df["caption"].fillna("").str.count(r"[0-9]").to_numpy()
        return Result({"has_digit": n > 0}, {"digits": n})
'''

STAGES = '''
from typing import Literal
import pyarrow as pa
from pydantic import BaseModel, ConfigDict
from pipeline.stages import Needs, Stage


class CharsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["caption_chars"]
    name: str = "chars"


class CaptionChars(Stage):
    name = "caption_chars"
    columns = {"caption_chars": "int32"}
    needs = Needs(caption=True)
    Config = CharsConfig

    def __init__(self, config):
        self.config, self.n = config, []

    @property
    def folder(self):
        return self.config.name

    def out_columns(self):
        return {self.config.name: "int32"}

    def step(self, batch):
        self.n.extend(len(s.caption_full or "") for s in batch.samples)

    def finish(self, src):
        return pa.table({"uid": pa.array(list(src.uids), pa.string()), self.config.name: pa.array(self.n, pa.int32())})
'''

ROTNET = '''
from typing import Literal
import torch
from training.objective import ImageOnly, ImageOnlyConfig, image_size, no_tokens
from training.ssl import TwoViews


class RotConfig(ImageOnlyConfig):
    objective: Literal["rotnet"] = "rotnet"
    crop_min: float = 0.5


class RotNet(ImageOnly):
    """Rotation prediction (Gidaris et al., ICLR 2018): which of 0/90/180/270 degrees an image was turned."""
    name = kind = "rotnet"
    Config = RotConfig

    def build(self, device, rank, world):
        visual = self.image_tower(device)
        self.views = TwoViews(image_size(visual), self.cfg.crop_min, views=1)
        self.mean = torch.tensor(visual.image_mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(visual.image_std, device=device).view(1, 3, 1, 1)
        return torch.nn.Sequential(visual, torch.nn.Linear(visual.output_dim, 4)).to(device)

    def transforms(self):
        return self.views, no_tokens

    def step(self, model, images, tokens, step, autocast):
        x = images[:, 0].to(self.device).permute(0, 3, 1, 2).float() / 255
        k = torch.arange(len(x), device=x.device) % 4
        x = torch.stack([torch.rot90(im, int(r), dims=(1, 2)) for im, r in zip(x, k)])
        with autocast:
            loss = torch.nn.functional.cross_entropy(model((x - self.mean) / self.std), k)
        loss.backward()
        return float(loss.detach())
'''

CONFIG = """
filters:
  - {type: no_digits}
  - {type: threshold, column: chars, min: 8}
stages:
  - {type: caption_chars, name: chars}
"""


def install(site: Path, name: str, files: dict[str, str], entry_points: str) -> None:
    """A package as pip leaves it: its modules and a .dist-info naming its entry points."""
    pkg = site / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for mod, text in files.items():
        (pkg / f"{mod}.py").write_text(text)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def curate(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([str(CURATE), *args], capture_output=True, text=True, env=env, timeout=300)


CAPTIONS = ["a red square", "red square 42", "a dog", "a blue square with a border", "green 7", "a green circle"]


def pool(root: Path) -> Path:
    with ShardWriter(root / "pool", 3) as w:  # two shards: two worker processes
        for i, cap in enumerate(CAPTIONS):
            w.write(f"{i:04d}", image_bytes("red", seed=i), "jpg", cap, {"uid": uid(i)})
    (root / "cfg.yaml").write_text(CONFIG)
    return root / "pool"


def test_an_installed_packages_filter_and_stage_run_like_built_in_ones(tmp_path):
    install(tmp_path / "site", "curate_plugin_demo", {"filters": FILTERS, "stages": STAGES}, """
        [curate.filters]
        no_digits = curate_plugin_demo.filters
        same_class_again = curate_plugin_demo.filters:NoDigits

        [curate.stages]
        caption_chars = curate_plugin_demo.stages:CaptionChars
        """)
    p = pool(tmp_path)
    r = curate(tmp_path / "site", "run", "--pool", str(p), "--out", str(tmp_path / "out"), "--config",
               str(tmp_path / "cfg.yaml"), "--workers", "2")
    assert r.returncode == 0, r.stderr
    df = pd.read_parquet(tmp_path / "out" / "metadata.parquet").set_index("uid")
    reasons = {u: (r if isinstance(r, str) else None) for u, r in df["drop_reason"].items()}
    assert reasons == {uid(0): None, uid(1): "no_digits:has_digit", uid(2): "threshold[chars>=8]",
                       uid(3): None, uid(4): "no_digits:has_digit", uid(5): None}
    assert df["chars"].tolist() == [len(c) for c in CAPTIONS]
    assert df["no_digits.digits"].tolist() == [0, 2, 0, 0, 1, 0]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["plugins"] == [
        {"kind": "filter", "type": "no_digits", "qualname": "curate_plugin_demo.filters.NoDigits",
         "entry_point": "no_digits", "package": "curate-plugin-demo", "version": "0.1"},
        {"kind": "stage", "type": "caption_chars", "qualname": "curate_plugin_demo.stages.CaptionChars",
         "entry_point": "caption_chars", "package": "curate-plugin-demo", "version": "0.1"}]
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Plug-ins" in report and "curate_plugin_demo.stages.CaptionChars" in report

    listed = curate(tmp_path / "site", "plugins").stdout.splitlines()
    assert [line.split()[:3] for line in listed if "curate-plugin-demo" in line] == [
        ["filter", "no_digits", "curate-plugin-demo"], ["stage", "caption_chars", "curate-plugin-demo"]]
    assert ["filter", "clip_score", "built-in"] in [line.split() for line in listed]

    # a worker holding another version of the stage's package refuses the run's jobs, naming both
    stage = dict(manifest["plugins"][1], version="0.2")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    r = subprocess.run([sys.executable, "-c", f"from pipeline.run import check_plugins; check_plugins([{stage!r}])"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "cannot run stage 'caption_chars': the run uses it from curate-plugin-demo 0.2" in r.stderr
    assert "here: curate-plugin-demo 0.1; install that version on every worker" in r.stderr


def test_a_worker_without_the_runs_stage_plugin_refuses_its_jobs_naming_it():
    from pipeline.run import annotate_job
    from shardio.plugins import PluginError

    used = [{"kind": "stage", "type": "caption_chars", "qualname": "curate_plugin_demo.stages.CaptionChars",
             "entry_point": "caption_chars", "package": "curate-plugin-demo", "version": "0.1"}]
    job = ("pool/00000.tar", "work", [], False, ['{"type": "caption_chars", "name": "chars"}'], {}, [], None, None, used)
    with pytest.raises(PluginError, match=r"cannot run stage 'caption_chars': the run uses it from "
                                          r"curate-plugin-demo 0\.1 \(entry point 'caption_chars'\), here: no such stage"):
        annotate_job(job)


def test_a_broken_or_clashing_plugin_stops_with_one_line_naming_it(tmp_path):
    p = pool(tmp_path)
    args = ["run", "--pool", str(p), "--out", str(tmp_path / "out"), "--config", str(tmp_path / "cfg.yaml")]
    install(tmp_path / "broken", "broken_plugin", {"filters": "import not_installed_anywhere\n"}, """
        [curate.filters]
        mine = broken_plugin.filters
        """)
    r = curate(tmp_path / "broken", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "plug-in 'mine' = 'broken_plugin.filters'" in r.stderr and "package 'broken-plugin'" in r.stderr
    assert "No module named 'not_installed_anywhere'" in r.stderr
    r = curate(tmp_path / "broken", "train", "--data", str(p), "--out", str(tmp_path / "t"), "--samples-seen", "8",
               "--batch-size", "4")
    assert r.returncode == 0, r.stderr  # training never loads the filters: a broken filter plug-in does not stop it

    clash = FILTERS.replace('Literal["no_digits"]', 'Literal["clip_score"]')
    install(tmp_path / "clash", "clash_plugin", {"filters": clash}, """
        [curate.filters]
        scores = clash_plugin.filters:NoDigits
        """)
    r = curate(tmp_path / "clash", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "filter type 'clip_score' is taken by pipeline.filters.clip_score" in r.stderr
    assert not (tmp_path / "out").exists()


def test_an_installed_packages_objective_trains_with_its_settings_and_is_recorded(tmp_path):
    install(tmp_path / "site", "curate_rotnet", {"rotnet": ROTNET}, """
        [curate.objectives]
        rotnet = curate_rotnet.rotnet:RotNet
        """)
    p = pool(tmp_path)
    (tmp_path / "rot.yaml").write_text("crop_min: 0.8\nwd: 0.01\n")
    args = ["train", "--data", str(p), "--out", str(tmp_path / "run"), "--model", "curate-tiny",
            "--samples-seen", "16", "--batch-size", "8", "--device", "cpu"]
    r = curate(tmp_path / "site", *args, "--objective", "rotnet", "--objective-config", str(tmp_path / "rot.yaml"))
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["objective"] == "rotnet" and result["steps"] == 2
    assert result["plugin"] == {"entry_point": "rotnet", "package": "curate-rotnet", "version": "0.1"}
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["crop_min"] == 0.8 and saved["wd"] == 0.01 and saved["batch_size"] == 8  # file, then options
    assert (tmp_path / "run" / "final").is_dir()

    assert "objective  rotnet                   curate-rotnet 0.1 (entry point rotnet)" in \
        curate(tmp_path / "site", "plugins").stdout.splitlines()
    r = curate(tmp_path / "site", *args, "--objective", "rotnett")
    assert r.returncode == 2 and "unknown objective 'rotnett'" in r.stderr and "installed packages: rotnet" in r.stderr
    r = curate(tmp_path / "site", *args, "--objective", "rotnet", "--temperature", "0.1")
    assert r.returncode == 2 and "--temperature: built-in objectives' options" in r.stderr
