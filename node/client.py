"""A blocking Python client for the local daemon's control socket.

Usable from plain scripts with no trio knowledge; method names are the
snake_case names of NetRenderService's methods::

    from node.client import Client
    with Client() as farm:
        print(farm.get_uuid(), farm.get_name())
        for m in farm.get_machines_list():
            print(m["name"], m["bits"])
"""

from __future__ import annotations

import itertools
import os
import socket
import time
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any

from node.config import client_socket
from node.errors import DaemonNotRunning, NodeError, NotFound
from node.renderers import detect_renderer
from protocol import ProtocolError, codec
from protocol.enums import MachineList
from protocol.framing import HEADER, MAX_CONTROL, RecordDecoder
from protocol.messages import Call, Error, Reply
from protocol.verification import VerificationBits

DEFAULT_TIMEOUT = 70.0
WAIT_POLL = 0.25  #: seconds between two looks at a job ``wait`` waits for
FINAL_STATES = ("done", "failed", "stopped")  #: states a job leaves only when someone restarts it


class RemoteError(NodeError):
    """The daemon answered with an error; ``code`` is the daemon's error code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class UnderReplicated(UserWarning):
    """A submit was acknowledged while fewer peers hold the job than it wants: it
    lives on fewer machines (maybe this one only) until they come back."""


class SubmitRefused(NodeError):
    """CreateRenderJob answered with a CREATEJOBRESULT_* other than OK.

    ``result_name`` is the full name (``CREATEJOBRESULT_ASSETMISSING``), ``reason``
    says what to do, ``missing`` lists missing files when there are some, and
    ``result`` is the daemon's whole answer."""

    code = "submit_refused"

    def __init__(self, result: dict[str, Any]) -> None:
        name = str(result.get("result_name") or "")
        self.result_name = name if name.startswith("CREATEJOBRESULT_") else f"CREATEJOBRESULT_{name}"
        self.missing: list[str] = list(result.get("missing") or [])
        self.result = result
        super().__init__(str(result.get("reason") or self.result_name))

    def __str__(self) -> str:
        return f"{self.result_name}: {self.reason}"


