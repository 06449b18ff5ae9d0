#!/usr/bin/env bash
# Host allocator A/B on CPU (ressfl_jax/host_memory.py): glibc as is, glibc with
# RESSFL_KEEP_FREED_MEMORY=1, jemalloc (the entry points' default where installed: one arena)
# and jemalloc with its own default of several arenas, one experiments.benchmark process per
# arm, arms alternated for ROUNDS rounds; then the pooled speed-up of each arm over the first
# arm per step, and each process's peak RSS.
# Usage: [ARMS="jemalloc_arenas jemalloc"] bash scripts/allocator_ab.sh [OUT] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/allocator_ab}
ROUNDS=${2:-2}
STEPS=${STEPS:-vanilla,expert,lite,attack_res_normN4C64,attack_conv_normN0C16}
PY=${PY:-.venv/bin/python}
ARMS=${ARMS:-glibc glibc_keep jemalloc_arenas jemalloc}
CONF=$("$PY" -c "from ressfl_jax.host_memory import JEMALLOC_CONF; print(JEMALLOC_CONF)")
for i in $(seq 1 "$ROUNDS"); do
  for arm in $ARMS; do
    case $arm in
      glibc) env=(RESSFL_JEMALLOC=0 RESSFL_KEEP_FREED_MEMORY=0) ;;
      glibc_keep) env=(RESSFL_JEMALLOC=0 RESSFL_KEEP_FREED_MEMORY=1) ;;
      jemalloc) env=(RESSFL_KEEP_FREED_MEMORY=0) ;;
      jemalloc_arenas) env=(RESSFL_KEEP_FREED_MEMORY=0 "MALLOC_CONF=${CONF#narenas:1,}") ;;
      *) echo "unknown arm $arm; choose from glibc glibc_keep jemalloc_arenas jemalloc" >&2
         exit 2 ;;
    esac
    echo "round $i: $arm" >&2
    env "${env[@]}" "$PY" -m experiments.benchmark --steps="$STEPS" --num_clients=1 \
      --repeats=4 --out="$OUT/${arm}_$i" > "$OUT.${arm}_$i.log" 2>&1
  done
done
"$PY" - "$OUT" "$ROUNDS" $ARMS <<'PY'
import json, sys
out, rounds, arms = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
runs = {a: [json.load(open(f"{out}/{a}_{i}/benchmark.json")) for i in range(1, rounds + 1)]
        for a in arms}
print("allocators:", {a: runs[a][0].get("allocator", "?") for a in arms})
print("peak RSS MB:", {a: [round(r.get("host_peak_rss_mb") or 0) for r in runs[a]]
                       for a in arms})
print("| step | " + " | ".join(f"{a}: median s per round" for a in arms) + " | "
      + " | ".join(f"{a} speed-up" for a in arms[1:]) + " |")
print("|---|" + "---|" * (2 * len(arms) - 1))
for j, r in enumerate(runs[arms[0]][0]["results"]):
    med = {a: [run["results"][j]["median_s"] for run in runs[a]] for a in arms}
    cells = [" / ".join(f"{m:.3f}" for m in med[a]) for a in arms]
    up = [sum(med[arms[0]]) / sum(med[a]) for a in arms[1:]]
    print(f"| {r['step']} | " + " | ".join(cells) + " | " + " | ".join(f"{u:.2f}" for u in up)
          + " |")
PY
