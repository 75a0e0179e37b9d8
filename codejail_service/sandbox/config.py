"""
What the sandbox package reads of the service's configuration, in one place.

The sandbox package does not read Django's settings anywhere else: ``current()`` takes a fresh
snapshot each time (a few attribute reads), so a test's settings override is seen at once.
"""

from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class SandboxConfig:
    """The settings the sandbox package acts on (their meaning: settings/base.py)."""

    base_user: str | None
    python_bin: str
    pool_size: int
    slot_dir: str | None
    run_dir_root: str | None
    warm_sandbox: bool
    zygote_python: str | None
    zygote_script: str | None
    zygote_max_runs: int
    zygote_max_seconds: int
    max_output_bytes: int

    @property
    def warm(self):
        """True when runs go through the slots' zygotes: it takes a pool and a zygote script."""
        return self.warm_sandbox and bool(self.pool_size) and bool(self.zygote_script)

    def pool_users(self):
        """The pool's user names in slot order; empty when the pool is off."""
        return [f"{self.base_user}-{slot}" for slot in range(self.pool_size)]


def current():
    """The sandbox configuration now."""
    code_jail = settings.CODE_JAIL
    return SandboxConfig(
        base_user=code_jail["user"],
        python_bin=code_jail["python_bin"],
        pool_size=settings.CODEJAIL_SANDBOX_POOL_SIZE,
        slot_dir=settings.CODEJAIL_SLOT_DIR,
        run_dir_root=settings.CODEJAIL_RUN_DIR_ROOT,
        warm_sandbox=bool(settings.CODEJAIL_WARM_SANDBOX),
        zygote_python=settings.CODEJAIL_ZYGOTE_PYTHON,
        zygote_script=settings.CODEJAIL_ZYGOTE_SCRIPT,
        zygote_max_runs=settings.CODEJAIL_ZYGOTE_MAX_RUNS,
        zygote_max_seconds=settings.CODEJAIL_ZYGOTE_MAX_SECONDS,
        max_output_bytes=settings.CODEJAIL_MAX_OUTPUT_BYTES,
    )
