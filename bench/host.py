"""Process settings for training on a small CPU, kept because `make bench` measured each one.

- Threads: one core is left to everything else (the Python loop, the OS, other users), unless
  OMP_NUM_THREADS says otherwise. torch's default takes every core; when another process holds
  one of them, every parallel region waits for a descheduled thread, and on a shared 2-core
  machine an MLP epoch measured 0.77 s in one `make bench` run and 35 s in another. One thread
  is slower on an idle machine (1.24 s) and never collapses.
- Memory: glibc returns every freed block above 128 KiB to the OS, so each step's activations
  and gradients are page-faulted in afresh. Raising the mmap and trim thresholds keeps those blocks
  in the heap for reuse: the caching that the PyTorch CPU tuning guide gets from jemalloc or
  tcmalloc, without a new dependency.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling on 64-bit systems
TRIM_THRESHOLD = 256 << 20


def cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def child_env() -> dict[str, str]:
    """This process's environment for a `python -m bench...` child, with this checkout first on
    PYTHONPATH, so the child imports this very code."""
    here = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (here, os.environ.get("PYTHONPATH")) if p)}


def default_threads() -> int:
    return max(1, cores() - 1)


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of `workers` processes sharing this machine's cores."""
    return max(1, cores() // workers)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse; False where malloc is not glibc's."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def tune(threads: bool = True, malloc: bool = True) -> dict[str, object]:
    """Apply the settings to this process; returns what it runs with, for provenance."""
    if threads and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(default_threads())
    return {"threads": torch.get_num_threads(), "malloc_keep": malloc and keep_freed_memory()}
