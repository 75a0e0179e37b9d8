"""
A slot's zygote is never collateral, and a slot without one never holds a run for a preload
(docs/decisions/0009-run-bounds-across-processes.rst, "A zygote is never collateral").

What a run leaves is killed by its process groups, in the run's own session, which no zygote is
in (sandbox/processes.py); a slot whose zygote is gone runs its next runs at once in fresh
interpreters while a new one preloads in the background (sandbox/zygote_client.py). And the
leftover scan counts a process whose main thread has exited while another thread runs.

Every case here is the web app's doing, not our confinement layer's: ``outside_layer`` (they must
pass in the sabotage run too, where no reaper ends a run's processes before the app looks). In
fresh mode there are no zygotes: the same runs must still be answered in time and leave nothing.
Each is followed by the aftermath check. "The zygotes stay" means every zygote there before the
test is there after it: a successor may join them (a zygote past CODEJAIL_ZYGOTE_MAX_SECONDS asks
for one at its next run, and a slot still without one after the zygotes test gets one).
"""
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .conftest import WARM, sandbox_processes, zygotes
from .test_hostile import ANSWER_WITHIN, FORKED_ALLOCATIONS, LMS_PROLOG, REALTIME, timed

# The LMS gives up after 3.5 s: an ordinary run must be answered by then, whatever ran before it.
LMS_DEADLINE = REALTIME + 0.5
# A run that outlives its time limit (asleep: spinning, RLIMIT_CPU would end it first), with a
# child beside it: the run's reaper (or, in the sabotage run, nothing) is still ending the child
# when the zygote reports the run's status.
SLEEP_WITH_A_CHILD = "import os, time\nos.fork()\ntime.sleep(30)"
# An ordinary grader's run, which says who started it: the slot's zygote, or a fresh interpreter.
NUMPY_RUN = (LMS_PROLOG + "import numpy\nimport codejail_confinement\n"
             "forked_by = codejail_confinement.STATUS.get('forked_by')\nr = float(numpy.arange(4).sum())")
# A child whose main thread exits while another of its threads runs on, with the run's pipes
# closed (so the run is answered at once): /proc/<pid>/stat shows it as a zombie.
MAIN_THREAD_EXITS = ("import ctypes, os, threading, time\n"
                     "if os.fork() == 0:\n"
                     "    for fd in (0, 1, 2):\n        os.close(fd)\n"
                     "    threading.Thread(target=time.sleep, args=(60,)).start()\n"
                     "    ctypes.CDLL(None).pthread_exit(None)\n"
                     "time.sleep(0.3)\nr = 1")


def slots(service):
    """How many runs the service runs at once: the users its startup checks ran as."""
    health = requests.get(service["url"] + "/health/", timeout=10).json()
    return len(health["checks"]["basic_execution"]["sandbox_users"])


