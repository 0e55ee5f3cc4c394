"""What the tests share: in-process nodes and farms, clients of a node (the
command line, the dashboard), throwaway accounts, daemons on a netlab bed, and
the waits (``tests.harness.waiting``).  See tests/__init__.py for the layout."""
