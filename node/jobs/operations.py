"""Job operations on the replicated job book: create (CreateRenderJob), start
(InitRendering/StartRendering), stop, delete, move, scene, log, and the views
users read (GetJobsList, CopyRenderTaskFrom).

Every operation builds a delta stamped by this node and merges it into the
book; replication carries it to the other nodes.
"""

from __future__ import annotations

import os
import re
import time
import uuid as uuidlib
from dataclasses import dataclass, replace
from typing import Any

from node.errors import BadRequest, PermissionDenied
from node.jobs.book import JobBook
from node.jobs.tiling import TaskShape, Tiling, layout
from node.renderers import output_formats
from node.resolve import resolve
from protocol.crdt import JobDoc, Phase, Register, TaskState, key_between, task_current
from protocol.enums import CreateJobResult, NetRenderFlags, RenderJobCreator, RenderResult
from protocol.frames import chunk_frames, format_frames, parse_frames

RENDERERS = ("builtin", "blender", "povray", "command")
SHOWN_ERRORS = 3  #: failed tasks whose errors a job's summary carries
TASK_STATES = {Phase.QUEUED: "queued", Phase.ASSIGNED: "assigned", Phase.RENDERING: "rendering",
               Phase.DELIVERING: "delivering", Phase.FAILED: "failed", Phase.SUCCEEDED: "done"}


@dataclass(frozen=True)
class JobSpec:
    """What a submit asks for (validated)."""

    name: str
    scene: str
    renderer: str
    frames: str
    chunk: int = 1
    priority: int = 50
    flags: int = 0
    output: str = ""
    machines: tuple[str, ...] = ()
    rdata: dict[str, Any] | None = None
    creator: int = RenderJobCreator.RENDERJOBCREATOR_USER
    start: bool = True
    watch_folder: str = ""
    tiling: Tiling | None = None  #: each frame cut into tiles (``node.jobs.tiling``)

    @property
    def outputs(self) -> bool:
        """False for a command job whose template names no ``{output}``: its frames leave no file."""
        return self.renderer != "command" or "{output}" in str((self.rdata or {}).get("command", ""))

    @property
    def extension(self) -> str:
        """The frames' file type, from the output pattern (png when it names none)."""
        return os.path.splitext(self.output)[1].lstrip(".").lower() or "png"

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> JobSpec:
        """Validate a submit request's arguments; BadRequest names the bad one."""
        scene = args.get("scene")
        if not isinstance(scene, str) or not scene:
            raise BadRequest("submit needs a scene path")
        renderer = args.get("renderer", "builtin")
        if renderer not in RENDERERS:
            raise BadRequest(f"unknown renderer {renderer!r}; one of {', '.join(RENDERERS)}")
        frames = args.get("frames", "1")
        try:
            parse_frames(frames)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        ints = {}
        for key, default, lo, hi in (("chunk", 1, 1, 10_000), ("priority", 50, 0, 100),
                                     ("flags", 0, 0, 0xFFFF),
                                     ("creator", int(RenderJobCreator.RENDERJOBCREATOR_USER), 1, 6)):
            value = args.get(key)
            if value is None:  # not given
                value = default
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise BadRequest(f"{key} must be a whole number from {lo} to {hi}, not {value!r}")
            ints[key] = value
        machines = args.get("machines") or []
        if not isinstance(machines, list) or not all(isinstance(m, str) for m in machines):
            raise BadRequest("machines must be a list of machine UUIDs or names")
        rdata = args.get("rdata") or {}
        if not isinstance(rdata, dict):
            raise BadRequest("rdata must be a map of renderer settings")
        if renderer == "povray":  # POV-Ray's clock spans the whole job, not one task
            all_frames = parse_frames(frames)
            rdata = {"initial_frame": all_frames[0], "final_frame": all_frames[-1], **rdata}
        if renderer == "command":
            from node.renderers.command import check_template

            try:
                check_template(str(rdata.get("command", "")))
            except ValueError as exc:
                raise BadRequest(f"{exc} (give it as rdata.command)") from None
        name = args.get("name") or scene.rsplit("/", 1)[-1]
        output = args.get("output") or ""
        if not isinstance(name, str) or not isinstance(output, str):
            raise BadRequest("name and output must be strings")
        spec = cls(name=name, scene=scene, renderer=renderer, frames=frames, chunk=ints["chunk"],
                   priority=ints["priority"], flags=ints["flags"], output=output,
                   machines=tuple(machines), rdata=rdata, creator=ints["creator"],
                   start=bool(args.get("start", True)), watch_folder=str(args.get("watch_folder", "")))
        if output and spec.outputs and not has_placeholder(output) and len(parse_frames(frames)) > 1:
            raise BadRequest(f"the output pattern {output} has no frame number placeholder (#### or "
                             f"{{frame:04d}}): every frame of {frames} would overwrite the last")
        formats = output_formats(renderer)
        if spec.outputs and formats is not None and spec.extension not in formats:
            raise BadRequest(f"the {renderer} renderer cannot write .{spec.extension} frames ({output}); "
                             f"it writes {', '.join(formats)}")
        return spec


