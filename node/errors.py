"""The node's error types.  Every failure a user can cause or fix is one of
these, with a reason that says what to do; trio's and the OS's exceptions are
mapped to them where they happen."""

from __future__ import annotations


class NodeError(Exception):
    """Base of the node's errors; ``code`` is stable and shown in JSON replies."""

    code = "error"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(NodeError):
    """A preference, the token or a command-line option is unusable."""

    code = "config"


class NotFound(NodeError):
    """A machine, job or file named by the caller does not exist."""

    code = "not_found"


class BadRequest(NodeError):
    """A request was malformed or its arguments are invalid."""

    code = "bad_request"


class PermissionDenied(NodeError):
    """The caller may not do this."""

    code = "permission"


class DaemonNotRunning(NodeError):
    """No daemon answers on the control socket."""

    code = "no_daemon"
