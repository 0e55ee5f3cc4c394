"""What the daemon may do to other users' processes and files, and the two
kernel interfaces it needs for that which the standard library lacks.

The daemon starts renders and file helpers as other users with
``subprocess``'s ``user=``/``group=``/``extra_groups=``; the kernel allows it
when the daemon is root or holds CAP_SETUID and CAP_SETGID (the unit gives
the ``rendernode`` user these two as ambient capabilities).

Ambient capabilities survive ``execve`` of an ordinary program and a uid
change between two non-root uids: a child started as the render user would
keep CAP_SETUID and could become the daemon's user again.  So at start the
daemon empties its ambient and inheritable sets (``keep_capabilities_to_self``)
and keeps only its effective and permitted ones: a child then loses every
capability when it executes its program.

ACLs: a job's materialised assets are a folder the daemon owns, mode 0700;
while a task renders, one ACL entry lets the rendering user read it
(``grant_read``/``revoke``).  The ACL is the ``system.posix_acl_access``
extended attribute, written here in the kernel's format (a 4-byte version
and 8-byte entries) rather than through pylibacl, which would need a C
compiler and libacl's headers on every farm machine for one entry on one
folder.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct

CAP_SETGID = 6
CAP_SETUID = 7
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF


def capability_sets(status: str | None = None) -> dict[str, int]:
    """CapInh, CapPrm, CapEff, CapBnd and CapAmb of this process (or of the
    given text of a ``/proc/PID/status``) as bit masks."""
    if status is None:
        with open("/proc/self/status") as f:
            status = f.read()
    out = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            out[key] = int(value.strip(), 16)
    return out


def can_switch_users() -> bool:
    """True if this process may start others under another uid and gid."""
    if os.geteuid() == 0:
        return True
    wanted = (1 << CAP_SETUID) | (1 << CAP_SETGID)
    return capability_sets().get("CapEff", 0) & wanted == wanted


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def keep_capabilities_to_self() -> None:
    """Empty the ambient and inheritable capability sets, so that no child
    program inherits a capability; the daemon keeps its effective ones."""
    libc = _libc()
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        if err != errno.EINVAL:  # EINVAL: a kernel without ambient capabilities
            raise OSError(err, f"cannot clear the ambient capabilities: {os.strerror(err)}")
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable; twice (64 bits)
    if libc.capget(header, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot read the capabilities: {os.strerror(err)}")
    if data[2] == 0 and data[5] == 0:
        return
    data[2] = data[5] = 0
    if libc.capset(header, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot clear the inheritable capabilities: {os.strerror(err)}")


def _acl(entries: list[tuple[int, int, int]]) -> bytes:
    return struct.pack("<I", _ACL_VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in sorted(entries))


def grant_read(folder: str, uid: int) -> None:
    """Let ``uid`` read and traverse ``folder`` (owner-only otherwise) through an
    ACL entry; OSError(ENOTSUP) where the file system has no ACLs."""
    mode = os.stat(folder).st_mode
    owner = (mode >> 6) & 7
    os.setxattr(folder, _ACL_XATTR, _acl([
        (_ACL_USER_OBJ, owner, _UNDEFINED_ID), (_ACL_USER, 5, uid),
        (_ACL_GROUP_OBJ, 0, _UNDEFINED_ID), (_ACL_MASK, 5, _UNDEFINED_ID),
        (_ACL_OTHER, 0, _UNDEFINED_ID)]))


def revoke(folder: str) -> None:
    """Remove every ACL entry of ``folder`` and leave it owner-only (0700)."""
    try:
        os.removexattr(folder, _ACL_XATTR)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.ENOENT):
            raise
    if os.path.isdir(folder):
        os.chmod(folder, 0o700)


def acl_users(folder: str) -> list[int]:
    """The uids an ACL entry of ``folder`` names (for tests and ``status``)."""
    try:
        blob = os.getxattr(folder, _ACL_XATTR)
    except OSError:
        return []
    out = []
    for offset in range(4, len(blob), 8):
        tag, _, ident = struct.unpack_from("<HHI", blob, offset)
        if tag == _ACL_USER:
            out.append(ident)
    return out
