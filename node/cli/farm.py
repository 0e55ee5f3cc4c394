"""``rendernode`` commands about this node and the farm's machines: daemon,
status, config, machines (list, add, remove, log), renderers."""

from __future__ import annotations

import datetime
from typing import Any

import click

from node.cli.common import ListGroup, client, emit, fail, json_option, main, short_ids, table
from node.errors import NodeError
from protocol.enums import MachineList
from protocol.verification import parse_bits


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML preferences")
@click.option("--state-dir", help="identity, database, chunk store")
@click.option("--listen", help="HOST:PORT for peers (port 0 picks one)")
@click.option("--mdns-interface", multiple=True, help="address to run mDNS on (repeatable)")
@click.option("--no-mdns", is_flag=True, help="no mDNS: static peers only")
@click.option("--name", help="name shown to users (default: hostname)")
@click.option("--server-priority", type=int, help="0 = never server")
@click.option("--peer", multiple=True, help="static peer HOST[:PORT] (repeatable)")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def daemon(ctx: click.Context, config_path: str | None, state_dir: str | None, listen: str | None,
           mdns_interface: tuple[str, ...], no_mdns: bool, name: str | None,
           server_priority: int | None, peer: tuple[str, ...], log_level: str | None) -> None:
    """Run the node daemon in the foreground until SIGTERM/SIGINT."""
    import trio

    from node import config as config_mod
    from node.daemon import serve
    from node.service import logs
    from node.service.memory import tune_malloc

    tune_malloc()  # first, before the heap holds much

    prefs = config_mod.load(config_path, overrides={
        "state_dir": state_dir, "listen": listen, "mdns_interfaces": list(mdns_interface),
        "name": name, "server_priority": server_priority, "socket": ctx.obj.get("socket"),
        "peers": list(peer), "log_level": log_level, "mdns": False if no_mdns else None,
    })
    token = config_mod.load_token(prefs)
    logs.setup(prefs.log_level)
    try:
        trio.run(serve, prefs, token, logs.sd_notify)
    except* KeyboardInterrupt:
        pass
    except* (NodeError, OSError) as group:  # a service could not start; trio wraps it in groups
        fail(f"cannot start: {_first_leaf(group)}")


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@main.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """This node: UUID, name, role, term, server (GetUuid, GetName)."""
    data = client(ctx).status()

    def render(d: dict[str, Any]) -> None:
        for key in ("uuid", "name", "role", "term", "server", "build_id", "arch", "online_peers",
                    "dashboard"):
            click.echo(f"{key:13} {d.get(key)}")
        renders = d.get("renders_as")
        if renders:
            click.echo(f"{'renders as':13} {renders['user']} ({renders['reason']})")

    emit(data, as_json, render)


@main.command()
@click.option("--open", "open_browser", is_flag=True, help="open the URL in a web browser")
@click.option("--revoke", is_flag=True, help="end every dashboard session instead")
@json_option
@click.pass_context
def dashboard(ctx: click.Context, open_browser: bool, revoke: bool, as_json: bool) -> None:
    """A one-time login URL for the web dashboard, valid for a minute."""
    c = client(ctx)
    if revoke:
        ended = c.dashboard_revoke()
        emit(ended, as_json, lambda d: click.echo(f"ended {d['ended']} dashboard session(s)"))
        return
    grant = c.dashboard_login()
    data = {"url": grant["url"], "expires": grant["expires"]}
    if as_json:
        emit(data, True)
    else:
        until = datetime.datetime.fromtimestamp(data["expires"]).strftime("%H:%M:%S")
        click.echo(data["url"])
        click.echo(f"(opens the dashboard once, until {until})", err=True)
    if open_browser:
        import webbrowser

        if not webbrowser.open(data["url"]):
            click.echo("rendernode: no web browser to open here; open the URL above", err=True)


@main.command()
@json_option
@click.pass_context
def config(ctx: click.Context, as_json: bool) -> None:
    """The effective preferences (GetNetPreferences); never the token."""
    data = client(ctx).get_net_preferences()

    def render(d: dict[str, Any]) -> None:
        for key, value in d.items():
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value) or "-"
            elif isinstance(value, bool):
                value = "yes" if value else "no"
            click.echo(f"{key:20} {value}")

    emit(data, as_json, render)


@main.group(cls=ListGroup)
def machines() -> None:
    """List machines (GetAllMachineUuids / GetMachinesList), add or remove them."""


@machines.command("list", epilog="Also: rendernode machines add HOST[:PORT] | remove MACHINE | "
                                  "log MACHINE TEXT (each with --help).")