_HASHES = re.compile(r"#+")
_FORMAT = re.compile(r"\{frame(?::0?(\d+)d)?\}")  #: {frame} and {frame:04d}, as Python formats them


def output_pattern(output: str, scene: str, ext: str = "png") -> str:
    """The pattern a job's frames are written to, with ``#`` placeholders: ``output``
    as given (``{frame:04d}`` read as ``####``, ``{frame}`` as ``#``; ``.ext``
    added when it names no file type); with no ``output``,
    ``renders/<scene name>_####.<ext>`` beside the scene."""
    pattern = _FORMAT.sub(lambda m: "#" * int(m.group(1) or 1), output)
    if not pattern:
        stem = os.path.splitext(os.path.basename(scene))[0] or "frame"
        return os.path.join(os.path.dirname(scene) or ".", "renders", f"{stem}_####.{ext}")
    if not os.path.splitext(os.path.basename(pattern))[1]:
        pattern += "." + ext
    return pattern


def has_placeholder(output: str) -> bool:
    """True if the output pattern names where the frame number goes."""
    return bool(_HASHES.search(output) or _FORMAT.search(output))


def frame_file(pattern: str, frame: int) -> str:
    """``pattern`` with its last run of ``#`` replaced by ``frame``, zero-padded
    (a pattern without one is the file itself: a one-frame job's)."""
    runs = list(_HASHES.finditer(pattern))
    if not runs:
        return pattern
    match = runs[-1]
    return pattern[: match.start()] + f"{frame:0{len(match.group())}d}" + pattern[match.end():]


def output_path(doc: JobDoc, frame: int, ext: str) -> str:
    """Where the submitting node writes ``frame`` of ``doc`` (a tiled frame's partial
    image beside it)."""
    return frame_file(output_pattern(str(doc.value("output") or ""), str(doc.value("scene")), ext), frame)


def task_frames(doc: JobDoc) -> list[list[int]]:
    """The frames of each task, by task id (a tiled job's task: its one frame)."""
    tiling = Tiling.from_field(doc.value("tiling"))
    if tiling is None:
        return chunk_frames(parse_frames(doc.value("frames", "1")), int(doc.value("chunk", 1)))
    return [shape.frames for shape in task_shapes(doc)]


def task_shapes(doc: JobDoc) -> list[TaskShape]:
    """The frames and tiles of each task, by task id."""
    return layout(parse_frames(doc.value("frames", "1")), int(doc.value("chunk", 1)),
                  Tiling.from_field(doc.value("tiling")))


def task_shape(doc: JobDoc, tid: int) -> TaskShape | None:
    """The frames and tiles of one task of a tiled job (None: no such task, or the
    job renders whole frames)."""
    tiling = tiling_of(doc)
    if tiling is None or tid < 0:
        return None
    chunk = int(doc.value("chunk", 1))
    frames = parse_frames(doc.value("frames", "1"))
    index = tid // tiling.groups(chunk)
    return TaskShape([frames[index]], tiling.tiles_of(tid, chunk)) if index < len(frames) else None


def tiling_of(doc: JobDoc) -> Tiling | None:
    """How the job cuts its frames into tiles; None when it renders whole frames."""
    return Tiling.from_field(doc.value("tiling"))


def renders_on(doc: JobDoc, uuid: str, name: str) -> bool:
    """False if the job names the machines that render it (by UUID or name) and
    the machine ``uuid`` called ``name`` is not one of them."""
    wanted = doc.value("machines") or []
    return not wanted or uuid in wanted or name in wanted


