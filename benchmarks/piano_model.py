"""The pretrained piano model's numbers, measured on this machine (the README and the model
card quote them):

    python benchmarks/piano_model.py nll        # NLL per token per corpus, vs the literature
    python benchmarks/piano_model.py speed      # batch-1 CPU generation vs real time
    python benchmarks/piano_model.py stats      # 32 continuations vs the true continuations
    python benchmarks/piano_model.py finetune   # as is vs 5 min fine-tuning vs 5 min scratch
    python benchmarks/piano_model.py register   # does the bass hold, does the register drift
    python benchmarks/piano_model.py styles     # NLL with the true, no and a wrong style tag;
                                                # continuations with --style pop / Chopin

The corpora come from $CADENZA_PIANO_DATA (default ../shared/data/piano beside the checkout);
each part skips with a message when they are absent. ``nll`` scores the files themselves
(``cadenza evaluate --data FOLDER``), so it needs no prepared dataset; the validation splits
of POP909 and piano-midi.de are the content-hash splits of ``scripts/pretrain_piano.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PIANO = Path(os.environ.get("CADENZA_PIANO_DATA", ROOT.parent / "shared/data/piano"))
MODEL = "pretrained:piano"
# Published NLL per token (nats) on performance tokens of piano performances.
LITERATURE = {"Music Transformer (Huang et al. 2018), Piano-e-Competition test": 1.835,
              "Perceiver AR (Hawthorne et al. 2022), MAESTRO v1 test": 1.82}
GOAL = 1.93  # issue 38 (v2: 1.976); 1.90 was issue 30's, 1.85 with a GPU


def need(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"skipped: {path} not found (set CADENZA_PIANO_DATA)")
    return path


def valid_files(dataset: Path) -> dict[str, list[str]]:
    """The validation files of each source of a prepared piano dataset (its manifest)."""
    m = json.loads((dataset / "manifest.json").read_text())
    out: dict[str, list[str]] = {}
    for r in m["files"]:
        if r["split"] == "valid":
            out.setdefault(Path(r["source"]).name, []).append(r["path"])
    return out


def cmd_nll(a) -> dict:
    from cadenza.evaluate import evaluate
    need(PIANO)
    rows = {}
    t = time.perf_counter()
    asap = evaluate(a.model, [need(PIANO / "asap-maestro" / "validation")],
                    batch_size=a.batch_size)
    rows["asap-maestro/validation (live, unseen pieces)"] = (asap.nll, asap.tokens,
                                                              len(asap.files))
    if (PIANO / "maestro-v3" / "validation").is_dir() and "maestro" not in a.skip:
        r = evaluate(a.model, [PIANO / "maestro-v3" / "validation"], batch_size=a.batch_size)
        rows["maestro-v3/validation (live, MAESTRO's split)"] = (r.nll, r.tokens, len(r.files))
    if a.dataset and Path(a.dataset, "manifest.json").exists() and "others" not in a.skip:
        for src, files in valid_files(Path(a.dataset)).items():
            if src in ("asap-maestro", "maestro-v3"):
                continue
            r = evaluate(a.model, [Path(f) for f in files], batch_size=a.batch_size)
            rows[f"{src} (valid split)"] = (r.nll, r.tokens, len(r.files))
    print(f"{'data':<50}{'NLL/token':>10}{'tokens':>11}{'files':>7}")
    for k, (nll, n, f) in rows.items():
        print(f"{k:<50}{nll:>10.3f}{n:>11,}{f:>7}")
    for k, v in LITERATURE.items():
        print(f"{k:<66}{v:>10.3f}  (published)")
    ok = asap.nll <= GOAL
    print(f"goal: <= {GOAL} on asap-maestro/validation: {'met' if ok else 'NOT met'} "
          f"({asap.nll:.3f}); {time.perf_counter() - t:.0f} s")
    out = {k: {"nll": v[0], "tokens": v[1], "files": v[2]} for k, v in rows.items()}
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(out, indent=1) + "\n")
    return out


def cmd_speed(a) -> dict:
    """Batch-1 decoding on this CPU: new tokens per second, and seconds of music per second
    of compute for each opening (its own token rate), with the default threads."""
    from cadenza.generate import SampleConfig
    from cadenza.session import Session
    gen = Session.load(MODEL, precision=a.precision)
    out = {}
    for name in ("schubert", "pop909-024", "pop909-113"):
        prompt, _ = gen.encode_primer(f"builtin:openings/{name}", 8.0)
        gen.generate(prompt, SampleConfig(tokens=32, seed=0))  # warm-up
        t = time.perf_counter()
        new = gen.generate(prompt, SampleConfig(seconds=a.seconds, seed=0))[0]
        dt = time.perf_counter() - t
        music = gen.seconds_of(np.concatenate([prompt, new])) - gen.seconds_of(prompt)
        out[name] = {"tokens": len(new), "music_s": music, "compute_s": dt,
                     "tokens_per_s": len(new) / dt, "x_real_time": music / dt}
        print(f"{name:<14}{len(new):>6} tokens {music:>6.1f} s of music in {dt:>5.2f} s: "
              f"{len(new) / dt:>5.0f} tokens/s, {music / dt:>5.1f}x real time")
    live = 40.6  # tokens per second of music in asap-maestro/validation (live playing)
    tps = np.mean([v["tokens_per_s"] for v in out.values()])
    print(f"at the token rate of live playing ({live} tokens/s of music): "
          f"{tps / live:.1f}x real time (goal >= 10x); {gen.precision}, "
          f"{torch.get_num_threads()} threads")
    return out


def cmd_stats(a) -> dict:
    """32 held-out openings (8 s) continued for 20 s, against their true continuations."""
    from cadenza.data.midi import (
        BadInput,
        cut_notes,
        load_score,
        notes_from_score,
        score_from_notes,
        write_midi,
    )
    from cadenza.generate import GenerateConfig, SampleConfig, run_generate
    files = sorted(need(PIANO / "asap-maestro" / "validation").rglob("*.mid"))
    pop = valid_files(Path(a.dataset)).get("pop909", []) if a.dataset else []
    asap = [str(f) for f in files[:: max(1, len(files) // 16)]]
    work = Path(a.work)
    gen_dir, true_dir = work / "generated", work / "true"
    true_dir.mkdir(parents=True, exist_ok=True)
    picks: list[str] = []
    for group in (asap, pop):  # up to 16 of each whose first 8 s hold notes
        done = 0
        for f in group:
            if done == 16:
                break
            i = len(picks)
            sdir = gen_dir / f"{i:02d}"
            try:
                if not (sdir / "sample-0.json").exists():
                    run_generate(GenerateConfig(
                        out=str(sdir), checkpoint=MODEL, primer=f, primer_seconds=8.0,
                        sample=SampleConfig(seconds=20.0, seed=i, top_p=0.95), audio=False,
                        force=True))
            except BadInput as e:
                print(f"skipped {f}: {e}")
                continue
            n = notes_from_score(load_score(f))
            keep = n.start >= 8.0  # the true next 20 s, as a piece of its own
            cont = type(n)(n.start[keep] - 8.0, n.end[keep] - 8.0, n.pitch[keep],
                           n.velocity[keep])
            write_midi(score_from_notes(cut_notes(cont, 20.0)), true_dir / f"{i:02d}.mid")
            picks.append(f)
            done += 1
    print(f"{len(picks)} continuations in {gen_dir}, true continuations in {true_dir}; now:")
    print(f"  cadenza stats {gen_dir} --reference {true_dir}")
    return {"openings": picks}


def cmd_register(a) -> dict:
    """Does the bass hold, does the register drift? The built-in openings and 16
    asap-maestro/validation openings: 8 s of primer, 20 s continued (top-p 0.95, seed 0),
    by --model. Per 5-s window of the continuation: its lowest note and its pitch range
    (5th to 95th percentile of the notes' pitches), against the primer's; and the same of
    the true continuation where there is one. A drift is a window whose lowest note is more
    than an octave above the primer's."""
    from cadenza.data.midi import load_score, notes_from_score
    from cadenza.generate import SampleConfig
    from cadenza.session import Session
    gen = Session.load(a.model)
    files = sorted(need(PIANO / "asap-maestro" / "validation").rglob("*.mid"))
    openings = [f"builtin:openings/{n}" for n in ("schubert", "pop909-024", "pop909-113")]
    openings += [str(f) for f in files[:: max(1, len(files) // 16)]][:16]
    rows, t = [], time.perf_counter()
    for spec in openings:
        prompt, info = gen.encode_primer(spec, 8.0)
        if info["seconds"] < 4.0:
            continue
        new = gen.generate(prompt, SampleConfig(seconds=20.0, seed=0, top_p=0.95))[0]
        full = gen.tok.decode_notes(np.concatenate([prompt[1:], new]))
        split = info["seconds"]
        prim, cont = full.pitch[full.start < split], full.start >= split

        def windows(start, pitch, at):
            out = []
            for w in range(4):
                m = (start >= at + 5 * w) & (start < at + 5 * w + 5)
                out.append((int(pitch[m].min()), float(np.percentile(pitch[m], 95)
                                                       - np.percentile(pitch[m], 5)))
                           if m.any() else (None, None))
            return out
        gen_w = windows(full.start[cont], full.pitch[cont], split)
        true_w = None
        if not spec.startswith("builtin:"):
            n = notes_from_score(load_score(spec))
            true_w = windows(n.start, n.pitch, 8.0)
        row = {"opening": Path(spec).name, "primer_low": int(prim.min()),
               "primer_range": float(np.percentile(prim, 95) - np.percentile(prim, 5)),
               "generated": gen_w, "true": true_w}
        rows.append(row)
        lows = " ".join(f"{lo if lo is not None else '-':>3}" for lo, _ in gen_w)
        tl = " ".join(f"{lo if lo is not None else '-':>3}" for lo, _ in (true_w or []))
        print(f"{row['opening'][:28]:<30}primer low {row['primer_low']:>3} range "
              f"{row['primer_range']:>4.0f} | generated lows {lows} | true lows {tl}")

    def drift(key):
        got = [lo - r["primer_low"] > 12 for r in rows if r[key] for lo, _ in r[key]
               if lo is not None]
        return float(np.mean(got)) if got else float("nan")

    def late_range(key):
        got = [rg for r in rows if r[key] for _, rg in r[key][2:] if rg is not None]
        return float(np.mean(got)) if got else float("nan")
    summary = {"openings": len(rows), "drifted_windows_generated": drift("generated"),
               "drifted_windows_true": drift("true"),
               "range_10_20s_generated": late_range("generated"),
               "range_10_20s_true": late_range("true"),
               "primer_range": float(np.mean([r["primer_range"] for r in rows]))}
    print(f"windows whose lowest note is over an octave above the primer's: generated "
          f"{summary['drifted_windows_generated']:.0%}, true "
          f"{summary['drifted_windows_true']:.0%}; pitch range (5-95%) in seconds 10-20: "
          f"generated {summary['range_10_20s_generated']:.1f}, true "
          f"{summary['range_10_20s_true']:.1f}, primers {summary['primer_range']:.1f} "
          f"semitones; {a.model}, {time.perf_counter() - t:.0f} s")
    return {"summary": summary, "rows": rows}


def cmd_styles(a) -> dict:
    """What a style tag does: NLL of asap-maestro/validation and POP909's validation songs
    with each piece's true tags (its composer or pop, and its kind), with none, and with a
    wrong one; then the same 32 openings continued with --style pop and --style Chopin, each
    set's feature overlap (stats) with POP909's validation songs and with the Chopin
    performances of asap-maestro/validation."""
    from cadenza.checkpoint import load_checkpoint
    from cadenza.data.midi import BadInput, load_score, notes_from_score
    from cadenza.data.styles import Conditioning, piece_style
    from cadenza.evaluate import midi_pieces, score_pieces, summarize
    from cadenza.generate import GenerateConfig, SampleConfig, run_generate
    from cadenza.stats import compare
    ck = load_checkpoint(a.model)
    if ck.tags is None:
        sys.exit(f"{a.model} reads no style tags")
    tags, tok = ck.tags, ck.tokenizer
    asap_root = need(PIANO / "asap-maestro" / "validation")
    pop = [Path(f) for f in valid_files(Path(a.dataset)).get("pop909", [])]
    def composer(f: str) -> tuple[str, str]:
        return piece_style(f, str(asap_root), "folder")[0], "live"

    corpora = {"asap-maestro/validation": ([asap_root], composer, ("pop", "arrangement")),
               "POP909 validation": (pop, lambda f: ("pop", "arrangement"), ("Chopin", "live"))}
    table: dict[str, dict[str, float]] = {}
    for name, (paths, true, wrong) in corpora.items():
        if a.only_continuations:
            break
        if not paths:
            print(f"{name}: skipped (no files; --dataset names the prepared piano data)")
            continue
        names, pieces, _ = midi_pieces(paths, tok)
        def ids(names_: tuple[str, ...]) -> Conditioning:
            return Conditioning(tuple(tags.id(t) for t in names_ if t in tags.names))

        heads = {"true tags": [ids(true(f)) for f in names], "no tag": None,
                 f"wrong tags ({' + '.join(wrong)})": [ids(wrong)] * len(names)}
        table[name] = {}
        for label, prefixes in heads.items():
            nll = score_pieces(ck.model, pieces, ck.train.context,
                               a.stride or ck.train.stride, a.batch_size, a.eval_precision, 1,
                               prefixes)
            table[name][label] = summarize(nll, tok, pieces).nll
            print(f"{name:<26}{label:<34}{table[name][label]:.4f}")
    # the same openings under two styles
    files = sorted(asap_root.rglob("*.mid"))
    openings = [str(f) for f in files[:: max(1, len(files) // 16)]][:16] + \
        [str(p) for p in pop[:16]]
    refs = {"POP909 validation": [notes_from_score(load_score(p)) for p in pop],
            "Chopin (asap-maestro/validation)": [notes_from_score(load_score(f)) for f in
                                                 sorted((asap_root / "Chopin").rglob("*.mid"))]}
    overlap: dict[str, dict[str, float]] = {}
    for style in ("pop", "Chopin"):
        notes = []
        for i, f in enumerate(openings):
            sdir = Path(a.work) / f"style-{style}" / f"{i:02d}"
            try:
                if not (sdir / "sample-0.mid").exists():  # --work keeps what was made
                    run_generate(GenerateConfig(
                        out=str(sdir), checkpoint=a.model, primer=f, primer_seconds=8.0,
                        audio=False, force=True,
                        sample=SampleConfig(seconds=20.0, seed=i, top_p=0.95, style=style)))
            except BadInput as e:  # an opening silent for 8 s: not an opening
                print(f"skipped {f}: {e}")
                continue
            n = notes_from_score(load_score(sdir / "sample-0.mid"))
            keep = n.start >= 8.0 - 1e-6
            notes.append(type(n)(n.start[keep], n.end[keep], n.pitch[keep], n.velocity[keep]))
        overlap[style] = {}
        for ref, rn in refs.items():
            feats = compare(notes, rn)
            overlap[style][ref] = float(np.mean([v["overlap"] for v in feats.values()]))
            print(f"--style {style:<8} vs {ref:<34} mean feature overlap "
                  f"{overlap[style][ref]:.3f}")
    return {"nll": table, "overlap": overlap}


def cmd_finetune(a) -> dict:
    from cadenza.config import GenerateConfig, ModelConfig, PrepareConfig, TrainConfig
    from cadenza.data.prepare import prepare
    from cadenza.evaluate import evaluate
    from cadenza.generate import SampleConfig, run_generate
    from cadenza.recipes import RECIPES
    from cadenza.train import train
    folder = need(PIANO / "piano-midi.de" / "Grieg")
    work = Path(a.work)
    data = work / "grieg"
    if not (data / "manifest.json").exists():
        print(prepare(PrepareConfig(sources=(str(folder),), out=str(data), valid_frac=0.3,
                                    test_frac=0.0)).summary())
    ft, scratch = work / "finetuned", work / "scratch"
    # label -> (NLL, checkpoint, folder of its piano roll)
    rows = {"pretrained, as is": (evaluate(MODEL, data).nll, MODEL, "pretrained")}
    from cadenza.checkpoint import read_config
    from cadenza.config import finetune_settings
    ck = read_config(MODEL)
    m, t = finetune_settings(ck.model, ck.train)
    def run(out: Path, model: dict, train_cfg: dict) -> float:
        done = out / "best" / "metrics.json"
        if a.reuse and done.exists():
            return json.loads(done.read_text())["best_val_nll"]
        return train(ModelConfig.from_dict(model), TrainConfig.from_dict(
            {**train_cfg, "data": str(data), "out": str(out), "minutes": a.minutes,
             "force": True})).best_val_nll

    nll = run(ft, m, {**t, "init": MODEL})
    rows[f"fine-tuned {a.minutes:g} min"] = (nll, str(ft / "best"), ft.name)
    # from scratch: the same architecture and windows at a from-scratch learning rate
    mp, tp = RECIPES["piano"].settings()
    nll = run(scratch, {**m, **mp}, {**t, "lr": tp["lr"], "warmup_steps": 50})
    rows[f"from scratch {a.minutes:g} min"] = (nll, str(scratch / "best"), scratch.name)
    m_ = json.loads((data / "manifest.json").read_text())
    primer = next(r["path"] for r in m_["files"] if r["split"] == "valid")
    print(f"\n{'model':<28}{'valid NLL':>10}  piano roll ({Path(primer).name}, 8 s + 20 s)")
    for k, (nll, ckpt, name) in rows.items():
        sdir = work / "rolls" / name
        run_generate(GenerateConfig(out=str(sdir), checkpoint=ckpt, primer=primer,
                                    primer_seconds=8.0, audio=False, force=True,
                                    sample=SampleConfig(seconds=20.0, seed=0, top_p=0.95)))
        print(f"{k:<28}{nll:>10.3f}  {sdir}/sample-0.png")
    return {k: v[0] for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("nll", "speed", "stats", "finetune", "styles",
                                     "register"))
    ap.add_argument("--model", default=MODEL,
                    help="the checkpoint to measure (nll, styles, register)")
    ap.add_argument("--eval-precision", default="fp32", help="styles: scoring precision")
    ap.add_argument("--only-continuations", action="store_true",
                    help="styles: the continuations only (the NLL table measured before)")
    ap.add_argument("--stride", type=int, default=0,
                    help="styles: window stride (0: the model's, context / 2)")
    ap.add_argument("--dataset", default=str(ROOT / "data/piano"),
                    help="the prepared piano dataset (for its valid splits)")
    ap.add_argument("--work", default="runs/piano-bench", help="where runs and samples go")
    ap.add_argument("--minutes", type=float, default=5.0, help="fine-tuning budgets")
    ap.add_argument("--seconds", type=float, default=20.0, help="music to generate (speed)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--skip", default="", help="nll: leave out 'maestro' (maestro-v3/"
                    "validation, 1.9M tokens) and/or 'others' (the dataset's other corpora)")
    ap.add_argument("--json-out", default="", help="nll: also write the rows to this file")
    ap.add_argument("--precision", default="auto",
                    help="speed: auto (fp16w on a CPU), fp32, fp16w or bf16")
    ap.add_argument("--reuse", action="store_true",
                    help="finetune: keep runs already finished in --work")
    a = ap.parse_args()
    res = {"nll": cmd_nll, "speed": cmd_speed, "stats": cmd_stats,
           "finetune": cmd_finetune, "styles": cmd_styles,
           "register": cmd_register}[a.part](a)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    (Path(a.work) / f"{a.part}.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
