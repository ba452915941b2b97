"""Start a real local Prefect server, serve curate/laion-subset, run it, check the outputs.

    .venv/bin/python -m bench.prefect_deployment --pool data/sample_pool/shards --config configs/laion-subset.yaml

Everything runs in a temporary PREFECT_HOME on 127.0.0.1; all processes are stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"Prefect server at {url} not healthy after {timeout:.0f} s")


@contextmanager
def local_server():
    """A real Prefect server on 127.0.0.1 in a temporary PREFECT_HOME; yields the env to talk to it."""
    home = tempfile.mkdtemp(prefix="prefect-home-")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": home, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "HF_HUB_OFFLINE": "1", "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port)}
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=open(Path(home) / "server.log", "w"), stderr=subprocess.STDOUT)
    try:
        wait_healthy(env["PREFECT_API_URL"], 120)
        yield env
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextmanager
def serving(env: dict, pool: str, out: str, config: str):
    """``curate serve`` running until the block ends, its deployments registered."""
    log = Path(env["PREFECT_HOME"]) / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--pool", pool, "--out", out, "--config", config],
                            env=env, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        end = time.time() + 120
        while subprocess.run([str(BIN / "prefect"), "deployment", "inspect", "curate/laion-subset"], env=env, cwd=ROOT,
                             capture_output=True, text=True).returncode != 0:
            if time.time() > end:
                raise TimeoutError("deployment curate/laion-subset never registered:\n" + log.read_text()[-3000:])
            time.sleep(1)
        yield
    finally:
        _stop(proc)


def deployment_run(env: dict, name: str = "curate/laion-subset", timeout: float = 600) -> dict:
    """``prefect deployment run NAME --watch``: did it end COMPLETED, and how long did it take."""
    t0 = time.time()
    r = subprocess.run([str(BIN / "prefect"), "deployment", "run", name, "--watch", "--watch-timeout", str(int(timeout))],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 60)
    ok = r.returncode == 0 and ("Completed" in r.stdout or "COMPLETED" in r.stdout)
    return {"completed": ok, "seconds": round(time.time() - t0, 1), "cli_output_tail": r.stdout[-600:] + r.stderr[-600:]}


def run_deployment(pool: str, out: str, config: str, timeout: float = 600) -> dict:
    t0 = time.time()
    with local_server() as env:
        t_server = time.time() - t0
        with serving(env, pool, out, config):
            r = deployment_run(env, timeout=timeout)
    result = {"deployment_run_completed": r["completed"], "server_start_seconds": round(t_server, 1),
              "run_seconds": r["seconds"], "cli_output_tail": r["cli_output_tail"]}
    manifest = Path(out) / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        result.update({k: m[k] for k in ("samples_in", "kept", "dropped", "dropped_by_reason")})
        result["output_shards"] = m["output_shards"]
        # the manifest names its shards relative to the output folder
        result["output_shards_exist"] = bool(m["output_shards"]) and all(
            (Path(out) / p).is_file() for p in m["output_shards"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default="data/sample_pool/shards")
    ap.add_argument("--out", default="runs/laion-subset")
    ap.add_argument("--config", default="configs/laion-subset.yaml")
    a = ap.parse_args()
    print(json.dumps(run_deployment(a.pool, a.out, a.config), indent=2))


if __name__ == "__main__":
    main()
