"""Peak memory of a command and all its children, sampled with psutil (RSS summed over the process tree)."""

from __future__ import annotations

import subprocess
import threading
import time

import psutil


def run_measured(cmd: list[str], interval: float = 0.02, **kwargs) -> tuple[float, float, int]:
    """Run ``cmd``; return (wall seconds, peak summed RSS in MB, exit status)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, **kwargs)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    status = proc.wait()
    done.set()
    thread.join()
    return time.perf_counter() - start, peak / 2**20, status
