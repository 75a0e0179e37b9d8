"""
The syscall audit: every system call number of the architecture, tried from inside a real run
with harmless arguments (all -1: bad descriptors, bad pointers, bad flags), and what it answered.

Fails when a call the kernel answered (anything but the refusal the policy gives unlisted calls)
is not in the reasoned allowlist (codejail_service/confinement/syscalls.py). ``make audit``
also writes the table into the docs (docs/syscall-audit.rst); every live run writes it to
.cache/audit/. Runs in the live suite with fresh interpreters and with the warm sandbox (where
the zygote's own extra calls must not reach the runs).
"""
import ctypes
import errno
import os
import signal

from codejail_service.confinement import policy, seccomp, syscalls

from .conftest import REPO, WARM

X32_BIT = 0x40000000
# Calls the kernel lets through every seccomp filter (kernel/seccomp.c), unknown to libseccomp
# 2.5: they act only when called from a uprobe trampoline (elsewhere SIGILL, ENXIO).
KERNEL_PASSTHROUGH = {335: "uretprobe", 336: "uprobe"}
LAST_NUMBER = 480  # above the last x86_64 call of current kernels (467 in 6.18): those too are refused

# Each call in a forked prober, which reports before ("s") and after ("r") each call, so that a
# call that ends its process (exit, rt_sigreturn) or blocks (pause) is named, and the next
# prober takes over after it.
PROBER = """
import ctypes, os, select
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_arg = ctypes.c_long(-1)
_numbers = list(range(LAST_NUMBER)) + [X32_BIT | 39]
answers = {}
_i = 0
while _i < len(_numbers):
    _r, _w = os.pipe()
    _pid = os.fork()
    if _pid == 0:
        os.close(_r)
        _me = os.getpid()
        for _nr in _numbers[_i:]:
            os.write(_w, b"s%d\\n" % _nr)
            _ret = _libc.syscall(ctypes.c_long(_nr), _arg, _arg, _arg, _arg, _arg, _arg)
            _err = ctypes.get_errno()
            if os.getpid() != _me:  # fork, vfork, clone: this is the new process
                os._exit(0)
            os.write(_w, b"r%d %d\\n" % (_nr, -_err if _ret < 0 else 0))
        os._exit(0)
    os.close(_w)
    _current, _buffer = None, b""
    while True:
        if not select.select([_r], [], [], 0.3)[0]:
            os.kill(_pid, 9)
            answers[str(_current)] = "blocked"
            break
        _data = os.read(_r, 65536)
        if not _data:
            break
        _buffer += _data
        *_lines, _buffer = _buffer.split(b"\\n")
        for _line in _lines:
            if _line[:1] == b"s":
                _current = int(_line[1:])
            else:
                _nr, _result = map(int, _line[1:].split())
                answers[str(_nr)] = _result
                _current = None
    os.close(_r)
    _status = os.waitpid(_pid, 0)[1]
    if _current is not None and str(_current) not in answers:
        answers[str(_current)] = "ended: " + (
            "signal %d" % os.WTERMSIG(_status) if os.WIFSIGNALED(_status) else "exit %d" % os.WEXITSTATUS(_status))
    _i = _numbers.index(_current) + 1 if _current is not None else len(_numbers)
""".replace("LAST_NUMBER", str(LAST_NUMBER)).replace("X32_BIT", str(X32_BIT))


def syscall_name(number):
    lib = seccomp._load_library()  # libseccomp's syscall table
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
    lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
    pointer = lib.seccomp_syscall_resolve_num_arch(0, number)  # 0: the native architecture
    if not pointer:
        return None
    name = ctypes.string_at(pointer).decode()
    ctypes.CDLL(None).free(ctypes.c_void_p(pointer))
    return name


