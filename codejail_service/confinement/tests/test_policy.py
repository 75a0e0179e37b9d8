"""The policy as data: what it grants, and what it must never grant."""
import errno
import os
import sys

import pytest

from codejail_service.confinement import seccomp, syscalls
from codejail_service.confinement.policy import (
    FS_RIGHTS,
    NET_RIGHTS,
    RUN_DIR,
    SCOPES,
    access_mask,
    build_policy,
    seccomp_policy,
)

POLICY = build_policy("/opt/codejail-service/sandbox-venv", "/tmp/codejail-abc123")
RULES = {rule["path"]: rule for rule in POLICY["landlock"]["fs_rules"]}


def test_every_right_the_kernel_knows_is_handled():
    assert sorted(POLICY["landlock"]["handled_fs"]) == sorted(FS_RIGHTS)
    assert sorted(POLICY["landlock"]["handled_net"]) == sorted(NET_RIGHTS)
    assert sorted(POLICY["landlock"]["scopes"]) == sorted(SCOPES)


def test_nothing_is_executable():
    assert not [rule["path"] for rule in RULES.values() if "execute" in rule["access"]]


def test_only_the_run_dir_and_dev_null_are_writable():
    writable = sorted(path for path, rule in RULES.items()
                      if set(rule["access"]) - {"read_file", "read_dir"})
    assert writable == ["/dev/null", "/tmp/codejail-abc123"]


def test_run_dir_allows_files_but_no_devices_symlinks_or_exec():
    assert RULES["/tmp/codejail-abc123"]["access"] == list(RUN_DIR)
    assert not {"execute", "make_char", "make_block", "make_sym", "ioctl_dev"} & set(RUN_DIR)


