"""``rendernode`` job commands: submit, jobs, job, start, stop, delete, move,
scene, log, tasks, users, message, messages."""

from __future__ import annotations

import datetime
import os
from typing import Any

import click

from node.cli.common import ListGroup, client, emit, json_option, main
from node.client import Client
from node.errors import NodeError


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None)
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*(_cell(r.get(c)) for c in columns))
    Console().print(table)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.2f}"
    return "" if value is None else str(value)


@main.command()
@click.argument("scene")
@click.option("--frames", help="e.g. 1-250, 1,5,10-20, 1-100x5 (default: the scene's own range, else 1)")
@click.option("--renderer", type=click.Choice(["auto", "builtin", "blender", "povray", "command"]),
              default="auto", show_default=True)
@click.option("--output", default="", help="output pattern, e.g. renders/shot_####.png")
@click.option("--chunk", type=int, default=1, show_default=True, help="frames per task")
@click.option("--priority", type=int, default=50, show_default=True)
@click.option("--flag", "flags", multiple=True, help="NETRENDERFLAGS name (repeatable)")
@click.option("--name", help="job name (default: the scene's file name)")
@click.option("--paused", is_flag=True, help="create the job without starting it")
@click.option("--command", "template", help="command template for --renderer command: {scene} {frame} {start} {end} {output}")
@click.option("--asset", "asset_paths", multiple=True, metavar="PATH",
              help="a file the scene needs that is not found in it (repeatable); sent to the workers with it")
@click.option("--wait", is_flag=True, help="show progress until the job ends; non-zero exit if it fails")
@json_option
@click.pass_context
def submit(ctx: click.Context, scene: str, frames: str | None, renderer: str, output: str, chunk: int,
           priority: int, flags: tuple[str, ...], name: str | None, paused: bool, template: str | None,
           asset_paths: tuple[str, ...], wait: bool, as_json: bool) -> None:
    """Submit a job (CreateRenderJob); prints its UUID."""
    from node.jobs.watch import SCENE_TYPES, default_frames

    if renderer == "auto":
        renderer = "command" if template else SCENE_TYPES.get(os.path.splitext(scene)[1].lower(), "builtin")
    if not os.path.exists(scene):
        raise click.BadParameter(f"{scene} does not exist", param_hint="SCENE")
    for path in asset_paths:
        if not os.path.isfile(path):
            raise click.BadParameter(f"{path} is not a file", param_hint="--asset")
    rdata: dict[str, Any] = {}
    if template:
        rdata["command"] = template
    if asset_paths:
        rdata["assets"] = [os.path.abspath(p) for p in asset_paths]
    c = client(ctx)
    result = c.create_render_job(
        os.path.abspath(scene), frames=frames or default_frames(scene, renderer), renderer=renderer,
        output=os.path.abspath(output) if output else "", chunk=chunk, priority=priority,
        flags=list(flags), name=name, start=not paused,
        rdata=rdata or None,
    )
    if not wait:
        emit(result, as_json, lambda d: click.echo(d["uuid"]))
        return
    if not as_json:
        click.echo(result["uuid"])
    final = wait_for(c, result["uuid"], quiet=as_json)
    if as_json:
        emit({**result, "state": final["state"], "frames_done": final["frames_done"]}, True)
    if final["state"] != "done":
        raise SystemExit(1)


def wait_for(c: Client, job_uuid: str, quiet: bool = False, poll: float = 0.25) -> dict[str, Any]:
    """Show a progress bar (frames, rate, ETA, machines busy) until the job ends."""
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.2f} frames/s"), TimeRemainingColumn(),
               TextColumn("{task.fields[busy]} busy  {task.fields[state]}")]
    started = time.monotonic()
    with Progress(*columns, disable=quiet, transient=False) as bar:
        task = None
        while True:
            rows = c.get_jobs_list(selected_job=job_uuid, selected_job_only=True)
            if not rows:
                raise NodeError(f"job {job_uuid} was deleted")
            job = rows[0]
            rate = job["frames_done"] / max(1e-6, time.monotonic() - started)
            if task is None:
                task = bar.add_task(job["name"], total=job["frames_total"], rate=0.0, busy=0, state="")
            bar.update(task, completed=job["frames_done"], rate=rate, busy=job["machines_busy"],
                       state=job["state"])
            if job["state"] in ("done", "failed", "stopped"):
                return job
            time.sleep(poll)