def job_state(doc: JobDoc) -> str:
    """created, queued, rendering, stopped, done or failed."""
    intent = doc.value("state", "created")
    if intent in ("created", "stopped"):
        return str(intent)
    if doc.value("result") == int(RenderResult.RENDERRESULT_NOMACHINE):
        return "nomachine"
    n = len(task_frames(doc))
    states = [task_current(doc, tid) for tid in range(n)]
    if all(s.done and s.phase == Phase.SUCCEEDED for s in states):
        return "done"
    if all(s.done for s in states):
        return "failed"
    if any(s.phase in (Phase.ASSIGNED, Phase.RENDERING, Phase.DELIVERING) and not s.done for s in states):
        return "rendering"
    return "queued"


class Jobs:
    """Job operations for one node."""

    def __init__(self, book: JobBook, node: str, admins: list[str]) -> None:
        self.book = book
        self.node = node
        self.admins = set(admins)

    # -- helpers -----------------------------------------------------------------

    def _reg(self, value: Any) -> Register:
        return Register(self.book.stamp(), value)

    def find(self, ref: str) -> JobDoc:
        """A live job by UUID, unique name or unique UUID prefix; NotFound otherwise."""
        if not isinstance(ref, str) or not ref:
            raise BadRequest("a job UUID or name is needed")
        doc = self.book.get(ref)
        if doc is not None:
            return doc
        uuid = resolve(ref, ((d.uuid, str(d.value("name", ""))) for d in self.book.live()), "job", "jobs")
        found = self.book.get(uuid)
        assert found is not None
        return found

    def check_owner(self, doc: JobDoc, user: str) -> None:
        """Only the job's owner or an admin may change it."""
        owner = doc.value("user", "")
        if user != owner and user not in self.admins:
            raise PermissionDenied(f"job {doc.uuid} belongs to {owner}; only its owner or an admin may change it")

    def queue(self) -> list[JobDoc]:
        """Live jobs in queue order."""
        return sorted(self.book.live(), key=lambda d: (str(d.value("position", "")), d.uuid))

    # -- operations -----------------------------------------------------------------

    def create(self, spec: JobSpec, user: str, job_uuid: str | None = None,
               extra: dict[str, Any] | None = None) -> JobDoc:
        """CreateRenderJob: the job and its queued tasks, appended to the queue;
        ``extra`` adds fields (the job's assets)."""
        uuid = job_uuid or str(uuidlib.uuid4())
        if self.book.docs.get(uuid) is not None:
            raise BadRequest(f"job {uuid} exists already")
        queue = self.queue()
        last = str(queue[-1].value("position")) if queue else None
        n = len(layout(parse_frames(spec.frames), spec.chunk, spec.tiling))
        fields = {
            "name": spec.name, "scene": spec.scene, "default_scene": spec.scene.rsplit("/", 1)[-1],
            "renderer": spec.renderer, "frames": spec.frames, "chunk": spec.chunk,
            "priority": spec.priority, "flags": spec.flags, "output": spec.output,
            "machines": list(spec.machines), "rdata": spec.rdata or {}, "creator": spec.creator,
            "user": user, "origin": self.node, "created": time.time(),
            "position": key_between(last, None), "state": "queued" if spec.start else "created",
            "watch_folder": spec.watch_folder, "result": int(RenderResult.RENDERRESULT_OK),
            "outputs": spec.outputs,
            **({"tiling": spec.tiling.to_field()} if spec.tiling is not None else {}),
            **(extra or {}),
        }
        stamp = self.book.stamp()
        delta = JobDoc(uuid, fields={k: Register(stamp, v) for k, v in fields.items()},
                       tasks={tid: TaskState(stamp=stamp) for tid in range(n)},
                       log={self.book.stamp(): f"created by {user} on {self.node}"})
        self.book.apply(delta)
        return delta

    def set_fields(self, doc: JobDoc, line: str | None = None, **values: Any) -> JobDoc:
        """Change fields of a job (and log why)."""
        delta = JobDoc(doc.uuid, fields={k: self._reg(v) for k, v in values.items()},
                       log={self.book.stamp(): line} if line else {})
        self.book.apply(delta)
        return delta

    def start(self, doc: JobDoc, user: str, flags: int | None = None,
              machines: list[str] | None = None, restart: bool = False) -> JobDoc:
        """InitRendering + StartRendering: queue the job; ``restart`` re-renders every frame."""
        values: dict[str, Any] = {"state": "queued", "result": int(RenderResult.RENDERRESULT_OK)}
        if flags is not None:
            values["flags"] = flags
        if machines is not None:
            values["machines"] = machines
        delta = JobDoc(doc.uuid, fields={k: self._reg(v) for k, v in values.items()},
                       gen=doc.gen + 1 if restart else 0,
                       log={self.book.stamp(): f"{'restarted' if restart else 'started'} by {user}"})
        self.book.apply(delta)
        return delta

    def retry_failed(self, doc: JobDoc, user: str) -> int:
        """Render the failed frames again: a new generation (a task's state cannot go
        back from failed within one) in which the finished tasks are done already,
        with their machines, render times and previews; returns how many tasks are
        queued again.  BadRequest if none failed."""
        n = len(task_frames(doc))
        states = [task_current(doc, tid) for tid in range(n)]
        if not any(s.done and s.phase == Phase.FAILED for s in states):
            raise BadRequest(f"job {doc.uuid} has no failed frames")
        gen = doc.gen + 1
        stamp = self.book.stamp()
        kept = {tid: replace(s, gen=gen, stamp=stamp, worker="", lease_until=0.0, runs=())
                for tid, s in enumerate(states) if s.done and s.phase == Phase.SUCCEEDED}
        fields = {"state": "queued", "result": int(RenderResult.RENDERRESULT_OK)}
        self.book.apply(JobDoc(doc.uuid, fields={k: Register(stamp, v) for k, v in fields.items()},
                               gen=gen, tasks=kept,
                               log={self.book.stamp(): f"failed frames queued again by {user}"}))
        return n - len(kept)

    def stop(self, doc: JobDoc, user: str) -> JobDoc:
        """StopRendering: the job stops with RENDERRESULT_USERBREAK."""
        return self.set_fields(doc, f"stopped by {user} (RENDERRESULT_USERBREAK)", state="stopped",
                               result=int(RenderResult.RENDERRESULT_USERBREAK))

    def delete(self, doc: JobDoc) -> JobDoc:
        """DeleteRenderJob: a tombstone."""
        delta = JobDoc(doc.uuid, deleted=self.book.stamp())
        self.book.apply(delta)
        return delta

    def move(self, doc: JobDoc, other: JobDoc, before: bool) -> JobDoc:
        """InsertJobBefore / InsertJobAfter: a new position key between neighbours.

        Jobs created (or moved) at once on different nodes can share a key, and no
        key lies between two equal ones: the jobs that share the key of the one
        before the gap and come after the gap take new keys after the moved job,
        in their order, so nothing else changes place."""
        if doc.uuid == other.uuid:
            raise BadRequest("a job cannot move relative to itself")
        queue = [d for d in self.queue() if d.uuid != doc.uuid]
        keys = [str(d.value("position", "")) for d in queue]
        i = next(i for i, d in enumerate(queue) if d.uuid == other.uuid)
        j = i if before else i + 1
        lo = (keys[j - 1] or None) if j > 0 else None
        k = j
        while lo is not None and k < len(queue) and keys[k] == lo:
            k += 1
        hi = (keys[k] or None) if k < len(queue) else None
        key = key_between(lo, hi)
        delta = self.set_fields(doc, None, position=key)
        for same in queue[j:k]:
            key = key_between(key, hi)
            self.set_fields(same, None, position=key)
        return delta

    def add_log(self, doc: JobDoc, line: str, replace: bool = False) -> JobDoc:
        """AddLogToJob: append a line, or replace the log with it."""
        stamp = self.book.stamp()
        delta = JobDoc(doc.uuid, log={stamp: line}, log_base=stamp if replace else None)
        self.book.apply(delta)
        return delta

    def set_task(self, doc: JobDoc, tid: int, state: TaskState) -> JobDoc:
        """Record a task's new state."""
        delta = JobDoc(doc.uuid, tasks={tid: state})
        self.book.apply(delta)
        return delta

    # -- views -------------------------------------------------------------------

    def summary(self, doc: JobDoc) -> dict[str, Any]:
        """One job as listed by ``rendernode jobs``."""
        tasks = task_frames(doc)
        states = [task_current(doc, tid) for tid in range(len(tasks))]
        tiling = tiling_of(doc)
        done_frames = sum(len(tasks[i]) for i, s in enumerate(states) if s.done and s.phase == Phase.SUCCEEDED)
        frames_total = sum(len(t) for t in tasks)
        tiles: dict[str, Any] = {}
        if tiling is not None:  # a frame is done once every task of its tiles is
            frames_total = len(parse_frames(doc.value("frames", "1")))
            per = len(tasks) // max(1, frames_total)
            done_frames = sum(1 for f in range(frames_total) if all(
                s.done and s.phase == Phase.SUCCEEDED for s in states[f * per:(f + 1) * per]))
            tiles = {"tiles": f"{tiling.cols}x{tiling.rows}", "resolution": f"{tiling.width}x{tiling.height}",
                     "overscan": tiling.overscan, "tiles_total": frames_total * tiling.count,
                     "tiles_done": sum(len(shape.tiles) for shape, s in zip(task_shapes(doc), states, strict=True)
                                       if s.done and s.phase == Phase.SUCCEEDED)}
        busy = {s.worker for s in states if not s.done and s.phase in (Phase.ASSIGNED, Phase.RENDERING) and s.worker}
        failed = [tid for tid, s in enumerate(states) if s.done and s.phase == Phase.FAILED]
        state = job_state(doc)
        return {
            "uuid": doc.uuid, "name": doc.value("name"), "scene": doc.value("scene"),
            "default_scene": doc.value("default_scene"), "user": doc.value("user"),
            "renderer": doc.value("renderer"), "frames": doc.value("frames"),
            "chunk": doc.value("chunk"), "priority": doc.value("priority"),
            "flags": _flag_names(int(doc.value("flags", 0))), "state": state,
            "creator": RenderJobCreator(int(doc.value("creator", 3))).name.removeprefix("RENDERJOBCREATOR_"),
            "result": _result(doc, state, [states[tid].error for tid in failed]),
            "machines": doc.value("machines", []),
            "output": output_pattern(str(doc.value("output") or ""), str(doc.value("scene")),
                                     os.path.splitext(str(doc.value("output") or ""))[1].lstrip(".") or "png")
            if doc.value("outputs", True) else "",
            "origin": doc.value("origin"), "created": doc.value("created"),
            "position": doc.value("position"), "generation": doc.gen,
            "frames_total": frames_total, "frames_done": done_frames, **tiles,
            "tasks_total": len(tasks), "tasks_failed": len(failed), "machines_busy": len(busy),
            "errors": [{"task": tid, "frames": format_frames(tasks[tid]) + _tiles_text(doc, tid, tiling),
                        "error": states[tid].error} for tid in failed[:SHOWN_ERRORS]],
        }

    def tasks(self, doc: JobDoc) -> list[dict[str, Any]]:
        """CopyRenderTaskFrom: frame, state, render time, machines per task; a tiled
        job's: a row per tile (frame, tile, region), its task's state on each."""
        out = []
        tiling = tiling_of(doc)
        for tid, shape in enumerate(task_shapes(doc)):
            frames = shape.frames
            s = task_current(doc, tid)
            row = {
                "task": tid, "frame": frames[0], "frames": format_frames(frames),
                "state": TASK_STATES[Phase(s.phase)] if s.done or s.phase < Phase.FAILED else "queued",
                "render_time": s.render_time, "machines": s.all_machines, "attempt": s.attempt, "attempts": s.attempts,
                "failures": s.failures,
                "worker": s.worker, "error": s.error,
                "rendered_by": s.worker if s.done and s.phase == Phase.SUCCEEDED else "",
            }
            if tiling is None:
                out.append(row)
                continue
            for tile in shape.tiles:
                out.append({**row, "tile": tile, "region": list(tiling.region(tile)),
                            "render_time": s.render_time / len(shape.tiles)})
        return out


