#!/usr/bin/env bash
# Reproduce the shipped pretrained piano model (pretrained:piano).
#
#   bash scripts/pretrain_piano.sh [PIANO_DATA_DIR] [RUN_DIR]
#
# 1. prepare: the five piano corpora as performance tokens (their own splits kept: ASAP and
#    maestro-v3 by MAESTRO's split, asap-extra all training, POP909 and piano-midi.de by
#    content hash), each piece tagged with its style and kind (--tags: the composer's
#    folder, MAESTRO's composer or pop; live, score or arrangement; data/styles.py), leaving
#    out the files that play a piece of asap-maestro/validation (piano-midi.de's, and
#    MAESTRO's Godowsky arrangement of Moment musical no. 3), so that number is on unseen
#    pieces, and all of Grieg (piano-midi.de's and MAESTRO's three Lyric Pieces: kept for
#    the fine-tuning comparison);
# 2. train: `cadenza train --preset piano` (9,000 steps of 64 x 1,024 tokens), then continue
#    those weights at a fifth of the learning rate for 2.2 minutes (`--init`; 2,625 steps on
#    the GPU), on a GPU if there is one. The shipped weights: one H200, bf16, 8 + 2.2
#    minutes; on 2 CPU cores (~6,500 tokens/s) the same 762M tokens take about 33 hours.
#
# The shipped weights are version 2: version 1's (the two stages above, on the data without
# asap-extra and without tags) continued on this data on 2 CPU cores for 80 minutes:
#   cadenza train --init pretrained:piano --data data/piano-v2 --out runs/piano-v2 \
#     --context 1024 --batch-size 16 --lr 1e-4 --warmup-steps 30 --minutes 80 --precision bf16
#   python scripts/ship_pretrained.py runs/piano-v2/best piano
# With a GPU, the two stages below on this data train a tagged model from scratch.
#
# Environment: STEPS overrides the first stage's step budget and MINUTES the second's (a
# smoke run: STEPS=20 MINUTES=0.2); PREPARE_ONLY=1 stops after the data.
set -euo pipefail
PIANO=${1:-${CADENZA_PIANO_DATA:-../shared/data/piano}}
RUN=${2:-runs/piano}
DATA=${DATA:-data/piano-v3}
if [ ! -f "$DATA/manifest.json" ]; then
  python -m cadenza prepare "$PIANO/pop909" "$PIANO/piano-midi.de" "$PIANO/asap-maestro" \
    "$PIANO/asap-extra" "$PIANO/maestro-v3" --tags --kind score \
    --out "$DATA" --workers "$(nproc)" \
    --exclude 'piano-midi.de/Grieg/*' \
    --exclude 'maestro-v3/train/2014/MIDI-UNPROCESSED_21-22_R1_2014_MID--AUDIO_21_R1_2014_wav--*' \
    --exclude 'maestro-v3/train/2015/MIDI-Unprocessed_R1_D2-21-22_mid--AUDIO-from_mp3_21_R1_2015_wav--4.midi' \
    --exclude 'piano-midi.de/Balakirev/islamei.mid' \
    --exclude 'piano-midi.de/Beethoven/beethoven_opus22_1.mid' \
    --exclude 'piano-midi.de/Beethoven/beethoven_opus90_1.mid' \
    --exclude 'piano-midi.de/Beethoven/beethoven_opus90_2.mid' \
    --exclude 'piano-midi.de/Beethoven/beethoven_hammerklavier_4.mid' \
    --exclude 'piano-midi.de/Chopin/chpn_op10_e05.mid' \
    --exclude 'piano-midi.de/Schubert/schumm-1.mid' \
    --exclude 'piano-midi.de/Schubert/schumm-3.mid'
fi
[ "${PREPARE_ONLY:-0}" = 1 ] && exit 0  # the data alone (scripts/piano_cpu_session.sh)
python -m cadenza train --data "$DATA" --out "$RUN" --preset piano \
  ${STEPS:+--max-steps "$STEPS"} "${@:3}"
python -m cadenza train --data "$DATA" --out "$RUN-2" --init "$RUN/best" --context 1024 \
  --batch-size 64 --lr 2e-4 --warmup-steps 100 --minutes "${MINUTES:-2.2}" --eval-every 1000 \
  --log-every 250 --precision bf16 "${@:3}"
echo "the model: $RUN-2/best (use it with --checkpoint $RUN-2/best)"