@main.command()
@click.option("--user", help="only this user's jobs")
@click.option("--job", help="the selected job")
@click.option("--details", default="", help="details of the selected job: rdata,assets,results,log")
@json_option
@click.pass_context
def jobs(ctx: click.Context, user: str | None, job: str | None, details: str, as_json: bool) -> None:
    """List jobs in queue order (GetJobsList)."""
    wanted = {d.strip() for d in details.split(",") if d.strip()}
    unknown = wanted - {"rdata", "assets", "results", "log"}
    if unknown:
        raise click.BadParameter(f"unknown detail {', '.join(sorted(unknown))}", param_hint="--details")
    def sel(name: str) -> int:
        return 1 if name in wanted else 0

    rows = client(ctx).get_jobs_list(rdata=sel("rdata"), assets=sel("assets"), results=sel("results"),
                                     log=sel("log"), selected_job=job, user=user)
    emit(rows, as_json, lambda r: _table(r, ["uuid", "name", "user", "state", "frames_done",
                                             "frames_total", "renderer", "priority"]))


@main.command()
@click.argument("job")
@json_option
@click.pass_context
def job(ctx: click.Context, job: str, as_json: bool) -> None:
    """One job with its settings and log."""
    data = client(ctx).get_job(job)

    def render(d: dict[str, Any]) -> None:
        for key in ("uuid", "name", "scene", "default_scene", "user", "state", "result", "renderer",
                    "frames", "chunk", "priority", "flags", "output", "machines", "frames_done",
                    "frames_total"):
            click.echo(f"{key:14} {_cell(d.get(key))}")
        for entry in d.get("log", []):
            ts = datetime.datetime.fromtimestamp(entry["time"]).strftime("%H:%M:%S")
            click.echo(f"  {ts} {entry['line']}")

    emit(data, as_json, render)


@main.command()
@click.argument("job")
@click.option("--machines", help="comma-separated machine UUIDs or names allowed to render it")
@click.option("--flag", "flags", multiple=True, help="NETRENDERFLAGS name (repeatable)")
@click.option("--restart", is_flag=True, help="render every frame again")
@json_option
@click.pass_context
def start(ctx: click.Context, job: str, machines: str | None, flags: tuple[str, ...], restart: bool,
          as_json: bool) -> None:
    """Start a job (InitRendering / StartRendering)."""
    ok = client(ctx).init_and_start_rendering_full_async(
        job, flags=list(flags) if flags else None,
        machines=[m for m in machines.split(",") if m] if machines is not None else None, restart=restart)
    emit({"started": ok}, as_json, lambda d: click.echo("started"))


@main.command()
@click.argument("job")
@json_option
@click.pass_context
def stop(ctx: click.Context, job: str, as_json: bool) -> None:
    """Stop a job (StopRendering, RENDERRESULT_USERBREAK)."""
    result = client(ctx).stop_rendering(job)
    emit({"result": result}, as_json, lambda d: click.echo(f"stopped ({result})"))


@main.command()
@click.argument("job")
@json_option
@click.pass_context
def retry(ctx: click.Context, job: str, as_json: bool) -> None:
    """Render a job's failed frames again; its finished frames are kept."""
    result = client(ctx).retry_failed(job)
    emit(result, as_json, lambda d: click.echo(f"{d['retried']} task(s) queued again"))


@main.command()
@click.argument("job")
@click.option("--keep-clients", is_flag=True, help="do not wait for the other nodes (informClients off)")
@json_option
@click.pass_context
def delete(ctx: click.Context, job: str, keep_clients: bool, as_json: bool) -> None:
    """Delete a job (DeleteRenderJob)."""
    client(ctx).delete_render_job(job, inform_clients=not keep_clients)
    emit({"deleted": job}, as_json, lambda d: click.echo(f"deleted {job}"))


@main.command()
@click.argument("job")
@click.option("--before", help="put JOB before this job")
@click.option("--after", help="put JOB after this job")
@json_option
@click.pass_context
def move(ctx: click.Context, job: str, before: str | None, after: str | None, as_json: bool) -> None:
    """Move a job in the queue (InsertJobBefore / InsertJobAfter)."""
    if bool(before) == bool(after):
        raise click.UsageError("give exactly one of --before or --after")
    c = client(ctx)
    if before:
        c.insert_job_before(job, before)
    else:
        c.insert_job_after(job, after or "")
    emit({"moved": job}, as_json, lambda d: click.echo("moved"))


@main.command()
@click.argument("job")
@click.argument("name")
@json_option
@click.pass_context
def scene(ctx: click.Context, job: str, name: str, as_json: bool) -> None:
    """Set a job's default scene name (SetDefaultSceneName)."""
    client(ctx).set_default_scene_name(job, name)
    emit({"default_scene": name}, as_json, lambda d: None)


