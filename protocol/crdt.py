"""The job book's merge rules: pure functions, so any two replicas that saw
the same updates are equal whatever order (and however often) they saw them.

A job is a small document::

    fields   name -> Register(stamp, value)   last writer wins by stamp
    gen      int                              max wins (restart/clear bumps it)
    deleted  Stamp | None                     once set, stays set (tombstone)
    tasks    tid -> TaskState                 the greatest state wins
    log      stamp -> line                    grow-only set; "replace" moves
    log_base Stamp | None                     ... the base, hiding older lines

Stamps are hybrid logical clocks ``(millis, counter, node uuid)``: ordered by
time, then counter, then node, so no two writers ever tie.

A task's state only moves forward on ``(generation, done, attempt, phase)``;
the writer's stamp breaks ties so the order is total.  Within a generation
two more parts of a task's state are grow-only, joined rather than replaced:
``seen``, every machine any replica's state listed, and ``runs``, every
(term, attempt) it was assigned as, so the state that wins a merge (a
majority server's) never hides the renders a minority server had made.
``previews`` (the chunk hashes of the task's frame previews, made by the
worker that rendered them) is joined as the greater tuple, so the state that
marks a task SUCCEEDED need not carry the previews the worker's state named.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import IntEnum
from sys import intern
from typing import Any

import msgpack

from .errors import RemoteProtocolError, shown

Stamp = tuple[int, int, str]  #: (wall millis, counter, node uuid)
ZERO: Stamp = (0, 0, "")


def hlc_tick(last: Stamp, wall_ms: int, node: str) -> Stamp:
    """A new local stamp after ``last`` (send/local event rule)."""
    if wall_ms > last[0]:
        return (wall_ms, 0, node)
    return (last[0], last[1] + 1, node)


def hlc_observe(last: Stamp, seen: Stamp, wall_ms: int, node: str) -> Stamp:
    """The clock after receiving ``seen`` (receive rule): never behind anything seen."""
    top = max(last[0], seen[0], wall_ms)
    if top == last[0] == seen[0]:
        counter = max(last[1], seen[1]) + 1
    elif top == last[0]:
        counter = last[1] + 1
    elif top == seen[0]:
        counter = seen[1] + 1
    else:
        counter = 0
    return (top, counter, node)


class Phase(IntEnum):
    """A task's phase within (generation, done, attempt)."""

    QUEUED = 0
    ASSIGNED = 1
    RENDERING = 2
    DELIVERING = 3
    FAILED = 4  #: with done=1: gave up after the retries
    SUCCEEDED = 5  #: with done=1: every frame of the task is delivered


@dataclass(frozen=True, slots=True)
class TaskState:
    """One task's replicated state; ``key`` orders states."""

    gen: int = 0
    done: int = 0
    attempt: int = 0
    phase: int = Phase.QUEUED
    stamp: Stamp = ZERO
    worker: str = ""  #: machine working on it now, if any
    machines: tuple[str, ...] = ()  #: every machine that worked on it
    render_time: float = 0.0
    error: str = ""
    lease_until: float = 0.0  #: server clock (wall seconds) when the lease lapses
    term: int = 0  #: the server term that assigned it
    failures: int = 0  #: attempts that failed in the render (a lost worker is not the task's fault)
    seen: tuple[str, ...] = ()  #: sorted: every machine a state of this generation listed (grow-only)
    runs: tuple[tuple[int, int], ...] = ()  #: sorted (term, attempt) of every assignment (grow-only)
    previews: tuple[str, ...] = ()  #: SHA-256 of each frame's preview chunk, in frame order ("" = none)

    @property
    def key(self) -> tuple[int, int, int, int, Stamp]:
        """The order in which task states supersede each other."""
        return (self.gen, self.done, self.attempt, self.phase, self.stamp)

    @property
    def all_machines(self) -> list[str]:
        """Every machine that worked on the task in this generation: this state's
        own, in the order it had them (the last is the latest), then the others."""
        own = list(self.machines)
        return own + [m for m in self.seen if m not in own]

    @property
    def attempts(self) -> int:
        """How many times the task was assigned in this generation, on any server."""
        return max(len(self.runs), self.attempt + (0 if self.phase == Phase.QUEUED else 1))


