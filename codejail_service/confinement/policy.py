"""
The confinement policy, as data: what one sandboxed run may touch.

Built in one place (``build_policy``), printed in one place (the
``print_confinement_policy`` management command), applied by ``landlock.py``
and ``seccomp.py``. Nothing here touches the kernel.
"""
import errno
import os
import sys

# Landlock filesystem access rights (include/uapi/linux/landlock.h), with the
# ABI version that introduced each.
FS_RIGHTS = {
    "execute": (1 << 0, 1),
    "write_file": (1 << 1, 1),
    "read_file": (1 << 2, 1),
    "read_dir": (1 << 3, 1),
    "remove_dir": (1 << 4, 1),
    "remove_file": (1 << 5, 1),
    "make_char": (1 << 6, 1),
    "make_dir": (1 << 7, 1),
    "make_reg": (1 << 8, 1),
    "make_sock": (1 << 9, 1),
    "make_fifo": (1 << 10, 1),
    "make_block": (1 << 11, 1),
    "make_sym": (1 << 12, 1),
    "refer": (1 << 13, 2),
    "truncate": (1 << 14, 3),
    "ioctl_dev": (1 << 15, 5),
}
# Rights that make sense on a regular file (the kernel refuses the others there).
FILE_ONLY_RIGHTS = ("execute", "write_file", "read_file", "truncate", "ioctl_dev")
NET_RIGHTS = {"bind_tcp": (1 << 0, 4), "connect_tcp": (1 << 1, 4)}
SCOPES = {"abstract_unix_socket": (1 << 0, 6), "signal": (1 << 1, 6)}

READ = ("read_file", "read_dir")
READ_WRITE = ("read_file", "write_file")
# The run directory: create, change and remove files, directories, sockets and
# fifos. No execute, no device nodes, no symlinks (nothing to plant for cleanup).
RUN_DIR = READ + ("write_file", "truncate", "remove_file", "remove_dir", "make_reg",
                  "make_dir", "make_sock", "make_fifo", "refer")

# Where codejail makes run directories (tempfile.mkdtemp(prefix="codejail-")).
RUN_DIR_PREFIX = "codejail-"

# Namespace flags of clone(2): refused so a run cannot build itself a new view
# of the system (Docker's default profile refuses them too, without CAP_SYS_ADMIN).
CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
AF_UNIX = 1

# Syscalls a grader never needs; refused with EPERM so the student sees an
# exception rather than a dead process.
DENIED_SYSCALLS = (
    # Reading or steering other processes.
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # Leaving the process group that codejail kills on timeout (pkill -g).
    "setsid", "setpgid",
    # New views of the system.
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    # Kernel attack surface with a history of escapes.
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "name_to_handle_at", "open_by_handle_at", "lookup_dcookie", "quotactl",
    # Privileged operations (refused anyway without capabilities).
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "acct", "swapon", "swapoff", "reboot", "syslog", "vhangup", "iopl", "ioperm", "uselib",
)


def build_policy(sandbox_prefix, run_dir, stdlib_dir=None, multiarch=None):
    """
    Return the policy for one run as plain data (dicts, lists, strings).

    ``sandbox_prefix`` is the sandbox virtualenv, ``run_dir`` the run's own
    ``/tmp/codejail-XXXXXX`` directory. Filesystem rules marked ``required``
    must exist; the others are skipped where the host lacks them.
    """
    stdlib_dir = stdlib_dir or os.path.join(
        sys.base_prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    multiarch = multiarch or getattr(sys.implementation, "_multiarch", "x86_64-linux-gnu")

    def rule(path, access, required=False):
        return {"path": path, "access": list(access), "required": required}

    fs_rules = [
        rule(sandbox_prefix, READ, required=True),
        rule(stdlib_dir, READ, required=True),
        # Shared libraries and the dynamic loader (/lib and /lib64 link here on merged-/usr hosts).
        rule("/usr/lib/" + multiarch, READ, required=True),
        rule("/lib/" + multiarch, READ),
        rule("/etc/ld.so.cache", ("read_file",)),
        # What AppArmor's abstractions/base allows too: time zones, locales, devices.
        rule("/etc/localtime", ("read_file",)),
        rule("/usr/share/zoneinfo", READ),
        rule("/usr/lib/locale", READ),
        rule("/usr/share/locale", READ),
        rule("/dev/null", READ_WRITE),
        rule("/dev/zero", ("read_file",)),
        rule("/dev/urandom", ("read_file",)),
        rule("/dev/random", ("read_file",)),
        # OpenBLAS reads cpu/possible to size its thread pool.
        rule("/sys/devices/system/cpu", READ),
        rule(run_dir, RUN_DIR, required=True),
    ]
    return {
        "landlock": {
            # Every right the kernel knows is handled; what no rule grants is denied
            # (so nothing at all may be executed, and /proc stays closed).
            "handled_fs": sorted(FS_RIGHTS),
            "fs_rules": fs_rules,
            # Handled with no rule: no TCP bind or connect anywhere.
            "handled_net": sorted(NET_RIGHTS),
            # No signals to, and no abstract UNIX sockets of, processes outside this run.
            "scopes": sorted(SCOPES),
        },
        "seccomp": {
            "default": "allow",
            "rules": [
                # Only AF_UNIX sockets: EACCES, as an AppArmor "deny network" gives.
                {"syscall": "socket", "errno": "EACCES",
                 "args": [{"arg": 0, "op": "ne", "value": AF_UNIX}]},
                # The only sockets a run can make are AF_UNIX ones. Landlock (ABI <= 7) does not
                # guard connecting or sending to a socket file, and hosts have world-writable
                # ones (D-Bus, journald, nscd): no connect, and no datagram with an address.
                # A run still has socketpair(), and may bind and listen in its own directory.
                {"syscall": "connect", "errno": "EACCES", "args": []},
                {"syscall": "sendto", "errno": "EACCES",
                 "args": [{"arg": 4, "op": "ne", "value": 0}]},
                {"syscall": "sendmsg", "errno": "EACCES", "args": []},
                {"syscall": "sendmmsg", "errno": "EACCES", "args": []},
                # Nothing runs but the interpreter already running.
                {"syscall": "execve", "errno": "EACCES", "args": []},
                {"syscall": "execveat", "errno": "EACCES", "args": []},
                # clone3 hides its flags behind a pointer: make glibc fall back to clone.
                {"syscall": "clone3", "errno": "ENOSYS", "args": []},
            ] + [
                {"syscall": "clone", "errno": "EPERM",
                 "args": [{"arg": 0, "op": "masked_eq", "value": flag, "mask": flag}]}
                for flag in CLONE_NAMESPACE_FLAGS.values()
            ] + [
                {"syscall": name, "errno": "EPERM", "args": []} for name in DENIED_SYSCALLS
            ],
        },
    }


def errno_value(name):
    """Map an errno name from the policy to its number."""
    return getattr(errno, name)


def access_mask(names, table, abi):
    """OR together the bits of ``names`` that the kernel's Landlock ABI knows."""
    mask = 0
    for name in names:
        bit, since = table[name]
        if abi >= since:
            mask |= bit
    return mask
