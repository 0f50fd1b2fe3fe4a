"""The studio's Play page on the server: a duet (duet.py) whose player is the page.

The page posts the notes it plays (its on-screen keyboard, computer keys or Web MIDI) to
``POST /api/duet/ID/notes`` and hears Cadenza's answer note by note as server-sent events
from ``GET /api/duet/ID/events``: plain HTTP, so the studio's guard (guard.py) covers it
like every other request, and no WebSocket library is needed. One live duet at a time per
server (a second page gets 429); a page that goes away stops its answer and its session, and
the server keeps serving. ``POST /api/duet/ID/stop`` ends the session and records it
(player and Cadenza on their own tracks) for ``GET /api/duet/ID/session.mid``.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import threading
import traceback
import uuid
from pathlib import Path
from typing import Any

from .config import ConfigError, DuetConfig, Steering
from .duet import Clock, Duet, play
from .guard import Busy, body_field, page_settings

KEEP_ALIVE = 10.0  # seconds between comments on an idle event stream
WAIT = 0.25  # seconds an event stream waits for an event before it looks for the page
MAX_NOTES_POST = 512  # note events in one post of the page's playing
KEEP_DUETS = 8  # finished duets kept (their session.mid); older ones are forgotten


class Gone(OSError):
    """The page left: the session's source raises it to stop an answer in progress."""


class PageSource:
    """The page's notes, as duet.play reads a port: (message, session seconds)."""

    def __init__(self, clock) -> None:
        self.clock, self.notes, self.stop = clock, queue.Queue(), threading.Event()
        self.done = False

    def poll(self, now: float) -> list[tuple[Any, float]]:
        if self.stop.is_set():
            raise Gone("the page stopped the duet")
        out = []
        while True:
            try:
                out.append((self.notes.get_nowait(), self.clock.now()))
            except queue.Empty:
                return out


class LiveDuet:
    """One page's duet: the session in its own thread, its events for the page."""

    def __init__(self, gen, steering: Steering, wait: float, answer: float, folder: Path
                 ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.folder = folder
        self.events: queue.Queue[dict | None] = queue.Queue()
        self.clock = Clock()
        self.source = PageSource(self.clock)
        self.duet = Duet(gen, steering, wait=wait, answer=answer, clock=self.clock,
                         send=self._send, say=lambda s: self.events.put({"type": "note",
                                                                        "text": s}))
        self.summary: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, name=f"duet-{self.id}", daemon=True)
        self.thread.start()

    def _send(self, msg) -> None:
        """Cadenza's MIDI out, as an event for the page."""
        if msg.type in ("note_on", "note_off"):
            on = msg.type == "note_on" and msg.velocity > 0
            self.events.put({"type": "note", "on": on, "pitch": msg.note,
                             "velocity": msg.velocity, "t": round(self.clock.now(), 4)})

    def _run(self) -> None:
        answers = 0
        try:
            def until() -> bool:
                nonlocal answers
                while answers < len(self.duet.answers):  # say each answer's latency
                    a = self.duet.answers[answers]
                    self.events.put({"type": "answer", "latency_ms": a.latency_ms,
                                     "notes": a.notes, "cut_in": a.cut_in})
                    answers += 1
                return self.source.stop.is_set()
            play(self.duet, self.source, until=until)
        except Gone:
            pass
        except Exception:  # a bug: logged on the server; the page hears it ended
            traceback.print_exc()
        finally:
            self.duet.all_notes_off()
            self.summary = self.duet.record(self.folder / "session")
            self.duet = None  # its caches and notes: a stopped duet gives its memory back,
            gc.collect()  # now rather than at the next full collection (they hold cycles)
            self.events.put({"type": "ended", "midi": f"/api/duet/{self.id}/session.mid"})
            self.events.put(None)

    def hear(self, notes: list) -> None:
        """Notes from the page: [[1 (on) or 0 (off), pitch, velocity], ...]."""
        import mido
        if len(notes) > MAX_NOTES_POST:
            raise ConfigError(f"notes: at most {MAX_NOTES_POST} in one post, got {len(notes):,}")
        for n in notes:
            if not (isinstance(n, list) and len(n) == 3 and all(isinstance(x, int)
                                                                and not isinstance(x, bool)
                                                                for x in n)):
                raise ConfigError(f"notes: each must be [on, pitch, velocity], got "
                                  f"{str(n)[:40]!r}")
            on, pitch, vel = n
            if not (0 <= pitch <= 127 and 0 <= vel <= 127):
                raise ConfigError(f"notes: pitch and velocity must be in 0..127, got {n!r}")
            kind = "note_on" if on and vel > 0 else "note_off"
            self.source.notes.put(mido.Message(kind, note=pitch, velocity=vel if on else 0))

    def stop(self, timeout: float = 30.0) -> None:
        self.source.stop.set()
        self.thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()


