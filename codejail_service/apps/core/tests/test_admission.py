"""Tests of the admission gate: a sandbox slot per run, a bounded wait, then Overloaded."""

import os
import subprocess
import threading
import time

import pytest

from codejail_service.apps.core.admission import ExecutionGate, Overloaded
from codejail_service.sandbox import pool


@pytest.fixture
def admission(settings):
    settings.CODEJAIL_ADMISSION = {"max_waiting": 1, "deadline_seconds": 5.0, "retry_after_seconds": 2}
    return settings.CODEJAIL_ADMISSION


def test_free_gate_admits_at_once_and_frees_after_the_run(admission):
    gate = ExecutionGate()
    with gate.admit():
        pass
    with gate.admit():  # the first turn was given back
        assert gate.waiting == 0


def test_full_queue_is_refused_at_once_with_retry_after(admission):
    admission["max_waiting"] = 0
    gate = ExecutionGate()
    with gate.admit():
        with pytest.raises(Overloaded) as refused:
            gate.admit()
    assert refused.value.reason == "queue_full"
    assert refused.value.retry_after == 2


def test_a_waiting_request_runs_when_the_turn_is_given_back(admission):
    gate = ExecutionGate()
    ran = threading.Event()
    waiting = threading.Event()

    def second_request():
        waiting.set()
        with gate.admit():
            ran.set()

    with gate.admit():
        thread = threading.Thread(target=second_request)
        thread.start()
        waiting.wait(5)
        assert not ran.wait(0.05)  # still held by the first run
    thread.join(5)
    assert ran.is_set()
    assert gate.waiting == 0


def test_a_wait_past_the_limit_is_refused(admission):
    admission["deadline_seconds"] = 0.26  # a quarter second is kept for the run (MIN_RUN_SECONDS)
    gate = ExecutionGate()
    with gate.admit():
        with pytest.raises(Overloaded) as refused:
            gate.admit()
    assert refused.value.reason.startswith("waited ")
    assert gate.waiting == 0  # the refused request no longer counts as waiting


def test_only_max_waiting_requests_wait_the_next_is_refused(admission):
    gate = ExecutionGate()
    release = threading.Event()
    queued = []

    def waiter():
        with gate.admit():
            queued.append(True)

    with gate.admit():
        thread = threading.Thread(target=waiter)
        thread.start()
        while gate.waiting < 1:
            release.wait(0.001)
        with pytest.raises(Overloaded):  # max_waiting is 1: this one may not queue
            gate.admit()
    thread.join(5)
    assert queued == [True]


def test_with_a_pool_a_busy_worker_still_starts_a_run_in_another_slot(admission, settings, tmp_path):
    """The slots are the service's, not the worker's: the limit is the pool, not one run per worker."""
    settings.CODEJAIL_SANDBOX_POOL_SIZE = 2
    settings.CODEJAIL_SLOT_DIR = str(tmp_path / "slots")
    admission["max_waiting"] = 0
    gate = ExecutionGate()
    with gate.admit() as first, gate.admit() as second:
        assert {first.user, second.user} == {f"{settings.CODE_JAIL['user']}-0", f"{settings.CODE_JAIL['user']}-1"}
        with pytest.raises(Overloaded):  # both slots taken, nobody may wait
            gate.admit()
    with gate.admit():
        pass


class _Ran:
    def __init__(self, seconds):
        self.seconds = seconds


def test_the_wait_leaves_the_deadline_room_for_a_run_as_long_as_recent_ones(admission):
    gate = ExecutionGate()
    assert gate.expected_run_seconds() == 0.25  # nothing seen yet: the floor
    for seconds in [0.5] * 9 + [2.0]:
        gate.ran(_Ran(seconds))
    assert gate.expected_run_seconds() == 0.5  # the 90th percentile, not the one slow run
    gate = ExecutionGate()
    gate.ran(_Ran(0.01))
    assert gate.expected_run_seconds() == 0.25  # never under the floor
    for seconds in [2.0] * 10:
        gate.ran(_Ran(seconds))
    assert gate.expected_run_seconds() == 2.0


