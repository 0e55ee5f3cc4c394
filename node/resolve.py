"""One resolver for what users name in every command: a job or a machine by
its UUID, its unique name, or a unique prefix of its UUID (the short ids the
tables show)."""

from __future__ import annotations

from collections.abc import Iterable

from node.errors import BadRequest, NotFound


def resolve(ref: str, candidates: Iterable[tuple[str, str]], kind: str, listing: str) -> str:
    """The UUID among ``candidates`` (uuid, name) that ``ref`` names: the UUID
    itself, else a name only one candidate has, else a UUID prefix only one
    candidate has.  BadRequest when it is ambiguous, NotFound when nothing
    matches (``listing`` is the command that lists them)."""
    if not isinstance(ref, str) or not ref:
        raise BadRequest(f"a {kind} name or UUID is needed")
    items = list(candidates)
    if any(uuid == ref for uuid, _ in items):
        return ref
    named = sorted({uuid for uuid, name in items if name == ref})
    if len(named) == 1:
        return named[0]
    if named:
        raise BadRequest(f"{len(named)} {kind}s are called {ref!r}; give the UUID of one: {', '.join(named)}")
    prefixed = sorted({uuid for uuid, _ in items if uuid.startswith(ref)})
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        raise BadRequest(f"{kind} id {ref!r} is ambiguous; give more of the UUID")
    raise NotFound(f"no {kind} {ref!r}; `rendernode {listing}` lists them")
