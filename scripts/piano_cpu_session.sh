#!/usr/bin/env bash
# The piano model's CPU training for one session, started in the background at its start:
#
#   bash scripts/piano_cpu_session.sh [MINUTES]      (default 120)
#
# 1. prepares data/piano-v3 if it is not there (scripts/pretrain_piano.sh's prepare: all five
#    piano sources with style tags; a few minutes);
# 2. continues from the best weights so far: the newest runs/piano-cpu-*/best whose run
#    improved on the weights it started from (a machine kept from an earlier session keeps
#    its runs), else pretrained:piano;
# 3. trains for MINUTES with nohup and nice, in bf16 where this CPU has bf16 arithmetic and
#    in fp32 where it does not (an AVX2-only CPU crawls in bf16), into runs/piano-cpu-DATE,
#    with a fresh warm-up and a cosine over the session's own budget (docs/training.md);
# 4. prints where its log is. Poll it with `tail RUN.log`; measure and ship at the end:
#      python benchmarks/piano_model.py nll --model RUN/best --dataset data/piano-v3
#      python scripts/ship_pretrained.py RUN/best piano     # only if it beats the shipped one
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-120}
PIANO=${CADENZA_PIANO_DATA:-../shared/data/piano}
DATA=${DATA:-data/piano-v3}
if [ ! -f "$DATA/manifest.json" ]; then
  PREPARE_ONLY=1 DATA="$DATA" bash scripts/pretrain_piano.sh "$PIANO"
fi
INIT=pretrained:piano
for run in $(ls -d runs/piano-cpu-*/ 2>/dev/null | sort -r); do
  if python - "$run" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(f"{sys.argv[1]}/metrics.csv")))
vals = [float(r["val_nll"]) for r in rows if r.get("val_nll")]
sys.exit(0 if len(vals) > 1 and min(vals[1:]) < vals[0] else 1)
PY
  then INIT=${run}best; break; fi
done
PRECISION=$(python -c "import torch; print('bf16' if torch.backends.mkldnn.is_available() \
  and torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'fp32')")
RUN=runs/piano-cpu-$(date +%Y%m%d-%H%M)
mkdir -p runs
nohup nice -n 5 python -m cadenza train --init "$INIT" --data "$DATA" --out "$RUN" \
  --context 1024 --batch-size 16 --lr 5e-5 --warmup-steps 30 --minutes "$MINUTES" \
  --precision "$PRECISION" --ema 0.995 --fim 0.2 --eval-tokens 300000 --eval-every 150 \
  --log-every 10 > "$RUN.log" 2>&1 &
echo "training from $INIT for $MINUTES minutes in $PRECISION: $RUN (log: $RUN.log)"
