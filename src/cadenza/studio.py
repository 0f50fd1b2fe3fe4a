"""``cadenza studio``: a local web page to continue a piece, hear the takes, see them, compare
them and continue the one you like.

Built on Starlette (the ASGI toolkit under FastAPI) and uvicorn, with one static page
(``static/studio.html``, ``.js``, ``.css``): no build step, nothing fetched from the internet,
and piano rolls drawn in the page as SVG from the notes, so that primer and continuation get
their colours, the axes seconds and note names, and every note a tooltip. Generation is the
CLI's own: each click is one ``run_generate(GenerateConfig)`` into its own folder.

One worker thread runs the clicks in order (two tabs queue; the CPU has no spare cores to
run them side by side), and each job owns its folder, so takes never mix. Everything the
server writes lives in one temporary folder, removed when it stops (Ctrl-C or SIGTERM); one
left by a killed server is removed by the next start.

"Regenerate this span" runs ``cadenza infill``'s ``run_infill`` on the same worker; the Play
page's live duet is live.py (server-sent events under the same guard).

Bounded: at most --max-queue jobs wait or run (a page at most half of them), a job can be
cancelled, and the folder stays within --max-work-mb (the oldest finished takes and unused
starts go first). Guarded (guard.py): only its own names as Host, only its own page may
change anything, a token off loopback. Every field of a request is checked by the configs
the CLI uses, and a user sees a line naming the field, never a Python exception.

    cadenza studio                       # the pretrained piano model
    cadenza studio --runs runs/          # and every checkpoint under runs/
"""

from __future__ import annotations

import queue
import shlex
import shutil
import socket
import tempfile
import threading
import traceback
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import process_dir
from .checkpoint import CheckpointError, pretrained_names, read_config, read_metrics
from .config import (
    CONTROLS,
    ConfigError,
    GenerateConfig,
    InfillConfig,
    SampleConfig,
    StudioConfig,
    flag,
)
from .controls import chords_over
from .data.corpus import OPENINGS
from .data.midi import (
    BadInput,
    Notes,
    cut_notes,
    load_score,
    midi_seconds,
    notes_from_score,
    score_from_notes,
    write_midi,
)
from .engine import WHY
from .generate import PRIMER_TRACK, run_generate
from .guard import (
    BadRequest,
    Busy,
    Guard,
    GuardMiddleware,
    body_field,
    is_loopback,
    page_settings,
    parse_json,
)
from .infill import INFILL_TRACK, run_infill
from .live import live_routes, open_file_response
from .render import audio_missing, kill_renders, note_name, render_wav, wav_bytes
from .session import Session

STATIC = Path(__file__).parent / "static"
WORK_PREFIX = "cadenza-studio-"
START_AUDIO_SECONDS = 120.0  # a start's WAV covers its first two minutes
# A take asked for in tokens is bounded by --max-seconds too: performance tokens run at 20-60
# a second of piano music, so this many per second of --max-seconds is a generous ceiling.
TOKENS_PER_SECOND = 100
KEEP_PAGES = 256  # page ids issued and remembered (the oldest is forgotten first)
KEEP_SESSIONS = 2  # models kept loaded (about 30-60 MB each for the shipped one)


class Stopped(Exception):
    """Raised into a running generation when the server stops."""


class Cancelled(Exception):
    """Raised into a running generation when its page cancels it."""


class Unsupported(ValueError):
    """A body of a type this endpoint does not take (HTTP 415)."""


ACTIVE = ("queued", "running", "writing")
FINISHED = ("done", "failed", "cancelled")
KEEP_JOBS, KEEP_STARTS = 200, 100  # finished jobs and starts kept, whatever their size


class TooLarge(BadInput):
    """An upload over --max-upload-mb (HTTP 413)."""

    def __init__(self, name: str, limit_mb: float, size: int | None = None) -> None:
        got = f"{size / 1e6:.1f} MB" if size is not None else f"over {limit_mb:g} MB"
        super().__init__(f"{name}: too large ({got}; the studio takes up to {limit_mb:g} MB)")


@dataclass
class Start:
    """A piece to continue: an upload, a built-in opening, or an earlier take."""

    id: str
    name: str
    midi: Path
    notes: Any  # data.midi.Notes
    wav: Path | None

    def to_dict(self) -> dict[str, Any]:
        n = self.notes
        return {"id": self.id, "name": self.name, "seconds": round(n.duration, 3),
                "notes": _note_rows(n.start, n.end, n.pitch, n.velocity, np.ones(len(n))),
                "audio": f"/api/starts/{self.id}/audio.wav" if self.wav else None}


