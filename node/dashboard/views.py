"""The data the dashboard's views show, as plain JSON-ready values.

Everything is read from this node's own copies (the job book, the machine
table, the statuses peers send), so any node's dashboard shows the whole farm
and goes on working when the server dies.  A job's queue row costs a pass
over its tasks, so rows are cached per job and dropped when the book says the
job changed (``forget``): the queue view of a large book costs a sort and the
rows of the jobs that changed since the last look.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from node.control.server import Caller
from node.errors import NotFound
from node.jobs.operations import TASK_STATES, task_frames, tiling_of
from protocol.crdt import JobDoc, Phase, TaskState, task_current
from protocol.enums import RenderResult

if TYPE_CHECKING:
    from node.daemon import Node
    from node.dashboard.farmstatus import FarmStatus

RATE_WINDOW = 300.0  #: seconds over which frames/min is averaged
LOG_LINES = 500  #: job log lines a job view carries (the newest)
_ACTIVE = (Phase.ASSIGNED, Phase.RENDERING, Phase.DELIVERING)
_SEEN_MAX = 200_000


def task_state_name(s: TaskState) -> str:
    """queued, assigned, rendering, delivering, failed or done."""
    return TASK_STATES[Phase(s.phase)] if s.done or s.phase < Phase.FAILED else "queued"


class Views:
    """Queue rows, job views, the farm; with the caches the event path keeps fresh."""

    def __init__(self, node: Node, status: FarmStatus) -> None:
        self.node = node
        self.book = node.book
        self.status = status
        self._rows: dict[str, dict[str, Any]] = {}
        self._json: dict[str, bytes] = {}  #: a row's JSON, encoded once per change of its job
        self._order: list[str] | None = None  #: live jobs in queue order, until a head changes
        self._frames: dict[str, list[list[int]]] = {}
        self.previews: dict[str, tuple[str, int]] = {}  #: preview chunk -> (job, task) naming it
        self.done_frames: deque[tuple[float, float]] = deque(maxlen=100_000)  #: (wall time, frames; a tile counts its share)
        self._counted: set[tuple[str, int, int]] = set()
        for doc in self.book.docs.values():
            self.note_tasks(doc, doc.tasks.items(), startup=True)
        node.api._local_row()  # this node's row in the machine table, as `machines` shows it

    # -- caches, kept by the event path -----------------------------------------------

    def forget(self, uuid: str, head: bool) -> None:
        """The job changed: its row (and, if its head changed, its frames) are stale."""
        self._rows.pop(uuid, None)
        self._json.pop(uuid, None)
        if head:
            self._frames.pop(uuid, None)
            self._order = None

    def frames_of(self, doc: JobDoc) -> list[list[int]]:
        """The frames of each task of ``doc`` (cached)."""
        frames = self._frames.get(doc.uuid)
        if frames is None:
            try:
                frames = task_frames(doc)
            except ValueError:
                frames = []
            self._frames[doc.uuid] = frames
        return frames

    def note_tasks(self, doc: JobDoc, states: Iterable[tuple[int, TaskState]], startup: bool = False) -> None:
        """Index previews and count finished frames (for frames/min)."""
        frames: list[list[int]] | None = None
        for tid, s in states:
            for h in s.previews:
                if h:
                    self.previews[h] = (doc.uuid, tid)
            if s.done and s.phase == Phase.SUCCEEDED and s.gen == doc.gen:
                key = (doc.uuid, tid, s.gen)
                if key in self._counted:
                    continue
                if len(self._counted) > _SEEN_MAX:
                    self._counted.clear()
                self._counted.add(key)
                if frames is None:
                    frames = self.frames_of(doc) if doc.fields else []
                n: float = len(frames[tid]) if tid < len(frames) else 1
                tiling = tiling_of(doc)
                if tiling is not None:  # a tile is its share of a frame
                    n = len(tiling.tiles_of(tid, int(doc.value("chunk", 1)))) / tiling.count
                when = s.stamp[0] / 1000 if startup else time.time()
                self.done_frames.append((when, n))

    # -- queue --------------------------------------------------------------------------

    def row(self, doc: JobDoc) -> dict[str, Any]:
        """A job's queue row (cached until the job changes)."""
        row = self._rows.get(doc.uuid)
        if row is None:
            row = self._rows[doc.uuid] = self._make_row(doc)
        return row

    def _make_row(self, doc: JobDoc) -> dict[str, Any]:
        """Counts are of frames, or of tiles for a tiled job (``unit``)."""
        frames = self.frames_of(doc)
        tiling = tiling_of(doc)
        chunk = int(doc.value("chunk", 1))
        done = rendering = failed = queued = 0
        done_tasks = busy_tasks = failed_tasks = 0
        render_time = 0.0
        last = 0
        workers = set()
        for tid, fr in enumerate(frames):
            s = task_current(doc, tid)
            n = len(fr) if tiling is None else len(tiling.tiles_of(tid, chunk))
            if s.done:
                last = max(last, s.stamp[0])
                if s.phase == Phase.SUCCEEDED:
                    done += n
                    done_tasks += 1
                    render_time += s.render_time
                else:
                    failed += n
                    failed_tasks += 1
            elif s.phase in _ACTIVE:
                rendering += n
                busy_tasks += 1
                if s.worker:
                    workers.add(s.worker)
            else:
                queued += n
        intent = str(doc.value("state", "created"))
        if intent in ("created", "stopped"):
            state = intent
        elif doc.value("result") == int(RenderResult.RENDERRESULT_NOMACHINE):
            state = "nomachine"
        elif frames and done_tasks == len(frames):
            state = "done"
        elif frames and done_tasks + failed_tasks == len(frames):
            state = "failed"
        elif busy_tasks:
            state = "rendering"
        else:
            state = "queued"
        created = float(doc.value("created", 0.0) or 0.0)
        finished = last / 1000 if state in ("done", "failed") else None
        return {
            "uuid": doc.uuid, "name": doc.value("name"), "user": doc.value("user"),
            "renderer": doc.value("renderer"), "state": state, "priority": doc.value("priority"),
            "position": doc.value("position"), "created": created, "finished": finished,
            "frames": doc.value("frames"), "total": done + rendering + failed + queued,
            "done": done, "rendering": rendering, "failed": failed, "queued": queued,
            "per_frame": render_time / done if done else None, "busy": len(workers),
            "origin": doc.value("origin"), "generation": doc.gen,
            "unit": "frames" if tiling is None else "tiles",
        }

    def _queue_docs(self) -> list[JobDoc]:
        if self._order is None:
            docs = sorted(self.book.live(), key=lambda d: (str(d.value("position", "")), d.uuid))
            self._order = [d.uuid for d in docs]
            return docs
        return [self.book.docs[u] for u in self._order]

    def queue(self) -> list[dict[str, Any]]:
        """Every live job's row, in queue order."""
        return [self.row(d) for d in self._queue_docs()]

    def queue_json(self) -> bytes:
        """The queue view as JSON: the rows (each encoded once per change) and the summary."""
        parts = []
        for doc in self._queue_docs():
            encoded = self._json.get(doc.uuid)
            if encoded is None:
                encoded = self._json[doc.uuid] = dumps(self.row(doc))
            parts.append(encoded)
        return b'{"jobs":[' + b",".join(parts) + b'],"summary":' + dumps(self.summary()) + b"}"

    def summary(self, machines: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The farm at a glance: machines online, frames per minute, queue length."""
        now = time.time()
        recent = sum(n for t, n in self.done_frames if now - t <= RATE_WINDOW)
        if machines is None:
            machines = self.machines()
        rows = [self.row(d) for d in self._queue_docs()]
        return {
            "machines_online": sum(1 for m in machines if m["online"]),
            "machines": len(machines),
            "rendering": sum(1 for m in machines if m.get("rendering")),
            "frames_per_min": round(recent / (RATE_WINDOW / 60), 1),
            "queue": sum(1 for r in rows if r["state"] in ("queued", "rendering")),
            "jobs": len(rows),
        }

    # -- one job ------------------------------------------------------------------------

    def tasks(self, doc: JobDoc, tids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Task rows of ``doc`` (all, or ``tids``): frames, state, time, machines, previews."""
        frames = self.frames_of(doc)
        tiling = tiling_of(doc)
        chunk = int(doc.value("chunk", 1))
        out = []
        for tid in (range(len(frames)) if tids is None else sorted(tids)):
            if not 0 <= tid < len(frames):
                continue
            s = task_current(doc, tid)
            row = {
                "task": tid, "frames": frames[tid], "state": task_state_name(s),
                "render_time": round(s.render_time, 3), "machines": s.all_machines,
                "worker": s.worker if not s.done else "", "attempts": s.attempts,
                "failures": s.failures, "error": s.error, "previews": list(s.previews),
            }
            if tiling is not None:  # previews: one per tile, in this order
                row["tiles"] = [{"tile": t, "region": list(tiling.region(t))} for t in tiling.tiles_of(tid, chunk)]
            out.append(row)
        return out

    def job(self, ref: str, user: str) -> dict[str, Any]:
        """One job: its settings, tasks, log and results."""
        doc = self.node.jobs.find(ref)
        settings = {k: doc.value(k) for k in (
            "scene", "default_scene", "output", "chunk", "flags", "machines", "rdata", "creator",
            "watch_folder", "asset_size")}
        summary = self.node.jobs.summary(doc)
        settings["flags"] = summary["flags"]
        settings["creator"] = summary["creator"]
        settings["result"] = summary["result"]
        results: list[dict[str, Any]] = []
        if doc.value("origin") == self.node.ident.uuid:
            results = [r for r in self.node.results.of_job(doc.uuid) if r["kind"] != "tile"]
        log = [{"time": s[0] / 1000, "node": s[2], "line": line} for s, line in doc.visible_log()]
        owner = str(doc.value("user", ""))
        tiling = tiling_of(doc)
        return {
            "job": self.row(doc), "settings": settings, "tasks": self.tasks(doc),
            "tiling": tiling.to_field() if tiling is not None else None,
            "log": log[-LOG_LINES:], "results": [{k: r[k] for k in ("frame", "kind", "path", "size")}
                                                  for r in results],
            "may_change": user == owner or user in self.node.jobs.admins,
        }

    def task_detail(self, ref: str, tid: int) -> dict[str, Any]:
        """One task: its row and the job log lines about it."""
        doc = self.node.jobs.find(ref)
        rows = self.tasks(doc, [tid])
        if not rows:
            raise NotFound(f"job {doc.uuid} has no task {tid}")
        needle = f"task {tid} "
        lines = [{"time": s[0] / 1000, "line": line} for s, line in doc.visible_log() if needle in line]
        return {**rows[0], "job": doc.uuid, "log": lines[-200:]}

    # -- the farm -----------------------------------------------------------------------

    def machines(self) -> list[dict[str, Any]]:
        """Every machine with its bits, role, status and what it renders."""
        node = self.node
        rows = node.table.all()
        server = node.election.server
        waking: set[str] = set()
        statuses = {}
        for m in rows:
            st = self.status.of(m.uuid) if m.online else None
            statuses[m.uuid] = st
            if st is not None:
                waking.update(st.waking)
        out = []
        for m in rows:
            st = statuses[m.uuid]
            rendering = dict(st.rendering) if st is not None and st.rendering else None
            if rendering is not None:
                doc = self.book.get(str(rendering.get("job", "")))
                rendering["name"] = doc.value("name") if doc is not None else None
            out.append({
                "uuid": m.uuid, "name": m.name, "online": m.online, "local": m.local,
                "bits": m.public()["bits"], "role": "server" if m.uuid == server else "worker",
                "address": m.addresses[0] if m.addresses else "", "capabilities": m.capabilities,
                "last_seen": m.last_seen, "reason": m.reason, "waking": m.uuid in waking,
                "load": st.load if st else None, "cpus": st.cpus if st else None,
                "mem_total": st.mem_total if st else None,
                "mem_available": st.mem_available if st else None, "rendering": rendering,
            })
        return out

    def farm(self) -> dict[str, Any]:
        """The machines and this node's own view of the roles."""
        machines = self.machines()
        e = self.node.election
        return {"machines": machines, "server": e.server, "term": e.term,
                "summary": self.summary(machines)}

    def machine_log(self, uuid: str, count: int = 200) -> list[dict[str, Any]]:
        """A machine's log tail."""
        if uuid != self.node.ident.uuid and self.node.table.get(uuid) is None:
            raise NotFound(f"no machine {uuid!r}")
        return self.node.table.log_tail(uuid, count)

    def me(self, user: str) -> dict[str, Any]:
        """Who is looking, and at which node."""
        n = self.node
        return {"user": user, "admin": user in n.jobs.admins, "node": n.ident.uuid,
                "name": n.prefs.name}


def dumps(data: Any) -> bytes:
    """Compact JSON."""
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def caller(user: str) -> Caller:
    """The control-socket caller a dashboard user acts as (no process behind it)."""
    return Caller(0, -1, -1, user)
