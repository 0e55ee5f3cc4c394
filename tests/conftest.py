"""What every test gets: the fixtures the test folders share, and isolation
from the machine the tests run on.

- ``no_host_config`` (autouse): the host's /etc/rendernode/rendernode.toml and
  the service manager's environment (RENDERNODE_TOKEN, NOTIFY_SOCKET,
  JOURNAL_STREAM) never reach a test.
- ``no_thread_outlives_the_test`` (autouse): every thread a test starts is gone
  when it ends (see ``POOLED_THREADS`` for the ones that may stay).
- ``short_dir``: a short folder (a Unix socket path holds 108 bytes at most), in
  memory where there is /dev/shm (every node's SQLite commits there with
  synchronous=FULL); render processes a test left in it are killed with it.
- ``token``: a fresh farm token, as bytes (what ``daemon.build`` takes); a test
  that hands it to a command line or an environment decodes it there.
- ``bed_factory``: network-namespace beds (tests.netlab), closed after the test.

Folder conftests add what only their tests use (a render farm, throwaway
accounts, a shared bed).
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import config
from tests.harness.jobs import FAST_TMP
from tests.harness.render import kill_leftovers
from tests.netlab.fixtures import bed_factory  # noqa: F401  (a fixture, shared)

#: Name prefixes of threads that outlive a test on purpose, being pooled for the
#: next one: trio's thread cache keeps an idle worker ("Trio thread N") for a
#: while after ``trio.to_thread.run_sync`` returns.  (A worker still running a
#: job carries the job's name instead, so an abandoned thread is caught.)
POOLED_THREADS = ("Trio thread",)


@pytest.fixture(autouse=True)
def no_host_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.load(None) must not read the host's /etc/rendernode/rendernode.toml,
    nor a daemon see the service manager's variables of the shell running pytest."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "no-such-rendernode.toml")
    for name in ("RENDERNODE_TOKEN", "NOTIFY_SOCKET", "JOURNAL_STREAM"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def no_thread_outlives_the_test() -> Iterator[None]:
    """Like python-zeroconf's own tests: every thread a test starts (zeroconf's
    loop thread above all) is gone when it ends, but the pooled ones."""
    before = set(threading.enumerate())
    yield
    extra = [t for t in threading.enumerate()
             if t not in before and t is not threading.main_thread()
             and not t.name.startswith(POOLED_THREADS)]
    assert not extra, f"threads outlived the test: {[t.name for t in extra]}"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory, in memory where possible; emptied of processes and removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="rn-", dir=FAST_TMP))
    yield path
    kill_leftovers(str(path))
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def token() -> bytes:
    """A farm token no other test (or other run on this machine) shares."""
    return secrets.token_urlsafe(32).encode()
