"""``rendernode`` job commands: submit, jobs, job, start, stop, delete, move,
scene, log, tasks, users, message, messages."""

from __future__ import annotations

import datetime
import os
import re
import sys
import warnings
from collections.abc import Collection
from typing import Any

import click

from node.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    ListGroup,
    cell,
    client,
    emit,
    json_option,
    main,
    short_ids,
    table,
)
from node.client import Client, SubmitRefused, UnderReplicated
from node.errors import NotFound


def _table(rows: list[dict[str, Any]], columns: list[str], whole: Collection[str] = ()) -> None:
    table(rows, [(c, c) for c in columns], whole)


@main.command()
@click.argument("scene")
@click.option("--frames", help="e.g. 1-250, 1,5,10-20, 1-100x5 (default: the scene's own range: a builtin "
              "scene's frames, a .blend's frame_start-frame_end, a POV-Ray .ini's Initial/Final_Frame; else 1)")
@click.option("--renderer", type=click.Choice(["auto", "builtin", "blender", "povray", "command"]),
              default="auto", show_default=True)
@click.option("--output", default="", help="output pattern, e.g. renders/shot_####.exr ({frame:04d} works "
              "too; the extension picks the file type); default renders/<scene>_####.png beside the scene")
@click.option("--chunk", type=int, default=None,
              help="frames per task (default 1); with --tiles, tiles per task (default: a frame's tiles "
              "split evenly over the machines that can render it)")
@click.option("--priority", type=int, default=50, show_default=True)
@click.option("--flag", "flags", multiple=True, help="NETRENDERFLAGS name (repeatable)")
@click.option("--name", help="job name (default: the scene's file name)")
@click.option("--paused", is_flag=True, help="create the job without starting it")
@click.option("--command", "template", help="command template for --renderer command: {scene} {frame} {start} {end} {output}")
@click.option("--asset", "asset_paths", multiple=True, metavar="PATH",
              help="a file the scene needs that is not found in it (repeatable); sent to the workers with it")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="a render setting of the renderer (repeatable): `rendernode renderers` lists them")
@click.option("--resolution", metavar="WxH", help="frame size in pixels, e.g. 1920x1080")
@click.option("--percentage", type=click.IntRange(1, 32767), metavar="P",
              help="render at P percent of the resolution (the scene's, or --resolution)")
@click.option("--tiles", metavar="COLSxROWS|auto",
              help="cut every frame into tiles rendered on several machines and assembled here "
                   "(auto: about two per machine that can render it)")
@click.option("--overscan", type=click.IntRange(0), metavar="PX",
              help="with --tiles: each tile is drawn PX pixels larger on each side and cut "
                   "(for effects that read neighbouring pixels)")
@click.option("--require-replicas", type=click.IntRange(0), metavar="N",
              help="refuse the submit unless N other machines hold the job (default: the "
                   "require_replicas preference)")
