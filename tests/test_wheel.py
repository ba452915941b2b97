"""The wheel works: installed (not editable) into a fresh venv, `curate run` runs from another folder
with a preset by name and the packaged model configs."""
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

from fixtures.shardmaker import make_pool

ROOT = Path(__file__).parents[1]


def test_wheel_installs_and_curates_from_another_directory(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("curate-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    new_site = next(env_dir.glob("lib/python*/site-packages"))
    # the dependencies come from this interpreter's site-packages; the project only from the wheel
    (new_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    py = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    make_pool(tmp_path / "pool", n=20, per_shard=10, plant={3: "corrupt"})
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(py), "-c", "import pipeline; print(pipeline.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert str(new_site) in where and str(ROOT) not in where  # the installed copy, not the checkout
    cfg = work / "c.yaml"
    cfg.write_text("clip:\n  - {model: curate-tiny, batch_size: 8}\nfilters:\n  - {type: clip_score, fraction: 0.5}\n")
    for config in ("datacomp/basic", str(cfg)):
        r = subprocess.run([str(env_dir / "bin" / "curate"), "run", "--pool", str(tmp_path / "pool"),
                            "--out", str(work / "out"), "--config", config], cwd=work, env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        assert (work / "out" / "uids.npy").is_file()
