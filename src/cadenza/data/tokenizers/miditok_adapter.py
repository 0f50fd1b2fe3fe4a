"""``miditok:NAME`` (and ``remi``): any MidiTok tokenizer (Fradet et al. 2021) in one stream.

MidiTok owns the vocabulary; its PAD/BOS/EOS ids are 0/1/2 like ours. MidiTok has no
notion of a grammar, so ours is first-order on token *types*: a type may follow another
only if that succession occurs in the prepared training data (``fit_grammar``). MidiTok's
decoder skips what it cannot use, so a sequence that obeys this still decodes.

Try it: ``cadenza prepare builtin:chorales --tokenizer miditok:TSD --out data/tsd``.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import symusic

from ..midi import Notes, notes_from_score, score_from_notes
from .base import BOS, EOS, PAD, Grammar, Tokenizer

NAMES = ("REMI", "TSD", "MIDILike", "Structured", "CPWord", "Octuple", "MuMIDI", "MMM")
STREAM_NAMES = ("REMI", "TSD", "MIDILike", "Structured")  # single-stream, no multi-vocab


def _miditok():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import miditok
    return miditok


class MidiTokTokenizer(Tokenizer):
    def __init__(self, scheme: str = "REMI", params: dict[str, Any] | None = None,
                 transitions: list[list[int]] | None = None) -> None:
        super().__init__()
        if scheme not in STREAM_NAMES:
            raise ValueError(f"--tokenizer: miditok:{scheme} is not a single-stream MidiTok "
                             f"tokenizer; use one of {', '.join(STREAM_NAMES)}")
        mt = _miditok()
        cls = getattr(mt, scheme)
        if params is None:
            self.mt = cls(mt.TokenizerConfig(use_programs=False, use_sustain_pedals=False))
        else:
            with tempfile.TemporaryDirectory() as d:
                f = Path(d) / "tokenizer.json"
                f.write_text(json.dumps(params))
                self.mt = cls(params=f)
        self.scheme = scheme
        self.name = f"miditok:{scheme}"
        inv = {i: t for t, i in self.mt.vocab.items()}
        self.vocab = [inv[i] for i in range(len(inv))]
        assert self.vocab[PAD].startswith("PAD") and self.vocab[BOS].startswith("BOS")
        assert self.vocab[EOS].startswith("EOS")
        types = sorted({t.split("_")[0] for t in self.vocab})
        self.type_names = types
        self.type_of = np.array([types.index(t.split("_")[0]) for t in self.vocab])
        self.transitions = None if transitions is None else np.array(transitions, bool)

    def config(self) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / "tokenizer.json"
            self.mt.save(f)
            params = json.loads(f.read_text())
        cfg: dict[str, Any] = {"scheme": self.scheme, "params": params}
        if self.transitions is not None:
            cfg["transitions"] = self.transitions.astype(int).tolist()
        return cfg

    def piece_from_score(self, score: symusic.Score, sustain_pedal: bool = True):
        # One merged piano track (what every other scheme sees), resolution kept.
        return score_from_notes(notes_from_score(score, sustain_pedal))

    def piece_from_notes(self, notes: Notes) -> symusic.Score:
        return score_from_notes(notes)

    def encode(self, score: symusic.Score) -> np.ndarray:
        out = self.mt.encode(score)
        seq = out[0] if isinstance(out, list) else out
        ids = np.asarray(seq.ids, np.int64)
        return ids[ids > EOS]

    def decode(self, ids: np.ndarray) -> symusic.Score:
        ids = np.asarray(ids, np.int64)
        eos = np.flatnonzero(ids == EOS)
        if len(eos):
            ids = ids[: eos[0]]
        ids = ids[ids > EOS].tolist()
        if not ids:
            return score_from_notes(Notes.make([], [], [], []))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.mt.decode([ids])

    def notes_of(self, score: symusic.Score) -> Notes:
        try:
            return notes_from_score(score, sustain_pedal=False)
        except ValueError:  # nothing decodable yet
            return Notes.make([], [], [], [])

    def pitch_table(self) -> np.ndarray:
        t = np.full(self.vocab_size, -1, np.int64)
        for i, name in enumerate(self.vocab):
            kind, _, val = name.partition("_")
            if kind in ("Pitch", "NoteOn", "NoteOff") and val.isdigit():
                t[i] = int(val)
        return t

    def fit_grammar(self, sequences: list[np.ndarray]) -> None:
        """Record which token types follow which in real data (BOS starts, EOS ends)."""
        n = len(self.type_names)
        tr = np.zeros((n, n), bool)
        for ids in sequences:
            full = np.concatenate([[BOS], ids, [EOS]])
            t = self.type_of[full]
            tr[t[:-1], t[1:]] = True
        self.transitions = tr

    def grammar(self) -> Grammar:
        return TypeGrammar(self.type_of, self.transitions)


class TypeGrammar(Grammar):
    def __init__(self, type_of: np.ndarray, transitions: np.ndarray | None) -> None:
        super().__init__(len(type_of))
        self.type_of = type_of
        self.transitions = transitions

    def reset(self, batch: int) -> None:
        super().reset(batch)
        self.last = np.full(batch, BOS, np.int64)

    def allowed(self) -> np.ndarray:
        m = super().allowed()
        if self.transitions is not None:
            live = ~self.done
            ok = self.transitions[self.type_of[self.last[live]]][:, self.type_of]
            m[live] &= ok
            m[live, EOS] |= ~m[live].any(1)  # never a dead end
        return m

    def advance(self, tokens: np.ndarray) -> None:
        self.last = np.where(self.done, self.last, tokens)
        super().advance(tokens)
