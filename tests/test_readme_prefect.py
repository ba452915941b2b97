"""The README's Prefect block, run verbatim after a demo, on the deployment's default parameters: the
server, `curate serve`, `prefect deployment run curate/laion-subset`, to a Completed flow run with
its outputs and artifacts. Runs in a scratch folder that links the checkout's code, so the
checkout's own runs/ and data/ are left alone (slow: a small demo trains three tiny models)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.readme_commands import ROOT, blocks, program

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(port: int, path: str, body: dict | None = None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api{path}", method="POST" if body is not None else "GET",
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def _wait(what: str, check, timeout: float, procs=()):
    end = time.time() + timeout
    while time.time() < end:
        for p in procs:
            assert p.poll() is None, f"{p.args} exited with {p.returncode} while waiting for {what}"
        try:
            got = check()
            if got:
                return got
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{what}: not within {timeout} s")


def prefect_block() -> list[str]:
    """The README block that sources scripts/prefect-env.sh: its lines, comments removed."""
    for b in blocks():
        lines = [re.sub(r"\s+#.*$", "", x).strip() for x in b.splitlines()]
        lines = [x for x in lines if x]
        if lines and lines[0].startswith("source scripts/prefect-env.sh"):
            return lines
    raise AssertionError("README has no Prefect block starting with `source scripts/prefect-env.sh`")


def test_prefect_block_runs_the_default_deployment_after_a_demo(tmp_path):
    lines = prefect_block()
    assert len(lines) == 4 and "server start" in lines[1] and lines[2].endswith("curate serve"), lines
    assert lines[3].endswith("prefect deployment run curate/laion-subset"), lines
    home = tmp_path / "checkout"  # the commands' relative paths resolve here; the code is the checkout's
    home.mkdir()
    for name in (".venv", "scripts", "configs"):
        (home / name).symlink_to(ROOT / name)
    port = _free_port()
    env = {**os.environ, "PREFECT_SERVER_API_PORT": str(port), "HOME": str(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)

    # the README's step before: the demo (smaller than its defaults, same outputs and paths)
    demo = subprocess.run([".venv/bin/curate", "demo", "--samples", "1200", "--trusted", "600",
                           "--samples-seen", "1200", "--scorer-samples-seen", "1200"],
                          cwd=home, env=env, capture_output=True, text=True, timeout=1800)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]

    def shell(line: str, log: Path):
        return subprocess.Popen(["bash", "-c", f"{lines[0]} && exec {line}"], cwd=home, env=env,
                                stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    server = shell(lines[1], tmp_path / "server.log")
    served = None
    try:
        _wait("the Prefect server's health", lambda: _api(port, "/health"), 120, [server])
        served = shell(lines[2], tmp_path / "serve.log")
        _wait("the served deployment", lambda: _api(port, "/deployments/name/curate/laion-subset"), 180,
              [server, served])
        t0 = time.time()
        r = subprocess.run(["bash", "-c", f"{lines[0]} && {lines[3]}"], cwd=home, env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", r.stdout).group(1)

        def finished():
            state = _api(port, f"/flow_runs/{run_id}")["state"]
            return state if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        state = _wait("the flow run", finished, 1500, [server, served])
        seconds = time.time() - t0
        log = (tmp_path / "serve.log").read_text()[-3000:]
        assert state["type"] == "COMPLETED", f"{state['name']}: {state.get('message')}\n{log}"
        out = home / "runs" / "laion-subset"
        for name in ("shards", "uids.npy", "metadata.parquet", "manifest.json", "report.html"):
            assert (out / name).exists(), name
        m = json.loads((out / "manifest.json").read_text())
        assert m["samples_in"] == 1200 and 0 < m["kept"] < m["samples_in"]
        keys = {a["key"] for a in _api(port, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})}
        assert {"curation-summary", "curation-progress"} <= keys, keys
        print(f"flow run {run_id} Completed in {seconds:.1f} s (from `prefect deployment run` to the end); "
              f"{m['kept']} of {m['samples_in']} kept")
    finally:
        for p in (served, server):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, 15)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, 9)
