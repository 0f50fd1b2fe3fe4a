#!/usr/bin/env bash
# docs/guidance.png: one opening continued by pretrained:piano under four styles with
# classifier-free guidance (the same seed: only the style differs), each roll titled by the
# style the shipped classifier names for the continuation alone.
# Usage: bash scripts/guidance_figure.sh [W (default 4)] [OPENING.mid] [OUT.png]
set -euo pipefail
W=${1:-4}
OPENING=${2:-builtin:openings/schubert-moment-musical-3}
OUT=${3:-docs/guidance.png}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
for style in pop Chopin Bach Beethoven; do
  python -m cadenza generate --primer "$OPENING" --primer-seconds 8 --seconds 20 --seed 1 \
    --top-p 0.95 --style "$style" --guidance "$W" --no-audio --continuation-only \
    --out "$T/$style" > /dev/null  # the MIDI without the primer, the roll with it
  python -m cadenza classify "$T/$style/sample-0.mid" --top 1 --json > "$T/$style.json"
done
python - "$T" "$W" "$OUT" <<'PY'
import json, sys
from pathlib import Path
from PIL import Image, ImageDraw
t, w, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = []
for style in ("pop", "Chopin", "Bach", "Beethoven"):
    img = Image.open(t / style / "sample-0.png").convert("RGB")
    named = json.loads((t / f"{style}.json").read_text())["styles"][0]
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, img.width, 34], fill="white")
    d.text((12, 8), f"--style {style} --guidance {w}: the classifier names "
           f"{named['style']} ({named['probability']:.0%})", fill="black")
    rows.append(img)
sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
y = 0
for r in rows:
    sheet.paste(r, (0, y))
    y += r.height
sheet.save(out, optimize=True)
PY
echo "wrote $OUT"
