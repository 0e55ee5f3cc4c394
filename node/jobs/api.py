"""Control-socket methods for jobs, users and messages.

Permission rule: only a job's owner or an admin (preference ``admins``) may
start, stop, delete, move or rename it.  The caller is the OS user the control
socket's SO_PEERCRED names.  A submit reads the scene and its assets, and tests
the output folder, with the caller's rights (``node.service.runas``), and
records who the caller was (``node.jobs.owners``) for writing the frames.
"""

from __future__ import annotations

import os
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from node.assets.jobassets import Assets, Collected, chunk_opened
from node.assets.store import CorruptChunk
from node.assets.swarm import FetchFailed
from node.control.server import Caller, Method
from node.errors import BadRequest
from node.jobs.operations import CREATE_OK, Jobs, JobSpec, frame_file, output_pattern
from node.jobs.owners import Owners
from node.jobs.replication import REPLICATE_TIMEOUT, Replication
from node.jobs.shaping import Refused, shape
from node.membership.peers import Peers
from node.membership.session import RequestFailed, Session, SessionLost
from node.nursery import service_nursery
from node.render.results import Results, write_test
from node.renderers import detect_renderer, scene_frames, scene_mismatch
from node.renderers.settings import describe
from node.resolve import resolve
from node.service.accounts import Account
from node.service.runas import RunAs
from protocol import ProtocolError
from protocol.crdt import JobDoc
from protocol.enums import CreateJobResult, DetailSelector, NetRenderFlags, parse_flag_names
from protocol.frames import parse_frames
from protocol.messages import Chat, Error, FetchAssets, Reply

INBOX_SIZE = 500
ASSET_REPLICATE_TIMEOUT = 600.0  #: a submit waits this long at most for replicas to copy the assets
DETAILS = ("rdata", "assets", "results", "log")


def _str(args: dict[str, Any], name: str, required: bool = True) -> str:
    value = args.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadRequest(f"argument {name!r} must be a non-empty string")
    return value


def submitter(caller: Caller) -> Account:
    """The account whose rights a caller's job reads and writes files with."""
    return Account(caller.user, caller.uid, caller.gid, caller.groups)


def _refused(result: CreateJobResult, reason: str, **extra: Any) -> dict[str, Any]:
    """A submit's answer when it is not CREATEJOBRESULT_OK."""
    return {"uuid": None, "result": int(result), "result_name": result.name.removeprefix("CREATEJOBRESULT_"),
            "reason": reason, **extra}


def _own_frames(scene: str, renderer: str) -> str:
    """The scene's own frame range; "1" for a scene that is not there (the submit is
    refused as ASSETMISSING: no renderer need look for it)."""
    return scene_frames(scene, renderer) if os.path.exists(scene) else "1"


def _machines(n: int) -> str:
    return "no other machine is" if n == 0 else "1 other machine is" if n == 1 else f"{n} other machines are"


