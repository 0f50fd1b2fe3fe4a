#!/usr/bin/env bash
# Install everything (Cadenza, CPU PyTorch, FluidSynth for audio when we may), then run the
# main job: `cadenza demo` on the built-in Bach chorales. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v fluidsynth >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
     fluidsynth fluid-soundfont-gm >/dev/null) \
    || echo "note: could not install FluidSynth; the demo will write MIDI and PNG, no WAV"
fi
python -m pip install -q -c constraints-cpu.txt -e '.[studio,live]'   # studio: `cadenza studio`; live: `cadenza duet`
cadenza demo "$@"
