"""Helpers the command-line tests share: ``rendernode`` run in this process
through click's CliRunner (in a worker thread, since the daemons share this
trio loop), with stdout and stderr apart and the exit status."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import trio
from click.testing import CliRunner

from node.cli import main

CLI_TIMEOUT = 120.0  #: seconds one command may take (``submit --wait`` renders)


@dataclass
class Run:
    """How one command went."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.out)


async def rn(sock: str, *args: str, env: dict[str, str] | None = None, input: str | None = None) -> Run:
    """``rendernode --socket SOCK ARGS`` in this process."""
    def work() -> Run:
        done = CliRunner().invoke(main, ["--socket", sock, *args], env=env, input=input)
        if done.exception is not None and not isinstance(done.exception, SystemExit):
            raise done.exception
        return Run(done.exit_code, done.stdout, done.stderr)

    with trio.fail_after(CLI_TIMEOUT):
        return await trio.to_thread.run_sync(work)
