"""Tiny traffic tools to run inside bed hosts: echo, ping, TCP/UDP sinks and sources.

Design: a stdlib-only script (``python -I -S probe.py CMD ...``) so it starts
fast in any host without the project installed.  Servers print ``ready`` once
listening; every command prints its result as one JSON line last.  Every loop
is bounded by a count and a timeout, so a probe always ends by itself.  Use
:func:`command` to build an argv and :func:`result` to parse the output.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["PROBE", "command", "result"]

PROBE = Path(__file__).resolve()
_CHUNK = 64 * 1024


def command(*args: str | int | float) -> list[str]:
    """argv running this probe with ``args`` (e.g. ``command("udp-echo", "--port", 7)``)."""
    return [sys.executable, "-I", "-S", str(PROBE), *map(str, args)]


def result(output: str) -> Any:
    """The JSON result: the last line of ``output`` that parses as a JSON object."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError(f"no JSON result in probe output:\n{output[-1000:]}")


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _ready() -> None:
    print("ready", flush=True)


def udp_echo(a: argparse.Namespace) -> None:
    """Echo datagrams back to their sender until --lifetime seconds pass."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.bind, a.port))
    _ready()
    end = time.monotonic() + a.lifetime
    n = 0
    while (left := end - time.monotonic()) > 0:
        s.settimeout(min(left, 1.0))
        try:
            data, peer = s.recvfrom(_CHUNK)
        except TimeoutError:
            continue
        s.sendto(data, peer)
        n += 1
    _emit({"echoed": n})


def udp_ping(a: argparse.Namespace) -> None:
    """Send --count pings, each waiting up to --timeout for its echo."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    received = 0
    for i in range(a.count):
        payload = struct.pack("!I", i)
        s.sendto(payload, (a.to, a.port))
        deadline = time.monotonic() + a.timeout
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data = s.recv(_CHUNK)
            except (TimeoutError, ConnectionRefusedError):
                break
            if data == payload:
                received += 1
                break
    _emit({"sent": a.count, "received": received})


def udp_sink(a: argparse.Namespace) -> None:
    """Count datagrams until --idle seconds pass without one (or --timeout overall)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((a.bind, a.port))
    _ready()
    end = time.monotonic() + a.timeout
    received = 0
    last = None
    while (left := end - time.monotonic()) > 0:
        wait = left if last is None else min(left, last + a.idle - time.monotonic())
        if wait <= 0:
            break
        s.settimeout(wait)
        try:
            s.recv(_CHUNK)
        except TimeoutError:
            if last is not None:
                break
            continue
        received += 1
        last = time.monotonic()
    _emit({"received": received})


def udp_blast(a: argparse.Namespace) -> None:
    """Send --count datagrams of --size bytes, --interval seconds apart."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"x" * a.size
    for _ in range(a.count):
        s.sendto(payload, (a.to, a.port))
        if a.interval:
            time.sleep(a.interval)
    _emit({"sent": a.count})


def tcp_sink(a: argparse.Namespace) -> None:
    """Accept one connection, read to EOF, report bytes and rate (from first byte)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.bind, a.port))
    srv.listen(1)
    srv.settimeout(a.timeout)
    _ready()
    conn, peer = srv.accept()
    conn.settimeout(a.timeout)
    total = 0
    first = None
    while data := conn.recv(_CHUNK):
        if first is None:
            first = time.monotonic()
        total += len(data)
    seconds = time.monotonic() - first if first is not None else 0.0
    rate = total * 8 / seconds if seconds > 0 else 0.0
    _emit({"bytes": total, "seconds": seconds, "bits_per_s": rate, "peer": peer[0]})


def tcp_source(a: argparse.Namespace) -> None:
    """Connect (retrying up to --timeout), send --bytes bytes, close."""
    deadline = time.monotonic() + a.timeout
    while True:
        try:
            s = socket.create_connection((a.to, a.port), timeout=1.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    s.settimeout(a.timeout)
    start = time.monotonic()
    block = b"\0" * _CHUNK
    left = a.bytes
    while left > 0:
        left -= s.send(block[: min(left, _CHUNK)])
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # wait for the sink to close after reading everything
    _emit({"bytes": a.bytes, "seconds": time.monotonic() - start})


def _mcast_socket(iface: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    return s


def mcast_listen(a: argparse.Namespace) -> None:
    """Join --group on --iface, report the first datagram from another address."""
    s = _mcast_socket(a.iface)
    s.bind(("", a.port))
    mreq = socket.inet_aton(a.group) + socket.inet_aton(a.iface)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    _ready()
    s.settimeout(a.timeout)
    while True:
        data, peer = s.recvfrom(_CHUNK)
        if peer[0] != a.iface:
            _emit({"from": peer[0], "data": data.decode(errors="replace")})
            return


def mcast_send(a: argparse.Namespace) -> None:
    """Send --count datagrams to --group from --iface, --interval seconds apart."""
    s = _mcast_socket(a.iface)
    for _ in range(a.count):
        s.sendto(a.payload.encode(), (a.group, a.port))
        time.sleep(a.interval)
    _emit({"sent": a.count})


def main(argv: list[str] | None = None) -> None:
    """Parse the subcommand and run it."""
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn: Any, *opts: tuple[str, type, Any]) -> None:
        sp = sub.add_parser(name)
        sp.set_defaults(fn=fn)
        for flag, typ, default in opts:
            sp.add_argument(flag, type=typ, default=default, required=default is None)

    add(
        "udp-echo",
        udp_echo,
        ("--port", int, None),
        ("--bind", str, ""),
        ("--lifetime", float, 60.0),
    )
    add(
        "udp-ping",
        udp_ping,
        ("--to", str, None),
        ("--port", int, None),
        ("--count", int, 3),
        ("--timeout", float, 0.5),
    )
    add(
        "udp-sink",
        udp_sink,
        ("--port", int, None),
        ("--bind", str, ""),
        ("--idle", float, 0.5),
        ("--timeout", float, 10.0),
    )
    add(
        "udp-blast",
        udp_blast,
        ("--to", str, None),
        ("--port", int, None),
        ("--count", int, 100),
        ("--size", int, 200),
        ("--interval", float, 0.001),
    )
    add(
        "tcp-sink", tcp_sink, ("--port", int, None), ("--bind", str, ""), ("--timeout", float, 20.0)
    )
    add(
        "tcp-source",
        tcp_source,
        ("--to", str, None),
        ("--port", int, None),
        ("--bytes", int, None),
        ("--timeout", float, 20.0),
    )
    add(
        "mcast-listen",
        mcast_listen,
        ("--iface", str, None),
        ("--group", str, "224.0.0.251"),
        ("--port", int, 5353),
        ("--timeout", float, 5.0),
    )
    add(
        "mcast-send",
        mcast_send,
        ("--iface", str, None),
        ("--group", str, "224.0.0.251"),
        ("--port", int, 5353),
        ("--count", int, 10),
        ("--interval", float, 0.05),
        ("--payload", str, "netlab"),
    )
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
