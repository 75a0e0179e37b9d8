"""
``manage.py print_confinement_policy``: show exactly what a sandboxed run may touch.

The policy of our Landlock + seccomp layer (codejail_service/confinement/policy.py) for
the configured sandbox venv, with the kernel's Landlock ABI on this host, and optionally
the seccomp filter as libseccomp compiles it (``--seccomp-pfc``).
"""
import json
import os

from django.conf import settings
from django.core.management.base import BaseCommand

from codejail_service.confinement import REQUIRED_ABI, landlock, seccomp
from codejail_service.confinement.policy import build_policy

# What a real run directory looks like (tempfile.mkdtemp(prefix="codejail-") in /tmp).
RUN_DIR_PLACEHOLDER = "/tmp/codejail-XXXXXXXX"


class Command(BaseCommand):
    help = "Print the effective confinement policy of the sandbox (JSON), and the kernel's support for it."

    def add_arguments(self, parser):
        parser.add_argument("--seccomp-pfc", action="store_true",
                            help="also print the seccomp filter as libseccomp's pseudo-code")
        parser.add_argument("--syscalls", action="store_true",
                            help="print only the seccomp allowlist, a line per rule: call, answer, "
                                 "argument conditions, reason")

    def handle(self, *args, **options):
        sandbox_prefix = os.path.dirname(os.path.dirname(settings.CODE_JAIL["python_bin"]))
        # build_policy's default stdlib is this interpreter's: the sandbox venv is made from the
        # same Debian python3.11 as the app's.
        policy = build_policy(sandbox_prefix, RUN_DIR_PLACEHOLDER)
        if options["syscalls"]:
            self.stdout.write(syscall_table(policy["seccomp"]))
            return
        abi = landlock.abi_version()
        report = {
            "sandbox_prefix": sandbox_prefix,
            "run_dir": RUN_DIR_PLACEHOLDER + " (the run's own directory)",
            "kernel": {
                "landlock_abi": abi,
                "missing": [f"{feature} needs Landlock ABI {needed}" for feature, needed in REQUIRED_ABI.items()
                            if abi < needed],
            },
            "seccomp_allowed_calls": len({rule["syscall"] for rule in policy["seccomp"]["rules"]
                                          if rule["action"] == "allow"}),
            "policy": policy,
        }
        self.stdout.write(json.dumps(report, indent=2))
        if options["seccomp_pfc"]:
            self.stdout.flush()
            seccomp.export_pfc(policy["seccomp"], self.stdout._out.fileno())


def syscall_table(seccomp_policy):
    """The seccomp rules as aligned text: every allowed call, each refusal that is not the default."""
    lines = [f"default: every other call fails with {seccomp_policy['default_errno']}", ""]
    for rule in seccomp_policy["rules"]:
        answer = "allow" if rule["action"] == "allow" else rule["errno"]
        conditions = " and ".join(
            f"arg{cond['arg']} & {cond['mask']:#x} == {cond['value']:#x}" if cond["op"] == "masked_eq"
            else f"arg{cond['arg']} {OPERATORS[cond['op']]} {cond['value']:#x}" for cond in rule["args"]) or "-"
        lines.append(f"{rule['syscall']:<24} {answer:<10} {conditions:<40} {rule['reason']}")
    return "\n".join(lines)


OPERATORS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
