# Sourced by the device-machine scripts (device_check.sh, device_expert_check.sh), after they
# set OUT: installs the carried wheels, sets PY, and defines the deadline-bound stages.
#   set_deadline SECONDS      every later stage ends by then
#   limit WANTED RESERVE      WANTED seconds, cut so that RESERVE stay before the deadline
#   stage NAME SECONDS CMD... runs CMD with a time limit, logs to $OUT/NAME.log (its last
#                             $STAGE_TAIL lines are echoed; default none)
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
