#!/usr/bin/env bash
# The size/backbone/data sweep behind docs/model.md, run in parallel on one CUDA GPU from a data pack.
#
#   python -m models.train --pack-only PACK                  # on a machine with ../shared/datasets
#   bash models/sweep.sh PACK LITE0_WEIGHTS OUT_DIR [MINUTES] [SET] # on the GPU machine (torch, torchvision, cv2)
#
# SET "size" (default) compares input sizes and backbones; "small" compares ways to see far potholes
# (a dozen pixels tall in a 640x394 survey frame): upscaled inputs, a stride-4 level, a wider pyramid,
# and a second seed of the shipped recipe to show the run-to-run spread.
#
# Each run trains for MINUTES of step time (default 5) and writes OUT_DIR/<run>.pt (its best EMA weights,
# fp16) and OUT_DIR/logs.tgz (logs and histories). A 5-step smoke run goes first, so a broken setup fails
# in seconds rather than after the sweep.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
pack=$1 weights=$2 out=$3 minutes=${4:-5} set=${5:-size}
export PYTHONUNBUFFERED=1
common=(--pack "$pack" --pretrained "$weights" --device cuda --batch 32 --fresh --ckpt-every 1e9)
mkdir -p "$out" models/runs

python3 -m models.train "${common[@]}" --run smoke --iters 5 --workers 1 --shape 320x192 --eval-every 1e9 \
  > models/runs/smoke.log 2>&1 || { tail -40 models/runs/smoke.log; exit 1; }
echo "smoke run passed"

declare -A runs
if [ "$set" = small ]; then runs=(
  [lite0-640-seed1]="--backbone lite0 --shape 640x384 --lr 1.5e-3 --synth-weight 0.15 --seed 1"
  [lite0-640-s4]="--backbone lite0 --shape 640x384 --lr 1.5e-3 --synth-weight 0.15 --stride4"
  [lite0-640-w128]="--backbone lite0 --shape 640x384 --lr 1.5e-3 --synth-weight 0.15 --width 128"
  [lite0-800]="--backbone lite0 --shape 800x480 --lr 1.5e-3 --synth-weight 0.15"
  [lite0-960]="--backbone lite0 --shape 960x576 --lr 1.5e-3 --synth-weight 0.15"
  [lite0-800-s4]="--backbone lite0 --shape 800x480 --lr 1.5e-3 --synth-weight 0.15 --stride4"
)
else runs=(
  [lite0-640]="--backbone lite0 --shape 640x384 --lr 1.5e-3 --synth-weight 0"
  [lite0-512]="--backbone lite0 --shape 512x320 --lr 1.5e-3 --synth-weight 0"
  [lite0-416]="--backbone lite0 --shape 416x256 --lr 1.5e-3 --synth-weight 0"
  [lite0-320]="--backbone lite0 --shape 320x192 --lr 1.5e-3 --synth-weight 0"
  [scratch-640]="--backbone scratch --width 64 --shape 640x384 --lr 2e-3 --synth-weight 0"
  [lite0-640-synth]="--backbone lite0 --shape 640x384 --lr 1.5e-3 --synth-weight 0.15"
)
fi
budget_s=$(python3 -c "print(int($minutes * 60 + 150))")  # step time + validations + start-up
for name in "${!runs[@]}"; do
  # shellcheck disable=SC2086  # the options are words
  timeout "$budget_s" python3 -m models.train "${common[@]}" --run "$name" ${runs[$name]} --workers 4 \
    --minutes "$minutes" --eval-every 45 > "models/runs/$name.log" 2>&1 &
done
wait
for name in "${!runs[@]}"; do
  [ -f "models/runs/$name/best.pt" ] && cp "models/runs/$name/best.pt" "$out/$name.pt"
  grep "val step" "models/runs/$name.log" | tail -1 | sed "s/^/$name: /"
done
tar czf "$out/logs.tgz" models/runs/*.log models/runs/*/done.json models/runs/*/split.json 2>/dev/null
ls -la "$out"
