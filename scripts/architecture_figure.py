"""Draw docs/architecture.png: what `--model encoder-decoder` builds (models/encdec.py), box
by box, with the class that implements each box. Run: python scripts/architecture_figure.py"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ATTN, FF, NORM, EMB, OUT = "#f6d5a8", "#c9e4f6", "#e8e8e8", "#d9f0d3", "#f3c7d6"


def box(ax, x, y, w, h, text, color, size=8.5):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=color, ec="#444", lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def arrow(ax, a, b, **kw):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=10, lw=0.9,
                                 color="#333", **kw))


def main(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 8.2))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10.4)
    ax.axis("off")
    # encoder (left)
    ex, w = 0.6, 3.4
    box(ax, ex, 0.3, w, 0.6, "melody tokens (source)\n[BOS s1 s2 ... EOS]", "white")
    box(ax, ex, 1.2, w, 0.7, "embedding x sqrt(d) + sinusoidal positions\n"
        "(tied to the decoder's and the output's)", EMB)
    ax.add_patch(FancyBboxPatch((ex - 0.2, 2.2), w + 0.4, 4.2, boxstyle="round,pad=0.02",
                                fc="none", ec="#888", ls="--"))
    ax.text(ex - 0.1, 6.2, "encoder layer x N\n(EncoderLayer)", fontsize=8, va="top")
    box(ax, ex, 2.5, w, 0.8, "self-attention, every position\nsees every other "
        "(padding masked)\nEncoderAttention", ATTN)
    box(ax, ex, 3.5, w, 0.45, "add & LayerNorm (pre or post)", NORM)
    box(ax, ex, 4.15, w, 0.7, "feed-forward d -> d_ff -> d\nFeedForward", FF)
    box(ax, ex, 5.05, w, 0.45, "add & LayerNorm", NORM)
    for y0, y1 in ((0.9, 1.2), (1.9, 2.5), (3.3, 3.5), (3.95, 4.15), (4.85, 5.05)):
        arrow(ax, (ex + w / 2, y0), (ex + w / 2, y1))
    box(ax, ex, 6.8, w, 0.75, "encoder output (memory)\nkeys and values computed once\n"
        "per source (EncDecCache.cross)", "#fff7e6")
    arrow(ax, (ex + w / 2, 5.5), (ex + w / 2, 6.8))
    # decoder (right)
    dx = 5.6
    box(ax, dx, 0.3, w, 0.6, "target so far (alto/tenor/bass, or piano)\n[BOS t1 ... t_i]",
        "white")
    box(ax, dx, 1.2, w, 0.7, "embedding x sqrt(d) + sinusoidal positions", EMB)
    ax.add_patch(FancyBboxPatch((dx - 0.2, 2.2), w + 0.4, 5.9, boxstyle="round,pad=0.02",
                                fc="none", ec="#888", ls="--"))
    ax.text(dx + w + 0.25, 7.9, "decoder layer x N\n(DecoderLayer)", fontsize=8, va="top",
            ha="left")
    box(ax, dx, 2.5, w, 0.8, "masked self-attention: position i\nsees 1..i only (causal, "
        "KV cache)\nAttention", ATTN)
    box(ax, dx, 3.5, w, 0.45, "add & LayerNorm", NORM)
    box(ax, dx, 4.15, w, 0.8, "cross-attention: queries from the\ntarget, keys/values from "
        "the memory\nCrossAttention", ATTN)
    box(ax, dx, 5.15, w, 0.45, "add & LayerNorm", NORM)
    box(ax, dx, 5.8, w, 0.7, "feed-forward\nFeedForward", FF)
    box(ax, dx, 6.7, w, 0.45, "add & LayerNorm", NORM)
    for y0, y1 in ((0.9, 1.2), (1.9, 2.5), (3.3, 3.5), (3.95, 4.15), (4.95, 5.15),
                   (5.6, 5.8), (6.5, 6.7)):
        arrow(ax, (dx + w / 2, y0), (dx + w / 2, y1))
    arrow(ax, (ex + w, 7.2), (dx, 4.55), connectionstyle="arc3,rad=-0.25")
    box(ax, dx, 8.35, w, 0.7, "linear (the embedding matrix, tied)\n+ softmax over the "
        "vocabulary", OUT)
    arrow(ax, (dx + w / 2, 7.15), (dx + w / 2, 8.35))
    box(ax, dx, 9.35, w, 0.6, "grammar mask, temperature, top-k/p\n-> next token t_(i+1)",
        "white")
    arrow(ax, (dx + w / 2, 9.05), (dx + w / 2, 9.35))
    ax.text(0.4, 10.2, "Cadenza's encoder-decoder\n(Vaswani et al. 2017), models/encdec.py",
            fontsize=12, weight="bold", va="top")
    ax.text(0.4, 9.2, "--model encoder-decoder: N = --n-layer encoder and decoder layers;\n"
            "--position sinusoidal | learned | rope; --norm pre | post (the paper's).\n"
            "--model transformer is the right column without cross-attention,\n"
            "reading the melody as a prefix: [BOS src EOS BOS tgt EOS].", fontsize=8.5,
            va="top")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/architecture.png"))