@dataclass
class Job:
    """One click of Generate: its settings, where it stands, and its takes when done."""

    id: str
    seq: int  # order of submission: the queue's order
    cfg: Any  # GenerateConfig, or InfillConfig for "Regenerate this span"
    start: str | None  # the start's name (cfg.primer is its copy in the work folder)
    page: str = ""  # the page that asked (for its share of --max-queue)
    state: str = "queued"  # queued, running, writing, done, failed, cancelled
    progress: float = 0.0
    error: str | None = None
    takes: list[dict[str, Any]] = field(default_factory=list)
    cancel: bool = False


USER_ERRORS = (BadInput, ConfigError, CheckpointError, FileNotFoundError, FileExistsError,
               PermissionError, ValueError)  # a user's mistake: the server keeps serving
OUR_ERRORS = (BadInput, ConfigError, CheckpointError, BadRequest)  # messages we wrote
MAX_ERROR = 300  # characters of an error line a reply carries


def user_line(e: Exception) -> str:
    """An error as the page sees it: one line of our own words, cut to MAX_ERROR; another
    library's text (an OS error's path, an overflow) is never shown."""
    if not isinstance(e, OUR_ERRORS):
        return "the request could not be carried out (a value out of range, or a file " \
               "that could not be written)"
    line = str(e).splitlines()[0] if str(e) else type(e).__name__
    return line if len(line) <= MAX_ERROR else line[:MAX_ERROR] + "..."


def _size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (renders in progress included; a file removed
    while it is counted, by another thread, counts as gone)."""
    total = 0
    for f in (folder.rglob("*") if folder.exists() else ()):
        try:
            total += f.stat().st_size if f.is_file() else 0
        except (FileNotFoundError, NotADirectoryError):
            pass
    return total


def _note_rows(start, end, pitch, velocity, primer) -> list[list]:
    """Notes as the page draws them: [start s, end s, pitch, velocity, 1 primer / 0 new]."""
    return [[round(float(a), 4), round(float(b), 4), int(p), int(v), int(m)]
            for a, b, p, v, m in zip(start, end, pitch, velocity, primer)]


def take_notes(tracks: dict[str, Notes], infill: bool = False) -> list[list]:
    """A take's notes (in memory, by track, as the command wrote them) marked by their
    track: the primer's (for an infilled take: every note but the Infill track's), or the
    new music's."""
    rows: list[list] = []
    for name, n in tracks.items():
        old = name != INFILL_TRACK if infill else name == PRIMER_TRACK
        rows += _note_rows(n.start, n.end, n.pitch, n.velocity, np.full(len(n), old))
    return sorted(rows)


def list_models(runs: str | None) -> list[dict[str, Any]]:
    """The shipped pretrained models, then every checkpoint under ``runs``."""
    specs = [(f"pretrained:{n}", f"pretrained:{n}") for n in pretrained_names()]
    if runs:
        root = Path(runs)
        if not root.is_dir():
            raise ConfigError(f"--runs {runs}: no such folder")
        for cfg in sorted(root.rglob("config.json")):
            d = cfg.parent
            # hidden folders: a run's temporaries and the .NAME.old twins of a swap
            if (d / "model.safetensors").exists() and not any(
                    part.startswith(".") for part in d.relative_to(root).parts):
                specs.append((str(d), str(d.relative_to(root)) if d != root else d.name))
    models = []
    for spec, label in specs:
        try:
            c, m = read_config(spec), read_metrics(spec)
        except (CheckpointError, OSError, ValueError):
            continue  # a half-written run: not offered
        if c.data.task.paired:
            continue  # a harmonize/accompany model does not continue pieces
        models.append({"id": spec, "name": label, "tokenizer": c.tokenizer["name"],
                       "parameters": c.parameters,
                       "styles": list(c.data.tags.choices) if c.data.tags else [],
                       "val_nll": m.get("best_val_nll", m.get("val_nll"))})
    return models


def builtin_pieces() -> list[dict[str, str]]:
    """The openings shipped with the package (``builtin:openings``)."""
    return [{"id": f.stem, "name": f.stem.replace("-", " ")}
            for f in sorted(OPENINGS.glob("*.mid"))]


