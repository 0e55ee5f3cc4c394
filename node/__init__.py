"""rendernode's daemon and everything that does I/O: discovery, peers, the
machine table, the control socket, the Python client and the CLI."""
