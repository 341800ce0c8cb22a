"""Process helpers shared by the supervisor and the worker processes (Linux)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal

PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# glibc malloc for worker processes (mallopt(3) M_MMAP_THRESHOLD / M_TRIM_THRESHOLD, read
# from the environment when a process starts). A CT job allocates arrays of 35-140 MB many
# times over (scores, label maps, masks, component maps); by default each is a fresh mmap
# whose pages fault in again on every use (with numpy's transparent huge page advice, up to
# 0.6 s per 100 MB on a virtual machine). From the heap, freed pages are kept mapped and
# reused: on a 2-core VM a CT job alone went from 6.7 to 4.1 s (ct_body_seg) and from 12.4
# to 9.6 s (ct_lesion_unet), one run each. Freed memory up to the trim threshold stays with
# the process, which keeps its models loaded anyway. M_TOP_PAD: when more than that is free
# at the top of the heap, glibc gives back all of it but the pad (128 kB by default), and the
# next job's arrays fault in afresh: with 2 workers (bench/e2e.py --pipelines both, 3 rounds
# per run), ct_lesion_unet's pre-processing took 1.3-1.4 s instead of 0.04-0.06 s in 2 of 5
# runs on one day; with the pad at 1 GiB, 0.12-0.17 s in each of 3 runs.
WORKER_ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(1 << 30),
}


def worker_allocator_env() -> None:
    """Put :data:`WORKER_ALLOCATOR_ENV` in this process's environment, where processes
    started from now on (the spawned workers) inherit it; values an operator set win."""
    for name, value in WORKER_ALLOCATOR_ENV.items():
        os.environ.setdefault(name, value)


def exempt_from_collection() -> None:
    """Move everything a worker process holds once it has started (torch, MONAI, highdicom,
    pydicom, their tables: some 650,000 objects) out of the cyclic garbage collector's reach
    (:func:`gc.freeze`). Each full collection went over all of them, and a series load makes
    enough objects to set one off: in a worker process's second job one took 0.3 s of the
    CT's 0.45 s load. What the process makes later (each job's objects) is still collected.
    The receiver gained nothing measurable from the same (402 instances, one sender)."""
    gc.collect()
    gc.freeze()
