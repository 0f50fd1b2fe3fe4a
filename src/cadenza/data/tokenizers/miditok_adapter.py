"""``miditok:NAME`` (and ``remi``): any MidiTok tokenizer (Fradet et al. 2021) in one stream.

MidiTok owns the vocabulary; its PAD/BOS/EOS ids are 0/1/2 like ours. MidiTok has no
notion of a grammar, so ours is first-order on token *types*: a type may follow another
only if that succession occurs in the prepared training data (``fit_grammar``). MidiTok's
decoder skips what it cannot use, so a sequence that obeys this still decodes.

Try it: ``cadenza prepare builtin:chorales --tokenizer miditok:TSD --out data/tsd``.
"""

from __future__ import annotations

import functools
import json
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import symusic

from ..midi import Notes, notes_from_score, score_from_notes
from .base import BOS, CLOCK, EOS, PAD, PITCH, VELOCITY, Grammar, NoteRoles, Tokenizer

NAMES = ("REMI", "TSD", "MIDILike", "Structured", "CPWord", "Octuple", "MuMIDI", "MMM")
STREAM_NAMES = ("REMI", "TSD", "MIDILike", "Structured")  # single-stream, no multi-vocab
PROBE = 108  # pitch of the marker note that reads a stream's time (any pitch would do)


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

    # --- time: where a stream has got to ---------------------------------------------------
    # MidiTok streams carry time in scheme-specific tokens (Bar/Position, TimeShift). Rather
    # than re-implement each scheme, both questions are asked of MidiTok itself with a
    # marker note: encoded at a moment and then removed, it leaves the tokens that move time
    # there; decoded after a stream, its onset is where the stream has got to.

    def _note_tokens(self, ids: np.ndarray, pitch: int) -> np.ndarray:
        """(N,) bool: the tokens of the last note of ``pitch`` from its Pitch/NoteOn token
        on, other than releases of other notes (MIDILike closes them there)."""
        names = [self.vocab[i] for i in ids]
        start = max(i for i, n in enumerate(names) if n in (f"Pitch_{pitch}",
                                                             f"NoteOn_{pitch}"))
        mark = np.zeros(len(ids), bool)
        mark[start:] = [not (n.startswith("NoteOff_") and n != f"NoteOff_{pitch}")
                        for n in names[start:]]
        return mark

    def encode_primer(self, score, seconds: float = 0.0, sustain_pedal: bool = True
                      ) -> np.ndarray:
        notes = self.score_notes(score, sustain_pedal, seconds)
        end = seconds or notes.duration
        free = [p for p in range(108, 20, -1) if p not in set(notes.pitch.tolist())]
        if not free:  # every key in use: no marker pitch left (the stream ends at its last note)
            return self.encode(self.piece_from_notes(notes))
        marker = Notes.make(np.r_[notes.start, end], np.r_[notes.end, end + 0.5],
                            np.r_[notes.pitch, free[0]], np.r_[notes.velocity, 64])
        ids = self.encode(self.piece_from_notes(marker))
        return ids[~self._note_tokens(ids, free[0])]

    @functools.cached_property
    def _probe(self) -> np.ndarray:
        """A marker note's own tokens (from its Pitch/NoteOn on), to append to a stream."""
        ids = self.encode(self.piece_from_notes(Notes.make([0.0], [0.5], [PROBE], [64])))
        return ids[self._note_tokens(ids, PROBE)]

    def stream_seconds(self, ids: np.ndarray) -> float:
        """The time a token stream has reached: the onset of a marker note after it."""
        notes = self.decode_notes(np.concatenate([np.asarray(ids, np.int64), self._probe]))
        at = notes.start[notes.pitch == PROBE]
        return float(at.max()) if len(at) else (float(notes.start.max()) if len(notes) else 0.0)

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

    def note_roles(self) -> NoteRoles:
        """Pitch/NoteOn tokens strike, each note's Velocity token follows it. Polyphony and
        repeats would need each note's time and length token by token, which MidiTok's
        streams give only through a decode; those controls say so."""
        pitch = np.full(self.vocab_size, -1, np.int64)
        velocity = np.full(self.vocab_size, -1, np.int64)
        for i, name in enumerate(self.vocab):
            kind, _, val = name.partition("_")
            if kind in ("Pitch", "NoteOn") and val.isdigit():
                pitch[i] = int(val)
            elif kind == "Velocity" and val.isdigit():
                velocity[i] = int(val)
        carries = {PITCH, CLOCK} | ({VELOCITY} if (velocity >= 0).any() else set())
        return NoteRoles(pitch, velocity, frozenset(carries))

    def fit_grammar(self, sequences: Iterable[np.ndarray]) -> None:
        """Record which token types follow which in real data (BOS starts, EOS ends)."""
        n = len(self.type_names)
        tr = np.zeros((n, n), bool)
        for ids in sequences:
            full = np.concatenate([[BOS], ids, [EOS]])
            t = self.type_of[full]
            tr[t[:-1], t[1:]] = True
        self.transitions = tr

    def grammar(self) -> Grammar:
        return TypeGrammar(self.type_of, self.transitions, self.stream_seconds,
                           self.vocab)


