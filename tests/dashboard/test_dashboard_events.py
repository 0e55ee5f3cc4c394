"""The event broker (node.dashboard.events) on its own: with no stream open it
builds no events, and a page that comes back from before that is told to
fetch everything; with a stream open every change is an event it can resume
from."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from node.dashboard.events import Broker

NO_JOBS = SimpleNamespace(book=SimpleNamespace(docs={}, get=lambda uuid: None))  #: messages read no views


def message(text: str) -> dict[str, Any]:
    return {"text": text, "sender": "carol", "to": ""}


async def test_with_no_stream_open_changes_make_no_events_and_a_page_from_before_resets() -> None:
    broker = Broker(views=NO_JOBS)  # type: ignore[arg-type]
    before = f"{broker.boot}-{broker.seq}"
    broker.on_message(message("nobody is looking"))
    assert broker.flush() == 0 and not broker.ring
    assert broker.since(before, "carol") is None  # what it missed is gone: fetch everything
    now = f"{broker.boot}-{broker.seq}"
    assert broker.since(now, "carol") == ([], broker.seq)  # a page that fetched after it resumes
    assert broker.flush() == 0 and broker.since(now, "carol") == ([], broker.seq)  # nothing new: no gap


async def test_with_a_stream_open_every_change_is_an_event_a_page_resumes_from() -> None:
    broker = Broker(views=NO_JOBS)  # type: ignore[arg-type]
    broker.watch()
    before = f"{broker.boot}-{broker.seq}"
    broker.on_message(message("hello farm"))
    broker.on_message(message("again"))
    assert broker.flush() == 2
    resumed = broker.since(before, "dave")
    assert resumed is not None
    events, seq = resumed
    assert seq == broker.seq and [b"hello farm" in e for e in events] == [True, False]
    broker.unwatch()
    broker.on_message(message("after the page left"))
    assert broker.flush() == 0 and broker.since(before, "dave") is None
