"""
The seccomp allowlist of a sandboxed run, as data: every system call a run may make, each with
the reason it is needed. Everything else is refused with ``DEFAULT_ERRNO``.

Derived from what the supported workloads really call, traced on a Debian 12 host (strace -f of a
sandbox run, after the filter is loaded) over Open edX's sandbox package set (numpy, scipy, sympy,
matplotlib (Agg, PNG), lxml, networkx, openedx-calc, chem, random2, nltk) behind the LMS's code
prolog, plus what Python's stdlib does for graders (threads, tempfile, json, sockets over a
socketpair, fork and wait, signals, sqlite in memory). ``make audit`` tries every system call
number of the architecture from inside a real run and checks that each one the kernel answered
is listed here (docs/syscall-audit.rst).

Process-directed calls are allowed only on the caller itself (argument 0 == 0: "this process"),
so a run can change nothing of another process of its UID (e.g. its slot's warm-sandbox zygote).
Signals need no argument check: Landlock's signal scope already confines them to the run.
"""

# The answer to every call not allowed below (a Python exception, not a dead process).
DEFAULT_ERRNO = "EPERM"

AF_UNIX = 1
PRIO_PROCESS = 0
IOPRIO_WHO_PROCESS = 1
SOL_SOCKET = 1
# An int argument travels in a 64-bit register that seccomp sees whole, while the kernel reads
# only its low 32 bits: compare those alone (masked_eq), or a caller could set a high bit to pass
# a check the kernel then ignores. So allowed values are listed, never excluded with "ne".
LOW_32 = 0xFFFFFFFF
FUTEX_PRIVATE_FLAG = 128
FUTEX_CLOCK_REALTIME = 256
RWF_NOWAIT = 0x8

