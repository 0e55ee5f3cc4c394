"""rendernode's tests, one package: run ``python -m pytest`` from the checkout
root (pyproject.toml puts the root on sys.path, so ``node``, ``protocol`` and
``tests`` import from it).

- ``tests/conftest.py``: the fixtures every folder shares, and the checks every
  test passes (no host config, no thread outliving the test).
- ``tests/harness/``: what the tests share: in-process nodes (``nodes``) and
  farms (``jobs``, ``render``), the blocking CLI (``cli``), dashboards
  (``dashboard``), throwaway accounts (``security``), two protocol ends in
  memory (``sansio_pair``), CRDT strategies, daemons on a bed
  (``systemfarm``), and the waits (``waiting``).
- ``tests/netlab/`` and ``tests/soak/``: the network-namespace test bed and the
  chaos soak, packages of their own (bench/ uses them too).
- One folder per part of the product; a unit test is named after the module it
  tests (``test_<module>.py``, or ``test_<folder>_<module>.py``).
"""
