"""
Apply the Landlock part of the policy to the current thread.

There is no mature Python binding, so this is a small ctypes wrapper around
the three syscalls, after the kernel's own sample (samples/landlock/sandboxer.c).
"""
import ctypes
import os
import stat

from .policy import FILE_ONLY_RIGHTS, FS_RIGHTS, NET_RIGHTS, SCOPES, access_mask
from .process import libc as _libc

# x86_64 syscall numbers (the same on every architecture that has Landlock).
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1

_libc.syscall.restype = ctypes.c_long


class LandlockError(OSError):
    """The kernel refused a Landlock operation."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the UAPI header
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _syscall(number, *args):
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise LandlockError(err, os.strerror(err))
    return result


def abi_version():
    """The kernel's Landlock ABI version, or 0 where Landlock is absent or disabled."""
    try:
        return _syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    except LandlockError:
        return 0


def _create_ruleset(handled_fs, handled_net, scoped, abi):
    attr = _RulesetAttr(handled_fs, handled_net, scoped)
    # Older kernels reject fields they do not know, so pass only the known prefix.
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    return _syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                    ctypes.c_uint32(0))


def restrict_self(landlock_policy, abi, reaper=False):
    """
    Enforce ``landlock_policy`` (see policy.build_policy) on this thread and
    its future children. Returns the names of the features applied. Rules marked
    ``reaper_only`` (``/proc``, for the reaper's memory watchdog) apply only with ``reaper``:
    the run's code gets a nested domain without them (``restrict_nested``).
    """
    handled_fs = access_mask(landlock_policy["handled_fs"], FS_RIGHTS, abi)
    handled_net = access_mask(landlock_policy["handled_net"], NET_RIGHTS, abi)
    scoped = access_mask(landlock_policy["scopes"], SCOPES, abi)
    file_only = access_mask(FILE_ONLY_RIGHTS, FS_RIGHTS, abi)
    ruleset_fd = _create_ruleset(handled_fs, handled_net, scoped, abi)
    try:
        for rule in landlock_policy["fs_rules"]:
            if rule.get("reaper_only") and not reaper:
                continue
            try:
                path_fd = os.open(rule["path"], os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                if rule["required"]:
                    raise
                continue
            try:
                allowed = access_mask(rule["access"], FS_RIGHTS, abi) & handled_fs
                if not stat.S_ISDIR(os.fstat(path_fd).st_mode):
                    allowed &= file_only
                attr = _PathBeneathAttr(allowed, path_fd)
                _syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_long(ruleset_fd),
                         ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(attr),
                         ctypes.c_uint32(0))
            finally:
                os.close(path_fd)
        _syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_long(ruleset_fd), ctypes.c_uint32(0))
    finally:
        os.close(ruleset_fd)
    applied = ["landlock.fs"]
    if handled_net:
        applied.append("landlock.net")
    if scoped:
        applied.append("landlock.scope")
    return applied


def restrict_nested(landlock_policy, abi, code=False):
    """
    Stack a domain on the current one that scopes signals and abstract sockets, so that nothing
    started under it can signal the processes of the domains above it. Every layer implicitly
    denies moving files between directories ("refer") unless it handles that right, so this
    one handles it and grants it where the outer policy does.

    ``code``: the domain of the run's own code, which also handles reading, granted as in the
    policy but for its ``reaper_only`` rules: the code cannot read ``/proc``, the reaper above it can.
    """
    scoped = access_mask(landlock_policy["scopes"], SCOPES, abi)
    if not scoped:
        return
    handled = ["refer", "read_file", "read_dir"] if code else ["refer"]
    rules = []
    for rule in landlock_policy["fs_rules"]:
        access = [right for right in rule["access"] if right in handled]
        if access and not rule.get("reaper_only"):
            rules.append(dict(rule, access=access))
    restrict_self({"handled_fs": handled, "fs_rules": rules, "handled_net": [],
                   "scopes": landlock_policy["scopes"]}, abi)