@main.command("log")
@click.argument("job")
@click.argument("text")
@click.option("--replace", is_flag=True, help="replace the job's log with TEXT")
@json_option
@click.pass_context
def log_cmd(ctx: click.Context, job: str, text: str, replace: bool, as_json: bool) -> None:
    """Add a line to a job's log (AddLogToJob)."""
    client(ctx).add_log_to_job(job, text, append=not replace)
    emit({"logged": True}, as_json, lambda d: None)


@main.command()
@click.argument("job")
@json_option
@click.pass_context
def tasks(ctx: click.Context, job: str, as_json: bool) -> None:
    """A job's tasks: frame, state, render time, machines (CopyRenderTaskFrom)."""
    rows = client(ctx).copy_render_task_from(job)
    emit(rows, as_json, lambda r: _table(r, ["task", "frames", "state", "render_time", "machines",
                                             "attempt", "failures", "error"]))


@main.command()
@json_option
@click.pass_context
def users(ctx: click.Context, as_json: bool) -> None:
    """Users known to the farm (GetUserPool)."""
    rows = client(ctx).get_user_pool()
    emit(rows, as_json, lambda r: _table(r, ["name", "admin", "jobs", "you"]))


@main.command()
@click.argument("text")
@click.option("--to", default="", help="send privately to this user")
@json_option
@click.pass_context
def message(ctx: click.Context, text: str, to: str, as_json: bool) -> None:
    """Send a message to the farm's users (Message)."""
    result = client(ctx).message(text, to)
    emit(result, as_json, lambda d: None)


@main.command()
@json_option
@click.pass_context
def messages(ctx: click.Context, as_json: bool) -> None:
    """Messages to you or to everyone."""
    rows = client(ctx).messages()

    def render(r: list[dict[str, Any]]) -> None:
        for m in r:
            ts = datetime.datetime.fromtimestamp(m["time"]).strftime("%Y-%m-%d %H:%M")
            click.echo(f"{ts} {m['sender']}{' (private)' if m['private'] else ''}: {m['text']}")

    emit(rows, as_json, render)


@main.command()
@click.option("--nodes", type=click.IntRange(1, 16), default=3, show_default=True)
@click.option("--frames", type=click.IntRange(1, 1000), default=24, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="rendernode-demo", show_default=True)
@click.option("--keep", is_flag=True, help="keep the farm's temporary state dirs")
def demo(nodes: int, frames: int, out: str, keep: bool) -> None:
    """Start a farm on loopback, render an example animation, stop the farm."""
    from pathlib import Path

    from node.cli.demo import run_demo

    run_demo(nodes, frames, Path(out), keep)


@main.group(cls=ListGroup)
def results() -> None:
    """A job's results: list, clear (ClearResults), rm (RemoveResult)."""


@results.command("list")
@click.argument("job")
@json_option
@click.pass_context
def results_list(ctx: click.Context, job: str, as_json: bool) -> None:
    """The job's result files held on this node."""
    rows = client(ctx).results(job)
    emit(rows, as_json, lambda r: _table(r, ["frame", "kind", "path", "size", "machine", "render_time"]))


@results.command("clear")
@click.argument("job")
@json_option
@click.pass_context
def results_clear(ctx: click.Context, job: str, as_json: bool) -> None:
    """Delete the job's results here (ClearResults); start it again to re-render."""
    client(ctx).clear_results(job)
    emit({"cleared": job}, as_json, lambda d: click.echo(f"cleared the results of {job}"))


@results.command("rm")
@click.argument("job")
@click.argument("path")
@json_option
@click.pass_context
def results_rm(ctx: click.Context, job: str, path: str, as_json: bool) -> None:
    """Delete one result file of the job (RemoveResult)."""
    client(ctx).remove_result(job, path)
    emit({"removed": path}, as_json, lambda d: click.echo(f"removed {path}"))


@main.group(invoke_without_command=True)
@json_option
@click.pass_context
def repo(ctx: click.Context, as_json: bool) -> None:
    """Asset manifests and repository results on this node (GetRepository)."""
    if ctx.invoked_subcommand is not None:
        return
    data = client(ctx).get_repository()

    def render(d: dict[str, Any]) -> None:
        click.echo(f"chunk store: {d['store_bytes'] / 1e6:.1f} MB")
        _table(d["assets"], ["manifest", "files", "bytes", "chunks", "chunks_here", "jobs"])
        if d["results"]:
            _table(d["results"], ["job", "name", "frames", "bytes"])

    emit(data, as_json, render)


@repo.command("gc")
@json_option
@click.pass_context
def repo_gc(ctx: click.Context, as_json: bool) -> None:
    """Drop manifests and chunks no live job uses."""
    data = client(ctx).repository_gc()
    emit(data, as_json, lambda d: click.echo(f"dropped {d['manifests']} manifests, {d['bytes'] / 1e6:.1f} MB"))
