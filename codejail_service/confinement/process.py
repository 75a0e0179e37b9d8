"""Process-wide switches the layer flips with prctl(2)."""
import ctypes
import os

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36

# The layer's one handle on libc (landlock.py's syscall(2) too).
libc = ctypes.CDLL(None, use_errno=True)


def prctl(option, value, arg3=0):
    """prctl(option, value, arg3, 0, 0); ``arg3`` may be an address (seccomp's filter)."""
    if libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(arg3), ctypes.c_ulong(0),
                   ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def set_no_new_privs():
    """Required by Landlock and seccomp: no setuid binary can lift them afterwards."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_not_dumpable():
    """No core dumps (they would land in the run dir), and no ptrace by the same UID."""
    prctl(PR_SET_DUMPABLE, 0)


def become_subreaper():
    """Orphans of the run reparent to us, so we can reap them (they count against NPROC)."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def set_parent_death_signal(sig):
    """The kernel sends ``sig`` to this process when its parent dies."""
    prctl(PR_SET_PDEATHSIG, sig)