def policy_answers():
    """{name: what the policy says}, and the errno (a positive number) of each refusal."""
    rules = policy.seccomp_policy()["rules"]
    allows, refusal = {}, {}
    for rule in rules:
        if rule["action"] == "allow":
            allows.setdefault(rule["syscall"], []).append(" and ".join(
                f"arg{c['arg']}{'&' + hex(c['mask']) if c['op'] == 'masked_eq' else ''} "
                f"{'==' if c['op'] in ('eq', 'masked_eq') else '!='} {c['value']:#x}" for c in rule["args"]))
        else:
            refusal[rule["syscall"]] = policy.errno_value(rule["errno"])
    said = {name: "allow" if "" in conditions else "allow if " + " or ".join(conditions)
            for name, conditions in allows.items()}
    for rule in rules:
        if rule["action"] == "errno":
            name = rule["syscall"]
            said[name] = f"{said[name]}, else {rule['errno']}" if name in allows else rule["errno"]
    return said, refusal


def describe(answer):
    if isinstance(answer, str):
        return answer
    if answer == 0:
        return "succeeded"
    return errno.errorcode.get(-answer, str(-answer))


def test_deny_system_calls_beyond_the_allowlist(run):
    result = run(PROBER, timeout=(0.5, 60))
    answers = result.globals.get("answers")
    assert answers, result
    default = policy.errno_value(syscalls.DEFAULT_ERRNO)
    said, refusal = policy_answers()
    allowed = syscalls.allowed_names()
    rows, leaks = [], []
    for number in range(LAST_NUMBER):
        name = syscall_name(number)
        answer = answers.get(str(number))
        if number in KERNEL_PASSTHROUGH and name in (None, KERNEL_PASSTHROUGH[number]):
            rows.append((number, KERNEL_PASSTHROUGH[number], "passed through every filter by the kernel",
                         describe(answer)))
            continue
        refused = answer == -refusal.get(name, default)
        if not refused and name not in allowed and answer != -errno.ENOSYS:
            leaks.append((number, name, describe(answer)))
        if name is not None:
            rows.append((number, name, said.get(name, syscalls.DEFAULT_ERRNO + " (default)"), describe(answer)))
    x32 = answers.get(str(X32_BIT | 39))
    assert x32 == f"ended: signal {int(signal.SIGSYS)}", f"an x32 call was answered {x32!r}, not killed"
    write_table(rows, describe(x32))
    # The kernel answered these (not the filter), but the policy gives no reason to let them through.
    assert not leaks, leaks


def write_table(rows, x32):
    """The audit's table as reStructuredText: in .cache/audit/, and in the docs under ``make audit``."""
    mode = "the warm sandbox" if WARM else "fresh interpreters"
    allowed = len({name for _, name, said, _ in rows if said.startswith("allow")})
    lines = [
        ".. Written by `make audit` (tests/live/test_syscall_audit.py): do not edit.",
        "",
        "Syscall audit",
        "#############",
        "",
        f"Every x86_64 system call number (0-{LAST_NUMBER - 1}) tried from inside a real run ({mode}), with",
        "every argument -1, and what the run got (*ended* or *blocked*: the call ended or stopped the",
        "audit's prober process, and the next prober went on after it). *Policy* is what",
        "``manage.py print_confinement_policy",
        f"--syscalls`` says: {allowed} calls are allowed (some only with the arguments shown), every other call",
        f"fails with {syscalls.DEFAULT_ERRNO}. An x32-ABI call (``0x40000000 | 39``) was answered: {x32} (SIGSYS:",
        "the filter kills any other architecture's call).",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 8 24 40 28",
        "",
        "   * - Number",
        "     - Call",
        "     - Policy",
        "     - Answer in a run",
    ]
    for number, name, said, answer in rows:
        lines += [f"   * - {number}", f"     - ``{name}``", f"     - {said}", f"     - {answer}"]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(REPO, ".cache", "audit"), exist_ok=True)
    with open(os.path.join(REPO, ".cache", "audit", f"syscall-audit-{'warm' if WARM else 'fresh'}.rst"), "w",
              encoding="utf-8") as out:
        out.write(text)
    if os.environ.get("CODEJAIL_AUDIT_WRITE_DOCS") == "1":
        with open(os.path.join(REPO, "docs", "syscall-audit.rst"), "w", encoding="utf-8") as out:
            out.write(text)
