"""
A full zygote's spare, the next run's process forked as a run starts, copies ahead the pages of
the preload that a run of the packages that run used writes (confinement/zygote.py, ``Spare``,
``learn_copies``): it holds them as its own before its run comes. Read as root from each spare's
/proc/<pid>/smaps_rollup (Private_Dirty: pages mapped by it alone), the newest spare being the
one forked as the last run started. A spare that copied nothing holds about 2 MiB all the same:
what it wrote as it started, and what its zygote has written since it forked it.
"""
import time

from .conftest import WARM, spares

# sympy is held by the full zygote and learned (its WARMUP: about 12 MiB); mpmath (sympy's own
# dependency, so in every sandbox that has sympy) is preloaded, not learned.
# What the spare copies depends on the packages the run names, not on what it does with them: a
# short run, which a fresh interpreter (the opt-out, a loaded container) imports well within its CPU limit.
SYMPY_RUN = "import sympy\nok = sympy.Integer(1) + 1 == 2\n"
MPMATH_RUN = "import mpmath\nok = mpmath.mpf(1) + 1 == 2\n"
MIB = 1024 * 1024


def newest_spare_holds(timeout=5.0):
    """Bytes the newest spare holds as its own once it has copied (it stops growing), or None without one."""
    deadline = time.monotonic() + timeout
    held = None
    while time.monotonic() < deadline:
        found = spares()
        if found:
            newest = max(found, key=_started)
            now = _private_dirty(newest)
            if now == held:
                return held
            held = now
        time.sleep(0.2)
    return held


def _started(pid):
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return int(stat.read().rsplit(b")", 1)[1].split()[19])


def _private_dirty(pid):
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
        for line in rollup:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) * 1024
    return 0


def test_the_spare_after_a_sympy_run_holds_what_a_sympy_run_writes(run, service):
    result = run(SYMPY_RUN)
    assert result.emsg is None and result.globals["ok"] is True, result
    held = newest_spare_holds() if service["local"] else None  # a service elsewhere: its processes are not ours to see
    if not WARM or not service["local"]:  # fresh interpreters: no zygote, no spare
        assert held is None
        return
    assert held is not None and held > 8 * MIB, held


def test_the_spare_after_a_run_of_nothing_learned_holds_nothing_more(run, service):
    result = run(MPMATH_RUN)
    assert result.emsg is None and result.globals["ok"] is True, result
    held = newest_spare_holds() if service["local"] else None
    if not WARM or not service["local"]:
        assert held is None
        return
    assert held is not None and held < 4 * MIB, held