def command_line(job: Job) -> str:
    """The `cadenza generate` (or `infill`) line that makes this job's takes again, its flags
    named by the configs (the start by the name it was uploaded under)."""
    cfg = job.cfg
    if isinstance(cfg, InfillConfig):
        args = [flag("input"), shlex.quote(job.start or "start.mid"), flag("start"),
                f"{cfg.start:g}", flag("end"), f"{cfg.end:g}", flag("checkpoint"),
                cfg.checkpoint, flag("candidates"), str(cfg.candidates)]
        return " ".join(["cadenza infill", *args, *_sample_flags(cfg.sample),
                         flag("out"), "takes/"])
    args = [flag("checkpoint"), cfg.checkpoint[0]]
    if job.start:
        args += [flag("primer"), shlex.quote(job.start)]
    if cfg.primer_seconds:
        args += [flag("primer_seconds"), f"{cfg.primer_seconds:g}"]
    return " ".join(["cadenza generate", *args, *_sample_flags(cfg.sample), flag("out"),
                     "takes/"])


def _sample_flags(sample) -> list[str]:
    args = []
    for name, v in sample.to_dict().items():
        if v is True:
            args.append(flag(name))
        elif v is not None and v is not False and not (name == "max_repeats" and v == 0):
            shown = f"{v:g}" if isinstance(v, float) else str(v)
            args += [flag(name), shlex.quote(shown)]
    return args


def control_fields() -> list[dict[str, Any]]:
    """The page's control inputs, one per field of config.CONTROLS (so a new control's
    field is a new input, with its help as the tooltip): name, label, kind, step."""
    out = []
    for f in fields(SampleConfig):
        if f.name not in CONTROLS:
            continue
        number = f.type in ("int", "int | None", "float", "float | None")
        out.append({"name": f.name, "label": f.name.replace("_", " ").capitalize(),
                    "kind": "checkbox" if f.type == "bool" else "number" if number else "text",
                    "step": 1 if f.type.startswith("int") else 0.5,
                    "help": f.metadata.get("help", "")})
    return out


def _defaults() -> dict[str, Any]:
    """Each setting's default and help, from the configs the CLI uses."""
    sample = {f.name: {"default": f.default, "help": f.metadata.get("help", "")}
              for f in fields(SampleConfig)}
    sample["seconds"]["default"] = SampleConfig().seconds  # "neither given" means 20 s
    return sample


