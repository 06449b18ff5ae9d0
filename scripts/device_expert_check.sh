#!/usr/bin/env bash
# Follow-up GPU check, sized for the ~5 minutes of device time left after scripts/device_check.sh
# (run(command="bash scripts/device_expert_check.sh", carry=[".carry"], timeout_s=270)).
# The first check showed, on an H100, that the cpu preset's expert holds its OWN co-trained
# attacker at SSIM ~tau (0.5) while a FRESH res_normN4C64 attacker inverts epochs 1-5 as well as
# it inverts the vanilla model. This asks two questions in one call:
#   * does a fresh attacker still succeed after 10 and 20 epochs (length)?
#   * does it with the penalty's decoder BatchNorm in batch mode (penalty_bn=batch), which keeps
#     the client from lowering the co-trained decoder's SSIM by shifting its feature statistics
#     away from the decoder's running statistics (the reference's eval mode allows that)?
# Two experts train side by side (penalty_bn eval, the reference's; and batch), epochs 10 and 20
# kept, then a fresh res_normN4C64 attacks epochs 10 and 20 of each, side by side. Every stage
# ends by the deadline (TOTAL seconds). DEVICE_CHECK_SMOKE=1: the smoke presets (a CPU test).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device_expert_check}
# shellcheck source=scripts/device_common.sh
source scripts/device_common.sh
if [ "${DEVICE_CHECK_SMOKE:-0}" = 1 ]; then
  PRE="--config=experiments/configs/pretrain.py:smoke"
  ATK="--config=experiments/configs/attack.py:smoke"
  EPOCHS=2 STEPS="1,2" TOTAL=${DEVICE_CHECK_SECONDS:-600} T_TRAIN=300
else
  PRE="--config=experiments/configs/pretrain.py:cpu --config.data.data_dir=.carry/fashion-mnist"
  PRE="$PRE --config.data.dataset_portion=1.0 --config.attacker.pretrain_epochs=5"
  ATK="--config=experiments/configs/attack.py:cpu --config.decoders=res_normN4C64"
  ATK="$ATK --config.optimization.steps=0 --config.aux_max=0 --config.epochs=20"
  EPOCHS=20 STEPS="10,20" TOTAL=${DEVICE_CHECK_SECONDS:-235} T_TRAIN=160
fi
PRE="$PRE --config.run.num_epochs=$EPOCHS --config.optim.milestones=($EPOCHS,)"
PRE="$PRE --config.run.keep_epochs=($STEPS)"
set_deadline "$TOTAL"

export XLA_PYTHON_CLIENT_MEM_FRACTION=0.4
T=$(limit $T_TRAIN 80)
for bn in eval batch; do
  # shellcheck disable=SC2086  # The option strings are meant to split.
  stage "expert_$bn" "$T" $PY -m experiments.pretrain $PRE --config.attacker.penalty_bn=$bn \
    --workdir="$OUT/expert_$bn" &
done
wait
T=$(limit 300 6)
for bn in eval batch; do
  # shellcheck disable=SC2086
  stage "attack_$bn" "$T" $PY -m experiments.attack $ATK --config.which=last \
    --config.step="$STEPS" --config.checkpoint="$OUT/expert_$bn" --workdir="$OUT/attack_$bn" &
done
wait
for bn in eval batch; do
  echo "== expert penalty_bn=$bn: test accuracy per epoch; co-trained attacker; fresh attack"
  tr '\r' '\n' < "$OUT/expert_$bn.log" | grep -o "epoch [0-9]*: test accuracy [0-9.]*" \
    | sed 's/test accuracy //' | tr '\n' ';'
  echo
  $PY - "$OUT/expert_$bn/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r for r in rows if "train/inversion_ssim" in r]
for r in rows[:: max(1, len(rows) // 8)] + rows[-1:]:
    print("  step %d epoch %s: co-trained attacker ssim %.3f mse %.4f, ce %.3f" % (
        r["step"], r.get("epoch"), r["train/inversion_ssim"], r["train/inversion_mse"],
        r["train/ce_loss"]))
EOF
  for f in "$OUT/attack_$bn"/steps/*.json; do
    [ -f "$f" ] && $PY -c "import json, sys; r = json.load(open(sys.argv[1])); w = r['worst_case']
print('  fresh attack', sys.argv[1].split('/')[-1], 'acc %.4f mse %.4f ssim %.3f psnr %.2f' % (
    r['accuracy'], w['mse'], w['ssim'], w['psnr']))" "$f"
  done
done
(cd "$OUT" && find . \( -name '*.log' -o -name '*.json' -o -name '*.jsonl' -o -name '*.png' \) \
  -print0 | tar -czf ../device_expert_check.tgz --null -T -)
find "$OUT" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
mv "$OUT/../device_expert_check.tgz" "$OUT/results.tgz"
