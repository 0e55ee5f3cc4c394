"""The ``rendernode`` command, built on ``node.client``.

Every listing takes ``--json``.  Exit status is 0 on success; otherwise a
one-line error goes to stderr and the status is non-zero.

``common`` holds the ``main`` group and what every subcommand shares; each
other module registers one group of subcommands on it when imported here:
``farm`` (daemon, status, config, machines), ``jobs`` (the job commands and
the demo), ``admin`` (install-service, init, token).
"""

from node.cli import admin, farm, jobs  # noqa: F401  (each registers its subcommands)
from node.cli.common import main

__all__ = ["main"]
