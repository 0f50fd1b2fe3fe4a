"""``cadenza attention``: what each head looks at, one picture per layer.

The weights come from a separate path: a forward hook on every attention module records what
it was called with, and the module's ``probs`` recomputes its softmax weights from that,
written out. The fused attention that training and sampling run is untouched and never slowed.

A decoder-only model reads the first ``--tokens`` tokens of the primer: ``layer-K.png`` shows
each head's (query, key) weights, causal, so the upper triangle is empty. An encoder-decoder
reads the melody's first window (its task's, as ``harmonize``/``accompany`` cut it), writes
a target for it (seed 0), and shows three kinds: ``encoder-K.png`` (the melody attending to
itself, both ways), ``decoder-K.png`` (the new part's masked self-attention) and
``cross-K.png`` (each new token's look at the melody). Axes name tokens by time and note
(``1.25s E4``; a time shift is ``+0.3s``), a few dozen labels per axis.

Try it: ``cadenza attention --checkpoint pretrained:piano --primer builtin:openings --out att``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path, write_bytes
from .checkpoint import load_checkpoint
from .config import AttentionConfig, Steering
from .data.midi import BadInput, load_score
from .data.task import Windows
from .data.tokenizers import BOS, framed
from .data.tokenizers.chorale16 import StepGrammar
from .evaluate import evaluating
from .generate import resolve_primer
from .models.encdec import CrossAttention, EncoderAttention
from .models.transformer import Attention
from .render import note_name
from .tasks import generate_windows

MAX_LABELS = 32


@torch.no_grad()
def attention_maps(model: torch.nn.Module, idx: torch.Tensor, src: torch.Tensor | None = None
                   ) -> dict[str, np.ndarray]:
    """Each attention module's weights for one sequence: name -> (H, queries, keys), rows
    summing to one. Names: ``layer-K`` (decoder-only), or ``encoder-K``, ``decoder-K``,
    ``cross-K`` (encoder-decoder); K counts from 1."""
    kinds = {EncoderAttention: "encoder", CrossAttention: "cross", Attention: "layer"}
    calls: list[tuple[str, torch.nn.Module, tuple]] = []
    hooks, count = [], {}
    encdec = src is not None
    for m in model.modules():
        kind = kinds.get(type(m))
        if kind is None:
            continue
        if kind == "layer" and encdec:
            kind = "decoder"
        count[kind] = count.get(kind, 0) + 1
        name = f"{kind}-{count[kind]}"
        hooks.append(m.register_forward_hook(
            lambda mod, args, out, name=name: calls.append((name, mod, args))))
    if not hooks:
        raise ValueError("this model has no attention (an RNN reads one token at a time); "
                         "use a Transformer or encoder-decoder checkpoint")
    try:
        with evaluating(model):
            model(idx, src=src) if encdec else model(idx)
    finally:
        for h in hooks:
            h.remove()
    return {name: mod.probs(*args)[0].float().cpu().numpy() for name, mod, args in calls}


def token_labels(tok, ids: np.ndarray, voices: int = 0) -> list[str]:
    """A short name per token: its time (the grammar's clock) and note, e.g. ``1.25s E4``;
    a time shift is ``+0.30s``; BOS/EOS by name. ``voices``: a grid stream of that many
    tokens a step (harmonize: 1 for the soprano, 3 for alto, tenor and bass), not the
    tokenizer's own."""
    g = StepGrammar(tok.vocab_size, voices, tok.step_seconds) if voices else tok.grammar()
    g.reset(1)
    out = []
    for t in np.asarray(ids, np.int64):
        at = float(g.elapsed()[0])
        name = tok.vocab[t] if t < len(tok.vocab) else str(t)
        pitch = int(tok.pitches[t]) if t < len(tok.pitches) else -1
        if pitch >= 0:
            off = "off " if "OFF" in name else ""
            out.append(f"{at:.2f}s {off}{note_name(pitch)}")
        elif name.startswith("TIME_SHIFT"):
            g.advance(np.array([t]))
            out.append(f"+{float(g.elapsed()[0]) - at:.2f}s")
            continue
        else:
            out.append(name.lower() if name in ("BOS", "EOS", "PAD") else name)
        if t != BOS:
            g.advance(np.array([t]))
    return out


def plot_layer(weights: np.ndarray, qlabels: list[str], klabels: list[str], title: str,
               path: Path) -> Path:
    """Every head of one layer side by side: rows are queries, columns keys."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    H = weights.shape[0]
    cols = min(H, 4)
    rows = -(-H // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.4 * rows + 0.6), squeeze=False)
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= H:
            ax.axis("off")
            continue
        ax.imshow(weights[h], cmap="viridis", vmin=0, aspect="auto", interpolation="nearest")
        ax.set_title(f"head {h + 1}", fontsize=9)
        for axis, labels in ((ax.set_yticks, qlabels), (ax.set_xticks, klabels)):
            step = max(1, -(-len(labels) // MAX_LABELS))
            at = list(range(0, len(labels), step))
            axis(at, [labels[i] for i in at], fontsize=5)
        ax.tick_params(axis="x", labelrotation=90)
    fig.suptitle(title, fontsize=11)
    fig.supxlabel("key (what is looked at)", fontsize=9)
    fig.supylabel("query (the token being predicted from)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def run_attention(cfg: AttentionConfig, *, device: str = "cpu") -> list[Path]:
    """The command: the PNGs written (and ``attention.json`` beside them)."""

    ck = load_checkpoint(cfg.checkpoint, device=device)
    ck.model.float()
    tok = ck.tokenizer
    out = Path(cfg.out)
    if out.is_dir() and any(out.glob("*.png")) and not cfg.force:
        raise FileExistsError(f"--out {cfg.out}: holds pictures of an earlier run; choose "
                              "another folder, or pass --force to replace them")
    path = resolve_primer(cfg.primer)
    task, src_ids, head = ck.task, None, []
    try:
        score = load_score(path)
        if not task.paired:
            ids = np.concatenate([[BOS], tok.encode_primer(score)])[: cfg.tokens]
        else:  # the model's answer to the melody's first window
            windows = task.windows(tok, score, path, 0.0)
            if not windows.sources:
                raise BadInput("no melody notes")
            first = Windows(windows.sources[:1], windows.places[:1], windows.melody)
            new = generate_windows(ck, first, Steering())[0][0]
            ids = np.concatenate([[BOS], new])[: cfg.tokens]
            src_ids = framed(first.sources[0])[: cfg.tokens]
            if ck.model_cfg.kind != "encoder-decoder":  # one sequence: [BOS src EOS] BOS new
                head, ids, src_ids = list(src_ids), np.concatenate([src_ids, ids]), None
    except BadInput as e:
        raise BadInput(f"--primer {path}: {e}") from e
    if ck.model.max_context is not None:
        ids = ids[: ck.model.max_context]
    dev = next(ck.model.parameters()).device
    src_t = torch.as_tensor(src_ids, device=dev)[None] if src_ids is not None else None
    maps = attention_maps(ck.model, torch.as_tensor(ids, device=dev)[None], src_t)
    labels = token_labels(tok, ids[len(head):], task.target_voices)
    if head:  # a decoder-only model's prefix: the melody, labelled as the melody
        labels = token_labels(tok, np.array(head), task.source_voices) + labels
    slabels = token_labels(tok, src_ids, task.source_voices) if src_ids is not None else []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    p = Path(str(ck.path))  # RUN/best: the run's name
    model_name = p.parent.name if p.name in ("best", "last") else p.name
    what = {"layer": "self-attention", "encoder": "encoder self-attention (melody)",
            "decoder": "decoder masked self-attention (new part)",
            "cross": "cross-attention: new part (rows) looking at the melody (columns)"}
    for name, w in maps.items():
        kind, k = name.split("-")
        q = slabels if kind == "encoder" else labels
        kl = slabels if kind in ("encoder", "cross") else labels
        written.append(plot_layer(w, q, kl, f"{model_name}: {what[kind]}, layer "
                                  f"{k} ({w.shape[0]} heads)", out / f"{name}.png"))
    record = {"checkpoint": str(ck.path), "primer": str(path), "task": task.name,
              "tokens": labels, "source_tokens": slabels,
              "maps": {n: list(w.shape) for n, w in maps.items()}}
    write_bytes(out / "attention.json", (json.dumps(record, indent=1) + "\n").encode())
    return written

