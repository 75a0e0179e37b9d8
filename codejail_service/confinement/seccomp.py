"""
Apply the seccomp part of the policy through libseccomp (the system library).

libseccomp builds the BPF program, including the architecture check (anything
but the native ABI is killed, x32 syscall numbers included); this module only
declares the handful of C functions it calls.
"""
import ctypes
import os

from . import process
from .policy import errno_value

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_FLTATR_ACT_BADARCH = 2
SCMP_FLTATR_CTL_TSYNC = 4
SCMP_FLTATR_CTL_OPTIMIZE = 8
SCMP_CMP = {"ne": 1, "lt": 2, "le": 3, "eq": 4, "ge": 5, "gt": 6, "masked_eq": 7}


def scmp_act_errno(number):
    return 0x00050000 | (number & 0xFFFF)


class SeccompError(OSError):
    """libseccomp refused to build or load the filter."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _load_library():
    # By soname: find_library() would spawn ldconfig, slow and refused once confined.
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_export_pfc.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _check(result, what):
    if result < 0:
        raise SeccompError(-result, f"libseccomp {what} failed (errno {-result})")


def build_filter(seccomp_policy, lib=None):
    """Return (lib, ctx) for the policy; the caller loads or exports it, then releases."""
    lib = lib or _load_library()
    if seccomp_policy["default"] != "errno":
        raise ValueError("only a default-deny filter is supported")
    ctx = lib.seccomp_init(scmp_act_errno(errno_value(seccomp_policy["default_errno"])))
    if not ctx:
        raise SeccompError(0, "seccomp_init failed")
    try:
        _check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS),
               "attr_set(ACT_BADARCH)")
        _check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1), "attr_set(CTL_TSYNC)")
        # A binary search over the syscall numbers instead of a list (libseccomp >= 2.5): about
        # 10 comparisons per call rather than up to 200. Older libseccomp: the list, just slower.
        lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)
        for rule in seccomp_policy["rules"]:
            number = lib.seccomp_syscall_resolve_name(rule["syscall"].encode())
            if number < 0:
                continue  # not a syscall on this architecture: the default refuses it anyway
            args = (_ArgCmp * max(1, len(rule["args"])))()
            for i, cond in enumerate(rule["args"]):
                if cond["op"] == "masked_eq":
                    args[i] = _ArgCmp(cond["arg"], SCMP_CMP["masked_eq"], cond["mask"], cond["value"])
                else:
                    args[i] = _ArgCmp(cond["arg"], SCMP_CMP[cond["op"]], cond["value"], 0)
            action = SCMP_ACT_ALLOW if rule["action"] == "allow" else scmp_act_errno(errno_value(rule["errno"]))
            _check(lib.seccomp_rule_add_array(ctx, action, number, len(rule["args"]), args),
                   f"rule_add({rule['syscall']})")
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return lib, ctx


def load(seccomp_policy):
    """Install the filter on this process (all threads). Irreversible."""
    lib, ctx = build_filter(seccomp_policy)
    try:
        _check(lib.seccomp_load(ctx), "load")
    finally:
        lib.seccomp_release(ctx)
    return ["seccomp"]


def compile_program(seccomp_policy):
    """The filter as raw BPF (libseccomp's work, about 2 ms), for ``load_program`` in forked processes."""
    lib, ctx = build_filter(seccomp_policy)
    read_end, write_end = os.pipe()
    try:
        _check(lib.seccomp_export_bpf(ctx, write_end), "export_bpf")
        os.close(write_end)
        write_end = None
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        lib.seccomp_release(ctx)
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_program(program):
    """
    Install a compiled filter on this (single-threaded) process: one prctl, some 20 us, where
    libseccomp's load would compile it again (1.5 ms). Irreversible.
    """
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    try:
        process.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
    except OSError as exc:
        raise SeccompError(exc.errno, f"prctl(PR_SET_SECCOMP) failed: {os.strerror(exc.errno)}") from None
    return ["seccomp"]


def export_pfc(seccomp_policy, fd):
    """Write the filter as libseccomp's readable pseudo-code to ``fd`` (for operators)."""
    lib, ctx = build_filter(seccomp_policy)
    try:
        _check(lib.seccomp_export_pfc(ctx, fd), "export_pfc")
    finally:
        lib.seccomp_release(ctx)