def open_file_response(path: Path, media: str, filename: str = "", key: str = ""):
    """A file of the work folder as the answer, opened now: once open it is read whole
    even if eviction removes its name meanwhile (KeyError, 404, when it is already gone)."""
    from starlette.responses import StreamingResponse
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed when the stream ends
    except FileNotFoundError:
        raise KeyError(key or path.name) from None
    size = os.fstat(f.fileno()).st_size

    def chunks():
        with f:
            while block := f.read(1 << 16):
                yield block
    headers = {"content-length": str(size)}
    if filename:
        headers["content-disposition"] = f'attachment; filename="{filename}"'
    return StreamingResponse(chunks(), media_type=media, headers=headers)


def live_routes(studio, guarded, json_object) -> list:
    """The Play page's routes, for make_app."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route


    def get(request: Request) -> LiveDuet:
        d = studio.live.get(request.path_params["did"])
        if d is None:
            raise KeyError(request.path_params["did"])
        return d

    async def start(request: Request):
        body = await json_object(request)
        model = body_field(body, "model", str) or studio.models[0]["id"]
        if model not in {m["id"] for m in studio.models}:
            raise ConfigError(f"--checkpoint {model}: not one of this studio's models")
        cfg = DuetConfig.from_dict({
            "checkpoint": model, "sample": page_settings(body),
            **{k: body[k] for k in ("wait", "answer") if body.get(k) is not None}})
        with studio.lock:
            if any(d.alive for d in studio.live.values()):
                raise Busy("another page is playing a duet with this studio (one at a time); "
                           "stop it first")
            for old in [k for k, d in studio.live.items() if not d.alive][:-KEEP_DUETS or None]:
                studio.live.pop(old)  # the oldest finished ones (dicts keep their order)
        gen = await run_in_threadpool(studio.session, model)
        d = LiveDuet(gen, cfg.sample, cfg.wait, cfg.answer, studio.work / "duets" /
                     uuid.uuid4().hex[:12])
        studio.live[d.id] = d
        return JSONResponse({"id": d.id, "wait": cfg.wait, "answer": cfg.answer})

    async def notes(request: Request):
        d = get(request)
        body = await json_object(request)
        got = body.get("notes")
        if not isinstance(got, list):
            raise ConfigError(f"notes: must be a list, got {type(got).__name__}")
        d.hear(got)
        return JSONResponse({"ok": True})

    async def events(request: Request):
        d = get(request)
        with studio.lock:
            if studio.streams >= studio.cfg.max_streams:
                raise Busy(f"{studio.streams} event streams are open (--max-streams "
                           f"{studio.cfg.max_streams}); close a Play page")
            studio.streams += 1

        async def stream():
            idle = 0.0
            try:
                while not studio.stopping.is_set():
                    try:  # waits in a worker thread: an event leaves the moment it is put
                        e = await run_in_threadpool(d.events.get, True, WAIT)
                    except queue.Empty:
                        if await request.is_disconnected():
                            break
                        idle += WAIT
                        if idle >= KEEP_ALIVE:
                            idle = 0.0
                            yield ": still here\n\n"
                        continue
                    if e is None:
                        break
                    idle = 0.0
                    yield f"data: {json.dumps(e)}\n\n"
            finally:  # the page went away (or the session ended, or the server stops)
                d.source.stop.set()
                with studio.lock:
                    studio.streams -= 1
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def stop(request: Request):
        d = get(request)
        await run_in_threadpool(d.stop)
        return JSONResponse({"midi": f"/api/duet/{d.id}/session.mid", **(d.summary or {})})

    async def session(request: Request):
        d = get(request)
        f = d.folder / "session.mid"
        if d.alive or not f.exists():
            raise KeyError(f"{d.id}/session.mid")
        return open_file_response(f, "audio/midi", f"duet-{d.id[:6]}.mid",
                                  key=f"{d.id}/session.mid")

    return [Route("/api/duet", guarded(start), methods=["POST"]),
            Route("/api/duet/{did}/notes", guarded(notes), methods=["POST"]),
            Route("/api/duet/{did}/events", guarded(events)),
            Route("/api/duet/{did}/stop", guarded(stop), methods=["POST"]),
            Route("/api/duet/{did}/session.mid", guarded(session))]