def _tiles_text(doc: JobDoc, tid: int, tiling: Tiling | None) -> str:
    """`` tile 3`` (`` tiles 4-7``) for a task of a tiled job, else ""."""
    if tiling is None:
        return ""
    shape = task_shape(doc, tid)
    tiles = shape.tiles if shape is not None else []
    return f" tile{'s' if len(tiles) > 1 else ''} {format_frames(tiles)}"


def _result(doc: JobDoc, state: str, errors: list[str]) -> str:
    """The job's RENDERRESULT_* name (without the prefix), consistent with its state:
    a failed job shows what failed its first failed task (its error starts with
    the name), or FAILED when no name is known; never OK."""
    stored = RenderResult(int(doc.value("result", 0))).name.removeprefix("RENDERRESULT_")
    if state != "failed":
        return stored
    for error in errors:
        name = error.partition(":")[0].strip()
        if name.startswith("RENDERRESULT_") and name in RenderResult.__members__:
            return name.removeprefix("RENDERRESULT_")
    return stored if stored != "OK" else "FAILED"


def _flag_names(flags: int) -> list[str]:
    return [f.name.removeprefix("NETRENDERFLAGS_") for f in NetRenderFlags
            if f.value and f.value & flags == f.value and f.name and (f.value & (f.value - 1)) == 0]


CREATE_OK = int(CreateJobResult.CREATEJOBRESULT_OK)
