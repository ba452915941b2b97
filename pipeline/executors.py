"""Where shard jobs run: in this process, in a process pool, or on a Dask cluster. The Prefect flow
brings its own (flows/curate.py). Each yields ``(item, result, error)`` as jobs finish, after retries;
what a failure means is the core's business (pipeline/run.py), not the executor's.

Only transient errors are retried (``transient``): I/O errors, a lost worker, a timeout. A deterministic
error (bad data, a bug: ValueError, TypeError, KeyError, ...) would fail the same way again, so its job
fails at once.

Several GPUs: a pool's workers are spread over the devices (``devices``: CUDA_VISIBLE_DEVICES entries;
default: every GPU visible when there are two or more, or ``CURATE_DEVICES=0,1,...``), each worker
seeing one (set before its first CUDA call), so shards spread across them as workers free up."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterable, Iterator, Protocol

Outcome = tuple[Any, Any, str | None]


class Executor(Protocol):
    def map(self, fn: Callable, items: Iterable) -> Iterator[Outcome]: ...


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


# Dask's errors for a worker that died or went away (matched by name: distributed need not be installed)
LOST_WORKER = {"KilledWorker", "CommClosedError"}


def transient(e: BaseException) -> bool:
    """Worth another try: an I/O error (OSError, TimeoutError among them), a lost worker (a broken
    process pool, Dask's lost-worker errors). Anything else is deterministic and fails at once."""
    return isinstance(e, (OSError, TimeoutError, BrokenExecutor)) or type(e).__name__ in LOST_WORKER


def _retrying(fn, item, retries):
    """``fn(item)``, tried again up to ``retries`` times while it fails with a transient error."""
    for attempt in range(retries + 1):
        try:
            return fn(item)
        except Exception as e:
            if attempt == retries or not transient(e):
                raise


class InProcess:
    def __init__(self, retries: int = 1):
        self.retries = retries

    def map(self, fn, items):
        for item in items:
            try:
                result, error = _retrying(fn, item, self.retries), None
            except Exception as e:  # noqa: BLE001 - reported to the failure policy
                result, error = None, _error(e)
            yield item, result, error


def _init_worker(threads: int, torch: bool = True, slots=None) -> None:
    if slots is not None:  # this worker's GPU: one slot each, taken once at start
        os.environ["CUDA_VISIBLE_DEVICES"] = slots.get()
    if not torch:
        return
    import torch

    torch.set_num_threads(threads)


# imported once in the fork server, then inherited by every worker it forks: open_clip pulls in torch and
# torchvision's models (~4 s of CPU a process; 16 spawned workers importing at once took 19 s each on a
# 16-core GPU machine). clip_stage goes first: its torchvision shim must run before open_clip's import.
PRELOAD = ["pipeline.clip_stage", "open_clip", "pipeline.run"]


def _context(torch: bool):
    """fork for torch-free jobs from a torch-free process (no start-up cost); otherwise a fork server
    that imported torch and open_clip once (never fork a process whose torch may hold threads)."""
    if os.name != "posix":
        return mp.get_context("spawn")
    if not torch and "torch" not in sys.modules:
        return mp.get_context("fork")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD if torch else [])  # no effect once this process's server runs
    try:
        from multiprocessing import forkserver

        forkserver.ensure_running()  # a Unix socket in a temporary folder: some sandboxes refuse it
    except OSError:
        return mp.get_context("spawn")
    return ctx


def device_slots(workers: int, devices: list[str]) -> list[str]:
    """The device each of ``workers`` workers gets: round robin, so no device has two more than another."""
    return [devices[i % len(devices)] for i in range(workers)] if devices else []


def visible_gpus() -> list[str]:
    """``CURATE_DEVICES`` (comma list), else CUDA_VISIBLE_DEVICES's entries, else the machine's NVIDIA
    devices (/dev/nvidiaN); asks no GPU library, so the caller need not import torch."""
    for name in ("CURATE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        if name in os.environ:
            return [d.strip() for d in os.environ[name].split(",") if d.strip() and d.strip() != "-1"]
    import glob
    import re

    return sorted((m.group(1) for p in glob.glob("/dev/nvidia*") if (m := re.fullmatch(r"/dev/nvidia(\d+)", p))),
                  key=int)


class ProcessPool:
    """One process per worker, each loading the scorer once and getting its share of the cores (and,
    with ``devices``, one device of them). A job retries its transient errors in its worker; jobs lost
    with a dead worker (the pool breaks) run again in a fresh pool, up to ``retries`` times."""

    def __init__(self, workers: int, retries: int = 1, torch: bool = True, devices: list[str] | None = None):
        self.workers, self.retries, self.torch, self.devices = workers, retries, torch, devices or []

    def map(self, fn, items):
        todo = list(items)
        for attempt in range(self.retries + 1):
            lost = []
            for item, result, error in self._round(fn, todo):
                if isinstance(error, BrokenExecutor) and attempt < self.retries:
                    lost.append(item)
                else:
                    yield item, result, None if error is None else _error(error)
            if not lost:
                return
            todo = lost

    def _round(self, fn, items):
        """One pool over ``items``: ``(item, result, exception or None)`` as jobs finish."""
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        ctx = _context(self.torch)
        slots = None
        if self.devices:
            slots = ctx.Queue()
            for d in device_slots(self.workers, self.devices):
                slots.put(d)
        try:
            with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(threads, self.torch, slots)) as ex:
                futs = {ex.submit(_retrying, fn, item, self.retries): item for item in items}
                for f in as_completed(futs):
                    try:
                        yield futs[f], f.result(), None
                    except Exception as e:  # noqa: BLE001 - the job's error, or the pool broken by a dead worker
                        yield futs[f], None, e
        finally:
            if ctx.get_start_method() == "forkserver":
                _stop_fork_server()


def _stop_fork_server() -> None:
    """End the fork server with the pool: its memory (torch imported) is freed for what follows, the
    workers' CPU time reaches this process's rusage as a spawned pool's would, and the next pool's server
    starts with the caller's environment of that moment."""
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)  # CPython's own (used by its tests), 3.8+
    if stop is not None:
        stop()


class Dask:
    """Jobs on a Dask distributed cluster (``address`` of its scheduler). Each job retries its transient
    errors on its worker; Dask itself reschedules the jobs of a worker that died."""

    def __init__(self, address: str, retries: int = 1):
        self.address, self.retries = address, retries

    def map(self, fn, items):
        from distributed import Client, as_completed as done

        with Client(self.address) as client:
            items = list(items)
            n = len(items)
            futs = client.map(_retrying, [fn] * n, items, [self.retries] * n, pure=False)
            where = {f.key: item for f, item in zip(futs, items)}
            for f in done(futs):
                try:
                    yield where[f.key], f.result(), None
                except Exception as e:  # noqa: BLE001
                    yield where[f.key], None, _error(e)


def make(workers: int = 1, dask_address: str | None = None, retries: int = 1, torch: bool = True,
         devices: list[str] | None = None) -> Executor:
    """``torch=False``: jobs that run no model (metadata-only pools), so workers skip importing torch.
    ``devices``: GPUs to spread a pool's workers over (default ``visible_gpus()`` when two or more)."""
    if dask_address:
        return Dask(dask_address, retries)
    if workers <= 1:
        return InProcess(retries)
    if devices is None and torch:
        devices = visible_gpus()
    return ProcessPool(workers, retries, torch, devices if devices and len(devices) > 1 else None)