@click.option("--wait", is_flag=True, help="show progress until the job ends; non-zero exit if it fails")
@json_option
@click.pass_context
def submit(ctx: click.Context, scene: str, frames: str | None, renderer: str, output: str, chunk: int | None,
           priority: int, flags: tuple[str, ...], name: str | None, paused: bool, template: str | None,
           asset_paths: tuple[str, ...], settings: tuple[str, ...], resolution: str | None,
           percentage: int | None, tiles: str | None, overscan: int | None, require_replicas: int | None,
           wait: bool, as_json: bool) -> None:
    """Submit a job (CreateRenderJob); prints its UUID, and on stderr where the frames
    go, missing assets and how many machines hold the job when fewer than
    the farm's replicas do.  A refusal prints its CREATEJOBRESULT_* and reason
    and exits 3."""
    if not os.path.exists(scene):
        raise click.BadParameter(f"{scene} does not exist", param_hint="SCENE")
    for path in asset_paths:
        if not os.path.isfile(path):
            raise click.BadParameter(f"{path} is not a file", param_hint="--asset")
    rdata: dict[str, Any] = {}
    for item in settings:  # text: the daemon turns each value into its setting's type
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        rdata[key.strip()] = value
    if resolution is not None and not re.fullmatch(r"\s*\d+\s*[xX]\s*\d+\s*", resolution):
        raise click.BadParameter(f"{resolution!r} is not WIDTHxHEIGHT (e.g. 1920x1080)",
                                 param_hint="--resolution")
    if template:
        rdata["command"] = template
    if asset_paths:
        rdata["assets"] = [os.path.abspath(p) for p in asset_paths]
    c = client(ctx)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnderReplicated)  # said below, in the CLI's words
            result = c.create_render_job(
                os.path.abspath(scene), frames=frames or None,
                renderer=None if renderer == "auto" else renderer,  # None: the client picks it as the scene's type says
                output=os.path.abspath(output) if output else "", chunk=chunk, priority=priority,
                flags=list(flags), name=name, start=not paused,
                rdata=rdata or None, require_replicas=require_replicas, resolution=resolution,
                percentage=percentage, tiles=tiles, overscan=overscan,
            )
    except SubmitRefused as refused:
        if as_json:
            emit(refused.result, True)
        for path in refused.missing:
            click.echo(f"rendernode: missing: {path}", err=True)
        raise
    if result.get("under_replicated"):
        click.echo(f"rendernode: warning: job {result['uuid']} {result['note']}", err=True)
    for path in result.get("missing", []):
        click.echo(f"rendernode: warning: missing asset {path} (the render may fail; "
                   "--flag HANDLEWARNINGASERROR refuses such a submit)", err=True)
    if result.get("output") and not as_json:
        click.echo(f"rendernode: frames go to {result['output']}", err=True)
    if result.get("tiles") and not as_json:
        click.echo(f"rendernode: each {result['resolution']} frame renders as {result['tiles']} tiles; "
                   "a .partial image beside each frame shows the tiles so far", err=True)
    for warning in result.get("warnings", []):
        if not as_json:
            click.echo(f"rendernode: tiles: {warning}", err=True)
    if not wait:
        emit(result, as_json, lambda d: click.echo(d["uuid"]))
        return
    if not as_json:
        click.echo(result["uuid"])
    final = wait_for(c, result["uuid"], quiet=as_json)
    if as_json:
        emit({**result, "state": final["state"], "frames_done": final["frames_done"],
              "result": final["result"], "errors": final.get("errors", [])}, True)
    if final["state"] != "done":
        raise SystemExit(EXIT_FAILED)


def wait_for(c: Client, job_uuid: str, quiet: bool = False) -> dict[str, Any]:
    """Show a progress bar (frames, rate, ETA, machines busy) until the job ends; say
    on stderr why it did not end done (the first failed frames' errors)."""
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
               TextColumn("{task.fields[busy]} busy  {task.fields[state]}")]
    started = time.monotonic()
    with Progress(*columns, disable=quiet, transient=False) as bar:
        task: Any = None

        def show(job: dict[str, Any]) -> None:
            nonlocal task
            tiled = "tiles_total" in job  # a tiled job's bar counts tiles; frames are done when assembled
            total, done = (job["tiles_total"], job["tiles_done"]) if tiled else (job["frames_total"],
                                                                                 job["frames_done"])
            if task is None:
                task = bar.add_task(job["name"] + (" (tiles)" if tiled else ""), total=total, rate="",
                                    busy=0, state="")
            bar.update(task, completed=done, rate=rate_text(job["frames_done"], started),
                       busy=job["machines_busy"], state=job["state"])

        try:
            job = c.wait(job_uuid, on_progress=show)
        except KeyboardInterrupt:
            bar.stop()
            click.echo(f"rendernode: stopped waiting; job {job_uuid} goes on rendering "
                       f"(`rendernode stop {job_uuid}` stops it)", err=True)
            raise SystemExit(EXIT_INTERRUPTED) from None
    if job["state"] != "done":
        click.echo(f"rendernode: job {job_uuid} {job['state']} ({job['result']})", err=True)
        for failure in job.get("errors", []):
            click.echo(f"  frames {failure['frames']}: {failure['error']}", err=True)
        more = job.get("tasks_failed", 0) - len(job.get("errors", []))
        if more > 0:
            click.echo(f"  ... and {more} more failed tasks: `rendernode tasks {job_uuid}`", err=True)
    return job


