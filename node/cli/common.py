"""What every ``rendernode`` subcommand shares: the ``main`` group, the
one-line failure, ``--json`` output, and the control-socket client."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection
from typing import Any, NoReturn

import click

from node.client import Client, RemoteError, SubmitRefused
from node.errors import BadRequest, DaemonNotRunning, NodeError


def fail(reason: str, status: int = 1) -> NoReturn:
    """Print a one-line error and exit."""
    click.echo(f"rendernode: {reason}", err=True)
    sys.exit(status)


def emit(data: Any, as_json: bool, render: Any = None) -> None:
    """Print ``data`` as JSON or through ``render``."""
    if as_json or render is None:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        render(data)


def client(ctx: click.Context) -> Client:
    """The control-socket client for this invocation."""
    return Client(ctx.obj.get("socket"))


def json_option(f: Any) -> Any:
    """Add ``--json`` to a command."""
    return click.option("--json", "as_json", is_flag=True, help="print JSON")(f)


#: exit statuses of every ``rendernode`` command (README.md has the same table)
EXIT_OK = 0  #: it worked
EXIT_FAILED = 1  #: the daemon refused the request (unknown job, not yours, ...), or the job waited for failed or was stopped
EXIT_USAGE = 2  #: the command line is wrong: unknown option, bad value, missing file
EXIT_REFUSED = 3  #: submit refused: a CREATEJOBRESULT_* other than OK (printed with its reason)
EXIT_NO_DAEMON = 4  #: no daemon answers on the control socket
EXIT_INTERRUPTED = 130  #: Ctrl-C; a job being waited for goes on rendering
EXIT_HELP = """\b
Exit status:
  0    it worked
  1    the daemon refused the request, or the job waited for failed or was stopped
  2    the command line is wrong (unknown option, bad value, missing file)
  3    submit refused: a CREATEJOBRESULT_* other than OK, printed with its reason
  4    no daemon answers on the control socket
  130  interrupted (Ctrl-C); a job being waited for goes on rendering
"""


class Main(click.Group):
    """Turns the node's errors into a one-line error and an exit status, and takes
    ``--socket`` after the subcommand too (``rendernode jobs --socket S``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = list(args)
        front: list[str] = []
        i = 0
        while i < len(rest) and rest[i] != "--":
            if rest[i] == "--socket" and i + 1 < len(rest):
                front += rest[i:i + 2]
                del rest[i:i + 2]
            elif rest[i].startswith("--socket="):
                front.append(rest.pop(i))
            else:
                i += 1
        return super().parse_args(ctx, front + rest)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DaemonNotRunning as exc:
            fail(exc.reason, EXIT_NO_DAEMON)
        except SubmitRefused as exc:
            fail(f"submit refused: {exc}", EXIT_REFUSED)
        except RemoteError as exc:
            fail(exc.reason, EXIT_USAGE if exc.code == BadRequest.code else EXIT_FAILED)
        except NodeError as exc:
            fail(exc.reason)
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)


@click.group(cls=Main, epilog=EXIT_HELP)
@click.option("--socket", envvar="RENDERNODE_SOCKET", show_envvar=True,
              help="control socket of the local daemon")
@click.version_option(package_name="rendernode", message="rendernode %(version)s")
@click.pass_context
def main(ctx: click.Context, socket: str | None) -> None:
    """rendernode: a peer-to-peer render farm."""
    ctx.ensure_object(dict)
    ctx.obj["socket"] = socket


class ListGroup(click.Group):
    """A group whose ``list`` subcommand runs when no other is named:
    ``machines [OPTIONS] [UUID]`` lists, ``machines add|remove`` change."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:  # --help too: the listing's options
            args = ["list", *args]
        return super().parse_args(ctx, args)


def cell(value: Any) -> str:
    """A value as a table cell: lists joined with commas, floats to two places."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.2f}"
    return "" if value is None else str(value)


def short_ids(ids: list[str], least: int = 8) -> dict[str, str]:
    """Each id cut to the shortest prefix (``least`` characters at least) that no
    other id in ``ids`` shares: what a table shows, and what every command accepts."""
    out: dict[str, str] = {}
    for i in ids:
        n = least
        while n < len(i) and any(o != i and o.startswith(i[:n]) for o in ids):
            n += 1
        out[i] = i[:n]
    return out


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], whole: Collection[str] = ()) -> None:
    """Print ``rows`` as a table of ``columns`` (key, header).  Columns in ``whole``
    are never cut or wrapped; the others wrap onto more lines (never dropped).
    When the whole columns need more than the terminal's width, the table is
    as wide as they need."""
    from rich.console import Console
    from rich.table import Table

    cells = [[cell(r.get(key)) for key, _ in columns] for r in rows]
    grid = Table(box=None, pad_edge=False)
    need = 0
    for i, (key, header) in enumerate(columns):
        longest = max([len(header), *(len(c[i]) for c in cells)])
        if key in whole:
            grid.add_column(header, no_wrap=True, min_width=longest)
            need += longest + 2
        else:  # wrapped between words; no word is cut unless one is wider than 30
            word = max([len(header), *(len(w) for c in cells for w in c[i].split())])
            least = min(longest, max(10, min(word, 30)))
            grid.add_column(header, overflow="fold", min_width=least)
            need += least + 2
    for c in cells:
        grid.add_row(*c)
    console = Console()
    if need > console.width:
        console = Console(width=need)
    console.print(grid, markup=False, highlight=False)
