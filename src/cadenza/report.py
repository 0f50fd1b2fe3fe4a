"""``cadenza report RUN_DIR``: one HTML page for a run, opened from disk with no server.

Configs, the loss curve, evaluation and benchmark tables, statistics, and for every
generated sample found under the run directory (and under ``--samples DIR``) its piano
roll, settings and an audio player. Pictures are inlined (base64 data URIs); audio is not
(a minute of WAV is 10 MB): the players and MIDI links point at the sample files by
relative path, so the page stays light and plays as long as it sits beside them.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from . import bench
from .atomic import write_bytes
from .checkpoint import read_config, read_metrics
from .stats import FEATURE_COLUMNS, StatsResult, feature_rows, summary_lines


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table>"


def build_report(run: str | Path, out: str | Path | None = None,
                 samples: str | Path | None = None) -> Path:
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory")
    dest = Path(out) if out else run / "report.html"
    extra = Path(samples) if samples else None
    if extra is not None and not extra.is_dir():
        raise FileNotFoundError(f"--samples {extra}: no such folder")
    parts = [f"<h1>Cadenza run: {html.escape(str(run))}</h1>"]
    benches = sorted(run.rglob("bench.json"))
    ran = [bj.parent / r for bj in benches for r in json.loads(bj.read_text()).get("runs", [])]
    ck = next((c for c in [run / "best", run / "last", run / "run" / "best", *ran]
               if (c / "config.json").exists()), None)
    if ck is not None:
        cfg = read_config(ck)
        metrics = read_metrics(ck)
        parts.append("<h2>Model and training</h2>")
        parts.append(_table([("checkpoint", str(ck)),
                             ("parameters", f"{cfg.parameters:,}"),
                             ("tokenizer", cfg.tokenizer["name"]),
                             ("data", cfg.data.path)]
                            + [(f"model.{k}", str(v)) for k, v in cfg.model.items()]
                            + [(f"train.{k}", str(v)) for k, v in cfg.train.items()]))
        parts.append("<h2>Metrics</h2>" + _table([(k, f"{v:.4f}" if isinstance(v, float)
                                                    else str(v)) for k, v in metrics.items()]))
    for png in sorted(run.rglob("loss.png"))[:3] + sorted(run.rglob("models.png"))[:1]:
        parts.append(f"<h3>{html.escape(str(png.relative_to(run)))}</h3>"
                     f"<img src='{_data_uri(png, 'image/png')}'>")
    for bj in benches:
        parts.append(f"<h2>Benchmark {html.escape(str(bj.relative_to(run)))}</h2>"
                     f"<pre>{html.escape(_bench_text(bj))}</pre>")
    found = sorted(run.rglob("sample-*.json")) + (sorted(extra.rglob("sample-*.json"))
                                                   if extra else [])
    stats = sorted(run.rglob("stats.json")) + (sorted(extra.rglob("stats.json"))
                                               if extra else [])
    if ck is None and not found and not stats and not benches:
        raise FileNotFoundError(f"{run}: not a Cadenza run, demo or bench folder (no "
                                "checkpoint, samples, statistics or bench.json in it)")
    if found:
        parts.append("<h2>Samples</h2>")
    for sj in found:
        info = json.loads(sj.read_text())
        parts.append(f"<h3>{html.escape(str(sj))}</h3>")
        png, wav, mid = (sj.with_suffix(s) for s in (".png", ".wav", ".mid"))
        if png.exists():
            parts.append(f"<img src='{_data_uri(png, 'image/png')}'>")
        if wav.exists():
            parts.append(f"<audio controls preload='none' src='{_rel(wav, dest)}'></audio>")
        if mid.exists():
            parts.append(f"<p><a href='{_rel(mid, dest)}'>{html.escape(mid.name)}</a></p>")
        parts.append(_table(_sample_rows(info)))
    for st in stats:
        parts.append(f"<h2>Statistics {html.escape(str(st))}</h2>"
                     + _stats_table(StatsResult.from_json(json.loads(st.read_text()))))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Cadenza report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
            "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 8px;"
            "text-align:left}pre{background:#f6f6f6;padding:8px;overflow:auto}</style></head>"
            "<body>" + "\n".join(parts) + "</body></html>\n")
    write_bytes(dest, page.encode())
    return dest


def _rel(path: Path, page: Path) -> str:
    """``path`` as the page at ``page`` links to it (relative, so the folder can move)."""
    return html.escape(Path(os.path.relpath(path.resolve(), page.resolve().parent)).as_posix())


def _sample_rows(info: dict) -> list[tuple[str, str]]:
    s = info.get("settings", {})
    rows = [("checkpoint", str(info.get("checkpoint", ""))),
            ("primer", f"{info.get('primer', {}).get('source')} "
                       f"({info.get('primer', {}).get('seconds', 0):.1f} s)"),
            ("new music", f"{info.get('new_seconds', 0):.1f} s, "
                          f"{info.get('new_tokens', 0)} tokens"),
            ("settings", ", ".join(f"{k} {v}" for k, v in s.items())),
            ("speed", f"{info.get('tokens_per_second', 0):.0f} tokens/s")]
    m = info.get("memorization")
    if m:
        rows.append(("memorization", f"longest copied run {m['longest_copied_notes']} notes; "
                     + ", ".join(f"{k} {v:.1%}" for k, v in m.items() if "share" in k)))
    return rows


def _stats_table(res: StatsResult) -> str:
    """`cadenza stats --json` output: the feature table and summary `stats` prints."""
    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in FEATURE_COLUMNS) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in feature_rows(res))
    return f"<table>{head}{body}</table>" + "".join(
        f"<p>{html.escape(line)}</p>" for line in summary_lines(res))


def _bench_text(path: Path) -> str:
    r = bench.load_result(path)
    if isinstance(r, bench.ModelsResult):
        return bench.format_models(r)
    if isinstance(r, bench.TasksResult):
        return bench.format_tasks(r)
    return bench.format_jsb16(r) if r.benchmark == "jsb16" else bench.format_pianoroll(r)
