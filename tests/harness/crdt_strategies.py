"""Hypothesis strategies for job documents, and small helpers the job-book
tests share.

Documents are built the way replicas build them: every change is a one-event
delta with a stamp no other change has (two writers never share a stamp, so a
stamp always names the same value), and a document is the merge of some of
those deltas.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import strategies as st

from protocol.crdt import JobDoc, Register, Stamp, TaskState, merge_job

JOB = "job-1"
FIELD_NAMES = ("name", "priority", "state", "position")
NODES = ("node-a", "node-b", "node-c")
PREVIEWS = ("", "a" * 64, "b" * 64)  #: preview chunk hashes (and "no preview")

values = st.one_of(
    st.integers(-5, 5), st.text(max_size=4), st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.sampled_from("xyz"), st.integers(0, 3), max_size=2),
)


def copy_doc(doc: JobDoc | None) -> JobDoc | None:
    """A document with its own dicts (``absorb`` updates its argument in place)."""
    if doc is None:
        return None
    return JobDoc(doc.uuid, dict(doc.fields), doc.gen, doc.deleted, dict(doc.tasks), dict(doc.log),
                  doc.log_base)


def wire_round_trip(wire: Any) -> Any:
    """What a peer receives: the wire form through msgpack."""
    return msgpack.unpackb(msgpack.packb(wire, use_bin_type=True), raw=False, strict_map_key=False)


def merge_all(deltas: list[JobDoc]) -> JobDoc | None:
    """The document a replica holds after merging ``deltas`` in this order."""
    doc: JobDoc | None = None
    for delta in deltas:
        doc = merge_job(doc, delta)
    return doc


@st.composite
def events(draw: st.DrawFn, max_events: int = 14, deletes: bool = True) -> list[JobDoc]:
    """One-event deltas of one job, each with its own stamp."""
    seen: set[Stamp] = set()
    out: list[JobDoc] = []
    kinds = ["field", "field", "gen", "task", "task", "log", "replace"] + (["delete"] if deletes else [])
    for _ in range(draw(st.integers(1, max_events))):
        stamp: Stamp = (draw(st.integers(0, 4)), draw(st.integers(0, 2)), draw(st.sampled_from(NODES)))
        if stamp in seen:
            continue
        seen.add(stamp)
        kind = draw(st.sampled_from(kinds))
        if kind == "field":
            out.append(JobDoc(JOB, fields={draw(st.sampled_from(FIELD_NAMES)): Register(stamp, draw(values))}))
        elif kind == "gen":
            out.append(JobDoc(JOB, gen=draw(st.integers(1, 3))))
        elif kind == "delete":
            out.append(JobDoc(JOB, deleted=stamp))
        elif kind == "task":
            state = TaskState(gen=draw(st.integers(0, 3)), done=draw(st.integers(0, 1)),
                              attempt=draw(st.integers(0, 2)), phase=draw(st.integers(0, 5)),
                              stamp=stamp, worker=draw(st.sampled_from(("", *NODES))),
                              machines=tuple(draw(st.lists(st.sampled_from(NODES), max_size=2))),
                              render_time=draw(st.sampled_from((0.0, 1.5))),
                              failures=draw(st.integers(0, 2)),
                              seen=tuple(sorted(set(draw(st.lists(st.sampled_from(NODES), max_size=2))))),
                              runs=tuple(sorted(set(draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                                                                  max_size=2))))),
                              previews=tuple(draw(st.lists(st.sampled_from(PREVIEWS), max_size=2))))
            out.append(JobDoc(JOB, tasks={draw(st.integers(0, 3)): state}))
        elif kind == "log":
            out.append(JobDoc(JOB, log={stamp: f"line {stamp}"}))
        else:
            out.append(JobDoc(JOB, log={stamp: f"replaced at {stamp}"}, log_base=stamp))
    return out


@st.composite
def documents(draw: st.DrawFn, universe: list[JobDoc], allow_none: bool = False) -> JobDoc | None:
    """A document holding some of ``universe``'s events, merged in a random order."""
    chosen = draw(st.lists(st.sampled_from(universe), max_size=len(universe)))
    if not chosen and not allow_none:
        chosen = [universe[0]]
    return merge_all(chosen)
