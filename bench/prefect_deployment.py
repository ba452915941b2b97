"""Start a real local Prefect server, serve curate/laion-subset, run it, check the outputs.

    .venv/bin/python bench/prefect_deployment.py --pool data/sample_pool/shards --config configs/laion-subset.yaml

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


def run_deployment(pool: str, out: str, config: str, timeout: float = 600) -> dict:
    home = tempfile.mkdtemp(prefix="prefect-home-")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": home, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "HF_HUB_OFFLINE": "1", "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port)}
    logs = Path(home)
    procs = []
    t0 = time.time()
    try:
        procs.append(subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                      env=env, cwd=ROOT, stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT))
        wait_healthy(env["PREFECT_API_URL"], 120)
        t_server = time.time() - t0
        procs.append(subprocess.Popen([sys.executable, "-m", "flows.serve", "--pool", pool, "--out", out, "--config", config],
                                      env=env, cwd=ROOT, stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT))
        # wait until the deployment is registered, then run it and watch to the end
        end = time.time() + 120
        while True:
            q = subprocess.run([str(BIN / "prefect"), "deployment", "inspect", "curate/laion-subset"], env=env, cwd=ROOT,
                               capture_output=True, text=True)
            if q.returncode == 0:
                break
            if time.time() > end:
                raise TimeoutError("deployment curate/laion-subset never registered:\n" + (logs / "serve.log").read_text()[-3000:])
            time.sleep(1)
        t1 = time.time()
        r = subprocess.run([str(BIN / "prefect"), "deployment", "run", "curate/laion-subset", "--watch",
                            "--watch-timeout", str(int(timeout))], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=timeout + 60)
        state = "COMPLETED" if "Completed" in r.stdout or "COMPLETED" in r.stdout else "NOT COMPLETED"
        result = {"deployment_run_completed": r.returncode == 0 and state == "COMPLETED",
                  "server_start_seconds": round(t_server, 1), "run_seconds": round(time.time() - t1, 1),
                  "cli_output_tail": r.stdout[-600:] + r.stderr[-600:]}
        manifest = Path(out) / "manifest.json"
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            result.update({k: m[k] for k in ("samples_in", "kept", "dropped", "dropped_by_reason")})
            result["output_shards"] = m["output_shards"]
            result["output_shards_exist"] = all(Path(p).is_file() for p in m["output_shards"])
        return result
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default="data/sample_pool/shards")
    ap.add_argument("--out", default="runs/laion-subset")
    ap.add_argument("--config", default="configs/laion-subset.yaml")
    a = ap.parse_args()
    print(json.dumps(run_deployment(a.pool, a.out, a.config), indent=2))


if __name__ == "__main__":
    main()
