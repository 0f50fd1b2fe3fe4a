#!/usr/bin/env bash
# The GPU paths, verified and measured in one run on a machine with a CUDA GPU:
#
#   bash benchmarks/gpu.sh [RESULTS_DIR]      (PYTHON=python3 by default)
#
# 1. the test suite's gpu-marked tests (bf16 autocast, fp16 with loss scaling, compile,
#    cached == uncached, sampling with and without the cache);
# 2. training tokens/s and MFU against the GPU's bf16 matmul, Cadenza and Hugging Face's
#    GPT-2 of the same shape in the same run;
# 3. generation tokens/s at batch 1 and 64, against GPT-2's `generate`;
# 4. `torchrun` training with NCCL (one process per GPU; one GPU runs the same DDP path).
# Everything it prints goes to RESULTS_DIR/gpu-results.txt too. Nothing here is needed on a
# CPU machine: there the gpu tests skip.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-.}
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu-results.txt
PY=${PYTHON:-python3}
: > "$LOG"
step() { echo; echo "\$ $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
$PY -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda)" \
  2>&1 | tee -a "$LOG"
step $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
step $PY benchmarks/train_throughput.py --device cuda --batch 64 --steps 10
step $PY benchmarks/generate_speed.py --device cuda --batches 1,64
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
$PY - "$WORK/midi" <<'PY'
import sys, pathlib, numpy as np, symusic
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True)
rng = np.random.default_rng(0)
for i in range(24):  # small random piano pieces, enough for a dataset with a valid split
    s = symusic.Score(480); s.tempos.append(symusic.Tempo(0, 120.0)); t = symusic.Track(program=0)
    for a in np.sort(rng.integers(0, 480 * 40, 200)):
        t.notes.append(symusic.Note(int(a), int(rng.integers(60, 900)), int(rng.integers(40, 90)),
                                    int(rng.integers(30, 110))))
    s.tracks.append(t); s.dump_midi(str(out / f"piece{i:02d}.mid"))
PY
step $PY -m cadenza prepare "$WORK/midi" --out "$WORK/ds" --valid-frac 0.1 --test-frac 0.1
GPUS=$(nvidia-smi -L | wc -l)
step $PY -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m cadenza train \
  --data "$WORK/ds" --out "$WORK/run" --preset debug --device cuda --max-steps 30 \
  --eval-every 15
echo; echo "gpu.sh: done; results in $LOG"
