"""Where shard jobs run: in this process, in a process pool, or on a Dask cluster. The Prefect flow
brings its own (flows/curate.py). Each yields ``(item, result, error)`` as jobs finish, after retries;
what a failure means is the core's business (pipeline/run.py), not the executor's."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterable, Iterator, Protocol

Outcome = tuple[Any, Any, str | None]


class Executor(Protocol):
    def map(self, fn: Callable, items: Iterable) -> Iterator[Outcome]: ...


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class InProcess:
    def __init__(self, retries: int = 1):
        self.retries = retries

    def map(self, fn, items):
        for item in items:
            for attempt in range(self.retries + 1):
                try:
                    yield item, fn(item), None
                    break
                except Exception as e:  # noqa: BLE001 - reported to the failure policy
                    if attempt == self.retries:
                        yield item, None, _error(e)


def _init_worker(threads: int, torch: bool = True) -> None:
    if not torch:
        return
    import torch

    torch.set_num_threads(threads)


def _retrying(fn, item, retries):
    for attempt in range(retries + 1):
        try:
            return fn(item)
        except Exception:
            if attempt == retries:
                raise


class ProcessPool:
    """One process per worker, each loading the scorer once and getting its share of the cores."""

    def __init__(self, workers: int, retries: int = 1, torch: bool = True):
        self.workers, self.retries, self.torch = workers, retries, torch

    def map(self, fn, items):
        items = list(items)
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        # torch-free jobs in a torch-free process: fork (no interpreter start and imports per worker)
        how = "fork" if not self.torch and "torch" not in sys.modules and os.name == "posix" else "spawn"
        with ProcessPoolExecutor(self.workers, mp_context=mp.get_context(how), initializer=_init_worker,
                                 initargs=(threads, self.torch)) as ex:
            futs = {ex.submit(_retrying, fn, item, self.retries): item for item in items}
            for f in as_completed(futs):
                try:
                    yield futs[f], f.result(), None
                except Exception as e:  # noqa: BLE001 - a dead worker fails its job only
                    yield futs[f], None, _error(e)


class Dask:
    """Jobs on a Dask distributed cluster (``address`` of its scheduler), with Dask's own retries."""

    def __init__(self, address: str, retries: int = 1):
        self.address, self.retries = address, retries

    def map(self, fn, items):
        from distributed import Client, as_completed as done

        with Client(self.address) as client:
            items = list(items)
            futs = client.map(fn, items, retries=self.retries, pure=False)
            where = {f.key: item for f, item in zip(futs, items)}
            for f in done(futs):
                try:
                    yield where[f.key], f.result(), None
                except Exception as e:  # noqa: BLE001
                    yield where[f.key], None, _error(e)


def make(workers: int = 1, dask_address: str | None = None, retries: int = 1, torch: bool = True) -> Executor:
    """``torch=False``: jobs that run no model (metadata-only pools), so workers skip importing torch."""
    if dask_address:
        return Dask(dask_address, retries)
    return ProcessPool(workers, retries, torch) if workers > 1 else InProcess(retries)
