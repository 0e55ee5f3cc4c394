"""``python -m node`` is the ``rendernode`` command."""

from node.cli import main

main()