def at_once(run, code, count):
    """``count`` runs of ``code`` started together: their results (each with its own seconds)."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda _: run(code), range(count)))


def wait_for_zygotes(count, timeout=60):
    """The zygotes once ``count`` are up (the successors of killed ones preload in the background)."""
    deadline = time.monotonic() + timeout
    while len(zygotes()) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return zygotes()


def numpy_run_answered_in_time(run):
    result = run(NUMPY_RUN)
    assert result.emsg is None and result.globals["r"] == 6.0, result
    assert result.seconds < LMS_DEADLINE, result.seconds
    return result


@pytest.mark.outside_layer  # the web app's cleanup after the run
def test_deny_a_run_killed_at_its_time_limit_taking_the_slots_zygote(run, aftermath):
    before = zygotes()
    result, elapsed = timed(run, SLEEP_WITH_A_CHILD)
    assert result.emsg and "status code: -9" in result.emsg, result
    assert elapsed < ANSWER_WITHIN
    aftermath.check()
    assert before <= zygotes(), "a slot's zygote was ended with a run killed at its time limit"


@pytest.mark.outside_layer  # the web app's cleanup after the run
def test_deny_a_run_over_its_memory_bound_taking_the_slots_zygote(run, aftermath):
    """Ended by the reaper's watchdog (in the sabotage run, by its children's RLIMIT_AS): the zygote stays."""
    before = zygotes()
    result, elapsed = timed(run, FORKED_ALLOCATIONS.format(children=10, mib=300))
    assert result.status == 200, result
    assert elapsed < ANSWER_WITHIN
    aftermath.check()
    assert before <= zygotes(), "a slot's zygote was ended with a run over its memory bound"


def test_allow_an_ordinary_run_keeps_the_slots_zygote(run, aftermath):
    before = zygotes()
    result = run(NUMPY_RUN)
    assert result.emsg is None and result.globals["r"] == 6.0, result
    assert result.globals["forked_by"] == ("zygote" if WARM else None), result
    assert before <= zygotes()


@pytest.mark.outside_layer  # the web app's cleanup after the run
def test_deny_hostile_runs_at_once_making_the_next_numpy_runs_miss_the_lms_deadline(run, service, aftermath):
    """
    The audit's case: as many hostile runs as there are slots, at once (each killed at its time
    limit), then as many numpy runs at once. With every slot's zygote killed with its run, each
    numpy run waited for a new zygote's preload: 4.2 to 4.8 s.
    """
    count = slots(service)
    before = zygotes()
    hostile = at_once(run, SLEEP_WITH_A_CHILD, count)
    assert all(result.emsg and "status code: -9" in result.emsg for result in hostile), hostile
    ordinary = at_once(run, NUMPY_RUN, count)
    seconds = sorted(round(result.seconds, 2) for result in ordinary)
    print(f"{count} numpy runs after {count} runs killed at their time limit: answered in {seconds} s")
    assert all(result.emsg is None and result.globals["r"] == 6.0 for result in ordinary), ordinary
    assert max(seconds) < LMS_DEADLINE, seconds
    assert before <= zygotes()


def test_allow_numpy_runs_at_once_answered_in_time(run, service, aftermath):
    count = slots(service)
    ordinary = at_once(run, NUMPY_RUN, count)
    seconds = sorted(round(result.seconds, 2) for result in ordinary)
    print(f"{count} numpy runs at once: answered in {seconds} s")
    assert all(result.emsg is None and result.globals["r"] == 6.0 for result in ordinary), ordinary
    assert max(seconds) < LMS_DEADLINE, seconds


@pytest.mark.outside_layer  # the web app's handling of a slot without a zygote
def test_deny_a_slot_without_a_zygote_holding_its_next_run_for_a_preload(run, service, aftermath):
    """
    Every slot's zygote is gone (killed here, as root: as a crash would): the next runs are
    answered at once by fresh interpreters, while new zygotes preload in the background.
    """
    if not service["local"]:
        pytest.skip("finding and killing the slots' zygotes needs the service's host")
    count = slots(service)
    before = zygotes()
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    ordinary = at_once(run, NUMPY_RUN, count)
    seconds = sorted(round(result.seconds, 2) for result in ordinary)
    started_by = sorted(str(result.globals.get("forked_by")) for result in ordinary)
    print(f"{count} numpy runs right after every zygote was killed: answered in {seconds} s, "
          f"started by {started_by}")
    assert all(result.emsg is None and result.globals["r"] == 6.0 for result in ordinary), ordinary
    assert max(seconds) < LMS_DEADLINE, seconds
    if WARM:  # successors, for the slots these runs landed on (a quick run may free its slot for another)
        after = wait_for_zygotes(1)
        assert after and not after & before, (before, after)


def test_allow_a_slot_whose_zygote_is_ready_has_it_fork_its_runs(run, aftermath):
    """Once its zygote is in place (a successor may still be preloading after the test before), runs go to it."""
    deadline = time.monotonic() + 60
    result = numpy_run_answered_in_time(run)
    while WARM and result.globals["forked_by"] != "zygote" and time.monotonic() < deadline:
        time.sleep(0.5)
        result = numpy_run_answered_in_time(run)
    assert result.globals["forked_by"] == ("zygote" if WARM else None), result


@pytest.mark.outside_layer  # the web app's leftover scan (in the sabotage run, no reaper ends it first)
def test_deny_a_process_whose_main_thread_exited_outliving_its_run(run, aftermath):
    """Its main thread gone, a thread of it runs on: the scan that skipped zombies left it running."""
    before = zygotes()
    result, elapsed = timed(run, MAIN_THREAD_EXITS)
    assert result.emsg is None and result.globals.get("r") == 1, result
    assert elapsed < ANSWER_WITHIN
    # Its thread sleeps 60 s: left alone, it would be there long after these 2 s.
    deadline = time.monotonic() + 2
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == [], "a process with a live thread outlived its run"
    assert before <= zygotes()


def test_allow_a_run_whose_threads_end_with_it(run, aftermath):
    result, elapsed = timed(run, "import threading, time\nt = threading.Thread(target=time.sleep, args=(0.3,))\n"
                                 "t.start()\nt.join()\nr = 1")
    assert result.emsg is None and result.globals.get("r") == 1, result
    assert elapsed < ANSWER_WITHIN

