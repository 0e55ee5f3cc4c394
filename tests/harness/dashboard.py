"""A small blocking HTTP client for the dashboard tests (http.client, run off
the trio thread), with the one cookie a dashboard sets, and a reader of the
event stream."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import trio

TIMEOUT = 10.0


@dataclass
class Answer:
    """An HTTP response, read whole."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass
class Browser:
    """Requests to one dashboard, carrying its session cookie once it has one."""

    base: str  #: http://host:port
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """The dashboard's own origin."""
        return self.base

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                raw: bytes | None = None) -> Answer:
        """One request (blocking)."""
        parts = urlsplit(self.base)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT)
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        if method == "POST":
            sent.setdefault("Origin", self.origin)
        try:
            conn.request(method, path, body=data, headers=sent)
            resp = conn.getresponse()
            answer = Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()
        cookie = answer.headers.get("set-cookie")
        if cookie:
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if value:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return answer

    async def get(self, path: str, **kw: Any) -> Answer:
        """GET off the trio thread."""
        return await trio.to_thread.run_sync(lambda: self.request("GET", path, **kw))

    async def post(self, path: str, body: Any = None, **kw: Any) -> Answer:
        """POST off the trio thread."""
        return await trio.to_thread.run_sync(lambda: self.request("POST", path, body, **kw))

    async def login(self, url: str) -> Answer:
        """Open a login URL."""
        parts = urlsplit(url)
        return await self.get(f"{parts.path}?{parts.query}")


class EventReader:
    """An open event stream, read on a socket of its own (blocking; use in a thread)."""

    def __init__(self, browser: Browser, last_id: str | None = None) -> None:
        parts = urlsplit(browser.base)
        self.sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=TIMEOUT)
        lines = ["GET /api/events HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream"]
        if browser.cookies:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in browser.cookies.items()))
        if last_id:
            lines.append(f"Last-Event-ID: {last_id}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        self.status = 0
        self.last_id = last_id or ""

    def _fill(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            raise ConnectionError("the event stream ended")
        self.buffer += data
        if self.buffer.endswith(b"0\r\n\r\n") and self.buffer[-7:-5] in (b"\r\n", b""):
            raise ConnectionError("the event stream ended (its last chunk)")
        return True

    def _parse(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        if not self.status and b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.status = int(head.split()[1])
        if not self.status:
            return out
        # chunked transfer: each send is one chunk, so the size lines fall between
        # events (and match none of an event's fields)
        text = self.buffer.decode("utf-8", "replace")
        while "\n\n" in text:
            block, text = text.split("\n\n", 1)
            name, data = "message", ""
            for line in block.replace("\r", "").split("\n"):
                if line.startswith(":"):
                    out.append((":", line[1:].strip()))
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line.startswith("id: "):
                    self.last_id = line[4:]
            if data:
                out.append((name, json.loads(data)))
        self.buffer = text.encode()
        return out

    def until(self, done: Callable[[list[tuple[str, Any]]], bool], wait: float) -> list[tuple[str, Any]]:
        """Events (name, data; comments as (":", text)) until ``done(events)`` holds or
        ``wait`` seconds pass."""
        deadline = time.monotonic() + wait
        out: list[tuple[str, Any]] = []
        while True:
            out += self._parse()
            if done(out) or time.monotonic() >= deadline:
                return out
            self._fill(deadline)

    def close(self) -> None:
        """Close the stream."""
        self.sock.close()