@click.argument("uuid", required=False, metavar="[MACHINE]")
@click.option("--online", is_flag=True, help="only online machines")
@click.option("--offline", is_flag=True, help="only offline machines")
@click.option("--bits", help="only machines with all these bits, e.g. VERIFIED,SHARED")
@click.option("--no-local", is_flag=True, help="leave out this machine")
@click.option("--no-discovered", is_flag=True, help="leave out machines known only from mDNS")
@click.option("--uuids", is_flag=True, help="print UUIDs only")
@click.option("--log", "log_count", type=int, default=0, help="include the last N log lines")
@json_option
@click.pass_context
def machines_list(ctx: click.Context, uuid: str | None, online: bool, offline: bool, bits: str | None,
                  no_local: bool, no_discovered: bool, uuids: bool, log_count: int, as_json: bool) -> None:
    """List machines (MACHINE: a name, UUID or UUID prefix: that one only)."""
    which = MachineList.MACHINELIST_ALL
    if online and not offline:
        which = MachineList.MACHINELIST_ONLINE
    elif offline and not online:
        which = MachineList.MACHINELIST_OFFLINE
    rows = client(ctx).get_machines_list(
        log_count=log_count, get_only_this_machine=uuid, machine_list=which,
        bits=int(parse_bits(bits)) if bits else 0,
        include_local_machine=not no_local, include_bonjour_machines=not no_discovered,
    )
    if uuids:
        emit([r["uuid"] for r in rows], as_json, lambda d: click.echo("\n".join(d)))
        return
    emit(rows, as_json, _render_machines)


def _render_machines(rows: list[dict[str, Any]]) -> None:
    ids = short_ids([r["uuid"] for r in rows])
    shown = [{"name": (r["name"] or "?") + (" (this)" if r["local"] else ""), "id": ids[r["uuid"]],
              "address": r["address"], "via": ",".join(r["via"]),
              "state": "online" if r["online"] else "offline",
              "bits": " ".join(b.removeprefix("VERIFICATIONBIT_") for b in r["bits"])} for r in rows]
    table(shown, [("name", "name"), ("id", "id"), ("address", "address"), ("via", "via"),
                  ("state", "state"), ("bits", "bits")], whole={"name", "id", "address", "state"})
    for r in rows:
        for entry in r.get("log", []):
            ts = datetime.datetime.fromtimestamp(entry["time"]).strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"{r['name']}  {ts}  {entry['line']}")


@machines.command("add")
@click.argument("address")
@click.option("--replace", default="", help="UUID of the machine this one replaces")
@json_option
@click.pass_context
def machines_add(ctx: click.Context, address: str, replace: str, as_json: bool) -> None:
    """Add a static peer HOST[:PORT] (AddMachine)."""
    result = client(ctx).add_machine(address, replace)
    emit(result, as_json, lambda d: click.echo(f"added {d['key']}"))


@machines.command("remove")
@click.argument("machine")
@json_option
@click.pass_context
def machines_remove(ctx: click.Context, machine: str, as_json: bool) -> None:
    """Forget a machine by UUID or static address."""
    client(ctx).remove_machine(machine)
    emit({"removed": machine}, as_json, lambda d: click.echo(f"removed {machine}"))


@machines.command("log")
@click.argument("machine")
@click.argument("text")
@click.pass_context
def machines_log(ctx: click.Context, machine: str, text: str) -> None:
    """Add a line to a machine's log (AddLogToMachine); MACHINE: name, UUID or prefix."""
    client(ctx).add_log_to_machine(machine, text)
    click.echo(f"logged to {machine}")


@main.command()
@click.option("--online", is_flag=True, help="only machines online now")
@json_option
@click.pass_context
def renderers(ctx: click.Context, online: bool, as_json: bool) -> None:
    """Each machine's renderers, their versions and the settings they take
    (`rendernode submit --set KEY=VALUE`; --resolution sets each renderer's size keys)."""
    rows = [r for r in client(ctx).renderers() if r["online"] or not online]

    def render(r: list[dict[str, Any]]) -> None:
        table([{**row, "keys": " ".join(s["name"] for s in row["settings"]),
                "state": "online" if row["online"] else "offline"} for row in r],
              [("name", "machine"), ("state", "state"), ("renderer", "renderer"), ("version", "version"),
               ("keys", "settings")], whole={"name", "renderer", "version"})
        shown: set[str] = set()
        for row in r:
            if row["renderer"] in shown:
                continue
            shown.add(row["renderer"])
            click.echo(f"\nsettings of {row['renderer']}:")
            for s in row["settings"]:
                click.echo(f"  {s['name']:22} {s['type']:16} {s['help']}")

    emit(rows, as_json, render)
