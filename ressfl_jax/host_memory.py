"""Keeps XLA-CPU's per-call scratch memory in the process between calls.

XLA-CPU allocates each execution's temporary buffers (about 1.2 GB for the expert's
attacker-aware round at batch 128, 0.7 GB for a vanilla round) with ``malloc`` and frees them
when the call ends. glibc serves allocations this large with a fresh ``mmap`` and returns them
with ``munmap``, so every call page-faults its whole scratch space back in and the kernel
zeroes it: measured on the 2-core dev VM (2026-11-26), 270k minor faults and 0.64 s of system
time per expert round (1.76 s), 140k faults and 0.23 s per vanilla round (0.94 s).

Two remedies; BENCHMARKS.md, "Host memory", has the alternating A/B of both:

**jemalloc, on by default where installed** (``use_jemalloc``; Debian/Ubuntu package
``libjemalloc2``, which ``scripts/setup.sh`` installs). The entry points
(``python -m experiments.*``) re-execute themselves once, before any work, with jemalloc in
``LD_PRELOAD``, one arena and its page decay off (``JEMALLOC_CONF``: freed pages stay mapped
and are reused by the next call). Dev VM, ``scripts/allocator_ab.sh`` and an earlier ad hoc run of
the same loop: vanilla round 1.14-1.16x, expert round 1.15x, lite cycle 1.01-1.04x, the
attack's decoder steps 1.07-1.12x (res_normN4C64) and 0.90-1.07x (conv_normN0C16, a 0.09 s
call that moves +-20% between processes) as fast as on glibc, with ~0 faults per call.
PyTorch gains as much from it, so ``experiments.benchmark`` lets the reference's process
inherit it.
``RESSFL_JEMALLOC=0`` opts out; an allocator the user already preloads, or a ``MALLOC_CONF``
already set, is left as it is. The process keeps its peak host memory instead of returning it
between calls.

**glibc options, opt-in** (``keep_freed_memory``, ``RESSFL_KEEP_FREED_MEMORY=1``; for machines
without jemalloc): one arena (``M_ARENA_MAX=1``: XLA's worker threads share the main heap
instead of thread arenas, whose heaps glibc unmaps when they empty), no ``mmap`` for large
blocks (``M_MMAP_MAX=0``) and no trimming of the heap's free top (``M_TRIM_THRESHOLD`` 2 GB).
Usually 0 faults per call, but not always (in one of three benchmark processes the expert's
calls still faulted 126,570 times), and the attack's small decoder steps get slower (0.89x /
0.66x), most likely the single arena's lock, which XLA's threads then share. It must run
before JAX starts its CPU client (the first computation), so that XLA's threads get no arenas
of their own: the experiments' entry points and the benchmark call it first thing. It does
nothing (returns False) unless the switch is set, the C library is glibc and jemalloc is not
loaded.
"""

import ctypes
import os
import platform
import sys

# glibc's malloc.h parameter numbers.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD_BYTES = 2 ** 31 - 1  # mallopt takes an int: 2 GB, the largest it accepts.

ENV_SWITCH = "RESSFL_KEEP_FREED_MEMORY"
_applied = None

ENV_JEMALLOC = "RESSFL_JEMALLOC"  # "0": never re-execute with jemalloc.
# Set in the re-executed process, so that a preload that did not take cannot loop.
ENV_REEXECUTED = "RESSFL_JEMALLOC_REEXECUTED"
# One arena (threads keep their own small-object caches): XLA runs a call on whichever worker
# thread is free, and with an arena per thread a call that landed on a thread new to it
# faulted its whole scratch in again (135k-274k faults, 1.3-2.9 s of system time in some
# calls), and every arena kept its own copy of the peak: one arena, 3.35 vs 5.26-5.50 GB peak
# RSS, 0 faults, same speed (``ARMS="jemalloc_arenas jemalloc" scripts/allocator_ab.sh``).
# Freed pages stay mapped (no decay to dirty/muzzy purging, virtual memory retained) and large
# blocks come from the arena like small ones.
JEMALLOC_CONF = ("narenas:1,dirty_decay_ms:-1,muzzy_decay_ms:-1,oversize_threshold:0,"
                 "retain:true")
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2",
                  "/usr/local/lib/libjemalloc.so.2")


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
    if os.environ.get(ENV_SWITCH, "0") != "1" or not supported() or jemalloc_loaded():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    results = [libc.mallopt(M_ARENA_MAX, 1), libc.mallopt(M_MMAP_MAX, 0),
               libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)]
    return all(r == 1 for r in results)  # mallopt returns 1 on success


def jemalloc_path() -> str | None:
    """The first installed jemalloc shared library of ``JEMALLOC_PATHS``, else None."""
    return next((p for p in JEMALLOC_PATHS if os.path.exists(p)), None)


def jemalloc_loaded() -> bool:
    """True if jemalloc is mapped into this process (e.g. through ``LD_PRELOAD``)."""
    try:
        with open("/proc/self/maps") as f:
            return "libjemalloc" in f.read()
    except OSError:
        return False


def allocator() -> str:
    """The host allocator in effect: ``jemalloc``, ``glibc+keep_freed_memory`` (the switch was
    applied by ``keep_freed_memory``) or ``default``. Applies nothing itself."""
    if jemalloc_loaded():
        return "jemalloc"
    return "glibc+keep_freed_memory" if _applied else "default"


def jemalloc_environment(environ: dict[str, str], path: str) -> dict[str, str]:
    """``environ`` with ``path`` first in ``LD_PRELOAD`` and ``JEMALLOC_CONF`` as
    ``MALLOC_CONF`` (unless one is set), marked as re-executed."""
    env = dict(environ)
    env["LD_PRELOAD"] = ":".join(p for p in (path, environ.get("LD_PRELOAD")) if p)
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    env[ENV_REEXECUTED] = "1"
    return env


def use_jemalloc() -> None:
    """Re-executes this process with jemalloc preloaded (see the module docstring), once.

    Call it first thing in a ``__main__`` block (never from library code or a test: the
    process is replaced). Does nothing if ``RESSFL_JEMALLOC=0``, not on Linux, jemalloc is not
    installed, already loaded, or this process is the re-executed one.
    """
    if (os.environ.get(ENV_JEMALLOC, "1") == "0" or os.environ.get(ENV_REEXECUTED)
            or platform.system() != "Linux" or jemalloc_loaded()):
        return
    path = jemalloc_path()
    if path is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
              jemalloc_environment(dict(os.environ), path))
