"""How fast `cadenza duet` answers and how well it keeps time, with pretrained:piano on this
CPU (docs/duet.md quotes the tables):

    python benchmarks/duet_latency.py              # 50 answers, then 3 long ones; ~6 min
    python benchmarks/duet_latency.py --answers 10

A scripted pianist plays phrases of 8 notes from the built-in openings (real performances),
pauses, and waits for the answer (2 s) before the next phrase; the session runs as `cadenza
duet` runs it (one thread, fp16w decoding, answers sent through an in-process port). Measured:

- latency: from the moment the pause is detected (--wait after the last note) to the first
  answering note leaving the port; goal: median <= 100 ms, p95 <= 150 ms;
- timing: how late each answer note leaves against its time in the music (goal p99 <= 10 ms);
- the sustained token rate during three 20 s answers, against the rate the music needs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mido
import numpy as np
import torch

from cadenza.config import Steering
from cadenza.data.corpus import OPENINGS
from cadenza.data.midi import load_score, notes_from_score
from cadenza.duet import Clock, Duet, play
from cadenza.session import Session


def phrases(n: int) -> list[list[tuple[float, int, int, float]]]:
    """``n`` phrases of 8 notes (onset, pitch, velocity, length) from the openings."""
    out = []
    files = sorted(OPENINGS.glob("*.mid"))
    k = 0
    while len(out) < n:
        notes = notes_from_score(load_score(files[k % len(files)]))
        start = (k // len(files)) * 8 % max(1, len(notes) - 8)
        sel = slice(start, start + 8)
        t0 = notes.start[sel][0]
        out.append([(float(a - t0), int(p), int(v), float(min(b - a, 1.0)))
                    for a, b, p, v in zip(notes.start[sel], notes.end[sel], notes.pitch[sel],
                                          notes.velocity[sel])])
        k += 1
    return out


class Pianist:
    """Plays a phrase, waits for the answer to end, plays the next."""

    def __init__(self, duet: Duet, todo: list) -> None:
        self.duet, self.todo, self.events, self.round = duet, list(todo), [], 0
        self.done = False

    def poll(self, now: float) -> list:
        if not self.events and self.todo and not self.duet.answering \
                and len(self.duet.answers) >= self.round:
            ph = self.todo.pop(0)
            self.round += 1
            for a, p, v, dur in ph:
                self.events += [(now + 0.2 + a, mido.Message("note_on", note=p, velocity=v)),
                                (now + 0.2 + a + dur, mido.Message("note_off", note=p))]
            self.events.sort(key=lambda e: e[0])
        due = [(m, t) for t, m in self.events if t <= now]
        self.events = [(t, m) for t, m in self.events if t > now]
        self.done = not self.todo and not self.events and not self.duet.answering \
            and len(self.duet.answers) >= self.round
        return due


def timed(step, log: list):
    """Engine.step, logging how long each call takes."""
    def wrapped(self, may_end=True):
        t0 = time.perf_counter()
        out = step(self, may_end)
        log.append(time.perf_counter() - t0)
        return out
    return wrapped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--answers", type=int, default=50)
    ap.add_argument("--style", help="--style NAME (with --guidance: the guided duet's latency)")
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--out", default="runs/duet-bench.json")
    a = ap.parse_args()
    torch.set_num_threads(1)  # as `cadenza duet` runs
    gen = Session.load("pretrained:piano")
    sent: list[tuple[float, object]] = []
    steer = Steering(top_p=0.95, style=a.style, guidance=a.guidance)
    duet = Duet(gen, steer.replace(seed=0), wait=0.6, answer=2.0, clock=Clock(),
                send=lambda m: sent.append((time.perf_counter(), m)))
    t = time.perf_counter()
    pianist = Pianist(duet, phrases(a.answers))
    play(duet, pianist, until=lambda: pianist.done)
    duet.all_notes_off()
    lat = np.array([x.latency_ms for x in duet.answers if x.latency_ms is not None])
    late = np.array([x for ans in duet.answers for x in ans.late_ms])
    print(f"{len(duet.answers)} answers in {time.perf_counter() - t:.0f} s, {gen.precision} "
          f"decoding, 1 thread")
    print(f"latency (pause detected -> first note out): median {np.median(lat):.1f} ms, "
          f"p95 {np.quantile(lat, .95):.1f} ms, max {lat.max():.1f} ms (goal 100 / 150)")
    print(f"note timing (sent - scheduled): median {np.median(late):.2f} ms, "
          f"p99 {np.quantile(late, .99):.2f} ms, max {late.max():.2f} ms over {len(late)} "
          "events (goal p99 <= 10)")
    # sustained rate: three long answers, tokens drawn per second of wall time vs music
    rates = []
    for seed in range(3):
        d = Duet(gen, steer.replace(seed=seed), wait=0.6, answer=20.0, clock=Clock())
        pianist = Pianist(d, phrases(1))
        n0 = d.engine.n
        steps = []
        import cadenza.engine as eng
        real = eng.Engine.step

        eng.Engine.step = timed(real, steps)
        try:
            play(d, pianist, until=lambda: pianist.done)  # noqa: B023
        finally:
            eng.Engine.step = real
        rates.append((len(steps) / sum(steps), len(steps) / 20.0))
        del n0
    tok_s = np.array([r[0] for r in rates])
    need = np.array([r[1] for r in rates])
    print(f"long answers: the engine draws {tok_s.mean():.0f} tokens/s (time inside its "
          f"steps) where the music needs {need.mean():.0f}: {np.mean(tok_s / need):.1f}x real "
          "time (it runs 0.15 s ahead of the music and waits)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({
        "answers": len(duet.answers), "precision": gen.precision,
        "latency_ms": {"median": float(np.median(lat)), "p95": float(np.quantile(lat, .95)),
                       "max": float(lat.max())},
        "late_ms": {"median": float(np.median(late)), "p99": float(np.quantile(late, .99)),
                    "max": float(late.max()), "events": int(len(late))},
        "long_answers": {"tokens_per_second_drawn": tok_s.tolist(),
                         "tokens_per_second_needed": need.tolist()}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
