"""``rendernode`` commands for setting a machine up: install-service, init,
token show|rotate|set.  They work on files and the service manager, not on
the daemon's control socket."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from node.cli.common import main
from node.errors import ConfigError
from node.service import install as service
from node.service import token as farmtoken

config_dir_option = click.option(
    "--config-dir", type=click.Path(file_okay=False, path_type=Path), default=farmtoken.CONFIG_DIR,
    show_default=True, help="folder of rendernode.toml and the token file")


@main.command("install-service")
@click.option("--prefix", type=click.Path(path_type=Path), default=service.DEFAULT_PREFIX,
              show_default=True, help="the venv rendernode is installed into")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"),
              show_default=True, help="install into this folder as the root (an image); starts nothing")
@click.option("--source", help="what pip installs (default: this checkout, else this version)")
@click.option("--pip-arg", "pip_args", multiple=True,
              help="extra pip install option, e.g. --pip-arg=--no-index --pip-arg=--find-links=DIR")
@click.option("--no-venv", is_flag=True, help="no venv: the unit runs this rendernode program (pipx)")
@click.option("--gpu", is_flag=True, help="also the GPU drop-in (the host's GPU device nodes)")
@click.option("--no-systemctl", is_flag=True, help="leave out systemctl daemon-reload and enable")
@click.option("--paths-only", is_flag=True,
              help="only rewrite the ReadWritePaths drop-in from output_dirs and watch")
@click.option("--dry-run", is_flag=True, help="print the steps, do nothing")
def install_service(prefix: Path, root: Path, source: str | None, pip_args: tuple[str, ...],
                    no_venv: bool, gpu: bool,
                    no_systemctl: bool, paths_only: bool, dry_run: bool) -> None:
    """Install rendernode as a systemd service: venv, unit, user, enable --now."""
    import os

    if paths_only:
        steps = service.paths_plan(root, systemctl=not no_systemctl)
    else:
        steps = service.plan(prefix, root, source=source, venv=not no_venv,
                             systemctl=not no_systemctl, gpu=gpu, pip_args=pip_args)
    hint = "" if paths_only else service.next_steps(root)
    if dry_run:
        for step in steps:
            click.echo(step.describe())
        if hint:
            click.echo(f"next: {hint}")
        return
    if root.resolve() == Path("/") and os.geteuid() != 0:
        raise ConfigError("installing a service needs root: sudo rendernode install-service "
                          "(or --dry-run to see the steps)")
    for step in steps:
        click.echo(step.describe())
        step.run()
    if hint:
        click.echo(f"next: {hint}")


@main.command()
@click.option("--farm", help="farm name: machines of other farms never talk to this one")
@config_dir_option
@click.option("--force", is_flag=True, help="replace an existing token")
def init(farm: str | None, config_dir: Path, force: bool) -> None:
    """Write rendernode.toml (farm, token_file) and a fresh 256-bit farm token."""
    done = farmtoken.init(config_dir, farm, force)
    click.echo(f"wrote {done.config} (farm {done.farm}) and a new farm token in {done.token}")
    click.echo("every machine of the farm needs this token: `rendernode token show` prints it, "
               "`rendernode token set` installs it on another machine")


@main.group()
def token() -> None:
    """Show, rotate or set this machine's farm token."""


@token.command("show")
@config_dir_option
def token_show(config_dir: Path) -> None:
    """Print the farm token."""
    click.echo(farmtoken.show(config_dir))


@token.command("rotate")
@config_dir_option
def token_rotate(config_dir: Path) -> None:
    """Replace the farm token with a fresh one and print it."""
    path, new = farmtoken.rotate(config_dir)
    click.echo(new)
    click.echo(f"wrote {path}; `systemctl reload rendernode` makes the daemon use it.  Machines "
               "that still hold the old token show SECURITYTOKENCHANGED until they are given "
               "this one (`rendernode token set`, then `systemctl reload rendernode` there).",
               err=True)


@token.command("set")
@config_dir_option
def token_set(config_dir: Path) -> None:
    """Install a farm token read from stdin (made by `token rotate` or `init` elsewhere)."""
    text = sys.stdin.readline() if not sys.stdin.isatty() else click.prompt(
        "farm token", hide_input=True)
    path = farmtoken.set_token(config_dir, text)
    click.echo(f"wrote {path}; `systemctl reload rendernode` makes the daemon use it", err=True)
