"""bench/scale.py's measuring: a command's wall / CPU seconds and peak RSS under a timeout and a memory
cap (``measure``), the phases of a run in this process (``Phases``), a local Dask cluster, the machine."""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def rel(p: Path) -> str:
    """``p`` relative to the repository when it is inside it."""
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _descendants(roots: list[int]) -> set[int]:
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, todo = set(), [r for r in roots if r in parent]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(c for c, pp in parent.items() if pp == p)
    return out


def measure(cmd: list[str], timeout: float, mem_cap_mb: float, env: dict | None = None,
            watch: list[int] = (), log: Path | None = None) -> dict:
    """Run ``cmd`` in its own session; return its status, wall and CPU seconds, ``peak_rss_mb`` (wait4's
    ru_maxrss: the largest single process of the command, its waited-for children included) and
    ``peak_tree_rss_mb`` (RSS of the command's whole process tree plus ``watch``, sampled every 0.2 s).
    Past ``timeout`` seconds or ``mem_cap_mb`` of tree RSS the command's process group is killed."""
    out = open(log, "w") if log else subprocess.DEVNULL
    t0 = time.time()
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    peak_tree, status = 0.0, "ok"
    rc, usage = None, None
    while True:
        pid, st, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            rc, usage = os.waitstatus_to_exitcode(st), ru
            break
        tree = sum(rss_mb(q) for q in _descendants([p.pid, *watch]))
        peak_tree = max(peak_tree, tree)
        if time.time() - t0 > timeout or tree > mem_cap_mb:
            status = "timeout" if time.time() - t0 > timeout else "out_of_memory"
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, st, usage = os.wait4(p.pid, 0)
            rc = os.waitstatus_to_exitcode(st)
            break
        time.sleep(0.2)
    p.returncode = rc  # reaped by wait4 above
    seconds = time.time() - t0
    if log:
        out.close()
    if status == "ok" and rc != 0:
        status = "out_of_memory" if rc == -signal.SIGKILL else "error"
    res = {"status": status, "seconds": round(seconds, 2),
           "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
           "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "peak_tree_rss_mb": round(peak_tree, 1)}
    if status != "ok":
        res["returncode"] = rc
        if status == "timeout":
            res["note"] = f"killed after {timeout:.0f} s"
        elif status == "out_of_memory" and peak_tree > mem_cap_mb:
            res["note"] = f"killed at {peak_tree:.0f} MB of tree RSS (cap {mem_cap_mb:.0f} MB)"
        if log and log.is_file():
            res["log_tail"] = log.read_text(errors="replace")[-1500:]
    return res


def fit_exponent(sizes: list[int], seconds: list[float]) -> float | None:
    if len(sizes) < 2:
        return None
    return round(float(np.polyfit(np.log(sizes), np.log(np.maximum(seconds, 1e-6)), 1)[0]), 3)


class _AfterImport:
    """A meta-path finder that calls ``hooks[name](module)`` right after that module first executes."""

    def __init__(self, hooks: dict):
        self.hooks = hooks

    def find_spec(self, name, path, target=None):
        if name not in self.hooks:
            return None
        hook = self.hooks.pop(name)
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            hook(module)
        spec.loader.exec_module = exec_module
        return spec


class Phases:
    """Times the run's phases and records each one's peak RSS: a thread samples RSS every 20 ms, and
    ``ru_maxrss`` growing inside a phase puts the process's exact peak there. Wraps module functions
    and filter classes' ``compute`` while active; restores them on exit."""

    WRAP = [("pipeline.run", "plan", "plan"), ("pipeline.run", "annotate", "annotate"),
            ("pipeline.run", "finish", "finish"), ("pipeline.decide", "load_columns", "load_columns"),
            ("pipeline.decide", "decide", "decide"), ("pipeline.decide", "summarize", "summarize"),
            ("pipeline.export", "export", "export"), ("pipeline.report", "write_report", "report"),
            ("pipeline.publish", "commit", "publish"),
            # inside the global filters: where their time and memory go
            ("pipeline.decide.Arrays", "image", "arrays.image"), ("pipeline.decide.Arrays", "text", "arrays.text"),
            ("pipeline.semdedup", "semdedup", "semdedup()"), ("pipeline.d2", "d2_select", "d2_select()"),
            ("pipeline.centroids", "kmeans", "vectors.kmeans"), ("pipeline.d2", "kmeans", "vectors.kmeans"),
            ("pipeline.vectors", "assign", "vectors.assign"), ("pipeline.d2", "knn", "vectors.knn"),
            ("pipeline.d2", "select", "d2.select"), ("pipeline.d2", "merge", "d2.merge"),
            ("pipeline.semdedup", "walk", "semdedup.walk"),
            ("pipeline.vectors", "normalize", "vectors.normalize"),
            ("pipeline.semdedup", "normalize", "vectors.normalize"),
            ("pipeline.semdedup", "usable", "vectors.usable"), ("pipeline.d2", "usable", "vectors.usable")]

    EAGER = {"pipeline.run", "pipeline.decide", "pipeline.export", "pipeline.report", "pipeline.publish"}

    def __init__(self, filters=(), progress: str | None = None):
        self.stack: list[tuple[str, float]] = []  # open phases: (label, start)
        self.phases: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.filters = {type(f) for f in filters}
        self.saved: list[tuple[object, str, object]] = []
        self.progress = progress
        self.t0 = time.time()

    def _sample(self):
        last, snap = 0.0, None
        while not self.done.is_set():
            r = rss_mb(os.getpid())
            with self.lock:
                for name, _ in self.stack:
                    self.phases[name]["peak_rss_mb"] = max(self.phases[name]["peak_rss_mb"], r)
                if self.progress and time.time() - last > 1:  # what a killed run was doing
                    last = time.time()
                    snap = {"in": [name for name, _ in self.stack], "elapsed_s": round(last - self.t0, 1),
                            "rss_mb": round(r, 1), "phases": self.result()}
            if self.progress and last and snap:
                tmp = f"{self.progress}.tmp"
                Path(tmp).write_text(json.dumps(snap))
                os.replace(tmp, self.progress)
                snap = None
            self.done.wait(0.02)

    def wrap(self, name, fn):
        import resource

        def inner(*a, **k):
            label = name(*a, **k) if callable(name) else name
            before, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time()
            entry = (label, t0)
            with self.lock:
                ph = self.phases.setdefault(label, {"seconds": 0.0, "peak_rss_mb": 0.0, "calls": 0})
                self.stack.append(entry)
            try:
                return fn(*a, **k)
            finally:
                after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                with self.lock:
                    self.stack.remove(entry)
                    ph["seconds"] += time.time() - t0
                    ph["calls"] += 1
                    if after > before:  # the process's peak so far was reached inside this phase
                        for lab in {label, *(name for name, _ in self.stack)}:
                            self.phases[lab]["peak_rss_mb"] = max(self.phases[lab]["peak_rss_mb"], after / 1024)
        return inner

    def __enter__(self):
        import importlib

        pending: dict[str, list] = {}
        for mod, attr, label in self.WRAP:
            path, _, cls = mod.partition(".decide.") if mod.endswith(".Arrays") else (mod, "", "")
            path += ".decide" if cls else ""
            if path in sys.modules or path in self.EAGER:
                self._wrap_in(importlib.import_module(path), cls, attr, label)
            else:  # wrapped when the run imports it: importing it here (torch) would add to every step
                pending.setdefault(path, []).append((cls, attr, label))
        self.finder = _AfterImport({k: functools.partial(self._wrap_all, v) for k, v in pending.items()})
        sys.meta_path.insert(0, self.finder)
        for cls in self.filters:
            self.saved.append((cls, "compute", vars(cls).get("compute")))
            cls.compute = self.wrap(lambda f, ctx: f"filter:{f.instance}", cls.compute)
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def _wrap_all(self, todo: list, module) -> None:
        for cls, attr, label in todo:
            self._wrap_in(module, cls, attr, label)

    def _wrap_in(self, module, cls: str, attr: str, label: str) -> None:
        m = getattr(module, cls) if cls else module
        if not hasattr(m, attr):  # renamed or gone in that module: nothing to time there
            return
        self.saved.append((m, attr, vars(m).get(attr)))
        setattr(m, attr, self.wrap(label, getattr(m, attr)))

    def __exit__(self, *exc):
        self.done.set()
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        for obj, attr, fn in reversed(self.saved):
            if fn is None:  # inherited: drop the wrapper set on the class
                delattr(obj, attr)
            else:
                setattr(obj, attr, fn)
        return False

    def result(self) -> dict:
        now = time.time()
        return {k: {"seconds": round(v["seconds"] + sum(now - t for lab, t in self.stack if lab == k), 2),
                    "peak_rss_mb": round(v["peak_rss_mb"], 1),
                    **({"calls": v["calls"]} if v["calls"] > 1 else {})} for k, v in self.phases.items()}


class DaskCluster:
    """A scheduler and ``workers`` worker processes (``--nthreads 1``) over TCP on 127.0.0.1."""

    def __init__(self, folder: Path, workers: int = 2):
        self.folder, self.n, self.procs, self.address = folder, workers, [], None

    def __enter__(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        sfile = self.folder / "scheduler.json"
        sfile.unlink(missing_ok=True)
        dask = str(Path(sys.executable).parent / "dask")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._start([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(sfile)], env, "scheduler")
        t0 = time.time()
        while not (sfile.is_file() and sfile.stat().st_size):
            if time.time() - t0 > 120 or self.procs[0].poll() is not None:
                raise RuntimeError(f"the Dask scheduler did not start (log: {self.folder / 'scheduler.log'})")
            time.sleep(0.5)
        self.address = json.loads(sfile.read_text())["address"]
        for i in range(self.n):
            self._start([dask, "worker", self.address, "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1",
                         "--no-dashboard", "--name", f"w{i}"], env, f"worker{i}")
        from distributed import Client

        with Client(self.address, timeout=120) as c:
            c.wait_for_workers(self.n, timeout=180)
        return self

    def _start(self, cmd, env, name):
        log = open(self.folder / f"{name}.log", "w")
        self.procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def __exit__(self, *exc):
        for p in reversed(self.procs):  # workers first, then the scheduler
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            try:  # a nanny's worker process left behind in the group
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return False


def machine_facts() -> tuple[str, dict]:
    from app.demo import machine

    mem = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return machine(), {"memory_gb": round(mem / 2**20, 1), "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}
