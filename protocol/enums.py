"""The seed's (NetRenderService) enums under the seed's names.

Values are this project's own (the seed publishes names, not numbers) and are
part of the wire format: never renumber, only add.  ``VerificationBits`` lives
in ``protocol.verification`` beside the function that computes it.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag


class MachineList(IntFlag):
    """Which machines a listing includes (GetAllMachineUuids ``list``)."""

    MACHINELIST_ONLINE = 1
    MACHINELIST_OFFLINE = 2
    MACHINELIST_ALL = 3


class DetailSelector(IntEnum):
    """How much of a job's detail a listing includes (GetJobsList)."""

    DETAILSELECTOR_NONE = 0  #: leave this detail out for every job
    DETAILSELECTOR_SELECTED = 1  #: include it for the selected job only
    DETAILSELECTOR_NONSELECTED = 2  #: include it for every job but the selected one


class RenderJobCreator(IntEnum):
    """Who created a job (CreateRenderJob ``creator``)."""

    RENDERJOBCREATOR_BATCHRENDER = 1
    RENDERJOBCREATOR_PICTUREVIEWER = 2
    RENDERJOBCREATOR_USER = 3
    RENDERJOBCREATOR_WATCHDIRECTORY = 4
    RENDERJOBCREATOR_WATCHDIRECTORYSTARTUP = 5
    RENDERJOBCREATOR_OTHER = 6


class CreateJobResult(IntEnum):
    """Outcome of a submit (CreateRenderJob)."""

    CREATEJOBRESULT_OK = 0
    CREATEJOBRESULT_OUTOFMEMORY = 1
    CREATEJOBRESULT_ASSETMISSING = 2
    CREATEJOBRESULT_SAVINGFAILED = 3
    CREATEJOBRESULT_REPOSITORYERROR = 4


class RenderResult(IntEnum):
    """Outcome of rendering a job or a task (StartRendering, StopRendering)."""

    RENDERRESULT_OK = 0
    RENDERRESULT_OUTOFMEMORY = 1
    RENDERRESULT_ASSETMISSING = 2
    RENDERRESULT_SAVINGFAILED = 3
    RENDERRESULT_USERBREAK = 4
    RENDERRESULT_GICACHEMISSING = 5
    RENDERRESULT_NOMACHINE = 6
    RENDERRESULT_PROJECTNOTFOUND = 7
    RENDERRESULT_ERRORLOADINGPROJECT = 8
    RENDERRESULT_NOOUTPUTSPECIFIED = 9


class ThreadMode(IntEnum):
    """StartRendering/StopRendering ``mode``.  Here every call is asynchronous
    (the daemon does the work); SYNCHRONOUS means "wait for the outcome"."""

    THREADMODE_DEPRECATED_SYNCHRONOUS = 0
    THREADMODE_ASYNC = 1
    THREADMODE_PRIVATE_OPENGL = 2


class NetRenderFlags(IntFlag):
    """Per-job options (InitRendering ``flags``)."""

    NETRENDERFLAGS_NONE = 0
    NETRENDERFLAGS_OPEN_PICTUREVIEWER = 1 << 0  #: ``--wait`` shows progress; frames open nowhere
    NETRENDERFLAGS_SHOWERRORS = 1 << 1  #: print task errors to the submitter's console
    NETRENDERFLAGS_DELETEAFTERRENDERING = 1 << 2  #: remove the job once results are delivered
    NETRENDERFLAGS_NOPEERTOPEERASSETDISTRIBUTION = 1 << 3  #: fetch only from origin and server
    NETRENDERFLAGS_NOREQUESTONDEMAND = 1 << 4  #: push assets to every worker at start
    NETRENDERFLAGS_EXCLUDECLIENTONRENDERINGERROR = 1 << 5  #: stop using a worker that fails
    NETRENDERFLAGS_SAVERESULTSINREPOSITORY = 1 << 6  #: the server keeps a copy of each frame
    NETRENDERFLAGS_ASSEMBLEB3DFILESIMMEDIATLEY = 1 << 7  #: accepted, no effect (no BodyPaint)
    NETRENDERFLAGS_NOWRITETEST = 1 << 8  #: skip the output folder write test at submit
    NETRENDERFLAGS_HANDLEWARNINGASERROR = 1 << 9  #: a renderer warning fails the task
    NETRENDERFLAGS_KEEPB3DFILESAFTERASSEMBLING = 1 << 10  #: accepted, no effect (no BodyPaint)


class Output(IntFlag):
    """NetConsoleOutput ``flags``; mapped to log levels by node/."""

    OUTPUT_DIAGNOSTIC = 1 << 0
    OUTPUT_WARNING = 1 << 1
    OUTPUT_CRITICAL = 1 << 2
    OUTPUT_NOLINEBREAK = 1 << 3
    OUTPUT_HEADER = 1 << 4


def flag_names(value: int, enum: type[IntFlag], prefix: str) -> list[str]:
    """Names of the single-bit members set in ``value``, without ``prefix``."""
    out = []
    for member in enum:
        bit = int(member)
        if bit and bit & (bit - 1) == 0 and value & bit and member.name:
            out.append(member.name.removeprefix(prefix))
    return out


def parse_flag_names(names: str | list[str], enum: type[IntFlag], prefix: str) -> int:
    """Parse ``"A,B"`` or ``["A", "B"]`` (with or without ``prefix``) into a flag value."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    value = 0
    for raw in names:
        name = raw.strip().upper()
        if not name.startswith(prefix):
            name = prefix + name
        try:
            value |= int(enum[name])
        except KeyError:
            known = ", ".join(flag_names(-1 & 0xFFFFFFFF, enum, prefix))
            raise ValueError(f"unknown name {raw!r}; known: {known}") from None
    return value