def merge_task(a: TaskState | None, b: TaskState | None) -> TaskState | None:
    """The join of two task states: the greater by ``key``, and within one
    generation the union of both ``seen`` and ``runs``, the larger failure
    count and the greater ``previews``.  The winner itself is returned when
    the other adds nothing."""
    if a is None:
        return b
    if b is None:
        return a
    win, lose = (a, b) if a.key >= b.key else (b, a)
    if win.gen != lose.gen:
        return win
    seen = set(win.seen) | set(win.machines)
    seen_all = seen | set(lose.seen) | set(lose.machines)
    runs = set(win.runs) | set(lose.runs)
    if (seen_all == seen and runs == set(win.runs) and win.failures >= lose.failures
            and win.previews >= lose.previews):
        return win
    return replace(win, seen=tuple(sorted(seen_all)), runs=tuple(sorted(runs)),
                   failures=max(win.failures, lose.failures), previews=max(win.previews, lose.previews))


@dataclass(frozen=True, slots=True)
class Register:
    """A last-writer-wins value."""

    stamp: Stamp
    value: Any


def merge_register(a: Register | None, b: Register | None) -> Register | None:
    """The register with the greater stamp."""
    if a is None:
        return b
    if b is None:
        return a
    return a if a.stamp >= b.stamp else b


@dataclass(frozen=True)
class JobDoc:
    """One job's replicated document (or a delta of it: a partial document)."""

    uuid: str
    fields: dict[str, Register] = field(default_factory=dict)
    gen: int = 0
    deleted: Stamp | None = None
    tasks: dict[int, TaskState] = field(default_factory=dict)
    log: dict[Stamp, str] = field(default_factory=dict)
    log_base: Stamp | None = None

    def value(self, name: str, default: Any = None) -> Any:
        """A field's current value."""
        reg = self.fields.get(name)
        return default if reg is None else reg.value

    def visible_log(self) -> list[tuple[Stamp, str]]:
        """Log lines after the last replace, oldest first."""
        base = self.log_base or ZERO
        return sorted((s, line) for s, line in self.log.items() if s >= base)


def _max_opt(a: Stamp | None, b: Stamp | None) -> Stamp | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def merge_job(a: JobDoc | None, b: JobDoc) -> JobDoc:
    """Join two documents (or a document and a delta) of the same job; pure."""
    if a is not None:
        a = JobDoc(a.uuid, dict(a.fields), a.gen, a.deleted, dict(a.tasks), dict(a.log), a.log_base)
    return absorb(a, b)[0]


@dataclass
class Changes:
    """What ``absorb`` changed: the job's head (fields, gen, deletion, log base),
    which tasks, which log lines."""

    head: bool = False
    tasks: list[int] = field(default_factory=list)
    logs: list[Stamp] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.head or bool(self.tasks) or bool(self.logs)


def absorb(doc: JobDoc | None, delta: JobDoc) -> tuple[JobDoc, Changes]:
    """``merge_job`` for a replica that owns ``doc``: its dicts are updated in
    place (cost proportional to the delta, not the job) and what changed is
    reported.  The returned document may be a new object sharing the dicts."""
    changes = Changes()
    if doc is None:
        doc = JobDoc(delta.uuid)
        changes.head = True
    elif doc.uuid != delta.uuid:
        raise ValueError("merging documents of different jobs")
    if doc.deleted is not None:
        if delta.deleted is not None and delta.deleted > doc.deleted:
            return JobDoc(doc.uuid, deleted=delta.deleted), Changes(head=True)
        return doc, changes
    if delta.deleted is not None:
        return JobDoc(doc.uuid, deleted=delta.deleted), Changes(head=True)
    for name, reg in delta.fields.items():
        cur = doc.fields.get(name)
        if cur is None or reg.stamp > cur.stamp:
            doc.fields[name] = reg
            changes.head = True
    for tid, state in delta.tasks.items():
        cur_t = doc.tasks.get(tid)
        merged = merge_task(cur_t, state)
        if merged is not cur_t and merged != cur_t:
            assert merged is not None
            doc.tasks[tid] = merged
            changes.tasks.append(tid)
    for stamp, line in delta.log.items():
        if stamp not in doc.log:
            doc.log[stamp] = line
            changes.logs.append(stamp)
    gen = max(doc.gen, delta.gen)
    base = _max_opt(doc.log_base, delta.log_base)
    if gen != doc.gen or base != doc.log_base:
        doc = JobDoc(doc.uuid, doc.fields, gen, None, doc.tasks, doc.log, base)
        changes.head = True
    return doc, changes


