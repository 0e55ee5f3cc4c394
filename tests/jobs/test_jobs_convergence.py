"""Convergence, as a property: several replicas (real JobBooks over SQLite,
changed through node.jobs.Jobs) make random changes while their deltas are
delivered late, out of order, twice or never; anti-entropy (each pair
exchanges the documents whose digests differ) then leaves every replica with
identical documents, equal to the merge of every change ever made."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.errors import BadRequest
from node.jobs.operations import Jobs
from node.jobs.replication import batches, split
from protocol.crdt import JobDoc, Phase, TaskState, job_to_wire
from tests.harness.crdt_strategies import merge_all, wire_round_trip
from tests.harness.jobs import FAST_TMP, FakeWall, open_book, spec

OPS = ("create", "create", "field", "start", "stop", "restart", "task", "task", "task", "delete",
       "log", "replace", "move", "deliver", "deliver", "deliver", "deliver", "tick")


@dataclass
class Replica:
    """One node's job book and its outbox of local deltas."""

    jobs: Jobs
    wall: FakeWall
    made: list[JobDoc] = field(default_factory=list)
    receiving: bool = False

    def __post_init__(self) -> None:
        self.jobs.book.listeners.append(self._on_change)

    def _on_change(self, delta: JobDoc, doc: JobDoc) -> None:
        if not self.receiving:
            self.made.append(delta)

    def receive(self, wires: list[dict[str, object]]) -> None:
        self.receiving = True
        try:
            self.jobs.book.apply_wire([wire_round_trip(w) for w in wires])
        finally:
            self.receiving = False


def _anti_entropy(a: Replica, b: Replica) -> None:
    """What a new session does: ``a`` sends ``b`` every document whose digest differs."""
    theirs = b.jobs.book.digests()
    for uuid, d in a.jobs.book.digests().items():
        if theirs.get(uuid) != d:
            for wires in batches(split(a.jobs.book.docs[uuid])):
                b.receive(wires)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_replicas_converge_after_lossy_reordered_delivery_and_anti_entropy(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        n = data.draw(st.integers(3, 4), label="replicas")
        replicas = []
        for i in range(n):
            wall = FakeWall(1_000.0 + data.draw(st.integers(-3, 3), label="skew"))
            book = open_book(Path(tmp) / f"r{i}", f"node-{i}", wall)
            replicas.append(Replica(Jobs(book, f"node-{i}", ["root"]), wall))
        in_flight: list[tuple[int, JobDoc]] = []
        every: list[JobDoc] = []
        created = 0
        for _ in range(data.draw(st.integers(5, 45), label="steps")):
            op = data.draw(st.sampled_from(OPS), label="op")
            r = data.draw(st.integers(0, n - 1), label="replica")
            rep = replicas[r]
            jobs = rep.jobs
            live = jobs.queue()
            if op == "deliver":
                if in_flight:
                    k = data.draw(st.integers(0, len(in_flight) - 1), label="message")
                    fate = data.draw(st.sampled_from(["deliver", "deliver", "duplicate", "drop"]))
                    dest, delta = in_flight[k] if fate == "duplicate" else in_flight.pop(k)
                    if fate != "drop":
                        replicas[dest].receive([job_to_wire(delta)])
                continue
            if op == "tick":
                rep.wall.now += data.draw(st.sampled_from([-2.0, 0.0, 0.001, 1.0]))
                continue
            if op == "create" or not live:
                frames = data.draw(st.sampled_from(["1", "1-3", "1-6"]))
                jobs.create(spec(frames=frames, chunk=2), "root", f"{created:08d}-0000-0000-0000-000000000000")
                created += 1
            else:
                doc = live[data.draw(st.integers(0, len(live) - 1), label="job")]
                if op == "field":
                    jobs.set_fields(doc, data.draw(st.sampled_from([None, "renamed"])),
                                    name=data.draw(st.text("abc", max_size=3)),
                                    priority=data.draw(st.integers(0, 100)))
                elif op == "start":
                    jobs.start(doc, "root")
                elif op == "stop":
                    jobs.stop(doc, "root")
                elif op == "restart":
                    jobs.start(doc, "root", restart=True)
                elif op == "task":
                    tid = data.draw(st.integers(0, 2))
                    jobs.set_task(doc, tid, TaskState(
                        gen=max(0, doc.gen - data.draw(st.integers(0, 1))),
                        done=data.draw(st.integers(0, 1)), attempt=data.draw(st.integers(0, 2)),
                        phase=data.draw(st.sampled_from(list(Phase))), stamp=jobs.book.stamp(),
                        worker=f"node-{r}", machines=(f"node-{r}",)))
                elif op == "delete":
                    jobs.delete(doc)
                elif op in ("log", "replace"):
                    jobs.add_log(doc, f"line from node-{r}", replace=op == "replace")
                elif op == "move" and len(live) > 1:
                    other = live[data.draw(st.integers(0, len(live) - 1), label="other")]
                    try:
                        jobs.move(doc, other, data.draw(st.booleans(), label="before"))
                    except BadRequest:
                        pass  # relative to itself
            for delta in rep.made:
                every.append(delta)
                in_flight.extend((dest, delta) for dest in range(n) if dest != r)
            rep.made.clear()

        for a in replicas:
            for b in replicas:
                if a is not b:
                    _anti_entropy(a, b)

        expected_by_job: dict[str, list[JobDoc]] = defaultdict(list)
        for delta in every:
            expected_by_job[delta.uuid].append(delta)
        expected = {uuid: merge_all(deltas) for uuid, deltas in expected_by_job.items()}
        first = replicas[0].jobs.book
        for rep in replicas:
            book = rep.jobs.book
            assert book.digests() == first.digests()
            assert book.docs == expected
            assert [d.uuid for d in rep.jobs.queue()] == [d.uuid for d in replicas[0].jobs.queue()]
            assert not rep.made  # anti-entropy made nothing new
            book._db.close()
