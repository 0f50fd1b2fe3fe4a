#!/usr/bin/env bash
# docs/chords.png: one opening continued by pretrained:piano over two progressions, the
# chords written over each roll (generate draws them); the same seed, so only the chords
# differ. Usage: bash scripts/chords_figure.sh [OPENING.mid] [OUT.png]
set -euo pipefail
OPENING=${1:-builtin:openings/schubert-moment-musical-3}
OUT=${2:-docs/chords.png}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
common=(--primer "$OPENING" --primer-seconds 6 --seconds 16 --seed 3 --top-p 0.95
        --bpm 90 --no-audio)
python -m cadenza generate "${common[@]}" --chords "Fm | Bbm7 | C7 | Fm" --out "$T/a"
python -m cadenza generate "${common[@]}" --chords "Ab | Db | Eb7 | Ab" --chord-bass \
  --out "$T/b"
python - "$T/a/sample-0.png" "$T/b/sample-0.png" "$OUT" <<'PY'
import sys
from PIL import Image
a, b = (Image.open(p).convert("RGB") for p in sys.argv[1:3])
out = Image.new("RGB", (max(a.width, b.width), a.height + b.height), "white")
out.paste(a, (0, 0))
out.paste(b, (0, a.height))
out.save(sys.argv[3], optimize=True)
PY
echo "wrote $OUT"