def rate_text(frames: int, started: float) -> str:
    """Frames per second, or seconds per frame when that reads better; blank until
    a frame is done or within the first second (an instant job has no rate)."""
    import time

    elapsed = time.monotonic() - started
    if frames == 0 or elapsed < 1.0:
        return ""
    rate = frames / elapsed
    return f"{rate:.1f} frames/s" if rate >= 1 else f"{elapsed / frames:.1f} s/frame"


def shown_state(row: dict[str, Any]) -> str:
    """A job's state as the tables show it: a job created without starting is
    paused; an under-replicated one says so."""
    state = "paused" if row["state"] == "created" else str(row["state"])
    if row.get("under_replicated"):
        state += f" (under-replicated {row['copies']})"
    return state


def machine_names(c: Client) -> dict[str, str]:
    """Machine UUID -> name, for tables that show machines by name."""
    return {m["uuid"]: m["name"] or m["uuid"][:8] for m in c.get_machines_list()}


def _details(row: dict[str, Any], names: dict[str, str]) -> None:
    """The details a listing carries for a job, as text below the table."""
    for name in ("rdata", "assets", "results", "log"):
        if name not in row:
            continue
        click.echo(f"\n{name} of {row['name']} ({row['uuid']}):")
        value = row[name]
        if name == "log":
            for entry in value:
                ts = datetime.datetime.fromtimestamp(entry["time"]).strftime("%Y-%m-%d %H:%M:%S")
                click.echo(f"  {ts} {entry['line']}")
        elif name == "results":
            for r in value:
                click.echo(f"  frame {r['frame']:>5}  {r['kind']:10} {r['path']}  "
                           f"{names.get(r['machine'], r['machine'])}")
        else:
            for key, item in sorted((value or {}).items()):
                click.echo(f"  {key:12} {cell(item)}")


@main.command()
@click.option("--user", help="only this user's jobs")
@click.option("--job", help="the selected job (name, UUID or UUID prefix)")
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

    c = client(ctx)
    rows = c.get_jobs_list(rdata=sel("rdata"), assets=sel("assets"), results=sel("results"),
                           log=sel("log"), selected_job=job, user=user)

    def render(r: list[dict[str, Any]]) -> None:
        ids = short_ids([row["uuid"] for row in r])
        shown = [{**row, "id": ids[row["uuid"]], "done": f"{row['frames_done']}/{row['frames_total']}",
                  "state": shown_state(row)} for row in r]
        table(shown, [("id", "job"), ("name", "name"), ("user", "user"), ("state", "state"),
                      ("done", "frames"), ("renderer", "renderer"), ("priority", "pri")],
              whole={"id", "state", "done"})
        names = machine_names(c) if "results" in wanted else {}
        for row in r:
            _details(row, names)

    emit(rows, as_json, render)


@main.command()
@click.argument("job")
@json_option
@click.pass_context
def job(ctx: click.Context, job: str, as_json: bool) -> None:
    """One job with its settings and log (JOB: name, UUID or UUID prefix)."""
    data = client(ctx).get_job(job)

    def render(d: dict[str, Any]) -> None:
        for key in ("uuid", "name", "scene", "default_scene", "user", "state", "result", "renderer",
                    "frames", "chunk", "priority", "flags", "output", "machines", "frames_done",
                    "frames_total", "tiles", "resolution", "overscan", "tiles_done", "tiles_total"):
            if key in ("tiles", "resolution", "overscan", "tiles_done", "tiles_total") and key not in d:
                continue
            value = shown_state(d) if key == "state" else d.get(key)
            click.echo(f"{key:14} {cell(value) or '-'}")
        settings = {k: v for k, v in (d.get("rdata") or {}).items() if k not in ("assets", "path_map")}
        click.echo(f"{'settings':14} " + (" ".join(f"{k}={cell(v)}" for k, v in sorted(settings.items()))
                                          or "- (the scene's own)"))
        for failure in d.get("errors", []):
            click.echo(f"  failed frames {failure['frames']}: {failure['error']}")
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
    emit({"default_scene": name}, as_json, lambda d: click.echo(f"default scene of {job} set to {name}"))