# (reason, calls): allowed whatever their arguments.
ALLOWED = (
    ("file I/O on descriptors the run holds (Landlock decided at open)",
     ("read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev", "lseek",
      "close", "close_range", "dup", "dup2", "dup3", "fsync", "fdatasync", "ftruncate", "fallocate",
      "readahead", "sendfile", "copy_file_range", "fstat", "getdents64", "getdents")),
    ("opening and inspecting paths (Landlock decides which paths)",
     ("open", "openat", "openat2", "creat", "stat", "lstat", "newfstatat", "statx", "access",
      "faccessat", "faccessat2", "readlink", "readlinkat", "getcwd", "chdir", "fchdir",
      "truncate", "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr")),
    ("changing the run's own files (Landlock: only in the run directory)",
     ("mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2", "link",
      "linkat", "mknod", "mknodat", "chmod", "fchmod", "fchmodat", "utimensat", "umask")),
    ("memory of the run's own processes (RLIMIT_AS and the reaper's watchdog bound it)",
     ("brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mbind",
      "get_mempolicy", "set_mempolicy")),
    ("threads and their synchronisation (RLIMIT_NPROC bounds them)",
     ("set_robust_list", "rseq", "arch_prctl", "sched_yield", "gettid", "membarrier")),
    ("processes of the run: fork (clone's namespace flags are refused below), wait, exit",
     ("fork", "vfork", "wait4", "waitid", "exit", "exit_group")),
    ("signals: handlers, masks, timers; sending is confined to the run by Landlock's signal scope",
     ("rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend", "rt_sigpending",
      "rt_sigtimedwait", "sigaltstack", "kill", "tgkill", "tkill", "alarm", "pause", "setitimer",
      "getitimer", "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun",
      "timer_delete", "restart_syscall")),
    ("time and sleeping",
     ("clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time",
      "times", "timerfd_create", "timerfd_settime", "timerfd_gettime")),
    ("waiting on descriptors (selectors, asyncio, subprocess pipes)",
     ("poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl",
      "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "pipe", "pipe2")),
    ("AF_UNIX sockets of the run's own (socket() allows no other family; see CONDITIONAL)",
     ("socketpair", "recvfrom", "recvmsg", "recvmmsg", "shutdown", "getsockname", "getpeername",
      "getsockopt")),
    ("identity and limits of the caller, read only",
     ("getpid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid",
      "getgroups", "getpgrp", "getpgid", "getsid", "getrlimit", "getrusage", "getpriority",
      "sched_getaffinity", "sched_getparam", "sched_getscheduler", "sched_getattr",
      "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval", "ioprio_get",
      "getcpu", "capget")),
    ("system facts every runtime reads (os.uname, os.urandom)",
     ("uname", "getrandom")),
    ("setrlimit: only ever on the caller itself (RLIMIT_AS etc. can only be lowered)",
     ("setrlimit",)),
    ("Landlock: a process can only restrict itself further (the code's own nested domain)",
     ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self")),
)

# Allowed only when every argument condition holds ("arg" is the index, "op" a libseccomp
# comparison); otherwise refused with DEFAULT_ERRNO, or with "errno" (given only for a call that
# has one rule of one condition, so that the refusal is exactly its negation).
CONDITIONAL = (
    {"syscall": "socket", "errno": "EACCES", "args": [{"arg": 0, "op": "eq", "value": AF_UNIX}],
     "reason": "AF_UNIX only (a socketpair's peer); any other family is EACCES, as AppArmor's "
               "'deny network' answers"},
    {"syscall": "sendto", "errno": "EACCES", "args": [{"arg": 4, "op": "eq", "value": 0}],
     "reason": "on a connected socket only: a datagram with an address could reach a host socket "
               "file (D-Bus, journald), which Landlock does not guard"},
    {"syscall": "clone", "args": [{"arg": 0, "op": "masked_eq", "mask": 0x7E020000, "value": 0}],
     "reason": "threads and fork, with no CLONE_NEW* flag: no new view of the system"},
    # A futex word in a file's page (a shared library, the venv's modules: mapped by every run) is
    # keyed by the file, not the process, unless the call says FUTEX_PRIVATE_FLAG: two runs could
    # wait and wake each other on it. glibc says private for every lock of one process; its
    # pthread_join alone waits unflagged (the kernel's wake at a thread's exit is unflagged).
    {"syscall": "futex", "args": [{"arg": 1, "op": "masked_eq", "mask": FUTEX_PRIVATE_FLAG,
                                   "value": FUTEX_PRIVATE_FLAG}],
     "reason": "any operation on the process's own futexes (glibc's locks, condition variables)"},
) + tuple(
    {"syscall": "futex", "args": [{"arg": 1, "op": "masked_eq", "mask": LOW_32 & ~FUTEX_CLOCK_REALTIME,
                                   "value": op}],
     "reason": f"{name} unflagged: {why}"}
    for name, op, why in (
        ("FUTEX_WAIT", 0, "waits only: nothing a run does can wake it but its own thread's exit"),
        ("FUTEX_WAIT_BITSET", 9, "pthread_join, waiting for the kernel's wake at the thread's exit"),
    )
) + tuple(
    # Not RWF_NOWAIT: a read that fails rather than wait for the disk tells whether a file's page
    # is in the page cache, which another run's imports put there.
    {"syscall": name, "args": [{"arg": 5, "op": "masked_eq", "mask": RWF_NOWAIT, "value": 0}],
     "reason": "os.preadv/os.pwritev with flags, but RWF_NOWAIT"}
    for name in ("preadv2", "pwritev2")
) + tuple(
    # Not POSIX_FADV_DONTNEED: any reader of a file could drop it from the page cache, to see
    # (by timing a read) whether another run reads it again, and slow every run that imports it.
    {"syscall": "fadvise64", "args": [{"arg": 3, "op": "masked_eq", "mask": LOW_32 & ~span, "value": first}],
     "reason": f"{name}: access pattern hints"}
    for name, first, span in (("POSIX_FADV_NORMAL..WILLNEED", 0, 3), ("POSIX_FADV_NOREUSE", 5, 0))
) + tuple(
    {"syscall": "fcntl", "args": [{"arg": 1, "op": "masked_eq", "mask": LOW_32 & ~span, "value": first}],
     "reason": f"{name}: {why}"}
    for name, first, span, why in (
        ("F_DUPFD..F_GETFL", 0, 3, "descriptors and their flags (os, tempfile, subprocess)"),
        ("F_SETFL", 4, 0, "non-blocking mode"),
        # Not F_GETLK/F_OFD_GETLK: they name the holder of a lock on any file the run can open,
        # another run's on a shared file too (the venv's, read-only to every slot), where taking
        # a lock shows nothing: a read-only file takes only read locks, which never conflict.
        ("F_SETLK, F_SETLKW", 6, 1, "POSIX record locks (sqlite on a file in tmp/, fcntl.lockf)"),
        ("F_GETOWN", 9, 0, "read only"),
        ("F_OFD_SETLK", 37, 0, "open file description locks"),
        ("F_OFD_SETLKW", 38, 0, "open file description locks"),
        ("F_DUPFD_CLOEXEC", 1030, 0, "os.dup and subprocess"),
        ("F_GETPIPE_SZ", 1032, 0, "read only"),
        # Not F_SETPIPE_SZ: a pipe stays at its default size, so its kernel buffer is bounded
        # (the run's buffers: run_open_files in __init__.py). Not F_SETOWN/F_SETSIG: signals.
    )
) + tuple(
    {"syscall": "setsockopt", "args": [{"arg": 1, "op": "masked_eq", "mask": LOW_32, "value": SOL_SOCKET},
                                       {"arg": 2, "op": "masked_eq", "mask": LOW_32, "value": option}],
     "reason": f"{name}: {why}"}
    for name, option, why in (
        ("SO_KEEPALIVE", 9, "harmless on a socketpair"),
        ("SO_LINGER", 13, "close() semantics"),
        ("SO_PASSCRED", 16, "credentials of the run's own peer"),
        ("SO_RCVLOWAT", 18, "wake-up threshold"),
        ("SO_SNDLOWAT", 19, "wake-up threshold"),
        ("SO_RCVTIMEO_OLD", 20, "receive timeout"),
        ("SO_SNDTIMEO_OLD", 21, "send timeout"),
        ("SO_RCVTIMEO_NEW", 66, "receive timeout"),
        ("SO_SNDTIMEO_NEW", 67, "send timeout"),
        # Not SO_SNDBUF/SO_RCVBUF (up to net.core.wmem_max, 4 MiB per socket on some hosts):
        # kernel memory no RSS shows; a socket keeps the default size.
    )
) + tuple(
    {"syscall": "ioctl",
     "args": [{"arg": 1, "op": "masked_eq", "mask": 0xFFFFFFFF, "value": request}],
     "reason": f"{name}: {why}"}
    for name, request, why in (
        ("TCGETS", 0x5401, "isatty() on every open"),
        ("TIOCGWINSZ", 0x5413, "terminal size (shutil, pydoc)"),
        ("FIONREAD", 0x541B, "bytes waiting on a pipe or socket"),
        ("FIONBIO", 0x5421, "non-blocking mode"),
        ("FIONCLEX", 0x5450, "close-on-exec off"),
        ("FIOCLEX", 0x5451, "close-on-exec on"),
    )
) + tuple(
    {"syscall": "prctl", "args": [{"arg": 0, "op": "eq", "value": option}], "reason": f"{name}: {why}"}
    for name, option, why in (
        ("PR_GET_DUMPABLE", 3, "read only"),
        ("PR_SET_NAME", 15, "a thread's own name (threading)"),
        ("PR_GET_NAME", 16, "read only"),
        ("PR_GET_SECCOMP", 21, "read only"),
        ("PR_CAPBSET_READ", 23, "read only"),
        ("PR_GET_NO_NEW_PRIVS", 39, "read only"),
        ("PR_SET_VMA", 0x53564D41, "glibc names its own anonymous mappings"),
    )
) + (
    {"syscall": "prlimit64", "args": [{"arg": 0, "op": "eq", "value": 0}],
     "reason": "getrlimit/setrlimit of the caller itself; never of another process of its UID"},
    {"syscall": "setpriority", "args": [{"arg": 0, "op": "eq", "value": PRIO_PROCESS},
                                        {"arg": 1, "op": "eq", "value": 0}],
     "reason": "os.nice() of the caller itself; never of its user's or group's other processes"},
    {"syscall": "ioprio_set", "args": [{"arg": 0, "op": "eq", "value": IOPRIO_WHO_PROCESS},
                                       {"arg": 1, "op": "eq", "value": 0}],
     "reason": "I/O priority of the caller itself"},
) + tuple(
    {"syscall": name, "args": [{"arg": 0, "op": "eq", "value": 0}],
     "reason": "scheduling of the caller itself (OpenBLAS, os.sched_setaffinity(0, ...))"}
    for name in ("sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr")
)

# Refused with another answer than DEFAULT_ERRNO, because the caller reacts better to it.
REFUSED = (
    {"syscall": "clone3", "errno": "ENOSYS",
     "reason": "its flags hide behind a pointer: glibc falls back to clone(), whose flags are checked"},
    {"syscall": "execve", "errno": "EACCES", "reason": "nothing runs but the interpreter already running"},
    {"syscall": "execveat", "errno": "EACCES", "reason": "as execve"},
    {"syscall": "connect", "errno": "EACCES",
     "reason": "Landlock (ABI <= 7) does not guard connecting to a host's socket files"},
    {"syscall": "sendmsg", "errno": "EACCES", "reason": "may carry an address or descriptors: as connect"},
    {"syscall": "sendmmsg", "errno": "EACCES", "reason": "as sendmsg"},
    {"syscall": "bind", "errno": "EACCES",
     "reason": "abstract UNIX names live in the host's namespace: a run would squat them"},
    {"syscall": "listen", "errno": "EACCES", "reason": "autobinds an abstract name: as bind"},
    {"syscall": "symlink", "errno": "EACCES",
     "reason": "nothing to plant for codejail's clean-up to follow (Landlock refuses make_sym too)"},
    {"syscall": "symlinkat", "errno": "EACCES", "reason": "as symlink"},
    {"syscall": "setxattr", "errno": "EOPNOTSUPP", "reason": "shutil.copystat ignores EOPNOTSUPP"},
    {"syscall": "lsetxattr", "errno": "EOPNOTSUPP", "reason": "as setxattr"},
    {"syscall": "fsetxattr", "errno": "EOPNOTSUPP", "reason": "as setxattr"},
    # Side channels between runs (docs/decisions/0010-side-channels-between-runs.rst). ENOSYS, "no
    # such call here", where a caller does without the call then, and fails on other errnos.
    {"syscall": "statfs", "errno": "ENOSYS",
     "reason": "another slot's tmpfs use (free blocks, inodes); glibc's pathconf then gives POSIX's defaults"},
    {"syscall": "fstatfs", "errno": "ENOSYS",
     "reason": "as statfs: an O_PATH descriptor of any path (Landlock checks no O_PATH open) would do"},
    {"syscall": "mincore", "errno": "ENOSYS",
     "reason": "which pages of a mapped file are in the page cache: which modules other runs import"},
    {"syscall": "flock", "errno": "ENOSYS",
     "reason": "a read-only descriptor holds an exclusive flock that another run's flock sees; lock "
               "libraries take ENOSYS as 'no flock here', other errnos as a lock held (and retry)"},
)
# Refused with DEFAULT_ERRNO, named here because each would reach between concurrent runs:
# sysinfo (the host's thread count and free memory, which every run's processes change; glibc's
# sysconf(_SC_PHYS_PAGES) then answers garbage, which nothing we run asks), set_tid_address (a
# thread could have the kernel wake, at its exit, a futex in a file's page: see futex above; glibc
# calls it only as a process starts, before the filter), cachestat (the page cache of any file).
SIDE_CHANNELS_REFUSED = ("sysinfo", "set_tid_address", "cachestat")

# The warm sandbox's zygote (zygote.py) is confined by this same filter before it imports
# anything, plus these calls, which it and each run's start need before the run's own filter
# (the allowlist above, stacked on this one) is loaded.
ZYGOTE_EXTRA = (
    ("accept4", "the zygote takes the web app's connection, one per run"),
    ("accept", "as accept4"),
    ("setsid", "a run's process group of its own, for codejail's time limit"),
    ("setpgid", "the run's reaper leaves the run's process group, to outlive its time-limit kill"),
    ("prctl", "the run's start: no_new_privs, not dumpable, subreaper, parent-death signal"),
    ("seccomp", "the run's own filter, stacked on the zygote's"),
    ("sendmsg", "the light zygote hands a run (the app's connection, the run's pipes) to its full zygote, "
                "over their socket pair (SCM_RIGHTS)"),
)


def allowed_names():
    """Every call the run's filter lets through under some arguments."""
    names = {name for _, calls in ALLOWED for name in calls}
    return names | {rule["syscall"] for rule in CONDITIONAL}
