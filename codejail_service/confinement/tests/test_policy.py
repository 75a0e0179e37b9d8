"""The policy as data: what it grants, and what it must never grant."""
import os
import sys

from codejail_service.confinement.policy import (
    FS_RIGHTS,
    NET_RIGHTS,
    RUN_DIR,
    SCOPES,
    access_mask,
    build_policy,
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
    assert not [path for path in RULES if path in ("/", "/etc", "/proc", "/tmp", "/home", "/root", "/usr")]
    assert not [path for path in RULES if path.startswith("/proc")]


def test_all_rule_paths_are_absolute():
    assert all(os.path.isabs(path) for path in RULES)


def test_sockets_other_than_unix_are_refused_with_eacces():
    (rule,) = [r for r in POLICY["seccomp"]["rules"] if r["syscall"] == "socket"]
    assert rule == {"syscall": "socket", "errno": "EACCES", "args": [{"arg": 0, "op": "ne", "value": 1}]}


def test_exec_is_refused_and_refusals_are_errnos_not_kills():
    rules = {r["syscall"]: r for r in POLICY["seccomp"]["rules"]}
    assert rules["execve"]["errno"] == rules["execveat"]["errno"] == "EACCES"
    assert rules["clone3"]["errno"] == "ENOSYS"  # so glibc falls back to clone, whose flags we see
    assert {r["errno"] for r in POLICY["seccomp"]["rules"]} == {"EACCES", "EPERM", "ENOSYS"}
    for name in ("ptrace", "process_vm_readv", "mount", "unshare", "setns", "keyctl", "bpf",
                 "perf_event_open", "userfaultfd", "io_uring_setup", "kexec_load", "init_module",
                 "setsid", "setpgid"):
        assert rules[name]["errno"] == "EPERM", name


def test_access_mask_drops_rights_newer_than_the_abi():
    assert access_mask(["read_file", "truncate"], FS_RIGHTS, 2) == FS_RIGHTS["read_file"][0]
    assert access_mask(["read_file", "truncate"], FS_RIGHTS, 3) == FS_RIGHTS["read_file"][0] | FS_RIGHTS["truncate"][0]
