"""The worker: renders the tasks the server assigns to this node.

One task renders at a time (one slot), and one more may wait behind it (the
server's prefetch: it starts the moment the current one ends, with no round
trip to the server in between); an assignment beyond that is refused as
busy.  Each task runs as a subprocess of its backend (the built-in renderer
too) in a fresh work folder, as the render user with an allow-listed
environment (``node.render.sandbox``); its output is read line by line
(``\\n`` or ``\\r``) for progress and a bounded log tail.  When it exits, what
it left is copied out of its folder, the folder is removed, and only then
does the backend judge the outcome and the next task start.  Progress goes to the server at
most every ``REPORT_INTERVAL`` (newest value only) and renews the lease (to the
server this worker follows, and to the one that assigned the task too while
that one is another live node); the
waiting task is reported (progress 0) with it, which renews its lease too.  A
cancelled waiting task is dropped and reported stopped.  Stop: SIGTERM to the
process group, SIGKILL after ``KILL_AFTER`` seconds.

Finished frames go to the outbox (``node.render.results``); the task becomes
DELIVERING until the submitter holds them, or SUCCEEDED at once for a job
whose frames leave no file.  Before a frame leaves, the worker makes its
preview (``node.render.preview``), keeps it as a chunk in its store and names
it in the task's state, so any node's dashboard can fetch it.

Frames are written in the type the job's output pattern names
(``renders/shot_####.exr``) when the renderer can write it, else as PNG.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from node.assets.jobassets import Assets
from node.assets.store import CorruptChunk, sha256
from node.assets.swarm import FetchFailed
from node.image import ImageError
from node.jobs.book import is_live
from node.jobs.election import Election
from node.jobs.operations import Jobs
from node.membership.peers import Peers
from node.membership.session import Session, SessionLost
from node.nursery import service_nursery
from node.render.preview import PreviewError, make_preview
from node.render.results import Results
from node.render.sandbox import Place, Sandbox
from node.render.tiles import TileError, fit_tile
from node.renderers.base import Outcome, Renderer, TaskSpec, Tile
from node.renderers.command import reads_assets
from node.service.runas import RunAs
from protocol import ProtocolError
from protocol.crdt import Phase, TaskState, task_current
from protocol.enums import NetRenderFlags, RenderResult
from protocol.messages import Assign, Cancel, TaskUpdate

log = logging.getLogger("rendernode.worker")
REPORT_INTERVAL = 0.5
KILL_AFTER = 5.0
JOB_WAIT = 15.0  #: seconds a task waits for its job's document to reach this node
LOG_TAIL = 40
_SPLIT = re.compile(rb"[\r\n]+")
ReportLocal = Callable[[str, TaskUpdate], None]


@dataclass
class Running:
    """The task this worker is rendering."""

    msg: Assign
    server: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    progress: float = 0.0
    started: float = field(default_factory=time.monotonic)
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL))
    stop_reason: str = ""
    prepared: trio.Event | None = None  #: set once the work folder is fresh (None: not begun)
    place: Place | None = None  #: the task's folder and account, once prepared
    failed: Outcome | None = None  #: why the task cannot render (set while preparing)


class Worker:
    """Takes assignments, runs renderers, reports, hands frames to the outbox."""

    def __init__(self, peers: Peers, election: Election, jobs: Jobs, backends: dict[str, Renderer],
                 results: Results, state_dir: str, sandbox: Sandbox | None = None) -> None:
        self.peers = peers
        self.election = election
        self.jobs = jobs
        self.backends = backends
        self.results = results
        self.me = peers.ident.uuid
        #: task folders and render accounts (default: renders as the daemon's own user)
        self.sandbox = sandbox or Sandbox(state_dir, "", None, RunAs(switching=False))
        self.current: Running | None = None
        self.waiting: Running | None = None  #: the task to start when the current one ends
        self.report_local: ReportLocal | None = None
        self.on_busy: list[Callable[[bool], None]] = []  #: told True when a task starts, False when none runs
        self.assets: Assets | None = None  #: fetches job assets before a task renders
        self.rendered = 0
        self._server_held = ""  #: the server whose session this worker holds
        self._nursery: trio.Nursery | None = None
        peers.register_handler(Assign, self._on_assign)
        peers.register_handler(Cancel, self._on_cancel)
        peers.register_delivery(Assign, self._on_relayed)
        peers.register_delivery(Cancel, self._on_relayed)

    @property
    def busy(self) -> bool:
        """True while a task runs."""
        return self.current is not None

    async def _on_assign(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, Assign)
        await self.assign(msg, session.uuid)

    def _on_relayed(self, origin: str, msg: Any) -> None:
        """An Assign or Cancel that reached us through the overlay (the server has no
        session to us): handled like one on a session, in a task of its own."""
        if self._nursery is None:
            return
        if isinstance(msg, Assign):
            self._nursery.start_soon(self.assign, msg, origin)
        elif isinstance(msg, Cancel):
            self._nursery.start_soon(self.cancel, msg)

    async def _on_cancel(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, Cancel)
        await self.cancel(msg)

    async def assign(self, msg: Assign, server: str) -> None:
        """Start ``msg``'s task, or refuse it (stale term, busy, no such renderer)."""
        if msg.term < self.election.term:
            log.info("ignoring an assignment of term %d; the current term is %d", msg.term, self.election.term)
            return
        refuse = ""
        if self.current is not None and self.waiting is not None:
            refuse = "worker is busy"
        elif msg.renderer not in self.backends:
            refuse = f"renderer {msg.renderer} is not available here"
        if refuse:
            await self._report(server, TaskUpdate(job=msg.job, task=msg.task, gen=msg.gen,
                                                  attempt=msg.attempt, finished=True,
                                                  result=int(RenderResult.RENDERRESULT_NOMACHINE),
                                                  error=refuse))
            return
        running = Running(msg, server)
        if self._nursery is None:  # shutting down: the server gets it back when our session ends
            return
        if self.current is None:
            self._start(running)
        else:
            self.waiting = running
            self._nursery.start_soon(self._prepare, running)  # its folder is ready when it starts

    def _start(self, running: Running) -> None:
        if self._nursery is None:  # shutting down: it goes back to the server with our session
            self._busy(False)
            return
        self.current = running
        self._busy(True)
        self._nursery.start_soon(self._run, running)

    def _handoff(self, running: Running) -> None:
        """``running`` no longer renders: start the waiting task, if any."""
        if self.current is running:
            self.current = None
            following, self.waiting = self.waiting, None
            if following is not None:
                self._start(following)
            else:
                self._busy(False)

    def _busy(self, busy: bool) -> None:
        for callback in self.on_busy:
            callback(busy)

    async def _prepare(self, running: Running) -> None:
        """Make the task's fresh work folder as the account that renders it, once."""
        if running.prepared is not None:
            await running.prepared.wait()
            return
        running.prepared = trio.Event()
        msg = running.msg
        try:
            if not await self._job_arrived(msg.job):
                running.failed = Outcome(RenderResult.RENDERRESULT_NOMACHINE,
                                         f"job {msg.job} has not reached this node")
                return
            doc = self.jobs.book.get(msg.job)
            user = str(doc.value("user", "")) if doc is not None else ""
            try:
                running.place = await self.sandbox.open(
                    user, f"{msg.job}-{msg.task}-{msg.gen}-{msg.attempt}")
            except OSError as exc:
                running.failed = Outcome(RenderResult.RENDERRESULT_SAVINGFAILED,
                                         f"cannot make the task's work folder: {exc}")
        finally:
            running.prepared.set()

    async def cancel(self, msg: Cancel) -> None:
        """Stop the running task, or drop the waiting one, if it is the one named."""
        waiting = self.waiting
        if waiting is not None and waiting.msg.job == msg.job and msg.task in (-1, waiting.msg.task):
            self.waiting = None
            if self._nursery is not None:
                self._nursery.start_soon(self._discard, waiting)
            w = waiting.msg
            await self._report(waiting.server, TaskUpdate(
                job=w.job, task=w.task, gen=w.gen, attempt=w.attempt, finished=True,
                result=int(RenderResult.RENDERRESULT_USERBREAK), error=msg.reason or "stopped"))
        running = self.current
        if running is not None and running.msg.job == msg.job and msg.task in (-1, running.msg.task):
            running.stop_reason = msg.reason or "stopped"
            running.scope.cancel()

    async def _report(self, server: str, update: TaskUpdate) -> None:
        target = self.election.server or server
        if target == self.me:
            if self.report_local is not None:
                self.report_local(self.me, update)
            return
        if target != self._server_held:  # keep the session to whoever is the server now
            if self._server_held:
                self.peers.release(self._server_held, "server")
            self._server_held = target
        await self._deliver_report(target, update, hold="server")
        if server not in (target, self.me) and self.peers.is_online(server):
            # the server that assigned the task is another live one (two starved nodes
            # served side by side on the 100-host bed, and each lapsed the leases of the
            # workers that followed the other): it waits on this report too
            await self._deliver_report(server, update)

    async def _deliver_report(self, target: str, update: TaskUpdate, hold: str = "") -> None:
        """Send a report to ``target``; one that does not arrive is superseded by the next."""
        try:
            await self.peers.deliver_to(target, update, hold=hold)
        except (SessionLost, ProtocolError) as exc:
            log.debug("progress report to %s failed: %s", target, exc)

    async def _discard(self, running: Running) -> None:
        """Remove the folder prepared for a task that will not run."""
        await self._prepare(running)
        if running.place is not None:
            await self.sandbox.discard(running.place)

    async def _run(self, running: Running) -> None:
        msg = running.msg
        outcome = Outcome(RenderResult.RENDERRESULT_USERBREAK, "stopped")
        elapsed = 0.0
        place: Place | None = None
        try:
            backend = self.backends[msg.renderer]
            spec = TaskSpec(job=msg.job, task=msg.task, frames=list(msg.frames), scene=msg.scene,
                            workdir="", rdata=dict(msg.rdata), tiles=task_tiles(msg),
                            size=(msg.size[0], msg.size[1]) if len(msg.size) == 2 else (0, 0))
            granted = ""
            code: int | Outcome = Outcome(RenderResult.RENDERRESULT_USERBREAK, "stopped")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._progress_reports, running)  # renews the lease while assets arrive too
                with running.scope:
                    await self._prepare(running)
                    place = running.place
                    if running.failed is not None or place is None:
                        code = running.failed or code
                    else:
                        spec = dataclasses.replace(spec, workdir=place.workdir)
                        spec, path_map, failed = await self._assets(spec)
                        if failed is not None:
                            code = failed
                        else:
                            granted = await self._grant(spec.job, place)
                            start = time.monotonic()
                            code = await self._render(backend, spec, running,
                                                      self.sandbox.env(place, path_map))
                            elapsed = time.monotonic() - start
                nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):  # nothing of the render may outlive this point
                if place is not None:
                    wanted = [] if running.scope.cancelled_caught else [
                        os.path.basename(path) for _, _, path in spec.outputs()]
                    await self.sandbox.close(place, wanted)
                    spec = dataclasses.replace(spec, workdir=place.harvest)
                if granted and self.assets is not None:
                    await trio.to_thread.run_sync(self.assets.revoke, granted)
            outcome = backend.outcome(code, list(running.log_tail), spec) if isinstance(code, int) else code
            self._handoff(running)  # the next task renders while this one's frames are handed on
            if running.scope.cancelled_caught:
                outcome = Outcome(RenderResult.RENDERRESULT_USERBREAK, running.stop_reason or "stopped")
            outcome = _user_paths(outcome, running, spec.rdata.get("path_map") or {})
            if outcome.result == RenderResult.RENDERRESULT_OK and outcome.warnings and (
                    msg.flags & NetRenderFlags.NETRENDERFLAGS_HANDLEWARNINGASERROR):
                outcome = Outcome(RenderResult.RENDERRESULT_ERRORLOADINGPROJECT,
                                  "warning treated as error: " + outcome.warnings[0])
            if outcome.result == RenderResult.RENDERRESULT_OK and spec.tiles and msg.outputs:
                outcome = await trio.to_thread.run_sync(_fit_tiles, spec)
            if outcome.result == RenderResult.RENDERRESULT_OK:
                await self._finish(msg, spec, elapsed)
        finally:
            self._handoff(running)
            with trio.CancelScope(shield=True):
                await self._report(running.server, TaskUpdate(
                    job=msg.job, task=msg.task, gen=msg.gen, attempt=msg.attempt, progress=1.0,
                    finished=True, result=int(outcome.result), error=outcome.message,
                    render_time=elapsed, log_tail=list(running.log_tail)[-10:],
                    warnings=len(outcome.warnings)))
                if running.prepared is not None:
                    await running.prepared.wait()
                if running.place is not None:
                    await self.sandbox.discard(running.place)

    async def _grant(self, job: str, place: Place) -> str:
        """Let the task's account read the job's materialised assets; the folder granted."""
        doc = self.jobs.book.get(job)
        folder = self.assets.folder(doc) if self.assets is not None and doc is not None else ""
        if not folder or place.account is None or self.assets is None:
            return ""
        await trio.to_thread.run_sync(self.assets.grant, folder, place.account.uid)
        return folder

    async def _assets(self, spec: TaskSpec) -> tuple[TaskSpec, dict[str, str] | None, Outcome | None]:
        """Fetch and materialise the job's assets: (spec with the local scene, path map, failure)."""
        doc = self.jobs.book.get(spec.job)
        if doc is not None:  # frames in the type the output pattern names
            ext = os.path.splitext(str(doc.value("output") or ""))[1].lstrip(".").lower()
            if spec.tiles:  # tiles travel lossless; the frame is encoded once, when assembled
                ext = "exr" if ext == "exr" else "png"
            spec = dataclasses.replace(spec, extension=ext or spec.extension)
        if self.assets is None or doc is None or not doc.value("assets"):
            return spec, None, None
        if str(doc.value("renderer")) == "command" and not reads_assets(spec.rdata):
            return spec, None, None  # a command that never opens the scene: nothing to fetch
        try:
            scene, path_map = await self.assets.prepare(doc)
        except (FetchFailed, CorruptChunk, OSError, ProtocolError, SessionLost) as exc:
            return spec, None, Outcome(RenderResult.RENDERRESULT_ASSETMISSING,
                                       f"cannot fetch the job's assets: {exc}")
        spec = dataclasses.replace(spec, scene=scene, rdata={**spec.rdata, "path_map": path_map})
        return spec, path_map, None

    async def _job_arrived(self, job: str) -> bool:
        """Wait until the job's creation (or deletion) is in the book; False after JOB_WAIT.

        The server's Assign can overtake the job's creation on its way here (the
        creation comes from the submitter, or from the server's batched pushes), and a
        task of a job this node does not know would render without its assets and
        finish without its state being recorded: the server would wait on it forever."""
        deadline = trio.current_time() + JOB_WAIT
        while True:
            doc = self.jobs.book.docs.get(job)
            if doc is not None and (doc.deleted is not None or is_live(doc)):
                return True
            if trio.current_time() >= deadline:
                return False
            await trio.sleep(0.01)

    async def _render(self, backend: Renderer, spec: TaskSpec, running: Running,
                      env: dict[str, str]) -> int | Outcome:
        """Run the backend's command as the task's account: its exit status (the
        outcome is judged once what it left is out of its folder)."""
        argv, cwd = backend.command(spec)
        assert running.place is not None
        try:
            proc = await trio.lowlevel.open_process(
                argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, env=env,
                **self.sandbox.process_args(running.place))
        except OSError as exc:
            return Outcome(RenderResult.RENDERRESULT_PROJECTNOTFOUND, f"cannot start {argv[0]}: {exc}")
        self.sandbox.lower_priority(proc.pid)
        try:
            assert proc.stdout is not None
            pending = b""
            async for chunk in proc.stdout:
                pending += chunk
                parts = _SPLIT.split(pending)
                pending = parts.pop()
                for raw in parts:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line:
                        continue
                    running.log_tail.append(line[:500])
                    fraction = backend.progress(line, spec)
                    if fraction is not None:
                        running.progress = fraction
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                with trio.CancelScope(shield=True):
                    await _stop(proc)
        return code

    async def _progress_reports(self, running: Running) -> None:
        msg = running.msg
        while True:  # every interval, changed or not: the report renews the lease
            await self._report(running.server, TaskUpdate(
                job=msg.job, task=msg.task, gen=msg.gen, attempt=msg.attempt, progress=running.progress))
            waiting = self.waiting
            if waiting is not None:
                w = waiting.msg
                await self._report(waiting.server, TaskUpdate(job=w.job, task=w.task, gen=w.gen,
                                                              attempt=w.attempt))
            await trio.sleep(REPORT_INTERVAL)

    async def _finish(self, msg: Assign, spec: TaskSpec, elapsed: float) -> None:
        doc = self.jobs.book.get(msg.job)
        if doc is None:
            return
        outputs = spec.outputs()
        per_output = elapsed / max(1, len(outputs))
        previews: list[str] = []
        if msg.outputs:
            for frame, tile, path in outputs:
                previews.append(await trio.to_thread.run_sync(self._preview, path))
                await trio.to_thread.run_sync(self.results.put, path, doc, msg.gen,
                                              msg.task, frame, per_output, tile)
        cur = task_current(doc, msg.task)
        if cur.done or cur.gen != msg.gen:
            return
        phase = Phase.DELIVERING if msg.outputs else Phase.SUCCEEDED
        self.jobs.set_task(doc, msg.task, TaskState(
            gen=msg.gen, done=0 if msg.outputs else 1, attempt=msg.attempt, phase=phase,
            stamp=self.jobs.book.stamp(), worker=self.me,
            machines=tuple(dict.fromkeys((*cur.machines, self.me))), render_time=elapsed, term=msg.term,
            failures=cur.failures, previews=tuple(previews) if any(previews) else ()))
        self.rendered += 1
        if msg.outputs:
            self.results.wake()

    def _preview(self, path: str) -> str:
        """Make the frame's preview and keep it as a chunk; its hash, or "" (blocking)."""
        try:
            data = make_preview(path)
        except (PreviewError, OSError) as exc:
            log.info("no preview of %s: %s", os.path.basename(path), exc)
            return ""
        chunk = sha256(data)
        self.results.swarm.store.put(chunk, data)
        return chunk

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery tasks run in (after clearing what a crash left)."""
        await trio.to_thread.run_sync(self.sandbox.setup)
        await self.sandbox.clear_leftovers()
        async with service_nursery(self):
            task_status.started()
            await trio.sleep_forever()


def task_tiles(msg: Assign) -> tuple[Tile, ...]:
    """The tiles an assignment names, each with the region its renderer draws."""
    if len(msg.size) != 2:
        return ()
    width, height = msg.size
    o = max(0, msg.overscan)
    return tuple(Tile(i, (x0, y0, x1, y1), (max(0, x0 - o), max(0, y0 - o), min(width, x1 + o),
                                             min(height, y1 + o)))
                 for i, x0, y0, x1, y1 in (t[:5] for t in msg.tiles if len(t) >= 5))


def _fit_tiles(spec: TaskSpec) -> Outcome:
    """Cut each tile out of what was drawn around it; SAVINGFAILED if one does not fit
    (blocking)."""
    for _, tile_index, path in spec.outputs():
        tile = next(t for t in spec.tiles if t.index == tile_index)
        try:
            fit_tile(path, tile)
        except (TileError, ImageError, OSError) as exc:
            return Outcome(RenderResult.RENDERRESULT_SAVINGFAILED, f"frame {os.path.basename(path)}: {exc}")
    return Outcome(RenderResult.RENDERRESULT_OK)


def _user_paths(outcome: Outcome, running: Running, path_map: dict[str, str]) -> Outcome:
    """The outcome and log tail with this worker's copies of the job's files named
    by the submitter's paths (the path map, reversed): errors the user can act on."""
    if not path_map:
        return outcome

    def back(text: str) -> str:
        for theirs, here in path_map.items():
            text = text.replace(here.rstrip("/") + "/", theirs.rstrip("/") + "/").replace(here, theirs)
        return text

    tail = [back(line) for line in running.log_tail]
    running.log_tail.clear()
    running.log_tail.extend(tail)
    return dataclasses.replace(outcome, message=back(outcome.message),
                               warnings=tuple(back(w) for w in outcome.warnings))


async def _stop(proc: trio.Process) -> None:
    """SIGTERM the process group, SIGKILL it after KILL_AFTER seconds."""
    for sig, wait in ((signal.SIGTERM, KILL_AFTER), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        with trio.move_on_after(wait):
            await proc.wait()
            return
