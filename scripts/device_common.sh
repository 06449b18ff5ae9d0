# Sourced by the device-machine scripts (device_check.sh, device_expert_check.sh), after they
# set OUT: installs the carried wheels, sets PY, and defines the deadline-bound stages.
#   set_deadline SECONDS      every later stage ends by then
#   limit WANTED RESERVE      WANTED seconds, cut so that RESERVE stay before the deadline
#   stage NAME SECONDS CMD... runs CMD with a time limit, logs to $OUT/NAME.log (its last
#                             $STAGE_TAIL lines are echoed; default none)
#   print_attacks DIR [PREFIX] one line per attacked checkpoint of experiments.attack's DIR
#   pack_results [KEEP...]    the logs, JSON, tables and PNG grids under $OUT (not the
#                             checkpoints) into $OUT/results.tgz; all else but KEEP removed
#                             (at most 8 files come back from the device tool)
mkdir -p "$OUT"
if [ -d .carry/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .carry/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

set_deadline() {
  DEADLINE=$((SECONDS + $1))
}

limit() {
  local left=$((DEADLINE - SECONDS - $2))
  echo $(( $1 < left ? $1 : (left > 1 ? left : 1) ))
}

stage() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - start)) s"
  if [ "${STAGE_TAIL:-0}" -gt 0 ]; then tail -n "$STAGE_TAIL" "$OUT/$name.log"; fi
}

print_attacks() {
  local f
  for f in "$1"/steps/*.json; do
    [ -f "$f" ] && $PY -c "import json, sys; r = json.load(open(sys.argv[1])); w = r['worst_case']
print(sys.argv[2] + sys.argv[1].split('/')[-1], 'acc %.4f mse %.4f ssim %.3f psnr %.2f (%.0f s)'
      % (r['accuracy'], w['mse'], w['ssim'], w['psnr'], r['seconds']))" "$f" "${2:-}"
  done
}

pack_results() {
  local keep=() name
  for name in "$@"; do keep+=(! -name "$name"); done
  (cd "$OUT" && find . \( -name '*.log' -o -name '*.json' -o -name '*.jsonl' -o -name '*.md' \
    -o -name '*.png' \) -print0 | tar -czf ../results_$$.tgz --null -T -)
  find "$OUT" -mindepth 1 -maxdepth 1 "${keep[@]}" -exec rm -rf {} +
  mv "$OUT/../results_$$.tgz" "$OUT/results.tgz"
}
