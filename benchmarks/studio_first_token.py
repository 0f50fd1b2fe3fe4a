"""The studio's time to the first token of a take, with the model kept loaded across jobs
(what the studio does) and with a reload for every job (what it did before the sessions of
issue 39): the same Studio, the same requests, in one run.

    python benchmarks/studio_first_token.py [--model pretrained:piano] [--takes 4]

The time runs from the job's submission to the engine's first progress call, which comes
right after the first token is drawn; the job then runs to its end (a few tokens) so that
the next starts from an idle worker. Report it as measured on this machine, beside the
machine's load (the numbers move with it).
"""

from __future__ import annotations

import argparse
import statistics
import time

from cadenza.config import StudioConfig
from cadenza.studio import Studio


def first_token_seconds(s: Studio, model: str, seed: int, reload: bool) -> float:
    if reload:
        s._sessions.clear()  # the model is loaded again, as for every job before
    seen: dict[str, float] = {}
    hear = s._hear

    def timed_hear(job):
        inner = hear(job)

        def progress(share: float) -> None:
            seen.setdefault("first", time.perf_counter())
            inner(share)
        return progress

    s._hear = timed_hear
    try:
        t0 = time.perf_counter()
        job = s.submit({"model": model, "sample": {"tokens": 16, "seed": seed}})
        while job.state not in ("done", "failed"):
            time.sleep(0.005)
        if job.state == "failed":
            raise SystemExit(f"the job failed: {job.error}")
        return seen["first"] - t0
    finally:
        s._hear = hear


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pretrained:piano")
    ap.add_argument("--takes", type=int, default=4, help="takes per way, alternating")
    a = ap.parse_args()
    s = Studio(StudioConfig(), device="cpu")
    try:
        first_token_seconds(s, a.model, 0, reload=False)  # warm: imports, allocations
        times: dict[str, list[float]] = {"kept loaded": [], "reloaded per job": []}
        for k in range(a.takes):
            for name in times:
                times[name].append(first_token_seconds(s, a.model, k + 1,
                                                       reload=name.startswith("reloaded")))
        for name, t in times.items():
            print(f"{name:<18} time to the first token: median {statistics.median(t) * 1e3:,.0f}"
                  f" ms over {len(t)} takes ({', '.join(f'{x * 1e3:.0f}' for x in t)})")
        print(f"models loaded: {s.loads}")
    finally:
        s.close()


if __name__ == "__main__":
    main()
