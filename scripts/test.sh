#!/usr/bin/env bash
# Install Cadenza with its test tools, then run the default test suite (slow tests excluded;
# run them with `python -m pytest -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
# FluidSynth + a General MIDI SoundFont let the tests render WAV files (skipped without).
if ! command -v fluidsynth >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
     fluidsynth fluid-soundfont-gm >/dev/null) || echo "note: FluidSynth not installed"
fi
# Debian's Chromium runs the studio's browser test (skipped without).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
     chromium >/dev/null) || echo "note: Chromium not installed; the studio's browser test skips"
fi
python -m pip install -q -c constraints-cpu.txt -e '.[dev,studio,live]'
python -m ruff check src tests benchmarks
python -m pytest -q