def tombstone(doc: JobDoc) -> JobDoc:
    """A deleted job keeps only its uuid and delete stamp: delete beats every other
    change, so the content can go at once on every replica, while the small
    marker stops a machine that slept through the delete from resurrecting it."""
    return JobDoc(doc.uuid, deleted=doc.deleted) if doc.deleted is not None else doc


def task_current(doc: JobDoc, tid: int) -> TaskState:
    """A task's state, reset to QUEUED of the job's generation if it is older."""
    state = doc.tasks.get(tid)
    if state is None or state.gen < doc.gen:
        return TaskState(gen=doc.gen)
    return state


# -- position keys ------------------------------------------------------------

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def key_between(lo: str | None, hi: str | None) -> str:
    """A key strictly between ``lo`` and ``hi`` (None = open end), in base 36,
    so moving a job never renumbers the others."""
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"key_between needs lo < hi, got {lo!r}, {hi!r}")
    lo = lo or ""
    out = []
    i = 0
    while True:
        a = _DIGITS.index(lo[i]) if i < len(lo) else 0
        b = _DIGITS.index(hi[i]) if hi is not None and i < len(hi) else len(_DIGITS)
        if b - a > 1:
            out.append(_DIGITS[(a + b) // 2])
            return "".join(out)
        out.append(_DIGITS[a])
        if b - a == 1:
            hi = None  # every following digit of lo may grow freely
        i += 1


# -- wire / disk form ---------------------------------------------------------

def _stamp(v: Any) -> Stamp:
    if (not isinstance(v, (list, tuple)) or len(v) != 3 or not isinstance(v[0], int)
            or not isinstance(v[1], int) or not isinstance(v[2], str)):
        raise RemoteProtocolError(f"bad stamp {shown(v)}")
    return (v[0], v[1], intern(v[2]))  # one string per node, not one per stamp held


def _int(v: Any) -> int:
    """An integer field as msgpack carries it.  ``int()`` of a float or a string
    would take ``inf`` (OverflowError) or ``1e300`` (an int msgpack cannot write
    back when the document is stored or passed on)."""
    if not isinstance(v, int):
        raise ValueError(f"expected an integer, not {shown(v)}")
    return int(v)


def _number(v: Any) -> float:
    """A float field; ``float()`` of a string would take ``"nan"``, and name a bad one whole."""
    if not isinstance(v, (int, float)):
        raise ValueError(f"expected a number, not {shown(v)}")
    return float(v)


def _is_hash(v: Any) -> bool:
    return isinstance(v, str) and (v == "" or (len(v) == 64 and all(c in "0123456789abcdef" for c in v)))


def task_to_wire(t: TaskState) -> list[Any]:
    """A task state as a msgpack-friendly list."""
    out = [t.gen, t.done, t.attempt, t.phase, list(t.stamp), t.worker, list(t.machines),
           t.render_time, t.error, t.lease_until, t.term, t.failures]
    if t.seen or t.runs or t.previews:
        out += [list(t.seen), [list(r) for r in t.runs]]
    if t.previews:
        out.append(list(t.previews))
    return out


def task_from_wire(v: Any) -> TaskState:
    """Inverse of ``task_to_wire``; RemoteProtocolError if malformed."""
    try:
        if not isinstance(v, (list, tuple)) or len(v) not in (11, 12, 14, 15):
            raise ValueError("expected a list of 11, 12, 14 or 15 fields")
        gen, done, attempt, phase, stamp, worker, machines, rt, err, lease, term = v[:11]
        failures = _int(v[11]) if len(v) >= 12 else 0  # states stored before failures were counted apart
        seen: tuple[str, ...] = ()
        runs: tuple[tuple[int, int], ...] = ()
        previews: tuple[str, ...] = ()
        if len(v) >= 14:  # states stored before seen and runs leave them empty
            if not isinstance(v[12], (list, tuple)) or not isinstance(v[13], (list, tuple)):
                raise ValueError("seen and runs must be lists")
            seen = tuple(sorted({intern(str(m)) for m in v[12]}))
            runs = tuple(sorted({(_int(r[0]), _int(r[1])) for r in v[13]}))
        if len(v) == 15:  # states stored before previews leave them empty
            if not isinstance(v[14], (list, tuple)) or not all(_is_hash(h) for h in v[14]):
                raise ValueError("previews must be a list of SHA-256 hex digests or empty strings")
            previews = tuple(v[14])
        if failures < 0:
            raise ValueError(f"failures must not be negative, not {shown(failures)}")
        if _int(done) not in (0, 1):
            raise ValueError(f"done must be 0 or 1, not {shown(done)}")
        # a phase outside the enum would outrank every real state of its attempt
        state = TaskState(_int(gen), _int(done), _int(attempt), int(Phase(_int(phase))), _stamp(stamp),
                          intern(str(worker)), tuple(intern(str(m)) for m in machines), _number(rt), str(err), _number(lease),
                          _int(term), failures, seen, runs, previews)
    except (TypeError, ValueError, LookupError, OverflowError) as exc:
        raise RemoteProtocolError(f"bad task state: {exc}") from None
    return state


def job_to_wire(doc: JobDoc) -> dict[str, Any]:
    """A job document (or delta) as a msgpack-friendly map."""
    out: dict[str, Any] = {"uuid": doc.uuid}
    if doc.fields:
        out["f"] = {k: [list(r.stamp), r.value] for k, r in doc.fields.items()}
    if doc.gen:
        out["g"] = doc.gen
    if doc.deleted is not None:
        out["x"] = list(doc.deleted)
    if doc.tasks:
        out["t"] = [[tid, task_to_wire(t)] for tid, t in doc.tasks.items()]
    if doc.log:
        out["l"] = [[list(s), line] for s, line in doc.log.items()]
    if doc.log_base is not None:
        out["lb"] = list(doc.log_base)
    return out


def job_from_wire(v: Any) -> JobDoc:
    """Inverse of ``job_to_wire``; RemoteProtocolError if malformed."""
    if not isinstance(v, dict) or not isinstance(v.get("uuid"), str):
        raise RemoteProtocolError("job document without a uuid")
    stamps: dict[Stamp, Stamp] = {}  # the fields a change wrote share its stamp: one tuple each, not one a field

    def stamp(raw: Any) -> Stamp:
        s = _stamp(raw)
        return stamps.setdefault(s, s)

    try:
        fields = {intern(str(k)): Register(stamp(r[0]), r[1]) for k, r in v.get("f", {}).items()}
        tasks = {_int(tid): task_from_wire(t) for tid, t in v.get("t", [])}
        log = {_stamp(s): str(line) for s, line in v.get("l", [])}
        gen = _int(v.get("g", 0))
    except (TypeError, ValueError, AttributeError, LookupError, OverflowError) as exc:
        raise RemoteProtocolError(f"bad job document: {exc}") from None
    deleted = _stamp(v["x"]) if v.get("x") is not None else None
    base = _stamp(v["lb"]) if v.get("lb") is not None else None
    return JobDoc(v["uuid"], fields, gen, deleted, tasks, log, base)


def digest(doc: JobDoc) -> bytes:
    """A hash of a document's canonical form: equal documents, equal digests."""
    canon = job_to_wire(doc)
    if "f" in canon:
        canon["f"] = sorted(canon["f"].items())
    for key in ("t", "l"):
        if key in canon:
            canon[key] = sorted(canon[key])
    return hashlib.sha256(msgpack.packb(canon, use_bin_type=True)).digest()[:16]


PART_BUCKETS = 64  #: buckets of tasks (by task id) in ``part_digests``
LOG_BUCKETS = 16  #: buckets of log lines (by the window of their stamp) in ``part_digests``
LOG_WINDOW_MS = 10_000  #: a log bucket holds the lines of every ``LOG_BUCKETS``-th window this long
PART_BYTES = 8  #: bytes of each part's digest


PARTS = 1 + LOG_BUCKETS + PART_BUCKETS  #: a job's parts: head, the log buckets, then the task buckets


def part_index(tid: int) -> int:
    """The part holding task ``tid``."""
    return 1 + LOG_BUCKETS + tid % PART_BUCKETS


def log_part_index(stamp: Stamp) -> int:
    """The part holding the log line stamped ``stamp``: the lines of one window of
    time share a part, so while a job runs the lines still spreading sit in one
    or two parts, and the rest of its log (thousands of lines on a busy farm)
    matches on both replicas and is not sent."""
    return 1 + (stamp[0] // LOG_WINDOW_MS) % LOG_BUCKETS


def part(doc: JobDoc, index: int) -> JobDoc:
    """One of ``doc``'s ``PARTS`` deltas: 0 its head (fields, generation, deletion,
    log base), then its log lines by ``log_part_index``, then its tasks by task id
    modulo ``PART_BUCKETS``."""
    if index == 0:
        return JobDoc(doc.uuid, doc.fields, doc.gen, doc.deleted, log_base=doc.log_base)
    if index <= LOG_BUCKETS:
        return JobDoc(doc.uuid, log={s: line for s, line in doc.log.items() if log_part_index(s) == index})
    bucket = index - 1 - LOG_BUCKETS
    return JobDoc(doc.uuid, tasks={tid: s for tid, s in doc.tasks.items() if tid % PART_BUCKETS == bucket})


def parts(doc: JobDoc) -> list[JobDoc]:
    """``doc`` cut into its ``PARTS`` deltas (``part``)."""
    head = part(doc, 0)
    logs: list[dict[Stamp, str]] = [{} for _ in range(LOG_BUCKETS)]
    for stamp, line in doc.log.items():
        logs[log_part_index(stamp) - 1][stamp] = line
    buckets: list[dict[int, TaskState]] = [{} for _ in range(PART_BUCKETS)]
    for tid, state in doc.tasks.items():
        buckets[tid % PART_BUCKETS][tid] = state
    return [head, *(JobDoc(doc.uuid, log=b) for b in logs), *(JobDoc(doc.uuid, tasks=b) for b in buckets)]


def part_digest(doc: JobDoc, index: int) -> bytes:
    """The digest of ``part(doc, index)``: ``PART_BYTES`` bytes."""
    return digest(part(doc, index))[:PART_BYTES]


def part_digests(doc: JobDoc) -> bytes:
    """The digests of ``parts(doc)``, ``PART_BYTES`` each, end to end: two
    replicas whose whole digests differ compare these, and send each other
    only the parts that differ (a busy job's tasks change a few at a time)."""
    return b"".join(digest(p)[:PART_BYTES] for p in parts(doc))


def digest_of_parts(digests: bytes) -> bytes:
    """A whole job's digest from its part digests: equal documents, equal digests,
    and a change costs the rehash of the parts it touched (the job book keeps
    each part's digest until a change touches it)."""
    return hashlib.sha256(digests).digest()[:16]


def differing_parts(doc: JobDoc, mine: bytes, theirs: bytes) -> JobDoc | None:
    """The delta of ``doc`` (whose part digests are ``mine``) holding the parts
    whose digests ``theirs`` does not match; None when all match.
    RemoteProtocolError if ``theirs`` is not a list of part digests."""
    if len(theirs) != len(mine):
        raise RemoteProtocolError(f"part digests of {len(theirs)} bytes, not {len(mine)}")
    differ = [i for i in range(len(mine) // PART_BYTES)
              if mine[i * PART_BYTES:(i + 1) * PART_BYTES] != theirs[i * PART_BYTES:(i + 1) * PART_BYTES]]
    if not differ:
        return None
    buckets = {i - 1 - LOG_BUCKETS for i in differ if i > LOG_BUCKETS}
    tasks = {tid: state for tid, state in doc.tasks.items() if tid % PART_BUCKETS in buckets}
    windows = {i for i in differ if 1 <= i <= LOG_BUCKETS}
    log = {s: line for s, line in doc.log.items() if log_part_index(s) in windows} if windows else {}
    if 0 in differ:
        return JobDoc(doc.uuid, doc.fields, doc.gen, doc.deleted, tasks, log, doc.log_base)
    return JobDoc(doc.uuid, tasks=tasks, log=log)


def with_task(doc: JobDoc, tid: int, state: TaskState) -> JobDoc:
    """A delta holding one task state of ``doc``'s job."""
    return JobDoc(doc.uuid, tasks={tid: state})


__all__ = [
    "LOG_BUCKETS", "LOG_WINDOW_MS", "PARTS", "PART_BUCKETS", "PART_BYTES", "ZERO", "Changes", "JobDoc", "absorb", "Phase", "Register", "Stamp",
    "TaskState", "differing_parts", "digest", "digest_of_parts", "hlc_observe", "part", "part_digest",
    "part_digests", "part_index", "log_part_index", "parts",
    "hlc_tick", "job_from_wire", "job_to_wire", "key_between", "merge_job", "merge_register",
    "merge_task", "replace", "task_current", "tombstone", "with_task",
]
