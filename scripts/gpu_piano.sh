#!/usr/bin/env bash
# The piano model's GPU run, for a lent device machine (15 minutes of device time in all,
# its start included; nothing outside it can be reached from it):
#
#   bash scripts/gpu_piano.sh pack     # here: gpu-carry/ = the wheels the device image may
#                                      # lack + the prepared shards, xz'd (about 35 MB)
#   bash scripts/gpu_piano.sh train    # there, with gpu-carry carried (the device tool's
#                                      # carry: ["gpu-carry"]); writes $OUT/piano
#   python -m cadenza evaluate ... / python benchmarks/piano_model.py nll --model FOLDER
#   python scripts/ship_pretrained.py FOLDER piano   # here, only when it beats the shipped one
#
# `train` installs nothing from the internet: it takes symusic, safetensors and tqdm from the
# carried wheels when the image lacks them, unpacks the shards, then continues the shipped
# model (`train --init pretrained:piano`: its architecture is fixed, 4 x 384, 7.3M
# parameters, so the weights stay under the 16 MiB a file the tool brings back) on all five
# piano corpora with style tags and a fill-in-the-middle share, in bf16 with torch.compile,
# batch 64 x 1,024 (version 1's second stage: about 1.2M tokens/s on an H200, so 7 minutes
# see about 500M tokens, some 14 passes over the 36M training tokens). It then rounds the
# best weights to bf16 into $OUT/piano (a checkpoint folder) and prints the validation NLL.
#
# Environment (defaults for the GPU; the test suite runs it on the CPU with a tiny budget):
#   MINUTES=7 BATCH=64 CONTEXT=1024 LR=2e-4 WARMUP=100 FIM=0.2 PRECISION=bf16 COMPILE=1
#   DEVICE=auto STEPS= EVAL_EVERY=1000 INIT=pretrained:piano DATA=data/piano-v3
#   CARRY=gpu-carry OUT=runs/gpu-out RUN=runs/gpu
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${CARRY:-gpu-carry}
DATA=${DATA:-data/piano-v3}
WHEELS="symusic safetensors tqdm pySmartDL platformdirs"  # symusic's own needs but numpy

pack() {
  [ -f "$DATA/manifest.json" ] || { echo "gpu_piano.sh pack: $DATA: no prepared dataset" \
    "(run scripts/pretrain_piano.sh's prepare first)" >&2; exit 2; }
  rm -rf "$CARRY.tmp" && mkdir -p "$CARRY.tmp/wheels"
  for v in 3.10 3.11 3.12 3.13; do  # the device image's Python is not known in advance
    python -m pip download -q --no-deps --only-binary=:all: --python-version "$v" \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      -d "$CARRY.tmp/wheels" $WHEELS
  done
  tar -cf - -C "$(dirname "$DATA")" "$(basename "$DATA")" | xz -T0 -6 > "$CARRY.tmp/data.tar.xz"
  rm -rf "$CARRY" && mv "$CARRY.tmp" "$CARRY"
  du -sh "$CARRY"
}

train() {
  local out=${OUT:-runs/gpu-out} run=${RUN:-runs/gpu}
  if ! python -c "import symusic, safetensors, tqdm" 2>/dev/null; then
    python -m pip install -q --no-index --find-links "$CARRY/wheels" $WHEELS
  fi
  if [ ! -f "$DATA/manifest.json" ]; then
    mkdir -p "$(dirname "$DATA")"
    xz -dc "$CARRY/data.tar.xz" | tar -xf - -C "$(dirname "$DATA")"
  fi
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
  python -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
  python -m cadenza train --init "${INIT:-pretrained:piano}" --data "$DATA" --out "$run" \
    --force --context "${CONTEXT:-1024}" --batch-size "${BATCH:-64}" --lr "${LR:-2e-4}" \
    --warmup-steps "${WARMUP:-100}" --minutes "${MINUTES:-7}" ${STEPS:+--max-steps "$STEPS"} \
    --precision "${PRECISION:-bf16}" --device "${DEVICE:-auto}" --fim "${FIM:-0.2}" \
    --ema 0.999 --eval-every "${EVAL_EVERY:-1000}" --log-every 100 \
    $([ "${COMPILE:-1}" = 1 ] && echo --compile)
  python scripts/ship_pretrained.py "$run/best" --to "$out/piano"
  python - "$out/piano" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
print(f"validation NLL {m['val_nll']:.4f} (best {m['best_val_nll']:.4f}) at step {m['step']}, "
      f"{m['tokens_seen']:,} tokens seen")
PY
}

case "${1:-}" in
  pack) pack ;;
  train) train ;;
  *) echo "usage: bash scripts/gpu_piano.sh pack|train" >&2; exit 2 ;;
esac
