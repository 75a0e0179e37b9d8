"""
The confinement policy, as data: what one sandboxed run may touch.

Built in one place (``build_policy``), printed in one place (the
``print_confinement_policy`` management command), applied by ``landlock.py``
and ``seccomp.py``. Nothing here touches the kernel.
"""
import errno
import os
import sys

from . import syscalls

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

# What a run may read of /sys/devices/system/cpu/: the CPUs' numbers, no counters.
CPU_FILES = ("possible", "present", "online", "kernel_max")

# Where codejail makes run directories (tempfile.mkdtemp(prefix="codejail-")).
RUN_DIR_PREFIX = "codejail-"

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

    def rule(path, access, required=False, reaper_only=False):
        return {"path": path, "access": list(access), "required": required, "reaper_only": reaper_only}

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
        # The CPUs there are: OpenBLAS sizes its thread pool by cpu/possible, glibc's get_nprocs
        # (os.cpu_count) reads cpu/online. Not the rest of cpu/: each CPU's idle-state counters
        # and frequency tell how busy the other runs keep it (ADR 10).
        *(rule("/sys/devices/system/cpu/" + name, ("read_file",)) for name in CPU_FILES),
        rule(run_dir, RUN_DIR, required=True),
        # The reaper's memory watchdog reads its run's processes' /proc/<pid>/status; the run's
        # code gets a nested domain without this rule (landlock.restrict_nested).
        rule("/proc", READ, required=True, reaper_only=True),
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
        "seccomp": seccomp_policy(),
    }


def seccomp_policy(zygote=False):
    """
    The seccomp filter as data (syscalls.py): allow what is listed, refuse the rest with the
    default errno. ``zygote``: the warm sandbox zygote's own filter (the same, plus
    ``ZYGOTE_EXTRA``), on which each run it forks stacks the run's filter.
    """
    extra = {name for name, _ in syscalls.ZYGOTE_EXTRA} if zygote else set()
    rules = [{"syscall": name, "action": "allow", "args": [], "reason": reason}
             for reason, names in syscalls.ALLOWED for name in names]
    for rule in syscalls.CONDITIONAL:
        if rule["syscall"] in extra:
            continue  # allowed whole, below
        rules.append({"syscall": rule["syscall"], "action": "allow", "args": rule["args"],
                      "reason": rule["reason"]})
        if "errno" in rule:  # the other arguments get this answer instead of the default
            if len(rule["args"]) != 1 or rule["args"][0]["op"] not in NEGATED:
                raise ValueError(f"an errno needs a single negatable condition: {rule}")
            rules.append({"syscall": rule["syscall"], "action": "errno", "errno": rule["errno"],
                          "args": [dict(cond, op=NEGATED[cond["op"]]) for cond in rule["args"]],
                          "reason": "refused otherwise"})
    rules += [{"syscall": rule["syscall"], "action": "errno", "errno": rule["errno"], "args": [],
               "reason": rule["reason"]} for rule in syscalls.REFUSED if rule["syscall"] not in extra]
    rules += [{"syscall": name, "action": "allow", "args": [], "reason": reason}
              for name, reason in syscalls.ZYGOTE_EXTRA if zygote]
    return {"default": "errno", "default_errno": syscalls.DEFAULT_ERRNO, "rules": rules}


# The comparison that holds exactly when a single condition does not ("masked_eq" has none).
NEGATED = {"eq": "ne", "ne": "eq"}


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