@main.command("log")
@click.argument("job")
@click.argument("text")
@click.option("--replace", is_flag=True, help="replace the job's log with TEXT")
@json_option
@click.pass_context
def log_cmd(ctx: click.Context, job: str, text: str, replace: bool, as_json: bool) -> None:
    """Add a line to a job's log (AddLogToJob)."""
    client(ctx).add_log_to_job(job, text, append=not replace)
    emit({"logged": True}, as_json,
         lambda d: click.echo(f"{'replaced the log of' if replace else 'logged to'} {job}"))


@main.command()
@click.argument("job")
@json_option
@click.pass_context
def tasks(ctx: click.Context, job: str, as_json: bool) -> None:
    """A job's tasks: frames, state, render time, which machine rendered the frames
    kept, which it was tried on, errors (CopyRenderTaskFrom); a tiled job's: a row
    per tile with its region (x0,y0-x1,y1 in pixels from the top left).  Errors
    are cut to one line here; --json has them whole."""
    c = client(ctx)
    rows = c.copy_render_task_from(job)

    def render(r: list[dict[str, Any]]) -> None:
        names = machine_names(c)
        shown = [{**row, "time": f"{row['render_time']:.1f} s" if row["render_time"] else "",
                  "by": names.get(row["rendered_by"], row["rendered_by"][:8]) if row.get("rendered_by") else "",
                  "tried": ",".join(dict.fromkeys(names.get(m, m[:8]) for m in row["machines"])),
                  "region": "{},{}-{},{}".format(*row["region"]) if "region" in row else "",
                  "error": _abbreviate(row["error"])} for row in r]
        tiled = any("tile" in row for row in r)
        columns = [("task", "task"), ("frames", "frame" if tiled else "frames")]
        if tiled:
            columns += [("tile", "tile"), ("region", "region")]
        table(shown, [*columns, ("state", "state"), ("time", "time"),
                      ("by", "rendered by"), ("tried", "tried on"), ("attempt", "attempt"),
                      ("error", "error")], whole={"task", "frames", "tile", "region", "state", "by"})

    emit(rows, as_json, render)


def _os_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _abbreviate(text: str, width: int = 60) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width and line == text.strip() else line[:width - 1] + "…"


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
    c = client(ctx)
    if to and to not in {u["name"] for u in c.get_user_pool()} and not _os_user(to):
        raise NotFound(f"no user {to!r} on this farm or this machine; `rendernode users` lists them")
    result = c.message(text, to)
    emit(result, as_json, lambda d: click.echo(f"sent to {to}" if to else "sent to everyone"))


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


@results.command("list", epilog="Also: rendernode results clear JOB [--yes] | rm JOB PATH (each with --help).")
@click.argument("job")
@json_option
@click.pass_context
def results_list(ctx: click.Context, job: str, as_json: bool) -> None:
    """The job's result files held on this node."""
    c = client(ctx)
    rows = c.results(job)

    def render(r: list[dict[str, Any]]) -> None:
        names = machine_names(c)
        table([{**row, "machine": names.get(row["machine"], row["machine"])} for row in r],
              [("frame", "frame"), ("kind", "kind"), ("path", "path"), ("size", "size"),
               ("machine", "machine"), ("render_time", "render s")], whole={"frame", "path"})

    emit(rows, as_json, render)


@results.command("clear")
@click.argument("job")
@click.option("--yes", is_flag=True, help="do not ask first")
@json_option
@click.pass_context
def results_clear(ctx: click.Context, job: str, yes: bool, as_json: bool) -> None:
    """Delete the job's result files here (ClearResults); start it again to re-render."""
    c = client(ctx)
    if not yes:
        count = len(c.results(job))
        question = f"delete the {count} result files of {job} on this machine?"
        if not sys.stdin.isatty():
            raise click.UsageError(f"{question} Pass --yes to do it without asking.")
        click.confirm(question, abort=True, err=True)
    c.clear_results(job)
    emit({"cleared": job}, as_json, lambda d: click.echo(f"cleared the results of {job}"))


@results.command("rm")
@click.argument("job")
@click.argument("path")
@json_option
@click.pass_context
def results_rm(ctx: click.Context, job: str, path: str, as_json: bool) -> None:
    """Delete one result file of the job (RemoveResult): PATH as `results list`
    shows it, relative to this folder, or its file name."""
    if os.path.exists(path):
        path = os.path.abspath(path)
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
