"""Keeps XLA-CPU's per-call scratch memory mapped between calls (glibc ``mallopt``).

XLA-CPU allocates each execution's temporary buffers (about 1.2 GB for the expert's
attacker-aware round at batch 128, 0.7 GB for a vanilla round) with ``malloc`` and frees them
when the call ends. glibc serves allocations this large with a fresh ``mmap`` and returns them
with ``munmap``, so every call page-faults its whole scratch space back in and the kernel
zeroes it: measured on the 2-core dev VM (2026-11-26), 270k minor faults and 0.64 s of system
time per expert round (1.76 s), 140k faults and 0.23 s per vanilla round (0.94 s).

With ``RESSFL_KEEP_FREED_MEMORY=1`` in the environment, ``keep_freed_memory()`` sets three
glibc malloc options so that freed memory stays in the process and is reused by the next call:
one arena (``M_ARENA_MAX=1``: XLA's worker threads share the main heap instead of thread
arenas, whose heaps glibc unmaps when they empty), no ``mmap`` for large blocks
(``M_MMAP_MAX=0``) and no trimming of the heap's free top (``M_TRIM_THRESHOLD`` 2 GB). Then
usually 0 faults per call, but not always: in one of three ``experiments.benchmark``
processes (vanilla then expert) the expert's calls still faulted 126,570 times (vanilla's 0).
**Off by default, because it is a trade-off** (BENCHMARKS.md, "Host memory";
`experiments.benchmark`, two alternating processes per setting, dev VM): vanilla round 1.16x
and expert round 1.21x faster, the lite cycle 1.06x, but the attack's small decoder steps
slower (res_normN4C64 0.89x, conv_normN0C16 0.66x), most likely the single arena's lock,
which XLA's threads now share for their many small allocations. Other arena counts (2, 4, 8)
were faster on some runs and not on others: which thread's arena serves the big block varies.
The process also keeps its peak host memory instead of returning it between calls.

It must run before JAX starts its CPU client (the first computation), so that XLA's threads
get no arenas of their own: the experiments' entry points and the benchmark call it first
thing. It does nothing (returns False) unless the switch is set and the C library is glibc.
"""

import ctypes
import os
import platform

# glibc's malloc.h parameter numbers.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD_BYTES = 2 ** 31 - 1  # mallopt takes an int: 2 GB, the largest it accepts.

ENV_SWITCH = "RESSFL_KEEP_FREED_MEMORY"
_applied = None


def supported() -> bool:
    """True on Linux with glibc, where ``mallopt`` takes these options."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Applies the malloc options once per process if switched on; True if in effect."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get(ENV_SWITCH, "0") != "1" or not supported():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    results = [libc.mallopt(M_ARENA_MAX, 1), libc.mallopt(M_MMAP_MAX, 0),
               libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)]
    return all(r == 1 for r in results)  # mallopt returns 1 on success
