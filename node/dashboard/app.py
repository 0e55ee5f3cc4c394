"""The dashboard's ASGI application, routed by hand (a dozen routes do not need
a framework), served by hypercorn on trio.

    GET  /login?token=T          trade a one-time login token for a session cookie
    GET  /                       the page (index.html); /static/* its script and style
    GET  /api/me, /api/farm, /api/queue, /api/job/J, /api/job/J/task/N,
         /api/machine/M/log, /api/messages
    GET  /api/preview/H          a frame preview (fetched through the swarm if need be)
    GET  /api/frame/J/F          a frame full size, from this node's results
    GET  /api/events             the live event stream (server-sent events)
    POST /api/jobs/start|stop|delete|retry  {"jobs": [J, ...]}
    POST /api/jobs/move          {"job": J, "before" or "after": K}
    POST /api/messages           {"text": ..., "to": user or ""}
    POST /api/logout

Nothing but /login is served without a session.  GETs never change state.
A POST must carry an Origin equal to the page's own and a JSON body; every
action goes through the control socket's own methods, as the session's user,
so the owner/admin rules are the CLI's.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import trio

from node.errors import NodeError
from node.render.preview import PreviewError, browser_image

if TYPE_CHECKING:
    from node.dashboard.service import Dashboard

log = logging.getLogger("rendernode.dashboard")
MAX_BODY = 64 * 1024
KEEPALIVE = 15.0  #: seconds between keep-alive comments on an idle event stream
RETRY_MS = 1000  #: how soon a page's event stream reconnects
PREVIEW_TIMEOUT = 20.0
_HASH = re.compile(r"[0-9a-f]{64}")
_JOB = r"([0-9A-Za-z-]{1,64})"
STATUS = {"bad_request": 400, "permission": 403, "not_found": 404, "config": 409}
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class HttpError(Exception):
    """Answer with ``status`` and a reason the user can act on."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def load_static() -> dict[str, tuple[bytes, str]]:
    """The page's files, from the package: name -> (bytes, media type)."""
    out = {}
    for entry in resources.files("node.dashboard").joinpath("static").iterdir():
        name = entry.name
        ext = name[name.rfind("."):]
        if ext in STATIC_TYPES:
            out[name] = (entry.read_bytes(), STATIC_TYPES[ext])
    return out