def test_reads_are_the_sandbox_venv_python_and_system_libraries():
    assert RULES["/opt/codejail-service/sandbox-venv"]["required"]
    stdlib = os.path.join(sys.base_prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    assert RULES[stdlib]["required"]
    code_rules = [path for path, rule in RULES.items() if not rule["reaper_only"]]
    assert not [path for path in code_rules if path in ("/", "/etc", "/proc", "/tmp", "/home", "/root", "/usr")]
    assert not [path for path in code_rules if path.startswith("/proc")]


def test_all_rule_paths_are_absolute():
    assert all(os.path.isabs(path) for path in RULES)


def seccomp_rules(policy=POLICY):
    rules = {}
    for rule in policy["seccomp"]["rules"]:
        rules.setdefault(rule["syscall"], []).append(rule)
    return rules


RULES_BY_CALL = seccomp_rules()


def test_seccomp_refuses_by_default_with_eperm():
    assert POLICY["seccomp"]["default"] == "errno" and POLICY["seccomp"]["default_errno"] == "EPERM"


def test_every_allowed_call_has_a_reason_and_exists_on_this_architecture():
    lib = seccomp._load_library()  # libseccomp's own syscall table
    for rule in POLICY["seccomp"]["rules"]:
        assert rule["reason"].strip(), rule
        if rule["syscall"] not in ("time",):  # vDSO-backed, still a syscall number on x86_64
            assert lib.seccomp_syscall_resolve_name(rule["syscall"].encode()) >= 0, rule["syscall"]


def test_sockets_other_than_unix_are_refused_with_eacces():
    assert RULES_BY_CALL["socket"] == [
        {"syscall": "socket", "action": "allow", "args": [{"arg": 0, "op": "eq", "value": 1}],
         "reason": RULES_BY_CALL["socket"][0]["reason"]},
        {"syscall": "socket", "action": "errno", "errno": "EACCES", "args": [{"arg": 0, "op": "ne", "value": 1}],
         "reason": "refused otherwise"},
    ]


def test_exec_is_refused_and_refusals_are_errnos_not_kills():
    assert RULES_BY_CALL["execve"][0]["errno"] == RULES_BY_CALL["execveat"][0]["errno"] == "EACCES"
    assert RULES_BY_CALL["clone3"][0]["errno"] == "ENOSYS"  # so glibc falls back to clone, whose flags we see
    assert {r["errno"] for r in POLICY["seccomp"]["rules"] if r["action"] == "errno"} == {
        "EACCES", "ENOSYS", "EOPNOTSUPP"}


@pytest.mark.parametrize("name", [
    # What the audit found reaching between runs or beyond the run, and their kin.
    "shmget", "shmat", "msgget", "msgsnd", "semget", "semop", "mq_open", "memfd_create", "memfd_secret",
    "inotify_init", "inotify_init1", "inotify_add_watch", "fanotify_init", "modify_ldt", "personality",
    # Other processes, new views of the system, kernel attack surface.
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "process_madvise", "setsid", "setpgid", "unshare", "setns", "mount", "umount2",
    "pivot_root", "chroot", "keyctl", "add_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "kexec_load", "init_module", "reboot", "syslog", "iopl", "ioperm", "sync", "syncfs", "seccomp",
    "setuid", "setresuid", "capset", "symlink", "symlinkat", "chown", "fchown", "mlock", "mlockall",
    "get_robust_list", "move_pages", "migrate_pages", "rt_sigqueueinfo", "name_to_handle_at",
])
def test_calls_no_grader_needs_are_not_allowed(name):
    assert name not in syscalls.allowed_names()
    assert not [r for r in RULES_BY_CALL.get(name, []) if r["action"] == "allow"]


@pytest.mark.parametrize("name", ["prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam",
                                  "sched_setattr"])
def test_calls_on_a_process_are_allowed_only_on_the_caller_itself(name):
    (rule,) = RULES_BY_CALL[name]
    assert rule["action"] == "allow" and rule["args"] == [{"arg": 0, "op": "eq", "value": 0}]


def test_priorities_are_allowed_only_on_the_caller_itself():
    (nice,) = RULES_BY_CALL["setpriority"]
    assert nice["args"] == [{"arg": 0, "op": "eq", "value": 0}, {"arg": 1, "op": "eq", "value": 0}]
    (io,) = RULES_BY_CALL["ioprio_set"]
    assert io["args"] == [{"arg": 0, "op": "eq", "value": 1}, {"arg": 1, "op": "eq", "value": 0}]


def test_clone_is_allowed_only_without_namespace_flags():
    (rule,) = RULES_BY_CALL["clone"]
    mask = rule["args"][0]["mask"]
    for flag in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000):
        assert mask & flag, hex(flag)
    assert rule["args"][0]["value"] == 0


def test_the_zygote_filter_is_the_runs_plus_its_own_few_calls():
    zygote = seccomp_rules({"seccomp": seccomp_policy(zygote=True)})
    extra = {name for name, _ in syscalls.ZYGOTE_EXTRA}
    assert extra == {"accept4", "accept", "setsid", "setpgid", "prctl", "seccomp", "sendmsg"}
    assert {name for name in zygote if name not in extra} == set(RULES_BY_CALL) - extra
    for name in extra:
        assert [r["args"] for r in zygote[name]] == [[]], name


def allowed_with(name, arg, value):
    """True if some rule of the run's filter lets ``name`` through with argument ``arg`` == ``value``."""
    for rule in RULES_BY_CALL.get(name, []):
        if rule["action"] != "allow":
            continue
        if all(cond["arg"] != arg or (value & cond.get("mask", ~0)) == cond["value"] for cond in rule["args"]):
            return True
    return False


@pytest.mark.parametrize("name", ["statfs", "fstatfs", "mincore", "flock"])
def test_calls_that_tell_of_other_runs_are_refused_with_enosys(name):
    """ENOSYS: the callers (glibc's pathconf, lock libraries) then do without, as syscalls.py says."""
    assert [(rule["action"], rule.get("errno")) for rule in RULES_BY_CALL[name]] == [("errno", "ENOSYS")]


