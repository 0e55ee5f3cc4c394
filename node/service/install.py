"""``rendernode install-service``: install this package as a systemd service.

The install is a plan, a list of ``Step``s (a command to run or a file to
write), built once and then either printed (``--dry-run``) or carried out in
order, stopping at the first failure:

    python -m venv PREFIX                     (not with --no-venv)
    PREFIX/bin/python -m pip install SOURCE   (not with --no-venv)
    write /etc/systemd/system/rendernode.service (ExecStart -> PREFIX/bin/rendernode)
    write /etc/sysusers.d/rendernode.conf, /etc/tmpfiles.d/rendernode.conf
    write .../20-gpu.conf                     (--gpu)
    write /etc/polkit-1/rules.d/50-rendernode.rules (may hold a sleep inhibitor)
    write /etc/systemd/system/rendernode.service.d/10-paths.conf  (ReadWritePaths)
    systemd-sysusers, systemd-tmpfiles --create
    systemctl daemon-reload, systemctl enable --now rendernode.service

With ``--root DIR`` every file lands under DIR and the systemd tools are given
``--root=DIR`` (as when building an image): nothing is started there.  With
``--no-systemctl`` the two systemctl steps are left out.  ``enable`` starts the
service only once the machine has a preferences file (``rendernode init``);
before that the plan ends with what to do next.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from node import capabilities, config
from node.errors import ConfigError, NodeError

UNIT = "rendernode.service"
CHECKOUT = Path(__file__).resolve().parents[2]
DEFAULT_PREFIX = Path("/opt/rendernode")
UNIT_DIR = Path("etc/systemd/system")
SYSUSERS = Path("etc/sysusers.d/rendernode.conf")
TMPFILES = Path("etc/tmpfiles.d/rendernode.conf")
PATHS_DROPIN = UNIT_DIR / f"{UNIT}.d" / "10-paths.conf"
GPU_DROPIN = UNIT_DIR / f"{UNIT}.d" / "20-gpu.conf"
POLKIT_RULES = Path("etc/polkit-1/rules.d/50-rendernode.rules")
CONFIG = Path("etc/rendernode/rendernode.toml")
SHIPPED = {  # file in systemd/ -> where it is installed, relative to the root
    "rendernode.service": UNIT_DIR / UNIT,
    "rendernode.sysusers": SYSUSERS,
    "rendernode.tmpfiles": TMPFILES,
    "rendernode-gpu.conf": GPU_DROPIN,
    "rendernode-polkit.rules": POLKIT_RULES,
}
STEP_TIMEOUT = 900.0  #: seconds a step may take (pip may compile numpy)


@dataclass(frozen=True)
class Step:
    """One step of the install: run ``argv``, or write ``content`` to ``path``."""

    argv: tuple[str, ...] = ()
    path: Path | None = None
    content: str = ""
    mode: int = 0o644

    def describe(self) -> str:
        """One line for the user, as a shell command would read."""
        if self.path is not None:
            return f"write {self.path} (mode {self.mode:04o})"
        return "$ " + " ".join(_quote(a) for a in self.argv)

    def run(self) -> None:
        """Carry the step out; NodeError says which step failed and why."""
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(f".{self.path.name}.new")
                tmp.write_text(self.content)
                tmp.chmod(self.mode)
                os.replace(tmp, self.path)
            except OSError as exc:
                raise NodeError(f"cannot write {self.path}: {exc.strerror or exc}") from None
            return
        try:
            done = subprocess.run(self.argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=STEP_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NodeError(f"{self.describe()} failed: {exc}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise NodeError(f"{self.describe()} exited with status {done.returncode}: "
                            + " / ".join(tail))


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def shipped_dir() -> Path:
    """Where this installation's systemd/ files are: the checkout, or the
    ``share/rendernode/systemd`` data files pip put beside the package."""
    for candidate in (CHECKOUT / "systemd", Path(sys.prefix) / "share" / "rendernode" / "systemd"):
        if (candidate / "rendernode.service").exists():
            return candidate
    raise ConfigError("cannot find the systemd unit files (systemd/ in the source, or "
                      f"{sys.prefix}/share/rendernode/systemd); reinstall rendernode")


def default_source() -> str:
    """What pip installs: this checkout if running from one, else this version from the index."""
    if (CHECKOUT / "pyproject.toml").exists() and (CHECKOUT / "node").is_dir():
        return str(CHECKOUT)
    return f"rendernode=={capabilities.version()}"


def unit_text(shipped: str, executable: str) -> str:
    """The shipped unit with ExecStart running ``executable``."""
    if any(c in executable for c in " \t\n%\"'\\"):
        raise ConfigError(f"the program path {executable!r} needs quoting in a unit; "
                          "install under a path without spaces, quotes or %")
    lines = []
    for line in shipped.splitlines():
        if line.startswith("ExecStart="):
            line = f"ExecStart={executable} " + line.split(None, 1)[1]
        lines.append(line)
    return "\n".join(lines) + "\n"


def writable_paths(config_file: Path) -> list[str]:
    """The folders the service may write: ``output_dirs`` and ``watch`` of the preferences."""
    if not config_file.exists():
        return []
    prefs = config.load(config_file, env={})
    paths = []
    for path in [*prefs.output_dirs, *prefs.watch]:
        if not os.path.isabs(path):
            raise ConfigError(f"{path!r} in {config_file} must be an absolute path")
        if "\n" in path:
            raise ConfigError(f"{path!r} in {config_file} holds a line break")
        paths.append(os.path.normpath(path))
    return list(dict.fromkeys(paths))


def paths_dropin(paths: list[str], config_file: str) -> str:
    """A drop-in giving the hardened unit write access to ``paths`` (missing ones are skipped)."""
    out = [f"# Written by `rendernode install-service` from output_dirs and watch in {config_file}.",
           "# Run it again (or edit this file, then `systemctl daemon-reload` and restart)",
           "# after changing them.", "[Service]"]
    for path in paths:
        value = "-" + path.replace("%", "%%")
        if any(c in value for c in " \t\"'\\"):
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out.append(f"ReadWritePaths={value}")
    return "\n".join(out) + "\n"


def plan(prefix: Path = DEFAULT_PREFIX, root: Path = Path("/"), *, source: str | None = None,
         venv: bool = True, systemctl: bool = True, gpu: bool = False, pip_args: tuple[str, ...] = (),
         python: str = sys.executable, executable: str | None = None) -> list[Step]:
    """The steps of an install (see the module docstring)."""
    if not prefix.is_absolute():
        raise ConfigError(f"--prefix must be an absolute path, not {prefix}")
    root = root.resolve()
    on_root = root == Path("/")
    inside = root / prefix.relative_to("/")
    steps: list[Step] = []
    if venv:
        program = str(prefix / "bin" / "rendernode")
        steps.append(Step(argv=(python, "-m", "venv", str(inside))))
        steps.append(Step(argv=(str(inside / "bin" / "python"), "-m", "pip", "install",
                                "--upgrade", *pip_args, source or default_source())))
    else:
        program = executable or _this_program()
    shipped = shipped_dir()
    for name, target in SHIPPED.items():
        if name == "rendernode-gpu.conf" and not gpu:
            continue
        text = (shipped / name).read_text()
        if name == "rendernode.service":
            text = unit_text(text, program)
        steps.append(Step(path=root / target, content=text))
    config_file = root / CONFIG
    steps.append(Step(path=root / PATHS_DROPIN,
                      content=paths_dropin(writable_paths(config_file), "/" + str(CONFIG))))
    root_opt = () if on_root else (f"--root={root}",)
    steps.append(Step(argv=("systemd-sysusers", *root_opt, str(root / SYSUSERS))))
    steps.append(Step(argv=("systemd-tmpfiles", "--create", *root_opt, str(root / TMPFILES))))
    if systemctl:
        if on_root:
            steps.append(Step(argv=("systemctl", "daemon-reload")))
        start = on_root and config_file.exists()
        steps.append(Step(argv=("systemctl", *root_opt, "enable", *(("--now",) if start else ()), UNIT)))
    return steps


def paths_plan(root: Path = Path("/"), *, systemctl: bool = True) -> list[Step]:
    """Only the ReadWritePaths drop-in (after output_dirs or watch changed)."""
    root = root.resolve()
    steps = [Step(path=root / PATHS_DROPIN,
                  content=paths_dropin(writable_paths(root / CONFIG), "/" + str(CONFIG)))]
    if systemctl and root == Path("/"):
        steps.append(Step(argv=("systemctl", "daemon-reload")))
        steps.append(Step(argv=("systemctl", "try-restart", UNIT)))
    return steps


def _this_program() -> str:
    """The ``rendernode`` program running now (pipx's, say)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "rendernode" and argv0.exists():
        return str(argv0.resolve())
    beside = Path(sys.executable).parent / "rendernode"  # the venv's (pipx's) scripts folder
    if beside.exists():
        return str(beside)
    import shutil

    found = shutil.which("rendernode")
    if found is None:
        raise ConfigError("cannot tell where the rendernode program is; leave out --no-venv")
    return str(Path(found).resolve())


def next_steps(root: Path = Path("/")) -> str:
    """What to do after the install, if the machine has no preferences yet."""
    if (root / CONFIG).exists():
        return ""
    return ("this machine has no /etc/rendernode/rendernode.toml yet: run `rendernode init --farm NAME`; "
            "on every machine but the farm's first, then give it the farm's token "
            "(`rendernode token show` there, `rendernode token set` here); "
            "then `systemctl start rendernode`")
