"""
A run: what the admission gate hands out, and what every part of the sandbox acts on.

A ``Run`` holds its slot of the pool (pool.py: which sandbox user runs it), its mode (``WARM``:
forked by the slot's zygote, zygote_client.py; ``FRESH``: a new interpreter), and, once codejail
has made them, its run directory and its limits. It is passed down explicitly, from the view
through ``execution.run_code`` to ``codejail_extension.safe_exec``; only inside codejail's own
``jail_code`` is it carried by one context variable (codejail_extension.py).

What a run leaves (its processes' last exit, its ``tmp/`` and directory) is cleaned up after its
answer, as its slot is released (``release``): ``ending``, then ``cleanup``. The API releases the
slot once the answer has been sent (apps/api/v0/views.py).

It also keeps where its time went (``stages``: ``mark`` at each boundary), which the API answers
in a ``Server-Timing`` header up to the answer, and ``release`` logs after it with what the
run's processes used (``counts``); ``make bench`` sums both (docs/decisions/0011-a-run-costs-a-fork.rst).
"""
import contextlib
import logging
import time

from codejail_service.sandbox import config, pool

log = logging.getLogger(__name__)

WARM = "warm"
FRESH = "fresh"


# The stages of a run after its answer, in order (``release``).
AFTER_THE_ANSWER = ("answer", "leftovers", "cleanup", "release")


class Run:
    """One run of course code, from its admission to the release of its slot."""

    def __init__(self, slot, mode, waited=0.0):
        self.slot = slot
        self.mode = mode
        # Seconds per stage, in order: from "admit" (the wait for a slot) to "release".
        self.stages = {"admit": waited}
        self.counts = {}  # what the run's processes did, as counted by the zygote (page faults)
        self._last_mark = time.perf_counter()
        self.run_dir = None
        self.started = False  # its program started (codejail's next subprocess is its cleanup)
        self.status = None  # its program's exit status, once it has answered
        self.answered_an_object = False  # its program's stdout began as a JSON object does
        # codejail's limits for this run, as jail_code hands them to its subprocess.
        self.rlimits = ()
        self.realtime = None
        # Warm: its code needs no more than the slot's light zygote holds, and the modules beyond
        # that it names (zygote_client.needs).
        self.light = False
        self.uses = ()
        # Done as the slot is released, after the answer: ``ending`` (set once its program has
        # answered) waits until none of its processes is left; then ``cleanup``'s callbacks (last
        # pushed, first done) remove what it left in its directory, and the directory.
        self.ending = None
        self.cleanup = contextlib.ExitStack()
        self.released = False

    @classmethod
    def in_slot(cls, slot, waited=0.0):
        """
        A run in a held ``slot`` (after ``waited`` seconds for it): warm when the configuration says
        so and the slot is the pool's.
        """
        warm = config.current().warm and slot.index is not None
        return cls(slot, WARM if warm else FRESH, waited)

    def mark(self, stage):
        """The stage ``stage`` ended now: it took the time since the last mark (added up if repeated)."""
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._last_mark
        self._last_mark = now

    @property
    def seconds(self):
        """The run's time from its admission to the last mark."""
        return sum(self.stages.values()) - self.stages["admit"]

    def server_timing(self):
        """The stages so far as an HTTP ``Server-Timing`` value (milliseconds)."""
        return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in self.stages.items())
    @property
    def user(self):
        """The sandbox user the run's processes run as."""
        return self.slot.user

    @property
    def pooled(self):
        """True when the run holds a slot of the pool (its user's processes are all its own)."""
        return self.slot.index is not None

    def make_run_dir(self):
        """The run's directory, made in its slot's parent directory (pool.make_run_dir)."""
        self.run_dir = pool.make_run_dir(self.slot)
        return self.run_dir

    def release(self):
        """
        The run is over: end what is left of it (``ending``, ``cleanup``), then free its slot.
        Done once, however often called; what fails is logged, and the slot is freed all the same.
        """
        if self.released:
            return
        self.released = True
        try:
            self.mark("answer")  # since the program's answer: codejail reads the globals, the API answers
            if self.ending is not None:
                self.ending()
            self.mark("leftovers")  # the run's processes' last exit, and the check that none is left
            self.cleanup.close()
        except Exception:  # noqa: BLE001 -- after the answer: nobody else would see it
            log.exception("Cleaning up after %r failed", self)
        finally:
            self.mark("cleanup")  # its tmp/ and run directory
            self.slot.release()
            self.mark("release")
        # What the answer did not wait for (make bench reads it from the log).
        after = [f"{name} {self.stages[name] * 1000:.2f} ms" for name in AFTER_THE_ANSWER if name in self.stages]
        after += [f"{name} {count}" for name, count in self.counts.items()]
        log.info("Run in %s ended after its answer: %s", self.run_dir, ", ".join(after))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()

    def __repr__(self):
        return f"<Run {self.mode} as {self.user} in {self.run_dir}>"
