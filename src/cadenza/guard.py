"""Who may talk to a server Cadenza starts (the studio, and any live page after it): one ASGI
middleware, shared, so every server gets the same rules.

What it stops:

- **DNS rebinding.** A web page the user visits can point its own name at 127.0.0.1 and then
  drive a local server with the user's browser. Browsers send that name in ``Host``, so a
  request whose Host is not one of the server's own names (the address it listens on;
  ``localhost``, ``127.0.0.1`` and ``[::1]`` for a loopback server; names added with
  ``--allow-host``) gets 421 and nothing else.
- **Cross-site requests.** A page elsewhere can send a "simple" POST (a form, or ``fetch``
  with ``text/plain``) without asking first. Every request that changes state (anything but
  GET/HEAD/OPTIONS, and a WebSocket's opening) must come from the server's own origin:
  ``Origin``, when the browser sends it, must be the server's, and ``Sec-Fetch-Site`` must
  be ``same-origin`` or ``none``. Clients that are not browsers send neither and pass: a
  program on this machine can reach the server anyway. The app itself then accepts JSON
  only as ``application/json`` and uploads only as ``application/octet-stream`` (or
  ``audio/midi``): types a cross-site form cannot send without a preflight, which this
  server never answers.
- **Other machines.** Off loopback, every request needs the server's token (random unless
  given): in the address the server prints (``/?token=...``, which sets a cookie for the
  page's own requests), a ``Cadenza-Token`` header or that cookie, compared in constant
  time. Loopback stays token-free.

What it does not stop: programs running as the same user on this machine (they can read
the server's files anyway), and anyone who learns the token. It adds no TLS: off
loopback, the token and the music cross the network in the clear.

What a request that passes may hold is checked by the pages' handlers, with
:func:`body_field` (a JSON body's fields, typed as the configs type theirs) and :class:`Busy`
(more work than the server takes at once: 429).
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .config import ConfigError, check_type

COOKIE = "cadenza_token"
HEADER = "cadenza-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """The machine's own standard addresses. Other 127.x.y.z addresses are not counted:
    they are rare on purpose, and a test binds one to stand in for a LAN address."""
    return host.strip("[]").lower() in LOOPBACK_NAMES


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def new_token() -> str:
    return secrets.token_urlsafe(18)


@dataclass
class Guard:
    """The rules for one server: the names it answers to, its port (None: any, before the
    socket is bound), and its token (None: none needed)."""

    host: str
    port: int | None = None
    token: str | None = None
    extra_hosts: tuple[str, ...] = ()
    hosts: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        names = {self.host.strip("[]").lower(), *(h.lower() for h in self.extra_hosts)}
        if is_loopback(self.host):
            names |= set(LOOPBACK_NAMES)
        self.hosts = frozenset(names)

    @classmethod
    def for_server(cls, host: str, token: str | None, no_token: bool,
                   allow_host: tuple[str, ...] = ()) -> Guard:
        """Loopback: no token. Elsewhere: the token given, a random one, or none only when
        ``no_token`` says so."""
        if is_loopback(host) or no_token:
            return cls(host, token=token, extra_hosts=allow_host)
        return cls(host, token=token or new_token(), extra_hosts=allow_host)

    def host_ok(self, header: str) -> bool:
        """A Host header (with or without its port) names this server."""
        name, port = _split_host(header)
        if self.port is not None and port is not None and port != self.port:
            return False
        # a wildcard bind answers on every address: the token is the guard there
        return is_wildcard(self.host) or name in self.hosts

    def origin_ok(self, origin: str) -> bool:
        u = urlsplit(origin)
        if u.scheme != "http" or not u.hostname:
            return False
        port = u.port or 80  # host_ok checks it against the server's
        return self.host_ok(f"[{u.hostname}]:{port}" if ":" in u.hostname
                            else f"{u.hostname}:{port}")

    def address(self, port: int) -> str:
        """The address to print: the page, with the token when one is needed."""
        shown = "127.0.0.1" if is_wildcard(self.host) else self.host
        shown = f"[{shown}]" if ":" in shown else shown
        return f"http://{shown}:{port}/" + (f"?token={self.token}" if self.token else "")


def _split_host(header: str) -> tuple[str, int | None]:
    h = header.strip().lower()
    if h.startswith("["):  # [::1]:8765
        name, _, rest = h[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif h.count(":") == 1:
        name, port = h.split(":")
    else:
        name, port = h, ""
    return name, int(port) if port.isdigit() else None


class GuardMiddleware:
    """ASGI middleware applying a :class:`Guard` before the app sees a request.
    ``stateful_get``: paths whose GET changes state all the same (an event stream whose
    closing stops a duet), checked like a post."""

    def __init__(self, app: Any, guard: Guard,
                 stateful_get: Callable[[str], bool] = lambda path: False) -> None:
        self.app, self.guard, self.stateful_get = app, guard, stateful_get

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        try:
            return await self._check(scope, receive, send)
        except BadHeader as e:  # a header no client of ours sends (never the app's errors)
            return await _refuse(scope, send, 400, f"malformed {e.args[0]}")

    async def _check(self, scope: dict, receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        g = self.guard
        host = headers.get("host", "")
        if not g.host_ok(host):
            return await _refuse(scope, send, 421, f"host {_shown(host)} is not this server's "
                                 "name (a page elsewhere pointing its name here is refused); "
                                 "start it with --allow-host NAME to allow a name")
        changes = scope["type"] == "websocket" or scope.get("method") not in SAFE_METHODS \
            or self.stateful_get(scope.get("path", ""))
        if changes:
            origin = headers.get("origin")
            try:
                ok = origin is None or g.origin_ok(origin)
            except ValueError:
                raise BadHeader("Origin header") from None
            if not ok:
                return await _refuse(scope, send, 403, f"a request from {_shown(origin)} was "
                                     "refused: only the studio's own page may change it")
            site = headers.get("sec-fetch-site")
            if site is not None and site not in ("same-origin", "none"):
                return await _refuse(scope, send, 403, f"a {_shown(site)} request was refused: "
                                     "only the studio's own page may change it")
        if g.token is None:
            return await self.app(scope, receive, send)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])
        try:
            cookie = SimpleCookie(headers.get("cookie", ""))
        except CookieError:
            raise BadHeader("Cookie header") from None
        given = headers.get(HEADER) or (cookie[COOKIE].value if COOKIE in cookie else "") \
            or query[0]
        if not hmac.compare_digest(given.encode(), g.token.encode()):
            return await _refuse(scope, send, 401, "this server needs its token: open the "
                                 "address it printed (it ends in ?token=...)")
        if query[0] and scope["type"] == "http":  # remember it for the page's requests
            send = _with_cookie(send, g.token)
        return await self.app(scope, receive, send)


class BadHeader(ValueError):
    """A header that cannot be read (its name in args[0]): 400, never 500."""


def _shown(text: str, limit: int = 80) -> str:
    """A client's text in a reply: quoted, and cut (a reply never echoes a long string)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _with_cookie(send: Any, token: str) -> Any:
    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
            message = {**message, "headers": [*message.get("headers", []),
                                              (b"set-cookie", cookie.encode())]}
        await send(message)
    return wrapped


