"""Leases: the assignments the server is waiting on, their deadlines, and the
tasks each worker holds.

A lease's deadline is a lease time after its grant or its last progress report
(a report renews it).  A lease past its deadline lapses (the caller re-queues
the task) when the worker has reported other tasks since half a lease time
after the renewal (it talks, but not of this task: the Assign went astray or
the worker dropped the task) or when it is offline.  A worker that is online
but silent is starved or cut off, not gone: on the 100-host bed, where every
daemon's wakes came seconds late, lapsing its leases at the deadline
re-queued thousands of tasks that were rendering.  Its leases lapse when the
worker has been silent for ``silence`` (``SILENT_LEASES`` lease times).

Deadlines sit in a heap: a renewed lease keeps its old entry, which is pushed
back with the new deadline when it comes up, and entries of leases retired or
replaced are skipped when popped, so a renewal costs nothing and a check
costs the entries that came due.  A lease is retired as soon as its task is
done.

A worker holds the leased tasks it has not finished rendering (``busy``,
oldest first): the one it renders and, with prefetch, one waiting behind it.
A finished lease (the worker delivers the frames) holds no slot; it lapses
only when its worker is offline past its deadline, and otherwise waits for
the task to be done.  A lease whose Assign has not reached its worker yet
(the server dials a few workers at a time) does not lapse: its lease time
runs from the delivery.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Container, ItemsView, Iterator, Mapping
from dataclasses import dataclass

from protocol.crdt import Phase, TaskState

Key = tuple[str, int]  #: (job, task id)
ACTIVE = (Phase.ASSIGNED, Phase.RENDERING, Phase.DELIVERING)
SILENT_LEASES = 6  #: lease times a worker online but silent keeps its leases
OFFLINE = "worker went offline"  #: the reason ``due`` gives for a lease whose worker is offline


@dataclass
class Lease:
    """One assignment the server is waiting on."""

    worker: str
    gen: int
    attempt: int
    deadline: float
    renewed: float  #: its grant, delivery or last progress report
    progress: float = 0.0
    finished: bool = False  #: rendered; the worker is delivering the frames
    prefetched: bool = False  #: sent while the worker was rendering another task
    delivered: bool = True  #: its Assign reached the worker (a lease waiting on a dial does not lapse)
    reported: bool = False  #: the worker reported on this attempt: it took the task up

    def taken_up(self, why: str) -> bool:
        """Whether the task was with the worker when this lease lapsed for ``why``:
        the worker reported on it, or went offline (a frame can take its machine
        down before the first report).  A lease that lapsed otherwise (the worker
        talks of other tasks, or said nothing) may never have reached it."""
        return self.reported or why == OFFLINE


class Leases(Mapping[Key, Lease]):
    """The leases by task, with their deadline heap and each worker's held tasks.

    ``length`` is a lease's time in seconds: from its grant or its last renewal
    to its deadline."""

    def __init__(self, length: float) -> None:
        self.length = length
        self.silence = SILENT_LEASES * length
        self.heard: dict[str, float] = {}  #: worker -> when its last progress report (of any task) came
        self._by_task: dict[Key, Lease] = {}
        self.busy: dict[str, list[Key]] = {}  #: worker -> tasks it holds, oldest first
        self._deadlines: list[tuple[float, int, Key, Lease]] = []  #: heap
        self._seq = itertools.count()

    def __getitem__(self, key: Key) -> Lease:
        return self._by_task[key]

    def __iter__(self) -> Iterator[Key]:
        return iter(self._by_task)

    def __len__(self) -> int:
        return len(self._by_task)

    def __contains__(self, key: object) -> bool:
        return key in self._by_task

    def get(self, key: Key, default: Lease | None = None) -> Lease | None:  # type: ignore[override]
        return self._by_task.get(key, default)

    def items(self) -> ItemsView[Key, Lease]:
        return self._by_task.items()

    def grant(self, key: Key, worker: str, gen: int, attempt: int, now: float, *,
              finished: bool = False, prefetched: bool = False, delivered: bool = True) -> Lease:
        """Lease ``key`` to ``worker`` until ``now`` + the lease time; an unfinished
        lease holds a slot of the worker's.  A lease not yet ``delivered`` does not
        lapse until ``delivered`` says so (its lease time runs from then)."""
        lease = Lease(worker, gen, attempt, now + self.length, now, finished=finished, prefetched=prefetched,
                      delivered=delivered)
        self._by_task[key] = lease
        heapq.heappush(self._deadlines, (lease.deadline, next(self._seq), key, lease))
        if not finished:
            self.busy.setdefault(worker, []).append(key)
        return lease

    def adopt(self, key: Key, state: TaskState, now: float) -> Lease:
        """Lease a task as its state in the book says another server (an earlier
        term's) assigned it: finished while its worker delivers it."""
        return self.grant(key, state.worker, state.gen, state.attempt, now,
                          finished=state.phase == Phase.DELIVERING)

    def renew(self, lease: Lease, now: float) -> None:
        """A progress report: the lease runs a lease time from ``now``."""
        lease.reported = True
        lease.renewed = now
        lease.deadline = now + self.length

    def report(self, worker: str, now: float) -> None:
        """A progress report from ``worker`` (of any task, one it holds or not) came."""
        self.heard[worker] = now

    def delivered(self, key: Key, worker: str, gen: int, attempt: int, now: float) -> None:
        """The Assign of ``key`` reached ``worker``: its lease (if it is still that
        assignment's) runs a lease time from ``now``."""
        lease = self._by_task.get(key)
        if lease is not None and lease.worker == worker and (lease.gen, lease.attempt) == (gen, attempt):
            lease.delivered = True
            lease.renewed, lease.deadline = now, now + self.length

    def release(self, worker: str, key: Key) -> None:
        """``worker`` no longer holds ``key`` (it ended rendering it)."""
        held = self.busy.get(worker)
        if held is not None and key in held:
            held.remove(key)
            if not held:
                del self.busy[worker]

    def pop(self, key: Key) -> Lease:
        """End ``key``'s lease (KeyError if it has none) and free its slot."""
        lease = self._by_task.pop(key)
        self.release(lease.worker, key)
        return lease

    def retire(self, key: Key) -> Lease | None:
        """End ``key``'s lease if it has one, and free its slot."""
        lease = self._by_task.get(key)
        return None if lease is None else self.pop(key)

    def free(self, worker: str) -> None:
        """Forget the tasks ``worker`` holds (it is gone)."""
        self.busy.pop(worker, None)
        self.heard.pop(worker, None)

    def clear(self) -> None:
        """No leases (the node is no longer the server, or takes over afresh)."""
        self._by_task.clear()
        self.busy.clear()
        self.heard.clear()
        self._deadlines.clear()

    def of_job(self, job: str) -> list[Key]:
        """The leased tasks of ``job``."""
        return [k for k in self._by_task if k[0] == job]

    def of_worker(self, worker: str) -> list[Key]:
        """The tasks leased to ``worker``."""
        return [k for k, lease in self._by_task.items() if lease.worker == worker]

    def due(self, now: float, online: Container[str]) -> Iterator[tuple[Key, Lease, str]]:
        """Take out the leases that lapse by ``now``, soonest first, each with the
        reason; each comes out when its turn comes (the caller may lapse the ones
        before).  Entries of leases renewed since go back with their new
        deadline, those of leases held (a silent worker online, a finished one
        delivering) with the time to look again; those of leases retired or
        replaced are dropped."""
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, key, lease = heapq.heappop(heap)
            if self._by_task.get(key) is not lease:
                continue  # renewed into a new lease, or retired
            if lease.deadline <= now:
                why = self._lapses(lease, now, online)
                if why:
                    yield key, self.pop(key), why
                    continue
            heapq.heappush(heap, (lease.deadline, next(self._seq), key, lease))

    def _lapses(self, lease: Lease, now: float, online: Container[str]) -> str:
        """Why ``lease``, past its deadline, lapses now; "" if it does not, and then
        its deadline moves to when to look again."""
        again = now + self.length / 4
        if not lease.delivered:  # its Assign waits on a dial: a lease time from the delivery
            lease.deadline = now + self.length
            return ""
        if lease.worker not in online:
            return OFFLINE
        if lease.finished:  # delivering the frames: as long as it takes
            lease.deadline = now + self.length
            return ""
        since = now - lease.renewed
        heard = self.heard.get(lease.worker, lease.renewed)
        if heard >= lease.renewed + self.length / 2:
            return f"no progress report for {since:.0f} s (the worker reports its other tasks)"
        silent = now - max(heard, lease.renewed)
        if silent >= self.silence:
            return f"worker online but silent for {silent:.0f} s"
        lease.deadline = min(again, max(heard, lease.renewed) + self.silence)
        return ""

    def next_deadline(self) -> float | None:
        """The earliest deadline in the heap (perhaps a stale entry's: the check
        then finds nothing and looks again), or None."""
        return self._deadlines[0][0] if self._deadlines else None
