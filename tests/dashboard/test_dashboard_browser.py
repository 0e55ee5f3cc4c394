"""The dashboard in a real browser (Debian's chromium, driven by Playwright's sync
API) on a farm of three daemons, each a process of its own on loopback: log in
through the URL, see three machines VERIFIED, watch a job's frames turn done
with previews appearing without a reload, stop and delete a job by clicking,
and see the server die and another take over, and the page's own daemon
restart, without a reload.  Screenshots
of each step go to the test's temporary folder (RENDERNODE_DOCS_SCREENSHOT
names a file for the job view too: docs/dashboard.png is made that way)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from node.client import Client
from node.errors import DaemonNotRunning
from tests.harness.waiting import poll_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (Debian: apt-get install chromium)"),
]
ROOT = Path(__file__).resolve().parents[2]
SCENE = ROOT / "examples" / "spheres.json"
FORM = 90.0  #: seconds the farm may take to form
STEP = 60_000  #: milliseconds a browser step may wait (the machine may be busy)


@dataclass
class Daemon:
    """One rendernode daemon process."""

    name: str
    sock: str
    proc: subprocess.Popen[bytes]
    argv: list[str]
    env: dict[str, str]
    log: Path

    def restart(self) -> None:
        """SIGTERM, wait, start again from the same state dir, with the same ports."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def client(self) -> Client:
        """A control-socket client."""
        return Client(self.sock, timeout=30)

    def uuid(self) -> str:
        """Its UUID."""
        with self.client() as c:
            return c.get_uuid()


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    """Three daemons meshed by static peers; the first is the server (highest priority)."""
    root = Path(f"/tmp/rnb-{secrets.token_hex(4)}")  # short: Unix socket paths
    root.mkdir()
    ports = _free_ports(4)  # the watcher's dashboard keeps its port across a restart
    env = {**os.environ, "RENDERNODE_TOKEN": secrets.token_urlsafe(32), "RENDERNODE_ELECTION_GRACE": "0.5",
           "RENDERNODE_FARM": f"browser-{secrets.token_hex(4)}", "RENDERNODE_LEASE": "4",
           "RENDERNODE_DASHBOARD_LISTEN": "127.0.0.1:0", "RENDERNODE_WAKE_ON_LAN": "false"}
    env.pop("RENDERNODE_SOCKET", None)
    out: list[Daemon] = []
    try:
        for i, priority in enumerate((90, 50, 10)):
            name = f"node{i + 1}"
            peers = [a for j, p in enumerate(ports[:3]) if j != i for a in ("--peer", f"127.0.0.1:{p}")]
            sock = str(root / f"{name}.sock")
            argv = [sys.executable, "-m", "node", "--socket", sock, "daemon", "--state-dir", str(root / name),
                    "--listen", f"127.0.0.1:{ports[i]}", "--no-mdns", "--name", name,
                    "--server-priority", str(priority), *peers]
            own = dict(env, RENDERNODE_DASHBOARD_LISTEN=f"127.0.0.1:{ports[3]}") if i == 2 else env
            log_path = tmp_path / f"{name}.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(argv, env=own, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            out.append(Daemon(name, sock, proc, argv, own, log_path))

        def formed() -> bool:
            for d in out:
                assert d.proc.poll() is None, (tmp_path / f"{d.name}.log").read_text()[-3000:]
                with d.client() as c:
                    rows = c.get_machines_list()
                    if sum(1 for r in rows if "VERIFIED" in r["bits"] and "ONLINE" in r["bits"]) != 3:
                        return False
                    if not c.status().get("server"):
                        return False
            return True

        poll_until(formed, FORM, "three daemons verify each other and agree on a server", every=0.2,
                   ignore=(DaemonNotRunning,))
        yield out
    finally:
        for d in out:
            if d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
        for d in out:
            try:
                d.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def _until(page: Any, expression: str, timeout: float = STEP / 1000) -> None:
    """Poll ``expression`` in the page from here (the page's CSP forbids the eval that
    Playwright's wait_for_function polls with, rightly)."""
    poll_until(lambda: bool(page.evaluate(expression)), timeout, expression, ignore=())


def _submit(d: Daemon, frames: str, name: str, rdata: dict[str, Any], out: Path) -> str:
    with d.client() as c:
        result = c.create_render_job(str(SCENE), frames=frames, name=name, rdata=rdata,
                                     output=str(out / f"{name}_####.png"))
    assert result["result_name"] == "OK", result
    return str(result["uuid"])


def test_a_person_watches_and_steers_a_three_node_farm_in_chromium(daemons: list[Daemon], tmp_path: Path) -> None:
    server, second, watcher = daemons
    with watcher.client() as c:
        login = c.dashboard_login()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(STEP)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
            page.on("dialog", lambda dialog: dialog.accept())

            # log in through the URL; the page never reloads from here on
            page.goto(login["url"])
            page.wait_for_selector("#live.on")
            page.evaluate("window.__same_page = true")
            assert "root" in page.inner_text("#who") or os.getuid() != 0

            # three machines, VERIFIED
            page.click("nav a[data-view=farm]")
            _until(page, "document.querySelectorAll('#machines tbody tr').length === 3")
            rows = page.query_selector_all("#machines tbody tr")
            assert all("VERIFIED" in r.inner_text() for r in rows)
            page.screenshot(path=str(shots / "1-farm.png"))

            # a job's frames turn done and their previews appear, live
            job = _submit(second, "1-24", "spheres", {"width": 320, "height": 180, "samples": 1}, tmp_path / "out")
            page.click("nav a[data-view=queue]")
            page.wait_for_selector(f"tr[data-job='{job}'] a.job-link")
            page.click(f"tr[data-job='{job}'] a.job-link")
            page.wait_for_selector("#frames .cell")
            _until(page, "document.querySelectorAll('#frames .cell.s-done').length >= 9", timeout=180)
            page.screenshot(path=str(shots / "2-job-rendering.png"))
            if os.environ.get("RENDERNODE_DOCS_SCREENSHOT"):
                page.screenshot(path=os.environ["RENDERNODE_DOCS_SCREENSHOT"])
            _until(page, "document.querySelectorAll('#frames .cell.s-done').length === 24 && "
                   "[...document.querySelectorAll('#frames img.thumb')].filter(i => i.complete && i.naturalWidth > 0).length === 24",
                   timeout=180)
            page.screenshot(path=str(shots / "3-job-done.png"), full_page=True)
            page.click("#frames .cell >> nth=2")
            page.wait_for_selector("#frame-body img")
            _until(page, "document.querySelector('#frame-body img').naturalWidth === 320")
            page.screenshot(path=str(shots / "4-frame.png"))
            page.keyboard.press("Escape")

            # messages, by keyboard only: focus the view's link, Enter, type, Enter
            page.focus("nav a[data-view=messages]")
            page.keyboard.press("Enter")
            page.wait_for_selector("#msg-text")
            page.focus("#msg-text")
            page.keyboard.type("frames look good")
            page.keyboard.press("Enter")
            page.wait_for_selector(".messages li >> text=frames look good")
            with second.client() as c:
                assert any(m["text"] == "frames look good" for m in c.messages())

            # stop and delete a long job by clicking
            slow = _submit(second, "1-60", "long", {"width": 320, "height": 180, "samples": 4}, tmp_path / "out")
            page.click("nav a[data-view=queue]")
            row = f"tr[data-job='{slow}']"
            page.wait_for_selector(f"{row} .state-rendering, {row} .state-queued")
            page.check(f"{row} input[type=checkbox]")
            page.click("#act-stop")
            page.wait_for_selector(f"{row} .state-stopped")
            page.screenshot(path=str(shots / "5-stopped.png"))
            with second.client() as c:
                assert c.get_job(slow)["state"] == "stopped"
            page.check(f"{row} input[type=checkbox]")
            page.click("#act-delete")
            page.wait_for_selector(row, state="detached")
            with watcher.client() as c:
                assert slow not in {j["uuid"] for j in c.get_jobs_list()}

            # the server dies: the farm view shows it offline and the new server
            server_uuid, second_uuid = server.uuid(), second.uuid()
            page.click("nav a[data-view=farm]")
            page.wait_for_selector(f"tr[data-machine='{server_uuid}'] td.role b")
            server.proc.kill()
            server.proc.wait()
            page.wait_for_selector(f"tr[data-machine='{server_uuid}'] >> text=offline", timeout=90_000)
            page.wait_for_selector(f"tr[data-machine='{second_uuid}'] td.role b", timeout=90_000)
            assert "node2" in page.inner_text("#summary")
            page.screenshot(path=str(shots / "6-new-server.png"))

            # the page's own daemon restarts: the page reconnects by itself
            watcher.restart()
            page.wait_for_selector("#live.off", timeout=30_000)
            page.wait_for_selector("#live.on", timeout=90_000)
            _until(page, f"!!document.querySelector(\"tr[data-machine='{second_uuid}'] td.role b\")", timeout=60)
            page.screenshot(path=str(shots / "7-reconnected.png"))
            page.emulate_media(color_scheme="dark")  # the page follows prefers-color-scheme
            assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(17, 20, 24)"
            page.screenshot(path=str(shots / "8-dark.png"))
            assert page.evaluate("window.__same_page") is True, "the page reloaded"
            assert not errors, errors
        finally:
            browser.close()
    print(json.dumps({"screenshots": sorted(p.name for p in shots.iterdir())}))


def test_a_tiled_still_fills_in_tile_by_tile_in_chromium(daemons: list[Daemon], tmp_path: Path) -> None:
    """A still cut into 4x3 tiles: one frame cell whose tiles are laid out as in the
    frame, each taking its preview as it lands, and the assembled frame full size."""
    server, second, watcher = daemons
    with second.client() as c:  # the submitting node: it holds the tiles and the frame
        login = c.dashboard_login()
        result = c.create_render_job(str(SCENE), frames="1", name="still", tiles="4x3",
                                     rdata={"width": 320, "height": 180, "samples": 2},
                                     output=str(tmp_path / "out" / "still.png"))
    job = result["uuid"]
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(STEP)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(login["url"])
            page.wait_for_selector("#live.on")
            page.goto(login["url"].split("#")[0].rsplit("/", 1)[0] + f"/#/job/{job}")
            page.wait_for_selector("#frames .cell .tiles")
            assert page.evaluate("document.querySelectorAll('#frames .cell').length") == 1
            assert page.evaluate("document.querySelectorAll('#frames .cell .tile').length") == 12
            _until(page, "document.querySelectorAll('#frames .tile.s-done').length === 12 && "
                   "[...document.querySelectorAll('#frames .tile')].every(t => t.style.backgroundImage.includes('/api/preview/'))",
                   timeout=180)
            _until(page, "!!document.querySelector('#frames .cell.s-done')")
            assert "12/12 tiles" in page.inner_text("#frames .cell")
            page.screenshot(path=str(tmp_path / "tiles-done.png"))
            page.click("#frames .cell")
            page.wait_for_selector("#frame-body img")
            _until(page, "document.querySelector('#frame-body img').naturalWidth === 320")
            assert not errors, errors
        finally:
            browser.close()
    assert (tmp_path / "out" / "still.png").exists()