def _flags(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        try:
            return parse_flag_names(value, NetRenderFlags, "NETRENDERFLAGS_")
        except ValueError as exc:
            raise BadRequest(f"bad flags: {exc}") from None
    raise BadRequest("flags must be names like SAVERESULTSINREPOSITORY or an integer")


class JobsApi:
    """submit, jobs, job, start, stop, delete, move, scene, log, tasks, users, message(s)."""

    def __init__(self, jobs: Jobs, replication: Replication, peers: Peers, replicas: int,
                 results: Results, assets: Assets | None = None) -> None:
        self.jobs = jobs
        self.assets = assets
        self.results = results
        self.replication = replication
        self.peers = peers
        self.replicas = replicas
        self.inbox: deque[dict[str, Any]] = deque(maxlen=INBOX_SIZE)
        self.callers: set[str] = set()
        self.owners: Owners | None = None  #: who submitted each job here
        self.runas = RunAs(switching=False)  #: reads and tests files with the submitter's rights
        self.on_message: list[Callable[[dict[str, Any]], None]] = []  #: told of every new message
        self._nursery: trio.Nursery | None = None
        peers.register_handler(Chat, self._on_chat)
        peers.register_delivery(Chat, lambda origin, msg: self._store(msg))  # type: ignore[arg-type]
        peers.register_handler(FetchAssets, self._on_fetch_assets)

    def methods(self) -> dict[str, Method]:
        """Name -> coroutine function, for the control server."""
        return {
            "submit": self.submit, "jobs": self.list_jobs, "job": self.job, "start": self.start,
            "stop": self.stop, "retry": self.retry, "delete": self.delete, "move": self.move, "scene": self.scene,
            "log": self.log, "tasks": self.tasks, "users": self.users, "message": self.message,
            "messages": self.messages, "results": self.list_results,
            "results_clear": self.clear_results, "results_rm": self.remove_result,
            "repo": self.repository, "repo_gc": self.repository_gc, "renderers": self.renderers,
        }

    def _seen(self, caller: Caller) -> None:
        self.callers.add(caller.user)

    async def _durable_and_replicated(self, deltas: list[JobDoc], assets: bool = False,
                                      want: int | None = None,
                                      holders: set[str] | None = None) -> dict[str, Any]:
        """Wait until the job is on disk here and on ``replicas`` peers (with its
        assets, when it has some, so it can render if this machine dies)."""
        await self.jobs.book.durable()
        if want is None:
            want = min(self.replicas, len(self.peers.online_uuids()))
        job = deltas[0].uuid

        async def fetch_assets(session: Session) -> None:
            reply = await session.request(FetchAssets(job))
            if not isinstance(reply, Reply):
                raise RequestFailed("unexpected answer to fetch_assets")

        acked = await self.replication.replicate(
            deltas, want, fetch_assets if assets else None,
            patience=ASSET_REPLICATE_TIMEOUT if assets else REPLICATE_TIMEOUT, holders=holders)
        return {"replicas": acked, "wanted": want}

    def _replicas_target(self) -> int:
        """Peers a job submitted now should reach: ``replicas``, or fewer when the
        farm has fewer other machines (verified at least once): a farm of one
        machine needs none."""
        others = sum(1 for m in self.peers.table.all() if not m.local and m.was_verified)
        return min(self.replicas, others)

    async def _on_fetch_assets(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, FetchAssets)
        if self._nursery is not None:
            self._nursery.start_soon(self._fetch_assets, session, msg, req_id)

    async def _fetch_assets(self, session: Session, msg: FetchAssets, req_id: int) -> None:
        reply: Reply | Error = Reply(True)
        doc = self.jobs.book.get(msg.job)
        if doc is None:
            reply = Error("not_found", f"no job {msg.job} here")
        elif self.assets is not None:
            try:
                await self.assets.prepare(doc)
            except (FetchFailed, CorruptChunk, OSError, ProtocolError, SessionLost) as exc:
                reply = Error("asset_missing", f"cannot fetch the assets of {msg.job}: {exc}")
        try:
            await session.send(reply, req_id)
        except (SessionLost, ProtocolError):
            pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery that answers peers' asset requests."""
        target = self._replicas_target()
        for doc in self.jobs.book.live():  # counted again from the peers' digests
            if doc.value("origin") == self.peers.ident.uuid:
                self.replication.watch(doc.uuid, target, set())
        async with service_nursery(self):
            task_status.started()
            await trio.sleep_forever()

    async def submit(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """CreateRenderJob: acknowledged once durable here and on ``replicas`` peers.

        Refused before anything is made (a CREATEJOBRESULT_* other than OK, with a
        reason): SAVINGFAILED when this daemon cannot write the output folder
        (unless NETRENDERFLAGS_NOWRITETEST), ASSETMISSING when the scene (or, with
        HANDLEWARNINGASERROR, another file it needs) is missing, REPOSITORYERROR
        when fewer than ``require_replicas`` peers could take the job (then the job
        is deleted again)."""
        self._seen(caller)
        args = await self._complete(args)
        spec = JobSpec.from_args({**args, "flags": _flags(args.get("flags")) or 0})
        self._check_machines(list(spec.machines))
        try:
            shaped = await trio.to_thread.run_sync(shape, spec, args, self._able(spec))
        except Refused as exc:  # a setting or tiling the renderer cannot take
            return _refused(CreateJobResult.CREATEJOBRESULT_SAVINGFAILED,
                            f"the job cannot be made: {exc}", invalid=True)
        spec = shaped.spec
        require = args.get("require_replicas")
        if require is None:
            require = self.peers.prefs.require_replicas
        if not isinstance(require, int) or isinstance(require, bool) or require < 0:
            raise BadRequest(f"require_replicas must be a whole number, 0 or more, not {require!r}")
        if require > len(self.peers.sessions):
            return _refused(CreateJobResult.CREATEJOBRESULT_REPOSITORYERROR,
                            f"the job must reach {require} other machines (require_replicas) and "
                            f"{_machines(len(self.peers.sessions))} online")
        account = submitter(caller)
        if spec.outputs and not spec.flags & NetRenderFlags.NETRENDERFLAGS_NOWRITETEST:
            folder = os.path.dirname(frame_file(output_pattern(spec.output, spec.scene, spec.extension),
                                                parse_frames(spec.frames)[0]))
            reason = await write_test(self.runas, account, folder, self.peers.prefs.output_dirs)
            if reason:
                return _refused(CreateJobResult.CREATEJOBRESULT_SAVINGFAILED,
                                f"{reason} (NETRENDERFLAGS_NOWRITETEST skips this test)", folder=folder)
        job_uuid = args.get("uuid")
        if job_uuid is not None:
            try:
                job_uuid = str(uuidlib.UUID(str(job_uuid)))
            except ValueError:
                raise BadRequest(f"job uuid {job_uuid!r} is not a UUID") from None
        extra: dict[str, Any] = {}
        got: Collected | None = None
        if self.assets is not None:
            wanted = (spec.rdata or {}).get("assets", [])
            if not isinstance(wanted, list) or not all(isinstance(p, str) for p in wanted):
                raise BadRequest("rdata.assets must be a list of file paths")
            collected = await self._collect_as(account, spec, wanted)
            if isinstance(collected, dict):
                return collected
            got = collected
            fatal = spec.scene in got.missing or bool(
                got.missing and spec.flags & NetRenderFlags.NETRENDERFLAGS_HANDLEWARNINGASERROR)
            if fatal:
                return _refused(CreateJobResult.CREATEJOBRESULT_ASSETMISSING,
                                "missing: " + ", ".join(got.missing), missing=list(got.missing))
            extra = {"assets": got.manifest, "asset_root": got.root, "scene_rel": got.scene_rel,
                     "asset_size": got.size}
            self.assets.swarm.announce(got.manifest)
        delta = self.jobs.create(spec, caller.user, job_uuid, extra)
        if self.owners is not None:
            await self.owners.record(delta.uuid, account)
        if got is not None and got.missing:
            self.jobs.add_log(delta, "warning: missing assets: " + ", ".join(got.missing))
        for warning in shaped.warnings:
            self.jobs.add_log(delta, f"tiles: {warning}")
        target = self._replicas_target()
        holders: set[str] = set()
        want = min(max(self.replicas, require), len(self.peers.sessions))
        try:
            copies = await self._durable_and_replicated([delta], assets=bool(extra), want=want,
                                                        holders=holders)
        except OSError as exc:
            return _refused(CreateJobResult.CREATEJOBRESULT_SAVINGFAILED,
                            f"cannot save the job on this machine: {exc}", uuid=delta.uuid)
        if copies["replicas"] < require:
            doc = self.jobs.book.get(delta.uuid)
            if doc is not None:
                await self._durable_and_replicated([self.jobs.delete(doc)])
            return _refused(CreateJobResult.CREATEJOBRESULT_REPOSITORYERROR,
                            f"the job must reach {require} other machines (require_replicas) and "
                            f"{copies['replicas']} took it in time; it was deleted again")
        target = max(target, require)
        self.replication.watch(delta.uuid, target, holders)
        held = len(holders)
        note: dict[str, Any] = {"replicas_target": target, "under_replicated": held < target}
        if held < target:
            where = "this machine only" if held == 0 else f"{held} of {target} other machines"
            note["note"] = f"held by {where}; copied to the others when they come back"
        if got is not None and got.missing:
            note["missing"] = list(got.missing)
        if spec.tiling is not None:
            note["tiles"] = f"{spec.tiling.cols}x{spec.tiling.rows}"
            note["resolution"] = f"{spec.tiling.width}x{spec.tiling.height}"
            note["warnings"] = shaped.warnings
        return {"uuid": delta.uuid, "result": CREATE_OK, "result_name": "OK", **copies, **note,
                "output": output_pattern(spec.output, spec.scene, spec.extension) if spec.outputs else ""}

    def _able(self, spec: JobSpec) -> int:
        """How many machines can render ``spec`` now (this one too, if it shares)."""
        count = int(self.peers.prefs.share and spec.renderer in self.peers.capabilities)
        for session in self.peers.sessions.values():
            hello = session.hello
            if hello is not None and hello.sharing and spec.renderer in hello.capabilities:
                count += 1
        return count

    def _check_machines(self, machines: list[str]) -> None:
        """Every machine a job is limited to must be one this node knows (UUID, name
        or UUID prefix, kept as the user wrote it); NotFound names one that is not."""
        rows = [(self.peers.ident.uuid, self.peers.prefs.name),
                *((m.uuid, m.name) for m in self.peers.table.all())]
        for ref in machines:
            resolve(ref, rows, "machine", "machines")

    async def _complete(self, args: dict[str, Any]) -> dict[str, Any]:
        """A submit's renderer (from the scene's type when it names none or "auto") and
        frames (the scene's own range when it names none); a scene the renderer
        cannot render is refused (BadRequest)."""
        scene = args.get("scene")
        if not isinstance(scene, str) or not scene:
            raise BadRequest("submit needs a scene path")
        renderer = args.get("renderer")
        if renderer in (None, "", "auto"):
            rdata = args.get("rdata") or {}
            renderer = detect_renderer(scene, rdata.get("command") if isinstance(rdata, dict) else None)
        if isinstance(renderer, str):
            mismatch = scene_mismatch(scene, renderer)
            if mismatch:
                raise BadRequest(mismatch)
        frames = args.get("frames")
        if frames is None and isinstance(renderer, str):
            frames = await trio.to_thread.run_sync(_own_frames, scene, renderer)
        return {**args, "renderer": renderer, "frames": frames}

    async def _collect_as(self, account: Account, spec: JobSpec,
                          wanted: list[str]) -> Collected | dict[str, Any]:
        """Chunk the scene and its files, opened with the submitter's rights; a
        CREATEJOBRESULT_ASSETMISSING reply if one cannot be read by them."""
        assert self.assets is not None
        try:
            opened = await self.runas.collect(account, spec.scene, spec.renderer, wanted)
        except (OSError, ValueError) as exc:
            return {"uuid": None, "result": int(CreateJobResult.CREATEJOBRESULT_ASSETMISSING),
                    "result_name": "ASSETMISSING", "missing": [spec.scene], "reason": str(exc)}
        try:
            if opened.unreadable:
                return {"uuid": None, "result": int(CreateJobResult.CREATEJOBRESULT_ASSETMISSING),
                        "result_name": "ASSETMISSING", "missing": [p.rsplit(": ", 1)[0] for p in opened.unreadable],
                        "reason": f"{account.name} cannot read " + "; ".join(opened.unreadable)}
            return await trio.to_thread.run_sync(chunk_opened, self.assets.store, spec.scene, opened)
        except (OSError, ValueError) as exc:
            return {"uuid": None, "result": int(CreateJobResult.CREATEJOBRESULT_ASSETMISSING),
                    "result_name": "ASSETMISSING", "missing": [spec.scene], "reason": str(exc)}
        finally:
            opened.close()

    async def list_jobs(self, caller: Caller, args: dict[str, Any]) -> list[dict[str, Any]]:
        """GetJobsList(rdata, assets, results, log, selectedJob, selectedJobOnly, user)."""
        user = _str(args, "user", required=False)
        selected = _str(args, "job", required=False)
        selected_uuid = self.jobs.find(selected).uuid if selected else ""
        only = bool(args.get("selected_only", bool(selected)))
        selectors = {}
        for name in DETAILS:
            raw = args.get(name, 0)
            try:
                selectors[name] = DetailSelector(raw)
            except ValueError:
                raise BadRequest(f"{name} must be a DETAILSELECTOR value (0, 1 or 2)") from None
        out = []
        for doc in self.jobs.queue():
            if user and doc.value("user") != user:
                continue
            is_selected = doc.uuid == selected_uuid
            if only and selected_uuid and not is_selected:
                continue
            item = self._summary(doc)
            for name, sel in selectors.items():
                want = (sel == DetailSelector.DETAILSELECTOR_SELECTED and is_selected) or (
                    sel == DetailSelector.DETAILSELECTOR_NONSELECTED and not is_selected)
                if want:
                    item[name] = self._detail(doc, name)
            out.append(item)
        return out

    def _summary(self, doc: JobDoc) -> dict[str, Any]:
        """``Jobs.summary`` and, for a job submitted here that fewer peers hold than it
        wants, ``under_replicated`` and ``copies`` ("1/2": peers known to hold it / wanted)."""
        item = self.jobs.summary(doc)
        copies = self.replication.copies(doc.uuid)
        item["under_replicated"] = copies is not None
        if copies is not None:
            item["copies"] = f"{copies[0]}/{copies[1]}"
        return item

    def _detail(self, doc: JobDoc, name: str) -> Any:
        if name == "rdata":
            return doc.value("rdata", {})
        if name == "assets":
            return {"manifest": doc.value("assets"), "root": doc.value("asset_root"),
                    "scene": doc.value("scene_rel"), "size": doc.value("asset_size")}
        if name == "log":
            return [{"time": s[0] / 1000, "node": s[2], "line": line} for s, line in doc.visible_log()]
        if name == "results":
            return self.results.of_job(doc.uuid)
        return None

    async def job(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """One job with every detail."""
        doc = self.jobs.find(_str(args, "job"))
        item = self._summary(doc)
        for name in DETAILS:
            item[name] = self._detail(doc, name)
        return item

    async def start(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """InitRendering + StartRendering (InitAndStartRenderingFullAsync)."""
        doc = self.jobs.find(_str(args, "job"))
        self.jobs.check_owner(doc, caller.user)
        machines = args.get("machines")
        if machines is not None and (not isinstance(machines, list)
                                     or not all(isinstance(m, str) for m in machines)):
            raise BadRequest("machines must be a list of machine UUIDs or names")
        self._check_machines(machines or [])
        delta = self.jobs.start(doc, caller.user, _flags(args.get("flags")), machines,
                                bool(args.get("restart", False)))
        await self.jobs.book.durable()
        return {"uuid": doc.uuid, "started": True, "generation": self.jobs.find(doc.uuid).gen,
                "delta_gen": delta.gen}

    async def stop(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """StopRendering: RENDERRESULT_USERBREAK."""
        doc = self.jobs.find(_str(args, "job"))
        self.jobs.check_owner(doc, caller.user)
        self.jobs.stop(doc, caller.user)
        await self.jobs.book.durable()
        return {"uuid": doc.uuid, "result": "USERBREAK"}

    async def retry(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """Render the failed (and unfinished) frames again, keeping the finished ones."""
        doc = self.jobs.find(_str(args, "job"))
        self.jobs.check_owner(doc, caller.user)
        retried = self.jobs.retry_failed(doc, caller.user)
        await self.jobs.book.durable()
        return {"uuid": doc.uuid, "retried": retried}

    async def delete(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """DeleteRenderJob(informClients)."""
        doc = self.jobs.find(_str(args, "job"))
        self.jobs.check_owner(doc, caller.user)
        delta = self.jobs.delete(doc)
        inform = bool(args.get("inform_clients", True))
        copies = await self._durable_and_replicated([delta]) if inform else {}
        if not inform:
            await self.jobs.book.durable()
        return {"uuid": doc.uuid, "deleted": True, **copies}

    async def move(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """InsertJobBefore / InsertJobAfter."""
        doc = self.jobs.find(_str(args, "job"))
        before, after = _str(args, "before", False), _str(args, "after", False)
        if bool(before) == bool(after):
            raise BadRequest("move needs exactly one of before or after")
        other = self.jobs.find(before or after)
        self.jobs.check_owner(doc, caller.user)
        self.jobs.move(doc, other, before=bool(before))
        await self.jobs.book.durable()
        return {"uuid": doc.uuid, "queue": [d.uuid for d in self.jobs.queue()]}

    async def scene(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """SetDefaultSceneName."""
        doc = self.jobs.find(_str(args, "job"))
        name = _str(args, "name")
        self.jobs.check_owner(doc, caller.user)
        self.jobs.set_fields(doc, f"default scene set to {name!r} by {caller.user}", default_scene=name)
        await self.jobs.book.durable()
        return {"uuid": doc.uuid, "default_scene": name}

    async def log(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """AddLogToJob(log, append)."""
        doc = self.jobs.find(_str(args, "job"))
        text = _str(args, "text")
        self.jobs.add_log(doc, f"[{caller.user}] {text}", replace=bool(args.get("replace", False)))
        await self.jobs.book.durable()
        return {"uuid": doc.uuid}

    async def tasks(self, caller: Caller, args: dict[str, Any]) -> list[dict[str, Any]]:
        """CopyRenderTaskFrom."""
        return self.jobs.tasks(self.jobs.find(_str(args, "job")))

    async def renderers(self, caller: Caller, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Each machine's renderers (as its Hello names them), their versions and the
        settings they take (``node.renderers.settings``: the same on every machine
        of one build)."""
        me = self.peers.ident.uuid
        rows = [(me, self.peers.prefs.name, True, dict(self.peers.capabilities)),
                *((m.uuid, m.name, m.online, m.capabilities) for m in self.peers.table.all() if m.uuid != me)]
        return [{"machine": uuid, "name": name, "online": online, "renderer": r, "version": v,
                 "settings": describe(r)}
                for uuid, name, online, caps in rows for r, v in sorted(caps.items())]

    async def users(self, caller: Caller, args: dict[str, Any]) -> list[dict[str, Any]]:
        """GetUserPool: users known to the farm."""
        self._seen(caller)
        counts: dict[str, int] = {}
        for doc in self.jobs.book.live():
            user = str(doc.value("user", ""))
            counts[user] = counts.get(user, 0) + 1
        names = set(counts) | self.callers | self.jobs.admins
        return [{"name": n, "admin": n in self.jobs.admins, "jobs": counts.get(n, 0),
                 "you": n == caller.user} for n in sorted(names) if n]

    async def message(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """Message(userUuid, op, isPrivate, msg): to everyone, or private to one user."""
        text = _str(args, "text")
        to = _str(args, "to", required=False)
        chat = Chat(mid=str(uuidlib.uuid4()), sender=caller.user, text=text[:4000], time=time.time(),
                    to=to, node=self.peers.ident.uuid)
        self._store(chat)
        await self.peers.broadcast(chat)
        return {"id": chat.mid, "private": bool(to)}

    async def messages(self, caller: Caller, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Messages visible to the caller: public ones and private ones to or from them."""
        return [m for m in self.inbox
                if not m["to"] or caller.user in (m["to"], m["sender"])]

    def _store(self, chat: Chat) -> None:
        if any(m["id"] == chat.mid for m in self.inbox):
            return
        message = {"id": chat.mid, "sender": chat.sender, "text": chat.text, "time": chat.time,
                   "to": chat.to, "private": bool(chat.to), "node": chat.node}
        self.inbox.append(message)
        for listener in self.on_message:
            listener(message)

    async def _on_chat(self, session: Session, msg: Any, req_id: int) -> None:
        assert isinstance(msg, Chat)
        self._store(msg)

    async def list_results(self, caller: Caller, args: dict[str, Any]) -> list[dict[str, Any]]:
        """The job's result files held on this node."""
        return self.results.of_job(self.jobs.find(_str(args, "job")).uuid)

    async def clear_results(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """ClearResults: delete this node's result files of the job; a new generation."""
        doc = self.jobs.find(_str(args, "job"))
        self.jobs.check_owner(doc, caller.user)
        removed = await self.results.clear(doc.uuid)
        self.jobs.start(doc, caller.user, restart=True)
        self.jobs.set_fields(doc, f"results cleared by {caller.user}", state="created")
        await self.jobs.book.durable()
        return {"uuid": doc.uuid, "removed": removed}

    async def remove_result(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """RemoveResult(jobUuid, relResultPath)."""
        doc = self.jobs.find(_str(args, "job"))
        self.jobs.check_owner(doc, caller.user)
        await self.results.remove(doc.uuid, _str(args, "path"))
        return {"uuid": doc.uuid, "removed": args["path"]}

    async def repository(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """GetRepository: asset manifests in this node's store (sizes, which jobs use
        them, how much is here) and the results kept in its repository."""
        users: dict[str, list[str]] = {}
        for doc in self.jobs.book.live():
            mid = str(doc.value("assets") or "")
            if mid:
                users.setdefault(mid, []).append(doc.uuid)
        manifests = []
        if self.assets is not None:
            store = self.assets.store
            for mid in await trio.to_thread.run_sync(store.manifests):
                m = await trio.to_thread.run_sync(store.manifest, mid)
                if m is None:
                    continue
                chunks = m.chunk_ids()
                manifests.append({"manifest": mid, "files": len(m.files), "bytes": m.size,
                                  "chunks": len(chunks), "chunks_here": len(store.held(chunks)),
                                  "jobs": users.get(mid, [])})
        used = self.assets.store.used if self.assets is not None else 0
        return {"assets": manifests, "store_bytes": used, "results": self.results.repository()}

    async def repository_gc(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        """Drop manifests, chunks and materialised copies no live job uses."""
        if self.assets is None:
            return {"manifests": 0, "bytes": 0}
        live = {str(d.value("assets")) for d in self.jobs.book.live() if d.value("assets")}
        previews = {h for d in self.jobs.book.live() for t in d.tasks.values() for h in t.previews if h}
        manifests, freed = await trio.to_thread.run_sync(self.assets.store.gc, live, previews)
        await trio.to_thread.run_sync(self.assets.prune, live)
        return {"manifests": manifests, "bytes": freed}