async def _refuse(scope: dict, send: Any, status: int, msg: str) -> None:
    if scope["type"] == "websocket":  # close the handshake with a policy violation
        await send({"type": "websocket.close", "code": 1008, "reason": msg[:120]})
        return
    body = json.dumps({"error": msg}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Busy(ConfigError):
    """A request over what the server takes at once (HTTP 429): what to wait for."""


class BadRequest(ValueError):
    """A request the server cannot read (HTTP 400); the message is ours, never a library's."""


MAX_TEXT = 512  # characters in any text field of a request
MAX_DEPTH = 8  # nesting of a JSON body (the deepest the pages send is 3)


def parse_json(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object of at most MAX_DEPTH levels (BadRequest otherwise, before a deeper body
    can exhaust the parser's recursion)."""
    depth = deepest = 0
    quoted = escaped = False
    for c in raw.decode("utf-8", errors="replace"):  # brackets outside strings
        if quoted:
            escaped, quoted = (False, True) if escaped else (c == "\\", c != '"')
        elif c == '"':
            quoted = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                raise BadRequest(f"{what}: JSON nested deeper than {MAX_DEPTH} levels")
        elif c in "]}":
            depth -= 1
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest(f"{what}: the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(f"{what}: expected a JSON object")
    return body


def body_field(body: dict[str, Any], name: str, kind: type) -> Any:
    """A request's field, None when absent, else of ``kind`` (ConfigError naming it, checked
    as the configs check theirs); text at most MAX_TEXT characters."""
    v = body.get(name)
    check_type(name, kind, v, shown=name)
    if isinstance(v, str) and len(v) > MAX_TEXT:
        raise ConfigError(f"{name}: at most {MAX_TEXT} characters, got {len(v):,}")
    return v


# sampling settings that name a file on this computer: a command line may give them, a page
# never (the server would read its disk for a request)
SERVER_SIDE = ("chords_file", "chords_from")


def page_settings(body: dict[str, Any]) -> dict[str, Any]:
    """A request's ``sample`` settings, those left empty dropped; ConfigError for one that
    names a file on this computer (SERVER_SIDE) or a text too long."""
    ask = body_field(body, "sample", dict) or {}
    for name in SERVER_SIDE:
        if ask.get(name) not in (None, ""):
            raise ConfigError(f"sample: {name} names a file on the server's disk; a page "
                              "gives chords as text (chords)")
    for name, v in ask.items():
        if isinstance(v, str) and len(v) > MAX_TEXT:
            raise ConfigError(f"{name}: at most {MAX_TEXT} characters, got {len(v):,}")
    return {k: v for k, v in ask.items() if v not in (None, "")}
