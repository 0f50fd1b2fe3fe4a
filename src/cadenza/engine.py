"""The generation engine: the stateful loop over token ids that every way of generating runs
on (``generate``, ``infill``, the duet, ``harmonize``/``accompany``, the studio, the
benchmarks).

An :class:`Engine` runs on a session (session.py: the loaded model, its tokenizer and
what it reads first) and holds the model's cache (key/values, or an RNN's state), the
tokenizer's grammar and its clock, the controls (controls.py), the sampling settings and the
seeded generator. ``feed`` extends the context without sampling (a primer, what a player just
played); ``step`` draws one token per sample; ``run`` steps until the asked seconds or tokens
exist, and says why each sample stopped. Between calls its state can be read: the tokens so
far, the time the music has reached, why a sample stopped.

Each draw: the model's logits (under ``--guidance W``, classifier-free guidance: the model
also reads the latest ``--guidance-context`` tokens with the style's tags and without them,
and the draw uses log p(tagged) + (W - 1) (log p(tagged | recent) - log p(untagged |
recent)), releases left out of that term), the grammar's mask (never an undecodable
sequence), the hard controls' mask, the soft controls' bias, then temperature, top-k and
top-p, and a seeded draw (same seed, same music). EOS and PAD are masked until the asked
length exists, unless ``may_end``. With a cache each token costs one position; past the
model's context the engine keeps the most recent half (on a voice-period boundary) and
re-reads it: the one place that slides.

The model never learns of MIDI: the tokenizer's grammar and ``note_roles`` tell the engine
what tokens mean.

Try it::

    eng = Engine(Session(model, tok), SampleConfig(seconds=10, key="D minor"))
    eng.feed(prompt)            # (T,) or (B, T) ids, starting with BOS
    result = eng.run()          # result.tokens[b], result.stopped[b]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from .config import SampleConfig
from .controls import Controls, Step
from .data.styles import Conditioning
from .data.tokenizers import EOS, PAD
from .data.tokenizers.base import Grammar

Progress = Callable[[float], None]  # hears the share of the sampling done, 0..1

# Why a sample stopped (Run.stopped):
SECONDS = "seconds"  # it reached the seconds asked
TOKENS = "tokens"  # it reached the tokens asked
EOS_STOP = "eos"  # the model ended the piece (allowed with may_end)
DEAD_END = "dead-end"  # nothing but EOS was legal (a grammar's or the controls' dead end)
TOKEN_LIMIT = "token-limit"  # the token ceiling came before the seconds asked
WHY = {SECONDS: "reached the seconds asked", TOKENS: "reached the tokens asked",
       EOS_STOP: "the model ended the piece (--may-end)",
       DEAD_END: "the grammar allowed nothing but the end",
       TOKEN_LIMIT: "the token ceiling came first"}
TOKENS_PER_SECOND_CEILING = 200  # --seconds S samples at most 200 S tokens


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the k most likely tokens and/or the smallest set with mass >= top_p."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_l, idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_l, -1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return logits


def draw(logits: torch.Tensor, allowed: torch.Tensor, cfg, gen: torch.Generator,
         no_end: np.ndarray | None = None) -> torch.Tensor:
    """One token per row of ``logits`` (B, V), among the ``allowed`` ones, at the
    temperature, after top-k/top-p: (B,) on the CPU.

    ``torch.multinomial(probs, 1)`` draws q ~ Exp(1) per token and takes argmax(probs / q);
    this does exactly that, with the same generator, so the tokens are the same, with one
    check of the distribution instead of multinomial's three (decoding pays per operation).

    ``no_end`` (B,) bool: rows whose EOS and PAD are taken out after top-k/top-p (before
    the length asked), so that where the draw would not have been one of them it is the
    same token as without them; a row left with nothing draws again with them masked from
    the start."""
    lg = torch.where(allowed, logits.float(), float("-inf"))
    if cfg.temperature != 1.0:
        lg = lg / cfg.temperature
    probs = torch.softmax(filter_logits(lg, cfg.top_k, cfg.top_p), -1).cpu()
    if not bool(probs.isfinite().all()):  # NaN logits, or no token allowed
        raise RuntimeError("sampling: the model's next-token distribution is not finite")
    if no_end is not None and no_end.any():
        rows = torch.from_numpy(np.flatnonzero(no_end))
        probs[rows[:, None], torch.tensor([EOS, PAD])] = 0.0
        empty = rows[probs[rows].sum(-1) == 0]
        if len(empty):  # the nucleus held only those: renormalise without them
            lg_e = lg[empty].clone()
            lg_e[:, [EOS, PAD]] = float("-inf")
            probs[empty] = torch.softmax(filter_logits(lg_e, cfg.top_k, cfg.top_p), -1).cpu()
    q = torch.empty_like(probs).exponential_(1.0, generator=gen)
    return (probs / q).argmax(-1)


@dataclass(frozen=True)
class Run:
    """What one ``Engine.run`` wrote: each sample's new tokens, cut at its end, and why it
    stopped (SECONDS, TOKENS, EOS_STOP, DEAD_END or TOKEN_LIMIT). In a batch, a sample that
    ended keeps drawing until all have (their draws share one generator): the engine's
    context holds those tokens too, so only a batch of one is continued token for token."""

    tokens: list[np.ndarray]
    stopped: list[str]


class Reading:
    """One way the model reads the engine's context: ``head`` before it, the cache of what it
    has read, how many of the context's tokens that is (``fed``), the logits after them."""

    def __init__(self, head: Conditioning, room: int | None = None) -> None:
        self.head = head
        self.room = room  # the most context tokens it reads after its head (None: the model's)
        self.cache = None
        self.fed = 0
        self.logits: torch.Tensor | None = None