class Request:
    """What a handler needs of an HTTP request."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}

    def cookie(self, name: str) -> str | None:
        """A cookie's value."""
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.headers.get("cookie", ""))
        except CookieError:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel is not None else None

    async def json(self) -> dict[str, Any]:
        """The JSON object body (at most MAX_BODY bytes)."""
        if not self.headers.get("content-type", "").startswith("application/json"):
            raise HttpError(415, "send the body as application/json")
        body = b""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise HttpError(400, "the client went away")
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                raise HttpError(413, f"a request body holds at most {MAX_BODY} bytes")
            if not message.get("more_body"):
                break
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise HttpError(400, "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "the body must be a JSON object")
        return data


async def respond(send: Send, status: int, body: bytes, media: str,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send a whole response."""
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", media.encode()), (b"content-length", str(len(body)).encode()),
        *SECURITY_HEADERS, *(headers or [(b"cache-control", b"no-store")])]})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, data: Any, status: int = 200) -> None:
    """Send ``data`` as JSON."""
    await respond(send, status, json.dumps(data, separators=(",", ":"), default=str).encode(),
                  "application/json")


def _page(title: str, text: str, refresh: str = "") -> bytes:
    meta = f'<meta http-equiv="refresh" content="0;url={refresh}">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
            f'<meta name="color-scheme" content="light dark"><title>{title}</title></head>'
            f"<body><h1>{title}</h1><p>{text}</p></body></html>").encode()


SIGN_IN = ("Run <code>rendernode dashboard --open</code> on this machine for a login link "
           "(it works once, for a minute).")


class App:
    """The ASGI callable."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.static = load_static()
        self.cookie_name = f"rendernode_{dash.node.ident.uuid[:8]}"
        self.streams = 0  #: event streams open now
        get: list[tuple[str, Callable[..., Awaitable[None]]]] = [
            (r"/api/me", self.get_me), (r"/api/farm", self.get_farm), (r"/api/queue", self.get_queue),
            (rf"/api/job/{_JOB}", self.get_job), (rf"/api/job/{_JOB}/task/(\d{{1,7}})", self.get_task),
            (r"/api/machine/([0-9A-Za-z:._-]{1,80})/log", self.get_machine_log),
            (r"/api/messages", self.get_messages), (r"/api/preview/([^/]*)", self.get_preview),
            (rf"/api/frame/{_JOB}/(-?\d{{1,9}})", self.get_frame), (r"/api/events", self.get_events),
        ]
        post: list[tuple[str, Callable[..., Awaitable[None]]]] = [
            (r"/api/jobs/(start|stop|delete|retry)", self.post_action), (r"/api/jobs/move", self.post_move),
            (r"/api/messages", self.post_message), (r"/api/logout", self.post_logout),
        ]
        self.routes = {"GET": [(re.compile(p + "$"), h) for p, h in get],
                       "POST": [(re.compile(p + "$"), h) for p, h in post]}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        req = Request(scope, receive)
        try:
            await self.handle(req, send)
        except HttpError as exc:
            await respond_json(send, {"error": exc.reason}, exc.status)
        except NodeError as exc:
            await respond_json(send, {"error": exc.reason, "code": exc.code}, STATUS.get(exc.code, 400))

    async def handle(self, req: Request, send: Send) -> None:
        """Route one request."""
        if req.method == "GET" and req.path == "/login":
            await self.login(req, send)
            return
        user = self.dash.sessions.user_of(req.cookie(self.cookie_name))
        if req.method not in ("GET", "HEAD", "POST"):
            raise HttpError(405, f"{req.method} is not allowed")
        if user is None:
            if req.path.startswith("/api/"):
                raise HttpError(401, "no session: run `rendernode dashboard --open` for a login link")
            await respond(send, 401, _page("Sign in to rendernode", SIGN_IN), "text/html; charset=utf-8")
            return
        if req.method == "POST":
            self._check_origin(req)
        elif req.path == "/" or req.path.startswith("/static/"):
            name = "index.html" if req.path == "/" else req.path.removeprefix("/static/")
            found = self.static.get(name)
            if found is None:
                raise HttpError(404, f"no file {name}")
            await respond(send, 200, found[0], found[1], [(b"cache-control", b"no-cache")])
            return
        for pattern, handler in self.routes["POST" if req.method == "POST" else "GET"]:
            match = pattern.match(req.path)
            if match:
                await handler(req, send, user, *match.groups())
                return
        raise HttpError(404, f"no such page {req.path}")

    def _check_origin(self, req: Request) -> None:
        origin = req.headers.get("origin", "")
        host = req.headers.get("host", "")
        if not origin or not host or origin not in (f"http://{host}", f"https://{host}"):
            raise HttpError(403, "cross-origin request refused (the Origin header must be this dashboard's)")
        if req.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise HttpError(403, "cross-site request refused")

    # -- sign in and out ------------------------------------------------------------------

    async def login(self, req: Request, send: Send) -> None:
        """Trade the token for a session; a page that moves on to / (a navigation of
        our own, so the SameSite=Strict cookie goes with it whatever opened the link)."""
        found = await self.dash.sessions.redeem(req.query.get("token", ""))
        if found is None:
            await respond(send, 403, _page("This login link is used or expired", SIGN_IN),
                          "text/html; charset=utf-8")
            return
        sid, _ = found
        cookie = (f"{self.cookie_name}={sid}; Path=/; HttpOnly; SameSite=Strict; "
                  f"Max-Age={int(self.dash.session_ttl)}")
        await respond(send, 200, _page("Signed in", 'Opening the <a href="/">dashboard</a>...', "/"),
                      "text/html; charset=utf-8",
                      [(b"set-cookie", cookie.encode()), (b"cache-control", b"no-store")])

    async def post_logout(self, req: Request, send: Send, user: str) -> None:
        """End this browser's session."""
        sid = req.cookie(self.cookie_name)
        if sid:
            await self.dash.sessions.end(sid)
        await respond(send, 200, b"{}", "application/json",
                      [(b"set-cookie", f"{self.cookie_name}=; Path=/; Max-Age=0".encode()),
                       (b"cache-control", b"no-store")])

    # -- reads ----------------------------------------------------------------------------

    async def get_me(self, req: Request, send: Send, user: str) -> None:
        """Who is looking, at which node; the event stream's position."""
        await respond_json(send, {**self.dash.views.me(user), "event": f"{self.dash.broker.boot}-{self.dash.broker.seq}"})

    async def get_farm(self, req: Request, send: Send, user: str) -> None:
        """Machines, roles, the farm summary."""
        await respond_json(send, self.dash.views.farm())

    async def get_queue(self, req: Request, send: Send, user: str) -> None:
        """Every job's row in queue order, and the farm summary."""
        await respond(send, 200, self.dash.views.queue_json(), "application/json")

    async def get_job(self, req: Request, send: Send, user: str, ref: str) -> None:
        """One job with its frames."""
        await respond_json(send, self.dash.views.job(ref, user))

    async def get_task(self, req: Request, send: Send, user: str, ref: str, tid: str) -> None:
        """One task with its log lines."""
        await respond_json(send, self.dash.views.task_detail(ref, int(tid)))

    async def get_machine_log(self, req: Request, send: Send, user: str, uuid: str) -> None:
        """A machine's log tail."""
        await respond_json(send, self.dash.views.machine_log(uuid))

    async def get_messages(self, req: Request, send: Send, user: str) -> None:
        """The messages this user may read."""
        await respond_json(send, await self.dash.call("messages", user, {}))

    async def get_preview(self, req: Request, send: Send, user: str, chunk: str) -> None:
        """A preview a live task names, from the store or through the swarm."""
        if not _HASH.fullmatch(chunk):
            raise HttpError(400, "a preview is named by its SHA-256 (64 hex digits)")
        named = self.dash.views.previews.get(chunk)
        doc = self.dash.node.book.get(named[0]) if named is not None else None
        if named is None or doc is None:
            raise HttpError(404, "no live job's frame has this preview")
        state = doc.tasks.get(named[1])
        sources = state.all_machines if state is not None else []
        with trio.move_on_after(PREVIEW_TIMEOUT):
            data = await self.dash.fetch_preview(chunk, sources)
            await respond(send, 200, data, "image/jpeg",
                          [(b"cache-control", b"private, max-age=31536000, immutable")])
            return
        raise HttpError(504, "no machine sent the preview in time")

    async def get_frame(self, req: Request, send: Send, user: str, ref: str, frame_text: str) -> None:
        """A finished frame full size, if this node holds it (the submitter, or the repository)."""
        doc = self.dash.node.jobs.find(ref)
        frame = int(frame_text)
        rows = [r for r in self.dash.node.results.of_job(doc.uuid) if r["frame"] == frame and r["kind"] != "tile"]
        if not rows:  # a tiled frame still missing tiles: the ones here, assembled now
            partial = await trio.to_thread.run_sync(self.dash.node.results.assembly.partial_png, doc, frame)
            if partial is not None:
                await respond(send, 200, partial, "image/png", [(b"cache-control", b"private, no-cache")])
                return
            origin = self.dash.node.table.get(str(doc.value("origin")))
            where = origin.name if origin is not None else "the submitting machine"
            raise HttpError(404, f"frame {frame} is not held here; its full size is on {where}")
        try:
            data, media = await trio.to_thread.run_sync(browser_image, rows[0]["path"])
        except (OSError, PreviewError) as exc:
            raise HttpError(404, f"cannot read frame {frame}: {exc}") from None
        await respond(send, 200, data, media, [(b"cache-control", b"private, no-cache")])

    # -- actions --------------------------------------------------------------------------

    async def post_action(self, req: Request, send: Send, user: str, action: str) -> None:
        """start, stop, delete or retry the failed frames of the jobs named."""
        body = await req.json()
        jobs = body.get("jobs")
        if not isinstance(jobs, list) or not jobs or not all(isinstance(j, str) for j in jobs):
            raise HttpError(400, "name the jobs as a non-empty list of UUIDs: {\"jobs\": [...]}")
        if len(jobs) > 1000:
            raise HttpError(400, "at most 1000 jobs at once")
        results = []
        for job in jobs:
            try:
                await self.dash.call(action, user, {"job": job})
                results.append({"job": job, "ok": True})
            except NodeError as exc:
                results.append({"job": job, "ok": False, "error": exc.reason, "code": exc.code})
        failed = [r for r in results if not r["ok"]]
        status = STATUS.get(str(failed[0]["code"]), 400) if failed and len(failed) == len(results) else 200
        if status != 200 and len(results) == 1:
            await respond_json(send, {"error": failed[0]["error"], "code": failed[0]["code"],
                                      "results": results}, status)
            return
        await respond_json(send, {"results": results}, status)

    async def post_move(self, req: Request, send: Send, user: str) -> None:
        """InsertJobBefore / InsertJobAfter."""
        body = await req.json()
        args = {k: body[k] for k in ("job", "before", "after") if body.get(k) is not None}
        for k, v in args.items():
            if not isinstance(v, str):
                raise HttpError(400, f"{k} must be a job UUID")
        await respond_json(send, await self.dash.call("move", user, args))

    async def post_message(self, req: Request, send: Send, user: str) -> None:
        """Send a farm message."""
        body = await req.json()
        text, to = body.get("text"), body.get("to") or None
        if not isinstance(text, str) or not text.strip() or (to is not None and not isinstance(to, str)):
            raise HttpError(400, "a message needs text (and, if private, a user name in to)")
        await respond_json(send, await self.dash.call("message", user, {"text": text, "to": to}))

    # -- the event stream -------------------------------------------------------------------

    async def get_events(self, req: Request, send: Send, user: str) -> None:
        """Server-sent events from ``Last-Event-ID`` on, with keep-alives, until the
        page goes away, the session ends or the daemon stops."""
        broker = self.dash.broker
        sid = req.cookie(self.cookie_name)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"), *SECURITY_HEADERS]})
        last = req.headers.get("last-event-id") or req.query.get("last")
        broker.watch()
        try:
            await self._stream(req, send, user, sid, last)
        finally:
            broker.unwatch()

    async def _stream(self, req: Request, send: Send, user: str, sid: str | None, last: str | None) -> None:
        broker = self.dash.broker
        resumed = broker.since(last, user)
        if resumed is None:
            first, seq = [broker.reset_event()], broker.seq
        else:
            first, seq = resumed
        self.streams += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_disconnect, req.receive, nursery.cancel_scope)
                await send({"type": "http.response.body", "body": f"retry: {RETRY_MS}\n\n".encode()
                            + b"".join(first), "more_body": True})
                while True:
                    with trio.move_on_after(KEEPALIVE):
                        await broker.wait(seq)
                    if self.dash.sessions.user_of(sid) is None:
                        break  # signed out or revoked: the page sees the stream end, then a 401
                    if broker.seq > seq:
                        chunk = b"".join(broker.after(seq, user))
                        seq = broker.seq
                        if not chunk:
                            continue
                    else:
                        chunk = b": keep-alive\n\n"
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                nursery.cancel_scope.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass
        finally:
            self.streams -= 1


async def _until_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


