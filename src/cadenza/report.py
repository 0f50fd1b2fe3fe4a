"""``cadenza report RUN_DIR``: one self-contained HTML page for a run.

Everything is inlined (images and audio as base64 data URIs), so the page opens from disk
with no server: configs, the loss curve, evaluation and benchmark tables, and for every
generated sample found under the run directory its piano roll and an audio player.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .atomic import write_bytes


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table>"


def build_report(run: str | Path, out: str | Path | None = None) -> Path:
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory")
    parts = [f"<h1>Cadenza run: {html.escape(str(run))}</h1>"]
    ck = next((run / n for n in ("best", "last", "run/best", "run-0/best")  # run-0: ensembles
               if (run / n / "config.json").exists()), None)
    if ck is not None:
        cfg = json.loads((ck / "config.json").read_text())
        metrics = json.loads((ck / "metrics.json").read_text()) if (
            ck / "metrics.json").exists() else {}
        parts.append("<h2>Model and training</h2>")
        parts.append(_table([("checkpoint", str(ck)),
                             ("parameters", f"{cfg.get('parameters', 0):,}"),
                             ("tokenizer", cfg["tokenizer"]["name"]),
                             ("data", cfg["data"]["path"])]
                            + [(f"model.{k}", str(v)) for k, v in cfg["model"].items()]
                            + [(f"train.{k}", str(v)) for k, v in cfg["train"].items()]))
        parts.append("<h2>Metrics</h2>" + _table([(k, f"{v:.4f}" if isinstance(v, float)
                                                    else str(v)) for k, v in metrics.items()]))
    for png in sorted(run.rglob("loss.png"))[:3] + sorted(run.rglob("models.png"))[:1]:
        parts.append(f"<h3>{html.escape(str(png.relative_to(run)))}</h3>"
                     f"<img src='{_data_uri(png, 'image/png')}'>")
    for bj in sorted(run.rglob("bench.json")):
        parts.append(f"<h2>Benchmark {html.escape(str(bj.relative_to(run)))}</h2>"
                     f"<pre>{html.escape(_bench_text(json.loads(bj.read_text())))}</pre>")
    samples = sorted(run.rglob("sample-*.json"))
    if samples:
        parts.append("<h2>Samples</h2>")
    for sj in samples:
        info = json.loads(sj.read_text())
        parts.append(f"<h3>{html.escape(str(sj.relative_to(run)))}</h3>")
        png, wav = sj.with_suffix(".png"), sj.with_suffix(".wav")
        if png.exists():
            parts.append(f"<img src='{_data_uri(png, 'image/png')}'>")
        if wav.exists():
            parts.append(f"<audio controls src='{_data_uri(wav, 'audio/wav')}'></audio>")
        parts.append(f"<pre>{html.escape(json.dumps(info, indent=1))}</pre>")
    stats = sorted(run.rglob("stats.json"))
    for st in stats:
        parts.append(f"<h2>Statistics {html.escape(str(st.relative_to(run)))}</h2>"
                     f"<pre>{html.escape(st.read_text())}</pre>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Cadenza report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
            "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 8px;"
            "text-align:left}pre{background:#f6f6f6;padding:8px;overflow:auto}</style></head>"
            "<body>" + "\n".join(parts) + "</body></html>\n")
    dest = Path(out) if out else run / "report.html"
    write_bytes(dest, page.encode())
    return dest


def _bench_text(r: dict) -> str:
    from . import bench
    if r.get("benchmark") == "jsb16":
        return bench.format_jsb16(r)
    if str(r.get("benchmark", "")).startswith("pianoroll"):
        return bench.format_pianoroll(r)
    if r.get("benchmark") == "models":
        return bench.format_models(r)
    return json.dumps(r, indent=1)
