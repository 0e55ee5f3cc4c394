"""Whose rights a render or a file operation runs with.

Three identities meet on a node:

- the daemon's own user (``rendernode`` under the unit): it holds the node's
  key, the database, the chunk store and the farm token;
- the render identity: the account a task's renderer runs as.  By default the
  dedicated ``render_user`` (``rendernode-render``); with ``render_as =
  "submitter"`` the account of the job's user where this machine has one
  (OpenCue's way), else the render user.  Never root, never the daemon's user;
- the submitter: the uid, gid and groups the control socket saw (SO_PEERCRED)
  when the job was submitted, or the owner of the watch folder.  Scenes and
  assets are read, and frames written, with these rights.

``RenderIdentity`` decides once at start whether renders can run as someone
else (the daemon is root or holds CAP_SETUID and CAP_SETGID, and the account
exists) and says why not otherwise; ``Account`` is one identity.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from dataclasses import dataclass

from node.service import privilege

log = logging.getLogger("rendernode.accounts")
RENDER_AS = ("render_user", "submitter")


@dataclass(frozen=True)
class Account:
    """A user a child process runs as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()  #: supplementary groups

    def public(self) -> dict[str, object]:
        """Plain data for status replies."""
        return {"name": self.name, "uid": self.uid, "gid": self.gid, "groups": list(self.groups)}


def user_name(uid: int) -> str:
    """The account name of ``uid`` on this machine, or ``uid<N>``."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def of_name(name: str, without: frozenset[int] = frozenset()) -> Account | None:
    """The account ``name`` on this machine with its groups (less ``without``), or None."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid)
                   if g != entry.pw_gid and g not in without)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def of_uid(uid: int) -> Account:
    """The account of ``uid`` with its groups (an unnamed uid: its own gid, no groups)."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return Account(f"uid{uid}", uid, uid)
    found = of_name(entry.pw_name)
    return found if found is not None and found.uid == uid else Account(entry.pw_name, uid, entry.pw_gid)


def of_self() -> Account:
    """The daemon's own identity."""
    return Account(user_name(os.geteuid()), os.geteuid(), os.getegid(),
                   tuple(g for g in os.getgroups() if g != os.getegid()))


def group_id(name: str) -> int | None:
    """The gid of group ``name`` on this machine, or None."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class RenderIdentity:
    """Which account renders a job on this node (decided at start)."""

    def __init__(self, render_user: str, render_as: str, render_groups: list[str],
                 control_group: str, switching: bool | None = None) -> None:
        if render_as not in RENDER_AS:
            raise ValueError(f"render_as must be one of {', '.join(RENDER_AS)}, not {render_as!r}")
        self.render_as = render_as
        self.me = of_self()
        self.switching = privilege.can_switch_users() if switching is None else switching
        held = set(os.getgroups()) | {os.getegid()}
        #: device groups (GPU) a render gets: those of ``render_groups`` the daemon holds itself
        self.device_groups = tuple(g for g in (group_id(n) for n in render_groups)
                                   if g is not None and g in held)
        control = group_id(control_group) if control_group else None
        #: groups a render never gets: the control socket's, the daemon's own primary group
        self.forbidden = frozenset(g for g in (control, self.me.gid) if g is not None and g != 0)
        self.user: Account | None = None
        self.reason = ""
        found = of_name(render_user) if render_user else None
        if not self.switching:
            self.reason = (f"the daemon runs as {self.me.name} without CAP_SETUID and CAP_SETGID, "
                           "so renders run as the daemon's own user")
        elif found is None:
            self.reason = (f"the account {render_user!r} does not exist on this machine, so renders "
                           f"run as the daemon's own user {self.me.name}")
        elif not self._usable(found):
            self.reason = (f"the account {render_user!r} is root, the daemon's own user or in its "
                           f"group, so renders run as the daemon's own user {self.me.name}")
        else:
            self.user = Account(found.name, found.uid, found.gid, self.device_groups)
            self.reason = (f"renders run as {found.name}" if render_as == "render_user" else
                           f"renders run as the job's user where this machine has that account "
                           f"(not root), else as {found.name}")

    def _usable(self, account: Account) -> bool:
        return account.uid not in (0, self.me.uid) and account.gid not in self.forbidden

    @property
    def isolated(self) -> bool:
        """True if renders run as another user than the daemon's."""
        return self.user is not None or (self.switching and self.render_as == "submitter")

    def warning(self) -> str:
        """The start-up warning when renders run as the daemon's own user, else ""."""
        if self.user is not None:
            return ""
        return (f"{self.reason}: a render can read this node's key, database and farm token "
                f"(see docs/security.md)")

    def for_job(self, user: str) -> Account | None:
        """The account a task of ``user``'s job renders as; None: the daemon's own."""
        if self.switching and self.render_as == "submitter" and user:
            found = of_name(user, without=self.forbidden)
            if found is not None and self._usable(found):
                return Account(found.name, found.uid, found.gid,
                               tuple(dict.fromkeys((*found.groups, *self.device_groups))))
        return self.user

    def status(self) -> dict[str, object]:
        """Whom renders run as, and why (``rendernode status``)."""
        user = self.user or self.me
        return {"user": user.name, "uid": user.uid, "render_as": self.render_as,
                "isolated": self.user is not None, "reason": self.reason}
