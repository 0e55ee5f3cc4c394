"""Job operations on the replicated job book: create (CreateRenderJob), start
(InitRendering/StartRendering), stop, delete, move, scene, log, and the views
users read (GetJobsList, CopyRenderTaskFrom).

Every operation builds a delta stamped by this node and merges it into the
book; replication carries it to the other nodes.
"""

from __future__ import annotations

import time
import uuid as uuidlib
from dataclasses import dataclass, replace
from typing import Any

from node.errors import BadRequest, NotFound, PermissionDenied
from node.jobs.book import JobBook
from protocol.crdt import JobDoc, Phase, Register, TaskState, key_between, task_current
from protocol.enums import CreateJobResult, NetRenderFlags, RenderJobCreator, RenderResult
from protocol.frames import chunk_frames, format_frames, parse_frames

RENDERERS = ("builtin", "blender", "povray", "command")
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
            value = args.get(key, default)
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
        return cls(name=name, scene=scene, renderer=renderer, frames=frames, chunk=ints["chunk"],
                   priority=ints["priority"], flags=ints["flags"], output=output,
                   machines=tuple(machines), rdata=rdata, creator=ints["creator"],
                   start=bool(args.get("start", True)), watch_folder=str(args.get("watch_folder", "")))


def task_frames(doc: JobDoc) -> list[list[int]]:
    """The frames of each task, by task id."""
    return chunk_frames(parse_frames(doc.value("frames", "1")), int(doc.value("chunk", 1)))


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
        """A live job by UUID or unique UUID prefix; NotFound otherwise."""
        if not isinstance(ref, str) or not ref:
            raise BadRequest("a job UUID is needed")
        doc = self.book.get(ref)
        if doc is not None:
            return doc
        matches = [d for d in self.book.live() if d.uuid.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise BadRequest(f"job id {ref!r} is ambiguous; give more of the UUID")
        raise NotFound(f"no job {ref!r}; `rendernode jobs` lists them")

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
        n = len(chunk_frames(parse_frames(spec.frames), spec.chunk))
        fields = {
            "name": spec.name, "scene": spec.scene, "default_scene": spec.scene.rsplit("/", 1)[-1],
            "renderer": spec.renderer, "frames": spec.frames, "chunk": spec.chunk,
            "priority": spec.priority, "flags": spec.flags, "output": spec.output,
            "machines": list(spec.machines), "rdata": spec.rdata or {}, "creator": spec.creator,
            "user": user, "origin": self.node, "created": time.time(),
            "position": key_between(last, None), "state": "queued" if spec.start else "created",
            "watch_folder": spec.watch_folder, "result": int(RenderResult.RENDERRESULT_OK),
            "outputs": spec.renderer != "command" or "{output}" in str((spec.rdata or {}).get("command", "")),
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
        done_frames = sum(len(tasks[i]) for i, s in enumerate(states) if s.done and s.phase == Phase.SUCCEEDED)
        busy = {s.worker for s in states if not s.done and s.phase in (Phase.ASSIGNED, Phase.RENDERING) and s.worker}
        failed = sum(1 for s in states if s.done and s.phase == Phase.FAILED)
        return {
            "uuid": doc.uuid, "name": doc.value("name"), "scene": doc.value("scene"),
            "default_scene": doc.value("default_scene"), "user": doc.value("user"),
            "renderer": doc.value("renderer"), "frames": doc.value("frames"),
            "chunk": doc.value("chunk"), "priority": doc.value("priority"),
            "flags": _flag_names(int(doc.value("flags", 0))), "state": job_state(doc),
            "creator": RenderJobCreator(int(doc.value("creator", 3))).name.removeprefix("RENDERJOBCREATOR_"),
            "result": RenderResult(int(doc.value("result", 0))).name.removeprefix("RENDERRESULT_"),
            "machines": doc.value("machines", []), "output": doc.value("output"),
            "origin": doc.value("origin"), "created": doc.value("created"),
            "position": doc.value("position"), "generation": doc.gen,
            "frames_total": sum(len(t) for t in tasks), "frames_done": done_frames,
            "tasks_total": len(tasks), "tasks_failed": failed, "machines_busy": len(busy),
        }

    def tasks(self, doc: JobDoc) -> list[dict[str, Any]]:
        """CopyRenderTaskFrom: frame, state, render time, machines per task."""
        out = []
        for tid, frames in enumerate(task_frames(doc)):
            s = task_current(doc, tid)
            out.append({
                "task": tid, "frame": frames[0], "frames": format_frames(frames),
                "state": TASK_STATES[Phase(s.phase)] if s.done or s.phase < Phase.FAILED else "queued",
                "render_time": s.render_time, "machines": s.all_machines, "attempt": s.attempt, "attempts": s.attempts,
                "failures": s.failures,
                "worker": s.worker, "error": s.error,
            })
        return out


def _flag_names(flags: int) -> list[str]:
    return [f.name.removeprefix("NETRENDERFLAGS_") for f in NetRenderFlags
            if f.value and f.value & flags == f.value and f.name and (f.value & (f.value - 1)) == 0]


CREATE_OK = int(CreateJobResult.CREATEJOBRESULT_OK)
