"""What every ``rendernode`` subcommand shares: the ``main`` group, the
one-line failure, ``--json`` output, and the control-socket client."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click

from node.client import Client
from node.errors import NodeError


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


class Main(click.Group):
    """Turns NodeError into a one-line error and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NodeError as exc:
            fail(exc.reason)
        except ValueError as exc:
            fail(str(exc), 2)


@click.group(cls=Main)
@click.option("--socket", envvar="RENDERNODE_SOCKET", help="control socket of the local daemon")
@click.pass_context
def main(ctx: click.Context, socket: str | None) -> None:
    """rendernode: a peer-to-peer render farm."""
    ctx.ensure_object(dict)
    ctx.obj["socket"] = socket


class ListGroup(click.Group):
    """A group whose ``list`` subcommand runs when no other is named:
    ``machines [OPTIONS] [UUID]`` lists, ``machines add|remove`` change."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] != "--help"):
            args = ["list", *args]
        return super().parse_args(ctx, args)