class TypeGrammar(Grammar):
    """Type successions seen in training; time from the tokenizer's ``clock`` (a MidiTok
    decode), read again every ``CLOCK_EVERY`` tokens (``--seconds`` may overshoot by that)."""

    CLOCK_EVERY = 8

    def __init__(self, type_of: np.ndarray, transitions: np.ndarray | None,
                 clock: Callable[[np.ndarray], float] | None = None,
                 vocab: list[str] | None = None) -> None:
        super().__init__(len(type_of))
        self.type_of = type_of
        self.transitions = transitions
        self.clock = clock
        # Bar-relative schemes (REMI): a Position inside a bar must not go back in time
        # (a type grammar allows Position_16 then Position_8, which decodes to a note
        # earlier than the one before it); a Bar token starts the count again.
        names = vocab or []
        self.position = np.array([int(n.split("_")[1]) if n.startswith("Position_")
                                  and n.split("_")[1].isdigit() else -1 for n in names])
        self.bar = np.array([n.startswith("Bar_") for n in names], bool)

    def reset(self, batch: int) -> None:
        super().reset(batch)
        self.last = np.full(batch, BOS, np.int64)
        self.history: list[list[int]] = [[] for _ in range(batch)]
        self.at = np.full(batch, -1)  # current Position within the bar
        self.seconds = np.zeros(batch)
        self.read_at = np.zeros(batch, np.int64)

    def elapsed(self) -> np.ndarray:
        if self.clock is not None:
            for b, h in enumerate(self.history):
                if len(h) - self.read_at[b] >= self.CLOCK_EVERY or (h and not self.read_at[b]):
                    self.seconds[b] = self.clock(np.array(h, np.int64))
                    self.read_at[b] = len(h)
        return self.seconds.copy()

    def allowed(self) -> np.ndarray:
        m = super().allowed()
        live = ~self.done
        if self.transitions is not None:
            ok = self.transitions[self.type_of[self.last[live]]][:, self.type_of]
            m[live] &= ok
        if len(self.position) and (self.position >= 0).any():
            back = (self.position[None, :] >= 0) & (self.position[None, :] < self.at[:, None])
            m[live] &= ~back[live]
        m[live, EOS] |= ~m[live].any(1)  # never a dead end
        return m

    def advance(self, tokens: np.ndarray) -> None:
        for b in np.flatnonzero(~self.done & (tokens > EOS)):
            self.history[b].append(int(tokens[b]))
        if len(self.position):
            live = ~self.done & (tokens > EOS)
            t = np.where(live, tokens, 0)
            pos = self.position[t]
            self.at = np.where(live & self.bar[t], -1, np.where(live & (pos >= 0), pos, self.at))
        self.last = np.where(self.done, self.last, tokens)
        super().advance(tokens)

    def feed(self, ids: np.ndarray) -> None:
        super().feed(ids)
        self.read_at[:] = 0  # read the prompt's time afresh
