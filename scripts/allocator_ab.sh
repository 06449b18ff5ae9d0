#!/usr/bin/env bash
# Host allocator A/B on CPU (ressfl_jax/host_memory.py): glibc as is, glibc with
# RESSFL_KEEP_FREED_MEMORY=1, and jemalloc (the entry points' default where installed), one
# experiments.benchmark process per arm, arms alternated for ROUNDS rounds; then the pooled
# speed-up of each arm over glibc per step. Usage: bash scripts/allocator_ab.sh [OUT] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/allocator_ab}
ROUNDS=${2:-2}
STEPS=${STEPS:-vanilla,expert,lite,attack_res_normN4C64,attack_conv_normN0C16}
PY=${PY:-.venv/bin/python}
for i in $(seq 1 "$ROUNDS"); do
  for arm in glibc glibc_keep jemalloc; do
    case $arm in
      glibc) env=(RESSFL_JEMALLOC=0 RESSFL_KEEP_FREED_MEMORY=0) ;;
      glibc_keep) env=(RESSFL_JEMALLOC=0 RESSFL_KEEP_FREED_MEMORY=1) ;;
      jemalloc) env=(RESSFL_KEEP_FREED_MEMORY=0) ;;
    esac
    echo "round $i: $arm" >&2
    env "${env[@]}" "$PY" -m experiments.benchmark --steps="$STEPS" --num_clients=1 \
      --repeats=4 --out="$OUT/${arm}_$i" > "$OUT.${arm}_$i.log" 2>&1
  done
done
"$PY" - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
arms = ("glibc", "glibc_keep", "jemalloc")
runs = {a: [json.load(open(f"{out}/{a}_{i}/benchmark.json")) for i in range(1, rounds + 1)]
        for a in arms}
print("allocators:", {a: runs[a][0].get("allocator", "?") for a in arms})
print("| step | " + " | ".join(f"{a}: median s per round" for a in arms)
      + " | glibc_keep speed-up | jemalloc speed-up |")
print("|---|" + "---|" * (len(arms) + 2))
for j, r in enumerate(runs["glibc"][0]["results"]):
    med = {a: [run["results"][j]["median_s"] for run in runs[a]] for a in arms}
    cells = [" / ".join(f"{m:.3f}" for m in med[a]) for a in arms]
    up = [sum(med["glibc"]) / sum(med[a]) for a in arms[1:]]
    print(f"| {r['step']} | " + " | ".join(cells) + " | " + " | ".join(f"{u:.2f}" for u in up)
          + " |")
PY