@pytest.mark.parametrize("name", syscalls.SIDE_CHANNELS_REFUSED)
def test_calls_that_tell_of_other_runs_are_not_allowed(name):
    assert name not in syscalls.allowed_names()
    assert name not in RULES_BY_CALL


FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME = 128, 256


@pytest.mark.parametrize("command", range(14))
def test_futexes_only_of_the_process_itself_but_for_waits(command):
    """A futex word in a file's page is keyed by the file (shared by every run) unless private."""
    assert allowed_with("futex", 1, command | FUTEX_PRIVATE_FLAG)
    assert allowed_with("futex", 1, command | FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME)
    waits = (0, 9)  # FUTEX_WAIT, FUTEX_WAIT_BITSET (pthread_join)
    assert allowed_with("futex", 1, command) == (command in waits)
    assert allowed_with("futex", 1, command | FUTEX_CLOCK_REALTIME) == (command in waits)
    # A high bit, which the kernel ignores (it reads an int), changes nothing.
    assert allowed_with("futex", 1, command | 1 << 32) == (command in waits)


def test_locks_may_be_taken_but_no_other_holder_read():
    F_GETLK, F_SETLK, F_SETLKW, F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW = 5, 6, 7, 36, 37, 38
    for command in (F_SETLK, F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW, 0, 1, 2, 3, 4):
        assert allowed_with("fcntl", 1, command), command
    for command in (F_GETLK, F_OFD_GETLK, F_GETLK | 1 << 32):
        assert not allowed_with("fcntl", 1, command), command


def test_no_read_that_tells_the_page_cache_and_no_eviction():
    RWF_HIPRI, RWF_NOWAIT, POSIX_FADV_DONTNEED = 1, 8, 4
    for name in ("preadv2", "pwritev2"):
        assert allowed_with(name, 5, 0) and allowed_with(name, 5, RWF_HIPRI)
        assert not allowed_with(name, 5, RWF_NOWAIT) and not allowed_with(name, 5, RWF_NOWAIT | RWF_HIPRI)
    assert [advice for advice in range(8) if allowed_with("fadvise64", 3, advice)] == [0, 1, 2, 3, 5]
    assert not allowed_with("fadvise64", 3, POSIX_FADV_DONTNEED | 1 << 32)


def test_of_sys_only_the_numbers_of_the_cpus_are_read():
    sys_rules = [path for path in RULES if path.startswith("/sys")]
    assert sys_rules == [f"/sys/devices/system/cpu/{name}" for name in ("possible", "present", "online", "kernel_max")]
    assert all(RULES[path]["access"] == ["read_file"] for path in sys_rules)


def test_only_the_reaper_reads_proc():
    (proc,) = [rule for rule in POLICY["landlock"]["fs_rules"] if rule["path"] == "/proc"]
    assert proc["reaper_only"] and proc["access"] == ["read_file", "read_dir"]
    assert not [rule for rule in POLICY["landlock"]["fs_rules"] if rule["reaper_only"] and rule is not proc]


def test_access_mask_drops_rights_newer_than_the_abi():
    assert access_mask(["read_file", "truncate"], FS_RIGHTS, 2) == FS_RIGHTS["read_file"][0]
    assert access_mask(["read_file", "truncate"], FS_RIGHTS, 3) == FS_RIGHTS["read_file"][0] | FS_RIGHTS["truncate"][0]


def test_load_program_says_why_the_kernel_refused_a_filter():
    """An instruction the BPF checker refuses (opcode 0xffff): nothing is installed, and it says so."""
    with pytest.raises(seccomp.SeccompError) as refused:
        seccomp.load_program(b"\xff\xff\x00\x00\x00\x00\x00\x00")
    assert refused.value.errno in (errno.EINVAL, errno.EACCES)  # EACCES: no no_new_privs, not root
    assert "prctl(PR_SET_SECCOMP) failed" in str(refused.value)