def test_deny_a_wait_its_answer_could_not_come_back_from_in_time(admission):
    # 5 s deadline, 1 s spent before admission, runs of 3.9 s here: no time left to wait.
    gate = ExecutionGate()
    for _ in range(10):
        gate.ran(_Ran(3.9))
    with gate.admit():
        started = time.monotonic()
        with pytest.raises(Overloaded):
            gate.admit(received=started - 1.0)
        assert time.monotonic() - started < 0.2


def test_allow_a_wait_within_what_the_deadline_leaves(admission):
    # Runs of 0.1 s: a request may wait up to about 3.9 s of its 5 s; the slot comes back in 0.3 s.
    gate = ExecutionGate()
    for _ in range(10):
        gate.ran(_Ran(0.1))
    held = gate.admit()
    threading.Timer(0.3, held.release).start()
    with gate.admit(received=time.monotonic() - 1.0) as run:
        assert 0.2 < run.stages["admit"] < 2.0


def test_waiting_requests_take_the_turn_in_the_order_they_came(admission):
    admission["max_waiting"] = 6
    gate = ExecutionGate()
    order = []
    threads = []

    def request(name):
        with gate.admit():
            order.append(name)
            time.sleep(0.02)

    with gate.admit():
        for name in "abcdef":
            threads.append(threading.Thread(target=request, args=(name,)))
            threads[-1].start()
            deadline = time.monotonic() + 5
            while len(pool.in_line()) < len(threads) and time.monotonic() < deadline:  # in line before the next
                time.sleep(0.005)
    for thread in threads:
        thread.join(5)
    assert order == list("abcdef")


def test_deny_a_new_request_taking_a_free_turn_an_older_one_waits_for(admission):
    gate = ExecutionGate()
    with pool.Place():  # an older request, in line (of another worker, say)
        started = time.monotonic()
        with pytest.raises(Overloaded):
            admission["deadline_seconds"] = 0.45  # 0.2 s of wait: it stays behind the older one
            gate.admit()
        assert time.monotonic() - started >= 0.15


def test_allow_a_new_request_the_free_turn_once_nobody_waits(admission):
    gate = ExecutionGate()
    with pool.Place():
        pass
    started = time.monotonic()
    with gate.admit():
        assert time.monotonic() - started < 0.1


def test_a_place_whose_process_has_gone_or_that_is_stale_is_nobodys(admission):
    line = pool._line()
    gone = f"{time.monotonic_ns() - 10**9:020d}.{_an_exited_pid()}.1"
    stale = f"{time.monotonic_ns() - int((pool.STALE_SECONDS + 1) * 1e9):020d}.{os.getpid()}.2"
    for name in (gone, stale):
        open(os.path.join(line, name), "w").close()
    with pool.Place() as place:
        assert place.first()
        assert pool.in_line() == [place.name]
    assert not os.path.exists(os.path.join(line, gone)) and not os.path.exists(os.path.join(line, stale))


def test_a_place_taken_before_is_first_until_it_leaves(admission):
    # The twin of the one above: a live, recent place comes first.
    with pool.Place() as older, pool.Place() as younger:
        assert older.first() and not younger.first()
        older.leave()
        assert younger.first()


def test_without_a_pool_only_this_processs_places_are_its_line(admission, settings, tmp_path):
    # Each worker's one turn: a place of another live process is not ahead of ours.
    settings.CODEJAIL_SLOT_DIR = str(tmp_path / "slots")
    other = subprocess.Popen(["sleep", "30"])
    try:
        name = f"{time.monotonic_ns() - 10**6:020d}.{other.pid}.1"
        open(os.path.join(pool._line(), name), "w").close()
        with pool.Place() as place:
            assert place.first() and pool.in_line() == [place.name]
        settings.CODEJAIL_SANDBOX_POOL_SIZE = 2  # its twin: with a pool, one line for every worker
        with pool.Place() as place:
            assert not place.first() and pool.in_line() == [name, place.name]
    finally:
        other.kill()
        other.wait()


def _an_exited_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid
