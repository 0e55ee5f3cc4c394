"""The shipped systemd files: the unit verifies cleanly, its exposure score is
2.2 or less with the two capabilities renders need (with the GPU drop-in too),
and the sysusers/tmpfiles snippets do what the unit relies on, applied to a
temporary root."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from node.service import install as service

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
MAX_EXPOSURE = 2.2  #: CAP_SETUID and CAP_SETGID cost 0.3 (docs/security.md)

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (SYSTEMD / "rendernode.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def runnable_copy(tmp_path: Path, gpu: bool = False) -> Path:
    """The unit with ExecStart pointing at a program that exists (verify checks it)."""
    unit = tmp_path / "rendernode.service"
    unit.write_text(service.unit_text((SYSTEMD / "rendernode.service").read_text(), "/bin/true"))
    if gpu:
        dropins = tmp_path / "rendernode.service.d"
        dropins.mkdir()
        shutil.copy(SYSTEMD / "rendernode-gpu.conf", dropins / "20-gpu.conf")
    return unit


def exposure(unit: Path) -> float:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout[-2000:] + done.stderr
    return float(match.group(1))


def test_the_unit_has_what_the_issue_asks_for() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    for key in ("RuntimeDirectory", "ConfigurationDirectory"):
        assert s[key] == ["rendernode"]
    assert s["User"] == s["Group"] == ["rendernode"]
    assert s["UMask"] == ["0077"]
    assert s["StateDirectory"] == ["rendernode rendernode-work"] and s["StateDirectoryMode"] == ["0700"]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert s["SystemCallFilter"] == ["@system-service"]
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert "MemoryDenyWriteExecute" not in s  # Blender's JIT needs W+X pages


def test_the_unit_keeps_only_the_capabilities_that_start_renders_as_another_user() -> None:
    s = unit_settings()
    assert s["CapabilityBoundingSet"] == ["CAP_SETUID CAP_SETGID"]
    assert s["AmbientCapabilities"] == ["CAP_SETUID CAP_SETGID"]  # the daemon empties its ambient set
    assert s["NoNewPrivileges"] == ["yes"] and s["RestrictSUIDSGID"] == ["yes"]
    assert s["User"] == ["rendernode"]


def test_the_gpu_drop_in_gives_back_the_devices() -> None:
    text = (SYSTEMD / "rendernode-gpu.conf").read_text()
    assert "PrivateDevices=no" in text
    assert "DevicePolicy=closed" in text
    assert "DeviceAllow=char-drm rw" in text


@needs_analyze
@pytest.mark.parametrize("gpu", [False, True], ids=["plain", "gpu-drop-in"])
def test_systemd_analyze_verify_is_clean(tmp_path: Path, gpu: bool) -> None:
    unit = runnable_copy(tmp_path, gpu)
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    complaints = [line for line in done.stderr.splitlines() if "rendernode" in line]
    assert not complaints, "\n".join(complaints)


@needs_analyze
def test_exposure_is_at_most_two_point_two() -> None:
    score = exposure(SYSTEMD / "rendernode.service")
    print(f"systemd-analyze security exposure: {score}")
    assert score <= MAX_EXPOSURE


@needs_analyze
def test_exposure_with_the_gpu_drop_in_is_at_most_two_point_two(tmp_path: Path) -> None:
    score = exposure(runnable_copy(tmp_path, gpu=True))
    print(f"systemd-analyze security exposure with the GPU drop-in: {score}")
    assert score <= MAX_EXPOSURE


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers/systemd-tmpfiles are not installed")
def test_sysusers_and_tmpfiles_make_the_user_and_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(["systemd-sysusers", f"--root={root}", str(SYSTEMD / "rendernode.sysusers")],
                   check=True, capture_output=True, timeout=60)
    passwd = (root / "etc/passwd").read_text()
    user = next(line for line in passwd.splitlines() if line.startswith("rendernode:"))
    assert user.split(":")[5] == "/var/lib/rendernode"
    render = next(line for line in passwd.splitlines() if line.startswith("rendernode-render:"))
    assert render.split(":")[6] == "/usr/sbin/nologin" and render.split(":")[3] != user.split(":")[3]
    groups = (root / "etc/group").read_text().splitlines()
    daemon_group = next(line for line in groups if line.startswith("rendernode:"))
    assert "rendernode-render" not in daemon_group.split(":")[3]  # renders cannot use the control socket
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}", str(SYSTEMD / "rendernode.tmpfiles")],
                   check=True, capture_output=True, timeout=60)
    state = root / "var/lib/rendernode"
    assert state.is_dir() and state.stat().st_mode & 0o777 == 0o700
    work = root / "var/lib/rendernode-work"
    assert work.is_dir() and work.stat().st_mode & 0o777 == 0o711
    assert (root / "etc/rendernode").is_dir()
