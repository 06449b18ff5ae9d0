"""Where a jitted call spends its time: per-op totals from a ``jax.profiler`` trace.

  rows, wall_s = profile_calls(compiled, args, calls=3, trace_dir="runs/prof/expert")
  print(markdown(rows, calls=3, wall_s=wall_s))

``profile_calls`` runs ``calls`` calls of ``compiled(*args)`` (``args[0]`` is the donated state,
threaded through as in ``experiments.benchmark``) inside ``jax.profiler.trace`` and sums the
trace's complete events ("X" events with a duration) per op name. On an accelerator only the
device's processes are counted (kernels, by HLO/kernel name); on CPU, where XLA's thunks and
fusions run on host threads, every host event but the Python tracer's (``$file:line ...``) and
the runtime's own wrappers (C++ names with ``::``, e.g. ``ThunkExecutor::Execute``) is. Ops
that overlap (several GPU streams, CPU thunks inside a parent event) are each counted in full,
so the totals can exceed the wall time.
"""

import collections
import glob
import gzip
import json
import os
import time

import jax

_DEVICE_MARKERS = ("/device:GPU", "/device:TPU", "GPU:", "TPU:")


def op_times(trace_dir: str) -> list[dict]:
    """Sums the durations of the trace's events per name; rows sorted by total time, largest first.

    Each row: ``name``, ``total_ms``, ``count``, ``process`` (the trace process it ran in).
    Raises FileNotFoundError (naming ``trace_dir``) when no ``*.trace.json.gz`` is there.
    """
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir!r}: was the trace written "
                                "(jax.profiler.trace(..., create_perfetto_trace=True))?")
    with gzip.open(files[-1], "rt") as f:
        events = json.load(f)["traceEvents"]
    processes = {e["pid"]: e.get("args", {}).get("name", "")
                 for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, name in processes.items()
                   if any(marker in name for marker in _DEVICE_MARKERS)}
    totals = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        name = e.get("name", "?")
        if device_pids and e.get("pid") not in device_pids:
            continue
        if not device_pids and (name.startswith("$") or "::" in name):
            continue  # CPU: the Python tracer's frames and the runtime's wrappers
        key = (name, processes.get(e.get("pid"), str(e.get("pid"))))
        totals[key][0] += float(e["dur"]) / 1e3  # trace durations are in microseconds
        totals[key][1] += 1
    rows = [{"name": name, "process": process, "total_ms": total, "count": count}
            for (name, process), (total, count) in totals.items()]
    return sorted(rows, key=lambda r: -r["total_ms"])


def profile_calls(compiled, args, *, calls: int, trace_dir: str):
    """Traces ``calls`` calls of ``compiled``; returns (op rows, wall seconds, new args)."""
    os.makedirs(trace_dir, exist_ok=True)
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(calls):
            args = (jax.block_until_ready(compiled(*args)),) + tuple(args[1:])
    wall_s = time.perf_counter() - start
    return op_times(trace_dir), wall_s, args


def markdown(rows: list[dict], *, calls: int, wall_s: float, top: int = 15) -> str:
    """The ``top`` ops as a Markdown table, in milliseconds per call."""
    counted = sum(r["total_ms"] for r in rows)
    lines = [f"{calls} traced calls, {1e3 * wall_s / calls:.2f} ms wall per call (tracing on); "
             f"summed op time {counted / calls:.2f} ms per call over {len(rows)} op names",
             "", "| op | ms per call | % of summed | events per call | process |",
             "|---|---|---|---|---|"]
    for r in rows[:top]:
        lines.append(f"| `{r['name'][:90]}` | {r['total_ms'] / calls:.3f} | "
                     f"{100 * r['total_ms'] / max(counted, 1e-12):.1f} | "
                     f"{r['count'] / calls:.1f} | {r['process'][:40]} |")
    return "\n".join(lines)