class Engine:
    """Generation over a batch of ``batch`` samples, on a session (see the module's doc)."""

    def __init__(self, session, cfg: SampleConfig, *, batch: int = 1,
                 steps: Sequence[Step] = (), use_cache: bool = True,
                 grammar: Grammar | None = None, head: Conditioning | None = None) -> None:
        # ``session``: the loaded model (session.Session: its model, tokenizer, voice period
        # and conditioning); ``grammar``: instead of a fresh one of the session's tokenizer
        model, tok = session.model, session.tok
        self.model, self.cfg = model, cfg
        self.grammar = grammar = grammar if grammar is not None else tok.grammar()
        # what every window the model reads starts with (a --style's tags; an infill's
        # fill-in-the-middle prompt): kept through every slide, never read by the grammar or
        # the controls, never sampled
        self.head = head if head is not None else session.conditioning(cfg)
        # each way the model reads the context: with the head; and, under --guidance W != 1,
        # the latest --guidance-context tokens alone (an infill's fixed prompt left out too)
        # with the tags and without them (classifier-free guidance: the draw adds W - 1
        # times their difference; over the whole context the first reading is the tagged one)
        self.readings = [Reading(self.head)]
        if cfg.guidance != 1.0 and self.head.tags:
            if cfg.guidance_context:
                recent = replace(self.head, fixed=())
                self.readings += [Reading(recent, cfg.guidance_context),
                                  Reading(replace(recent, tags=()), cfg.guidance_context)]
            else:
                self.readings.append(Reading(replace(self.head, tags=())))
        self.batch, self.period, self.use_cache = batch, session.period, use_cache
        self.device = next(model.parameters()).device
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        # the steps after the grammar's mask: each control cfg turns on (controls.py), then
        # any the caller adds; None when there are none (a draw then skips them)
        roles, scheme = (tok.note_roles(), tok.name) if tok is not None else (None, "")
        self.controls: Controls | None = Controls(cfg, roles, scheme, steps) or None
        if self.controls is not None:
            self.controls.reset(batch)
        # releases (NOTE_OFF) take no guidance over the recent tokens: the note a release ends
        # may have slid out of the recent window, where releasing it reads as noise (with the
        # term on them, guided takes filled with notes never released: docs/generation.md)
        self.unguided = None
        if len(self.readings) == 3 and roles is not None and roles.release is not None:
            self.unguided = torch.as_tensor(np.flatnonzero(roles.release >= 0),
                                            device=self.device)
        grammar.reset(batch)
        self.buf = torch.zeros((batch, 256), dtype=torch.long, device=self.device)
        self.n = 0  # tokens in the context so far

    # --- the context ---------------------------------------------------------------------

    @property
    def max_context(self) -> int | None:
        return self.model.max_context

    def tokens(self) -> np.ndarray:
        """(B, T) every token so far (the primer's, fed ones and sampled ones)."""
        return self.buf[:, : self.n].cpu().numpy()

    def elapsed(self) -> np.ndarray:
        """(B,) seconds the music has reached (the grammar's clock)."""
        return self.grammar.elapsed()

    def _append(self, ids: torch.Tensor) -> None:
        if self.n + ids.shape[1] > self.buf.shape[1]:  # grow: appending stays a column write
            grown = torch.zeros((self.batch, 2 * (self.n + ids.shape[1])), dtype=torch.long,
                                device=self.device)
            grown[:, : self.n] = self.buf[:, : self.n]
            self.buf = grown
        self.buf[:, self.n: self.n + ids.shape[1]] = ids
        self.n += ids.shape[1]

    def feed(self, ids: np.ndarray) -> None:
        """Extend the context by ``ids`` ((T,) for every sample, or (B, T)) without sampling:
        the grammar, the controls and (at the next step) the model read them."""
        ids = np.asarray(ids, np.int64)
        if ids.ndim == 1:
            ids = np.repeat(ids[None], self.batch, 0)
        if self.controls is None or not self.controls.needs_times:
            self.grammar.feed(ids)
            if self.controls is not None:
                self.controls.feed(ids, None)
        else:  # the loop guard needs the time after each token
            times = np.zeros(ids.shape)
            for t in range(ids.shape[1]):
                self.grammar.feed(ids[:, t: t + 1])
                times[:, t] = self.grammar.elapsed()
            self.controls.feed(ids, times)
        self._append(torch.as_tensor(ids, dtype=torch.long, device=self.device))

    def _limit(self, r: Reading) -> int | None:
        """The most tokens reading ``r`` holds at once, its head included (None: no limit)."""
        if r.room is None:
            return self.max_context
        mine = len(r.head) + r.room
        return mine if self.max_context is None else min(mine, self.max_context)

    def _window(self, r: Reading, s: torch.Tensor, half: bool = False) -> torch.Tensor:
        """Reading ``r``'s head, then the latest tokens that fit after it (``half``: the
        recent half of the room, even when all would fit), starting on a voice-period
        boundary."""
        head, limit = r.head, self._limit(r)
        room = None if limit is None else limit - len(head)
        if not (room is None or (s.shape[1] <= room and not half) or s.shape[1] <= room // 2):
            keep = room // 2 if self.use_cache else room
            drop = s.shape[1] - keep
            drop += (-drop) % self.period
            s = s[:, drop:]
        return head.prepend(s)

    def _next_logits(self) -> torch.Tensor:
        """(B, V) logits after the last token: the model's reading, or under guidance
        log p(tagged) + (W - 1) (log p(tagged | recent) - log p(untagged | recent)), where
        "recent" is the latest --guidance-context tokens (with the whole context: log
        p(untagged) + W (log p(tagged) - log p(untagged)))."""
        if len(self.readings) == 1:
            return self._read(self.readings[0])
        tagged, *recent = (torch.log_softmax(self._read(r).float(), -1)
                           for r in self.readings)
        near, untagged = recent if len(recent) == 2 else (tagged, recent[0])
        toward = near - untagged
        if self.unguided is not None:
            toward[:, self.unguided] = 0.0
        return tagged + (self.cfg.guidance - 1.0) * toward

    @torch.no_grad()  # whichever thread calls (grad mode is per thread): a graph through
    def _read(self, r: Reading) -> torch.Tensor:  # the in-place cache would never be freed
        """(B, V) logits of reading ``r`` after the last token, reading what it has not
        read yet."""
        if not self.use_cache:
            return self.model(self._window(r, self.buf[:, : self.n]))[:, -1]
        new = self.n - r.fed
        if new == 0 and r.logits is not None:
            return r.logits
        max_len = self._limit(r)
        if r.cache is None or r.fed == 0 or \
                (max_len is not None and r.cache.length + new > max_len):
            return self._reread(r)  # the first read, or a slide
        r.logits = self.model(self.buf[:, r.fed: self.n], r.cache)[:, -1]
        r.fed = self.n
        return r.logits

    @torch.no_grad()
    def _reread(self, r: Reading, half: bool = False) -> torch.Tensor:
        """An emptied cache reads the context's window (past the context, or with ``half``:
        its recent half)."""
        if r.cache is not None and hasattr(r.cache, "reset"):
            r.cache.reset()  # its buffers reused: a slide costs the read alone
        else:
            r.cache = self.model.new_cache(self.batch)
        r.logits = self.model(self._window(r, self.buf[:, : self.n], half),
                              r.cache)[:, -1]
        r.fed = self.n
        return r.logits

    def prefill(self) -> None:
        """Read what was fed into the cache now, so that the next step costs one position
        (a live session calls this while the player plays)."""
        self._next_logits()

    def make_room(self, tokens: int) -> None:
        """Slide now (re-read the recent half into a fresh cache) if ``tokens`` more would
        not fit in the model's context; a live session calls it between answers."""
        if not self.use_cache:
            return
        for r in self.readings:
            max_len = self._limit(r)
            if max_len is None:
                continue
            ahead = min(tokens, max_len // 4)  # a slide keeps half: never one per call
            if r.cache is not None and r.cache.length + (self.n - r.fed) + ahead > max_len:
                self._reread(r, half=True)

    def rewind(self, n: int) -> None:
        """Forget every token after the first ``n`` (tokens drawn ahead that were never
        played): the grammar and the controls read the context again, and the model re-reads
        its window at the next step (``prefill`` does it ahead of time)."""
        assert 0 < n <= self.n, (n, self.n)
        kept = self.buf[:, :n].cpu().numpy()
        self.n = 0
        self.readings = [Reading(r.head, r.room) for r in self.readings]
        self.grammar.reset(self.batch)
        if self.controls is not None:
            self.controls.reset(self.batch)
        self.feed(kept)

    # --- sampling --------------------------------------------------------------------------

    def step(self, may_end: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Draw one token per sample and append it. Returns the tokens (B,) and which rows
        could draw nothing but EOS/PAD (a dead end) when ``may_end`` is False."""
        logits = self._next_logits()
        allowed = self.grammar.allowed()
        if self.controls is not None:
            now = self.grammar.elapsed()
            allowed = self.controls.restrict(allowed, self.grammar, now)
            logits = self.controls.bias(logits, self.grammar, now)
        dead = np.zeros(self.batch, bool)
        if not may_end:  # no end while anything else is legal
            dead = allowed.sum(1) == allowed[:, EOS].astype(int) + allowed[:, PAD]
        nxt = draw(logits, torch.from_numpy(allowed).to(self.device), self.cfg, self.gen,
                   None if may_end else ~dead)
        tokens = nxt.numpy()
        self.grammar.advance(tokens)
        if self.controls is not None:
            self.controls.advance(tokens, self.grammar.elapsed())
        self._append(nxt.to(self.device)[:, None])
        return tokens, dead

    def run(self, max_tokens: int | None = None, progress: Progress | None = None) -> Run:
        """Sample until each sample has the settings' seconds of new music or their tokens
        (the length is said once, in ``cfg``: ``eng.cfg = cfg.replace(seconds=4)`` asks for
        another), or has ended. EOS/PAD are not drawn before that unless ``cfg.may_end``.
        ``max_tokens`` caps a seconds run (default 200 a second). ``progress``, when given,
        hears the share done (0..1) every few tokens; an exception it raises stops sampling
        (the studio cancels that way)."""
        cfg = self.cfg
        seconds, tokens, may_end = cfg.seconds, cfg.tokens, cfg.may_end
        limit = max_tokens or tokens or int(max(seconds or 0, 1) * TOKENS_PER_SECOND_CEILING)
        B = self.batch
        t0 = self.grammar.elapsed().copy()
        if self.controls is not None:
            self.controls.begin(t0)
        start = self.n
        ends = np.full(B, -1)
        why = [TOKENS if tokens else TOKEN_LIMIT] * B
        for i in range(limit):
            # every sample draws until all have ended (one generator: each sample's draws
            # depend on the batch's), and a sample's tokens are cut at its end
            step, dead = self.step(may_end=may_end)
            for b in np.flatnonzero((ends < 0) & ((step == EOS) | (step == PAD))):
                ends[b], why[b] = i + 1, DEAD_END if dead[b] else EOS_STOP
            if seconds:
                reached = (ends < 0) & (self.grammar.elapsed() - t0 >= seconds)
                ends[reached] = i + 1
                for b in np.flatnonzero(reached):
                    why[b] = SECONDS
            if (ends >= 0).all():
                break
            if progress is not None and i % 8 == 0:
                if seconds:  # the slowest sample still running decides
                    done = np.where(ends >= 0, 1.0, (self.grammar.elapsed() - t0) / seconds)
                    progress(float(np.clip(done.min(), 0.0, 1.0)))
                else:
                    progress(i / limit)
        if progress is not None:
            progress(1.0)
        new = self.buf[:, start: self.n].cpu().numpy()
        cut = [new[b, : ends[b] if ends[b] >= 0 else new.shape[1]] for b in range(B)]
        return Run(cut, why)


@torch.no_grad()
def sample_run(session, prompt: np.ndarray, cfg: SampleConfig, *, max_new: int = 0,
               use_cache: bool = True, grammar: Grammar | None = None,
               progress: Progress | None = None, head: Conditioning | None = None) -> Run:
    """Continue ``prompt`` ((B, T0) ids starting with BOS) on a fresh Engine over ``session``
    by the config's seconds or tokens (at most ``max_new``: 0, the engine's ceiling): each
    sample's new tokens, cut at its end, and why it stopped (``Engine.run``)."""
    eng = Engine(session, cfg, batch=prompt.shape[0], use_cache=use_cache, grammar=grammar,
                 head=head)
    eng.feed(prompt)
    return eng.run(max_tokens=max_new, progress=progress)


def sample(session, prompt: np.ndarray, cfg: SampleConfig, max_new: int = 0,
           **how) -> list[np.ndarray]:
    """``sample_run``'s new tokens only (``how``: its keyword arguments)."""
    return sample_run(session, prompt, cfg, max_new=max_new, **how).tokens
