"""One run per output folder: an exclusive lock file, so two runs never write the same output.

``flock`` holds between processes on one machine (and on most shared filesystems that support it);
the lock is released by the kernel when its holder dies, so a SIGKILLed run never leaves it stuck.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path


class OutputLocked(RuntimeError):
    pass


@contextmanager
def exclusive(out: str | Path):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / ".curate.lock", "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise OutputLocked(f"{out} is being written by another run ({f.read().strip() or 'unknown holder'}); "
                               "wait for it to finish or give another output folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        yield
    finally:
        f.close()  # closing releases the lock
