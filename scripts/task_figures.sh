#!/usr/bin/env bash
# The README's harmonize / accompany / attention pictures, from the models `cadenza bench
# tasks --out bench/tasks` trained: a JSB16 validation chorale's soprano harmonized, a POP909
# validation song's melody accompanied, and the attention maps of both kinds of model.
# Usage: bash scripts/task_figures.sh [BENCH_DIR] [BENCHMARKS_DIR] [POP909_DIR]
set -euo pipefail
B=${1:-bench/tasks}
JSB=${2:-${CADENZA_BENCHMARKS:-../shared/data/benchmarks}}/jsb16/jsb16_separated.trainvalid.json
POP=${3:-${CADENZA_PIANO:-../shared/data/piano}/pop909}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# the soprano of the first validation chorale, as a MIDI file at 120 bpm (16ths of 0.125 s)
python - "$JSB" "$T/soprano.mid" <<'EOF'
import json, sys
from cadenza.data.midi import Notes, score_from_notes, write_midi
grid = json.load(open(sys.argv[1]))["valid"][0]
line = [row[0] for row in grid]
start, notes = 0, []
for s in range(1, len(line) + 1):
    if s == len(line) or line[s] != line[start]:
        if line[start] >= 0:
            notes.append((start * 0.125, s * 0.125, line[start], 80))
        start = s
write_midi(score_from_notes(Notes.make(*zip(*notes))), sys.argv[2])
EOF
# the validation song whose melody starts soonest
SONG=$(python - "$B/accompany/data/manifest.json" <<'EOF'
import json, sys
from cadenza.data.midi import load_score, only_track
songs = [f["path"] for f in json.load(open(sys.argv[1]))["files"] if f["split"] == "valid"]
print(min(songs, key=lambda p: only_track(load_score(p), "MELODY").to("second").tracks[0]
          .notes.numpy()["time"].min()))
EOF
)
cadenza harmonize --checkpoint "$B/harmonize/encoder-decoder-rope/best" --melody "$T/soprano.mid" \
    --out "$T/harm" --melody-seconds 16 --no-audio --seed 1
cadenza accompany --checkpoint "$B/accompany/encoder-decoder-rope/best" --melody "$SONG" \
    --out "$T/acc" --melody-seconds 16 --no-audio --seed 1 --top-p 0.95
cadenza attention --checkpoint "$B/harmonize/encoder-decoder-rope/best" --primer "$T/soprano.mid" \
    --out "$T/att-harm" --tokens 96
cadenza attention --checkpoint pretrained:piano --primer builtin:openings/schubert \
    --out "$T/att-piano" --tokens 64
cp "$T/harm/sample-0.png" docs/harmonize-example.png
cp "$T/acc/sample-0.png" docs/accompany-example.png
cp "$T/att-harm/decoder-1.png" docs/attention-harmonize.png
cp "$T/att-piano/layer-2.png" docs/attention-piano.png
echo "wrote docs/harmonize-example.png docs/accompany-example.png docs/attention-harmonize.png" \
     "docs/attention-piano.png (accompanied: $SONG)"