class Client:
    """A connection to the daemon's control socket."""

    def __init__(self, path: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path or client_socket()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._decoder = RecordDecoder(MAX_CONTROL)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the next call reconnects)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._decoder = RecordDecoder(MAX_CONTROL)

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                raise DaemonNotRunning(
                    f"no rendernode daemon is running on {self.path}; start one with "
                    "`rendernode daemon` (or `systemctl start rendernode`), or pass --socket"
                ) from None
            except PermissionError:
                sock.close()
                raise DaemonNotRunning(
                    f"permission denied on {self.path}: join the rendernode group"
                ) from None
            except OSError as exc:  # EAGAIN: its backlog is full, it accepts nothing (hung?)
                sock.close()
                raise DaemonNotRunning(
                    f"the daemon on {self.path} does not accept connections: {exc}"
                ) from None
            self._sock = sock
        return self._sock

    def call(self, method: str, **args: Any) -> Any:
        """Call a control method by name and return its result."""
        sock = self._connect()
        req_id = next(self._ids)
        body = codec.encode(Call(method, {k: v for k, v in args.items() if v is not None}), req_id)
        try:
            sock.sendall(HEADER.pack(len(body)) + body)
            while True:
                record = self._decoder.next_record()
                if record is not None:
                    break
                data = sock.recv(65536)
                if not data:
                    raise DaemonNotRunning("the daemon closed the connection")
                self._decoder.feed(data)
            reply, reply_id = codec.decode(record)
        except (OSError, ProtocolError) as exc:
            self.close()
            raise DaemonNotRunning(f"lost the daemon on {self.path}: {exc}") from None
        if isinstance(reply, Error):
            raise RemoteError(reply.code, reply.reason)
        if not isinstance(reply, Reply) or reply_id != req_id:
            self.close()
            raise DaemonNotRunning("the daemon sent an unexpected reply")
        return reply.result

    # -- NetRenderService ------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """uuid, name, role, term, server and more."""
        result: dict[str, Any] = self.call("status")
        return result

    def get_uuid(self) -> str:
        """GetUuid: this node's UUID."""
        return str(self.status()["uuid"])

    def get_name(self) -> str:
        """GetName: this node's name."""
        return str(self.status()["name"])

    def get_net_preferences(self) -> dict[str, Any]:
        """GetNetPreferences: the effective preferences (never the token)."""
        result: dict[str, Any] = self.call("config")
        return result

    def add_machine(self, address: str, uuid_of_machine_to_overwrite: str = "") -> dict[str, Any]:
        """AddMachine: dial HOST[:PORT] as a static peer (the token is the farm's own)."""
        result: dict[str, Any] = self.call("machine_add", address=address,
                                           replace=uuid_of_machine_to_overwrite)
        return result

    def remove_machine(self, machine: str) -> bool:
        """Forget a machine by UUID or static address."""
        return bool(self.call("machine_remove", machine=machine))

    def get_machines_list(self, log_count: int = 0, get_only_this_machine: str | None = None,
                          machine_list: int = MachineList.MACHINELIST_ALL, bits: int = 0,
                          include_local_machine: bool = True,
                          include_bonjour_machines: bool = True) -> list[dict[str, Any]]:
        """GetMachinesList: every machine's row, optionally with its log tail."""
        result: list[dict[str, Any]] = self.call(
            "machines", log=log_count, uuid=get_only_this_machine, list=int(machine_list), bits=int(bits),
            include_local=include_local_machine, include_discovered=include_bonjour_machines,
        )
        return result

    def get_all_machine_uuids(self, machine_list: int = MachineList.MACHINELIST_ALL,
                              bits: int = VerificationBits.VERIFICATIONBIT_NONE,
                              include_local_machine: bool = True,
                              include_bonjour_machines: bool = True) -> list[str]:
        """GetAllMachineUuids with the seed's filters."""
        rows = self.get_machines_list(machine_list=machine_list, bits=bits, include_local_machine=include_local_machine,
                                      include_bonjour_machines=include_bonjour_machines)
        return [row["uuid"] for row in rows]

    def add_log_to_machine(self, machine_uuid: str, log: str) -> bool:
        """AddLogToMachine: append a line to a machine's log."""
        return bool(self.call("add_log_to_machine", uuid=machine_uuid, line=log))

    def net_console_output(self, flags: int, value: str) -> bool:
        """NetConsoleOutput: print a line to the daemon's log (journal)."""
        return bool(self.call("console", flags=int(flags), text=value))

    # -- jobs ------------------------------------------------------------------

    def create_render_job(self, scene: str, *, frames: str | None = None, renderer: str | None = None,
                          output: str = "", chunk: int | None = None, priority: int = 50,
                          flags: int | list[str] = 0, name: str | None = None,
                          job_uuid: str | None = None, creator: int = 3, start: bool = True,
                          machines: list[str] | None = None,
                          rdata: dict[str, Any] | None = None,
                          require_replicas: int | None = None,
                          resolution: str | tuple[int, int] | list[int] | None = None,
                          percentage: int | None = None,
                          tiles: str | tuple[int, int] | list[int] | None = None,
                          overscan: int | None = None) -> dict[str, Any]:
        """CreateRenderJob: the daemon's answer (uuid, ``result_name`` "OK", replicas),
        once the job is durable here and on ``replicas`` peers.  Any other
        CREATEJOBRESULT_* raises ``SubmitRefused`` carrying its name and reason.

        When fewer peers than the farm's ``replicas`` took the job, the answer has
        ``under_replicated`` and a ``note``, and an ``UnderReplicated`` warning is
        issued; ``require_replicas`` (default: the daemon's preference) refuses
        such a submit instead (CREATEJOBRESULT_REPOSITORYERROR).

        Paths (scene, output, ``rdata["assets"]``) are resolved here, against this
        process's working directory; ``renderer`` None picks it from the scene's
        type as ``rendernode submit`` does (``command`` with ``rdata["command"]``);
        ``frames`` None renders the scene's own frame range.

        Render settings: ``rdata`` (``rendernode submit --set``; values may be text,
        turned into each setting's type: ``rendernode renderers`` lists them),
        ``resolution`` ("1920x1080" or (1920, 1080)) and ``percentage``; a key or
        value the renderer does not take is refused (``SubmitRefused``).  Tiles:
        ``tiles`` ("4x4", (4, 4) or "auto": about two tiles per machine that can
        render it) cuts every frame into tiles rendered as tasks of their own and
        assembled on this machine; ``overscan`` grows the region each tile's
        renderer draws by that many pixels (cut off again).  ``chunk``: frames a
        task (1 if None); with tiles, tiles a task (if None, a frame's tiles split
        evenly over the machines that can render it, a renderer process each)."""
        scene = os.path.abspath(scene)
        output = os.path.abspath(output) if output else ""
        if rdata and isinstance(rdata.get("assets"), list):
            rdata = {**rdata, "assets": [os.path.abspath(p) for p in rdata["assets"]]}
        if renderer is None:
            renderer = detect_renderer(scene, (rdata or {}).get("command"))
        result: dict[str, Any] = self.call(
            "submit", scene=scene, frames=frames, renderer=renderer, output=output, chunk=chunk,
            priority=priority, flags=flags, name=name, uuid=job_uuid, creator=creator, start=start,
            machines=machines, rdata=rdata, require_replicas=require_replicas,
            resolution=list(resolution) if isinstance(resolution, tuple | list) else resolution,
            percentage=percentage, tiles=list(tiles) if isinstance(tiles, tuple | list) else tiles,
            overscan=overscan,
        )
        if result.get("result_name") != "OK" or not result.get("uuid"):
            raise SubmitRefused(result)
        if result.get("under_replicated"):
            warnings.warn(UnderReplicated(f"job {result['uuid']} {result.get('note', 'is under-replicated')}"),
                          stacklevel=2)
        return result

    def renderers(self) -> list[dict[str, Any]]:
        """Each machine's renderers: machine, name, online, renderer, version, and the
        settings (name, type, help) it takes."""
        result: list[dict[str, Any]] = self.call("renderers")
        return result

    def wait(self, job: str, timeout: float | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None,
             poll: float = WAIT_POLL) -> dict[str, Any]:
        """Wait until the job is done, failed or stopped and return its final row (as
        ``get_jobs_list`` shows it; ``errors`` lists the last errors of failed frames).
        ``on_progress`` sees every row read on the way; TimeoutError after ``timeout``
        seconds (the job goes on rendering); NotFound if the job is deleted."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rows = self.get_jobs_list(selected_job=job, selected_job_only=True)
            if not rows:
                raise NotFound(f"job {job} was deleted")
            row = rows[0]
            if on_progress is not None:
                on_progress(row)
            if row["state"] in FINAL_STATES:
                return row
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job} is still {row['state']} after {timeout} s; it goes on rendering")
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    def get_jobs_list(self, rdata: int = 0, assets: int = 0, results: int = 0, log: int = 0,
                      selected_job: str | None = None, selected_job_only: bool = False,
                      user: str | None = None) -> list[dict[str, Any]]:
        """GetJobsList with DETAILSELECTOR_* for each kind of detail."""
        result: list[dict[str, Any]] = self.call(
            "jobs", rdata=rdata, assets=assets, results=results, log=log, job=selected_job,
            selected_only=selected_job_only, user=user,
        )
        return result

    def get_job(self, job_uuid: str) -> dict[str, Any]:
        """One job with every detail."""
        result: dict[str, Any] = self.call("job", job=job_uuid)
        return result

    def init_and_start_rendering_full_async(self, job_uuid: str, flags: int | list[str] | None = None,
                                            machines: list[str] | None = None,
                                            restart: bool = False) -> bool:
        """InitRendering + StartRendering in one (InitAndStartRenderingFullAsync)."""
        return bool(self.call("start", job=job_uuid, flags=flags, machines=machines,
                              restart=restart)["started"])

    def stop_rendering(self, job_uuid: str) -> str:
        """StopRendering: the job ends with RENDERRESULT_USERBREAK."""
        return str(self.call("stop", job=job_uuid)["result"])

    def delete_render_job(self, job_uuid: str, inform_clients: bool = True) -> bool:
        """DeleteRenderJob(informClients)."""
        return bool(self.call("delete", job=job_uuid, inform_clients=inform_clients)["deleted"])

    def insert_job_before(self, job_uuid1: str, job_uuid2: str) -> bool:
        """InsertJobBefore: move job 1 before job 2."""
        return bool(self.call("move", job=job_uuid1, before=job_uuid2))

    def insert_job_after(self, job_uuid1: str, job_uuid2: str) -> bool:
        """InsertJobAfter: move job 1 after job 2."""
        return bool(self.call("move", job=job_uuid1, after=job_uuid2))

    def set_default_scene_name(self, job_uuid: str, default_scene_name: str) -> bool:
        """SetDefaultSceneName."""
        return bool(self.call("scene", job=job_uuid, name=default_scene_name))

    def add_log_to_job(self, job_uuid: str, log: str, append: bool = True) -> bool:
        """AddLogToJob: append, or replace the log (append=False)."""
        return bool(self.call("log", job=job_uuid, text=log, replace=not append))

    def copy_render_task_from(self, job_uuid: str) -> list[dict[str, Any]]:
        """CopyRenderTaskFrom: frame, state, render time, machines per task; a tiled
        job's: a row per tile, with its ``tile`` and ``region`` [x0, y0, x1, y1]."""
        result: list[dict[str, Any]] = self.call("tasks", job=job_uuid)
        return result

    def get_user_pool(self) -> list[dict[str, Any]]:
        """GetUserPool: users known to the farm."""
        result: list[dict[str, Any]] = self.call("users")
        return result

    def message(self, text: str, to: str = "") -> dict[str, Any]:
        """Message: to everyone, or private to one user."""
        result: dict[str, Any] = self.call("message", text=text, to=to or None)
        return result

    def messages(self) -> list[dict[str, Any]]:
        """Messages visible to this user."""
        result: list[dict[str, Any]] = self.call("messages")
        return result

    def retry_failed(self, job_uuid: str) -> dict[str, Any]:
        """Render a job's failed frames again, keeping the finished ones."""
        result: dict[str, Any] = self.call("retry", job=job_uuid)
        return result

    def dashboard_login(self) -> dict[str, Any]:
        """A one-time login URL for this user's browser (url, expires), valid a minute."""
        result: dict[str, Any] = self.call("dashboard_login")
        return result

    def dashboard_revoke(self) -> dict[str, Any]:
        """End every dashboard session (ended: how many)."""
        result: dict[str, Any] = self.call("dashboard_revoke")
        return result

    # -- results and repository --------------------------------------------------

    def results(self, job_uuid: str) -> list[dict[str, Any]]:
        """The job's result files held on this node."""
        result: list[dict[str, Any]] = self.call("results", job=job_uuid)
        return result

    def clear_results(self, job_uuid: str) -> bool:
        """ClearResults: delete the job's results here; it must be started again to re-render."""
        return bool(self.call("results_clear", job=job_uuid))

    def remove_result(self, job_uuid: str, rel_result_path: str) -> bool:
        """RemoveResult: delete one result file of the job."""
        return bool(self.call("results_rm", job=job_uuid, path=rel_result_path))

    def get_repository(self) -> dict[str, Any]:
        """GetRepository: asset manifests and repository results on this node."""
        result: dict[str, Any] = self.call("repo")
        return result

    def repository_gc(self) -> dict[str, Any]:
        """Drop manifests and chunks no live job uses."""
        result: dict[str, Any] = self.call("repo_gc")
        return result