class Studio:
    """The server's state: starts, jobs, the worker and the folder they all live in."""

    def __init__(self, cfg: StudioConfig, *, device: str = "cpu") -> None:
        self.cfg, self.device = cfg, device
        self.models = list_models(cfg.runs)
        if not self.models:
            raise ConfigError(f"--runs {cfg.runs}: no checkpoint found, and no pretrained "
                              "model is installed")
        # a killed server's folder is removed by the next start
        self.work = process_dir(tempfile.gettempdir(), WORK_PREFIX)
        self.starts: dict[str, Start] = {}
        self.jobs: dict[str, Job] = {}
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.seq = 0  # jobs submitted so far: each job's place in the queue
        self.live: dict[str, Any] = {}  # the Play page's duets (live.py)
        self.streams = 0  # the Play page's open event streams (at most --max-streams)
        self.pages: dict[str, None] = {}  # page ids this server issued, oldest first
        self._sessions: dict[str, Any] = {}  # loaded models, least recently used first
        self.loads = 0  # models loaded so far (a second take on one model loads none)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.audio_missing = audio_missing()
        self.worker = threading.Thread(target=self._work, name="studio-worker", daemon=True)
        self.worker.start()

    # --- starts ------------------------------------------------------------------------

    def add_start(self, name: str, midi_bytes: bytes) -> Start:
        """Check and keep a MIDI file as a start; BadInput (naming the file) if unusable."""
        if not midi_bytes:
            raise BadInput(f"{name}: empty file")
        if len(midi_bytes) > self.cfg.max_upload_mb * 1e6:
            raise TooLarge(name, self.cfg.max_upload_mb, len(midi_bytes))
        sid = uuid.uuid4().hex[:12]
        d = self.work / "starts" / sid
        d.mkdir(parents=True)
        midi = d / "start.mid"
        midi.write_bytes(midi_bytes)
        try:
            notes = notes_from_score(load_score(midi))  # refuses notes stacked at one instant
            if len(notes) > self.cfg.max_notes:
                raise BadInput(f"{len(notes):,} notes (the studio takes up to "
                               f"{self.cfg.max_notes:,}: --max-notes)")
            wav = None
            if self.audio_missing is None:
                heard = cut_notes(notes, START_AUDIO_SECONDS)
                write_midi(score_from_notes(heard), d / "heard.mid")
                wav = self.render(d / "heard.mid", d / "start.wav", heard.duration, sid)
        except BadInput as e:
            shutil.rmtree(d, ignore_errors=True)
            raise BadInput(f"{name}: {e}") from e
        start = Start(sid, name, midi, notes, wav)
        with self.lock:
            self.starts[sid] = start
        self.evict(newest=sid)
        return start

    def builtin_start(self, piece: str) -> Start:
        f = OPENINGS / f"{piece}.mid"
        if piece not in {p["id"] for p in builtin_pieces()}:
            raise BadInput(f"builtin:openings/{piece[:40]}: no such piece")
        return self.add_start(f.name, f.read_bytes())

    def take_start(self, job_id: str, k: int) -> Start:
        """An earlier take, primer and continuation, as a new start."""
        return self.add_start(f"take {job_id[:6]}-{k}.mid", self.take_file(job_id, k, "mid")
                              .read_bytes())

    # --- jobs --------------------------------------------------------------------------

    def submit(self, req: dict[str, Any], page: str = "") -> Job:
        """Validate a Generate click and queue it; ConfigError names the bad setting, Busy
        says what to wait for."""
        model = body_field(req, "model", str) or self.models[0]["id"]
        if model not in {m["id"] for m in self.models}:
            raise ConfigError(f"--checkpoint {model}: not one of this studio's models")
        sid = body_field(req, "start", str)
        start = self.starts.get(sid) if sid else None
        if sid and start is None:
            raise ConfigError("start: unknown (the server was restarted, or it was cleared "
                              "to make room); choose it again")
        primer_seconds = body_field(req, "primer_seconds", float) or 0.0
        if not 0 <= primer_seconds <= 3 * 3600:
            raise ConfigError(f"--primer-seconds: must be in [0, 10800], got {primer_seconds!r}")
        ask = page_settings(req)
        names = {f.name for f in fields(SampleConfig)}
        unknown = sorted(set(ask) - names)
        if unknown:
            raise ConfigError(f"sample: unknown settings {unknown}")
        sample = SampleConfig.from_dict(ask)
        if sample.num_samples > self.cfg.max_takes:
            raise ConfigError(f"--num-samples: the studio makes up to {self.cfg.max_takes} "
                              f"takes at once (--max-takes), got {sample.num_samples}")
        if (sample.seconds or 0) > self.cfg.max_seconds:
            raise ConfigError(f"--seconds: the studio makes up to {self.cfg.max_seconds:g} s "
                              f"per take (--max-seconds), got {sample.seconds:g}")
        most = int(self.cfg.max_seconds * TOKENS_PER_SECOND)
        if (sample.tokens or 0) > most:
            raise ConfigError(f"--tokens: the studio makes up to {most:,} tokens per take "
                              f"({TOKENS_PER_SECOND} per second of --max-seconds "
                              f"{self.cfg.max_seconds:g}), got {sample.tokens:,}")
        jid = uuid.uuid4().hex[:12]
        span = body_field(req, "span", dict)
        if span is not None:  # "Regenerate this span" of the start
            a, b = body_field(span, "start", float), body_field(span, "end", float)
            if start is None or a is None or b is None:
                raise ConfigError("span: give a start and the span's start and end, seconds")
            if b - a > self.cfg.max_seconds:
                raise ConfigError(f"span: the studio regenerates up to "
                                  f"{self.cfg.max_seconds:g} s (--max-seconds), got {b - a:g}")
            steer = sample.steering()
            cfg: GenerateConfig | InfillConfig = InfillConfig(
                input=str(start.midi), out=str(self.work / "jobs" / jid), start=float(a),
                end=float(b), checkpoint=model, sample=steer, audio=False)
        else:
            cfg = GenerateConfig(out=str(self.work / "jobs" / jid), checkpoint=(model,),
                                 primer=str(start.midi) if start else None,
                                 primer_seconds=primer_seconds, sample=sample, audio=False)
        with self.lock:
            active = [j for j in self.jobs.values() if j.state in ACTIVE]
            limit = self.cfg.max_queue
            if len(active) >= limit:
                raise Busy(f"the studio has {len(active)} requests waiting or running "
                           f"(--max-queue {limit}); wait for one to finish, or cancel one")
            mine = sum(j.page == page for j in active)
            if page and mine >= max(1, limit // 2):
                raise Busy(f"this page has {mine} requests waiting or running (a page may "
                           f"have {max(1, limit // 2)}); wait for one to finish, or cancel one")
            self.seq += 1
            job = Job(jid, self.seq, cfg, start.name if start else None, page=page)
            self.jobs[jid] = job
        self.queue.put(job)
        return job

    def cancel(self, job_id: str) -> None:
        """Cancel a job: a queued one never runs, a running one stops within a few tokens."""
        job = self.jobs.get(job_id)
        if job is None:
            raise KeyError(job_id)
        with self.lock:
            if job.state == "queued":
                job.state = "cancelled"
            elif job.state in ACTIVE:
                job.cancel = True

    def render(self, midi: Path, wav: Path, seconds: float, newest: str) -> Path | None:
        """A WAV of ``seconds`` of music, within every limit: room is made for the most it
        may hold first (none: no WAV), and FluidSynth is stopped past that size or
        --max-render-seconds (its partial file removed), or when the server stops."""
        need = wav_bytes(seconds)
        self.evict(newest, need)
        if self.stopping.is_set() or _size(self.work) + need > self.cfg.max_work_mb * 1e6:
            return None
        return render_wav(midi, wav, timeout=self.cfg.max_render_seconds, max_bytes=need)[0]

    def issue_page(self) -> str:
        """A page id (the page sends it back as Cadenza-Page): its share of the queue is
        keyed on ids this server made, so a client cannot widen it by inventing new ones."""
        pid = uuid.uuid4().hex
        with self.lock:
            self.pages[pid] = None
            while len(self.pages) > KEEP_PAGES:
                self.pages.pop(next(iter(self.pages)))
        return pid

    def evict(self, newest: str = "", need: int = 0) -> None:
        """Keep the work folder within --max-work-mb less ``need`` (and the records in
        memory within KEEP_JOBS and KEEP_STARTS): the oldest finished jobs and the oldest
        starts no waiting job needs go first; ``newest`` (the job or start just made)
        stays, so that its page can read it."""
        with self.lock:
            busy = {getattr(j.cfg, "primer", None) or getattr(j.cfg, "input", None)
                    for j in self.jobs.values() if j.state in ACTIVE}
            jobs = [(j.seq, "job", j.id, Path(j.cfg.out)) for j in self.jobs.values()
                    if j.state in FINISHED and j.id != newest]
            starts = [(i, "start", s.id, s.midi.parent) for i, s in
                      enumerate(self.starts.values()) if str(s.midi) not in busy
                      and s.id != newest]
            used = _size(self.work)
            limit = self.cfg.max_work_mb * 1e6 - need
            for kind, items, keep in (("job", jobs, KEEP_JOBS), ("start", starts, KEEP_STARTS)):
                for k, (_, _, key, folder) in enumerate(sorted(items)):
                    if used <= limit and len(items) - k <= keep:
                        break
                    used -= _size(folder)
                    shutil.rmtree(folder, ignore_errors=True)
                    (self.jobs if kind == "job" else self.starts).pop(key, None)

    def status(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            raise KeyError(job_id)
        with self.lock:  # jobs to finish before this one starts
            ahead = sum(1 for j in self.jobs.values() if j.seq < job.seq and j.state in
                        ("queued", "running", "writing")) if job.state == "queued" else 0
        return {"id": job.id, "state": job.state, "progress": round(job.progress, 3),
                "ahead": ahead, "error": job.error, "takes": job.takes}

    def take_file(self, job_id: str, k: int, kind: str) -> Path:
        job = self.jobs.get(job_id)
        if job is None or job.state != "done" or not 0 <= k < len(job.takes) \
                or kind not in ("mid", "wav", "png"):
            raise KeyError(f"{job_id}/{k}.{kind}")
        p = Path(job.cfg.out) / f"sample-{k}.{kind}"
        if not p.exists():
            raise KeyError(f"{job_id}/{k}.{kind}")
        return p

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None or self.stopping.is_set():
                return
            with self.lock:
                if job.state == "cancelled":
                    continue
                job.state = "running"
            try:
                run = run_infill if isinstance(job.cfg, InfillConfig) else run_generate
                model = job.cfg.checkpoint if isinstance(job.cfg, InfillConfig) \
                    else job.cfg.checkpoint[0]
                infos = run(job.cfg, device=self.device, progress=self._hear(job),
                            loaded=self.session(model))
                if self.audio_missing is None:  # the studio renders, within its limits
                    for i in infos:
                        mid = Path(job.cfg.out) / f"sample-{i.sample}.mid"
                        self.render(mid, mid.with_suffix(".wav"), midi_seconds(mid), job.id)
                job.takes = [self._take(job, i) for i in infos]
                job.progress, job.state = 1.0, "done"
            except Stopped:
                return
            except Cancelled:
                job.state = "cancelled"
            except USER_ERRORS as e:  # one line in the page; the server keeps serving
                job.error = user_line(e)
                job.state = "failed"
            except Exception:  # a bug: its traceback in the server's log, not in the page
                traceback.print_exc()
                job.error = "generation failed (an internal error; the server's log has it)"
                job.state = "failed"
            self.evict(newest=job.id)

    def _hear(self, job: Job):
        def progress(share: float) -> None:
            if self.stopping.is_set():
                raise Stopped
            if job.cancel:
                raise Cancelled
            job.progress = share
            if share >= 1.0:
                job.state = "writing"
        return progress

    def _take(self, job: Job, info) -> dict[str, Any]:
        """A take for the page: a generate sample's (SampleInfo) or an infill's (InfillInfo)."""
        k, cfg = info.sample, job.cfg
        base = f"/api/jobs/{job.id}/takes/{k}"
        wav = (Path(cfg.out) / f"sample-{k}.wav").exists()
        take = {"job": job.id, "take": k, "start": job.start, "settings": info.settings,
                "midi": f"{base}/mid", "wav": f"{base}/wav" if wav else None,
                "png": f"{base}/png", "command": command_line(job) + f"   # sample-{k}"}
        notes = info.tracks  # as written, without reading the MIDI back
        if isinstance(cfg, InfillConfig):
            return {**take, "model": cfg.checkpoint, "primer_seconds": 0.0,
                    "chords": chords_over(cfg.sample, cfg.end - cfg.start, cfg.start),
                    "new_seconds": cfg.end - cfg.start, "span": [cfg.start, cfg.end],
                    "memorization": None, "notes": take_notes(notes, infill=True),
                    "tokens_per_second": 0.0, "stopped": "seconds",
                    "stopped_why": f"the span {cfg.start:g}-{cfg.end:g} s is regenerated "
                                   f"({info.method}: candidate {info.chosen + 1} of "
                                   f"{info.candidates})"}
        start = info.primer["seconds"]
        return {**take, "model": cfg.checkpoint[0], "primer_seconds": start,
                "chords": chords_over(cfg.sample, info.new_seconds, start),
                "new_seconds": info.new_seconds, "memorization": info.memorization,
                "notes": take_notes(notes), "tokens_per_second": info.tokens_per_second,
                "stopped": info.stopped, "stopped_why": WHY[info.stopped]}

    def session(self, model: str) -> Session:
        """A model loaded once and kept for every job and duet that uses it: the
        KEEP_SESSIONS used last stay loaded (least recently used first out)."""
        with self.lock:
            gen = self._sessions.pop(model, None)
        if gen is None:  # loaded outside the lock: status polls go on meanwhile
            gen = Session.load(model, device=self.device)
            self.loads += 1
        with self.lock:
            self._sessions[model] = gen  # the most recent last
            while len(self._sessions) > KEEP_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
        return gen

    def close(self) -> None:
        """Stop everything within a few seconds: the worker (a running generation stops
        within a few tokens, queued jobs never start), every render (killed), every duet
        and event stream; then remove the folder."""
        self.stopping.set()
        kill_renders()
        for d in list(self.live.values()):
            d.source.stop.set()
        self.queue.put(None)
        if self.worker.is_alive() and threading.current_thread() is not self.worker:
            self.worker.join(timeout=3)
        for d in list(self.live.values()):
            d.stop(timeout=1)
        kill_renders()  # one the worker may have started meanwhile
        shutil.rmtree(self.work, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        return {"models": self.models, "pieces": builtin_pieces(), "defaults": _defaults(),
                "controls": control_fields(), "page": self.issue_page(),
                "limits": {"max_upload_mb": self.cfg.max_upload_mb,
                           "max_seconds": self.cfg.max_seconds,
                           "max_takes": self.cfg.max_takes},
                "audio_missing": self.audio_missing,
                "note_names": [note_name(p) for p in range(128)]}


# --- HTTP ------------------------------------------------------------------------------------


# --- HTTP helpers: bodies, errors (every handler is wrapped by _guarded) ------------------


def _error(msg: str, status: int = 400):
    from starlette.responses import JSONResponse
    return JSONResponse({"error": msg}, status_code=status)


async def _read_body(request, name: str, mb: float) -> bytes:
    """The body, refused before it is read whole when it is over ``mb``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > mb * 1e6:
        raise TooLarge(name, mb, int(declared))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > mb * 1e6:
            raise TooLarge(name, mb)
    return bytes(body)


def _content_type(request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _json_reader(max_kb: float):
    """``json_object(request)``: the body as a JSON object of at most ``max_kb`` and
    guard.MAX_DEPTH levels, sent as application/json (a type no cross-site form can send)."""
    async def json_object(request) -> dict[str, Any]:
        if _content_type(request) != "application/json":
            raise Unsupported(f"{request.url.path}: send JSON as application/json")
        raw = await _read_body(request, request.url.path, max_kb / 1000)
        return parse_json(raw, request.url.path)
    return json_object


def _page(studio: Studio, request) -> str:
    """Which page asks: an id this server issued (/api/info), else the client's address
    (so a header the client invents counts as that client, not as a new page)."""
    pid = request.headers.get("cadenza-page", "")
    if pid in studio.pages:
        return pid
    return request.client.host if request.client else ""


def _guarded(fn):
    """A handler whose errors are one line for the page, with the status that fits."""
    async def handler(request):
        try:
            return await fn(request)
        except Busy as e:
            return _error(user_line(e), 429)
        except Unsupported as e:
            return _error(str(e)[:MAX_ERROR], 415)
        except (BadInput, ConfigError, CheckpointError, ValueError) as e:
            return _error(user_line(e), 413 if isinstance(e, TooLarge) else 400)
        except KeyError as e:
            return _error(f"not found: {str(e.args[0])[:80]} (a take or start may have been "
                          "cleared to make room: --max-work-mb)", 404)
        except Exception:  # a bug: its traceback in the server's log, not in the page
            traceback.print_exc()
            return _error("internal error (the server's log has it)", 500)
    return handler


UPLOAD_TYPES = ("application/octet-stream", "audio/midi", "audio/x-midi", "audio/mid")


def make_app(studio: Studio, guard: Guard | None = None):
    """The Starlette app: the page, its files, and a small JSON API over ``studio``; behind
    ``guard`` (guard.py) when given, as ``serve`` always runs it."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    _json_object = _json_reader(studio.cfg.max_body_kb)

    async def index(request: Request):
        return FileResponse(STATIC / "studio.html")

    async def info(request: Request):
        return JSONResponse(studio.info())

    async def upload(request: Request):
        name = Path(request.query_params.get("name") or "upload.mid").name
        if _content_type(request) not in UPLOAD_TYPES:
            raise Unsupported(f"{name}: send the MIDI file as application/octet-stream")
        data = await _read_body(request, name, studio.cfg.max_upload_mb)
        start = await run_in_threadpool(studio.add_start, name, data)
        return JSONResponse(start.to_dict())

    async def builtin(request: Request):
        body = await _json_object(request)
        piece = body_field(body, "piece", str) or ""
        return JSONResponse((await run_in_threadpool(studio.builtin_start, piece)).to_dict())

    async def from_take(request: Request):
        body = await _json_object(request)
        job, k = body_field(body, "job", str), body_field(body, "take", int)
        if job is None or k is None:
            raise ConfigError("job and take: give both (the take to continue)")
        return JSONResponse((await run_in_threadpool(studio.take_start, job, k)).to_dict())

    async def start_audio(request: Request):
        s = studio.starts.get(request.path_params["sid"])
        if s is None or s.wav is None:
            raise KeyError(request.path_params["sid"])
        return open_file_response(s.wav, "audio/wav", key=request.path_params["sid"])

    async def submit(request: Request):
        job = studio.submit(await _json_object(request), _page(studio, request))
        return JSONResponse(studio.status(job.id))

    async def cancel(request: Request):
        studio.cancel(request.path_params["jid"])
        return JSONResponse(studio.status(request.path_params["jid"]))

    async def status(request: Request):
        return JSONResponse(studio.status(request.path_params["jid"]))

    async def take(request: Request):
        p = request.path_params
        f = studio.take_file(p["jid"], p["k"], p["kind"])
        media = {"mid": "audio/midi", "wav": "audio/wav", "png": "image/png"}[p["kind"]]
        return open_file_response(f, media, f"take-{p['jid'][:6]}-{p['k']}.{p['kind']}",
                                  key=f"{p['jid']}/{p['k']}.{p['kind']}")

    routes = [
        Route("/", index),
        Route("/api/info", _guarded(info)),
        Route("/api/starts", _guarded(upload), methods=["POST"]),
        Route("/api/starts/builtin", _guarded(builtin), methods=["POST"]),
        Route("/api/starts/from-take", _guarded(from_take), methods=["POST"]),
        Route("/api/starts/{sid}/audio.wav", _guarded(start_audio)),
        Route("/api/jobs", _guarded(submit), methods=["POST"]),
        Route("/api/jobs/{jid}", _guarded(status)),
        Route("/api/jobs/{jid}/cancel", _guarded(cancel), methods=["POST"]),
        Route("/api/jobs/{jid}/takes/{k:int}/{kind}", _guarded(take)),
        *live_routes(studio, _guarded, _json_object),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    return app if guard is None else GuardMiddleware(app, guard, stateful_get=is_event_stream)


def is_event_stream(path: str) -> bool:
    """The Play page's event stream: a GET whose closing stops its duet, so the guard checks
    its origin as it checks a post's."""
    return path.startswith("/api/duet/") and path.endswith("/events")


def missing_extra() -> str | None:
    """Why the studio cannot start here (its optional dependencies), or None."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        return (f"cadenza studio needs the studio extra ({e.name} is missing): "
                "pip install -e '.[studio]'")
    return None


def serve(cfg: StudioConfig, *, device: str = "cpu") -> None:
    """Run the studio until Ctrl-C or SIGTERM; its temporary folder goes with it."""
    why = missing_extra()
    if why:
        raise ConfigError(why)
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
        sock.listen(128)  # connections wait from the moment the address is printed
    except OSError as e:
        sock.close()
        raise ConfigError(f"--port {cfg.port}: cannot listen on {cfg.host} ({e.strerror}); "
                          "choose another port, or --port 0 for any free one") from e
    try:
        studio = Studio(cfg, device=device)
    except BaseException:
        sock.close()
        raise
    try:
        port = sock.getsockname()[1]
        guard = Guard.for_server(cfg.host, cfg.token, cfg.no_token, cfg.allow_host)
        guard.port = port
        if not is_loopback(cfg.host) and guard.token is None:
            print(f"warning: serving {cfg.host} without a token (--no-token): anyone who can "
                  "reach this address can use the studio", flush=True)
        print(f"Cadenza Studio: {guard.address(port)}  (models: "
              f"{', '.join(m['name'] for m in studio.models)}; Ctrl-C stops it)", flush=True)
        server = StoppingServer(studio, uvicorn.Config(
            make_app(studio, guard), log_level="warning", lifespan="off",
            http=bounded_protocol(cfg), limit_concurrency=cfg.max_connections,
            timeout_keep_alive=max(1, round(cfg.idle_timeout)), timeout_graceful_shutdown=1,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES))
        server.run(sockets=[sock])
    finally:
        studio.close()
        sock.close()


MAX_HEAD_BYTES = 16 * 1024  # a request's line and headers


def bounded_protocol(cfg: StudioConfig):
    """uvicorn's HTTP/1.1 protocol with the studio's connection limits: at most
    --max-connections open (one more is closed at once); a request's headers within
    --header-timeout of the connection's opening or of the previous answer, its body within
    --body-timeout; an idle connection closed after --idle-timeout (uvicorn's keep-alive).
    An event stream, once its request is read, is bounded by --max-streams instead."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Bounded(H11Protocol):
        deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > cfg.max_connections:
                transport.close()
                return
            self._arm(cfg.header_timeout)

        def data_received(self, data: bytes) -> None:
            if self.deadline is None and self.conn.their_state is h11.IDLE:
                self._arm(cfg.header_timeout)  # the next request's headers, after an answer
            super().data_received(data)  # its handle_events follows the request's state

        def handle_events(self) -> None:
            super().handle_events()
            self._follow()

        def _follow(self) -> None:
            """Rearm for the body once the headers are in; disarm once the request is."""
            state = self.conn.their_state
            if state is h11.SEND_BODY and getattr(self, "_phase", "") != "body":
                self._arm(cfg.body_timeout, "body")
            elif state not in (h11.IDLE, h11.SEND_BODY):
                self._disarm()

        def _arm(self, seconds: float, phase: str = "head") -> None:
            self._disarm()
            self._phase = phase
            self.deadline = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline, self._phase = None, ""

        def _too_slow(self) -> None:
            self.deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Bounded


def _stopping_server():
    import uvicorn

    class StoppingServer(uvicorn.Server):
        """uvicorn's server that, on Ctrl-C or SIGTERM, also tells the studio at once: a
        running generation, the renders and the event streams stop before uvicorn waits
        for connections to close."""

        def __init__(self, studio: Studio, config) -> None:
            super().__init__(config)
            self.studio = studio

        def handle_exit(self, sig, frame) -> None:
            self.studio.stopping.set()
            kill_renders()
            for d in list(self.studio.live.values()):
                d.source.stop.set()
            super().handle_exit(sig, frame)

    return StoppingServer


def StoppingServer(studio: Studio, config):  # noqa: N802 (a class made on first use)
    return _stopping_server()(studio, config)
