"""
A run: what the admission gate hands out, and what every part of the sandbox acts on.

A ``Run`` holds its slot of the pool (pool.py: which sandbox user runs it), its mode (``WARM``:
forked by the slot's zygote, zygote_client.py; ``FRESH``: a new interpreter), and, once codejail
has made them, its run directory and its limits. It is passed down explicitly, from the view
through ``execution.run_code`` to ``codejail_extension.safe_exec``; only inside codejail's own
``jail_code`` is it carried by one context variable (codejail_extension.py).
"""

from codejail_service.sandbox import config, pool

WARM = "warm"
FRESH = "fresh"


class Run:
    """One run of course code, from its admission to the release of its slot."""

    def __init__(self, slot, mode):
        self.slot = slot
        self.mode = mode
        self.run_dir = None
        self.started = False  # its program started (codejail's next subprocess is its cleanup)
        self.status = None  # its program's exit status, once it has answered
        self.answered_an_object = False  # its program's stdout began as a JSON object does
        # codejail's limits for this run, as jail_code hands them to its subprocess.
        self.rlimits = ()
        self.realtime = None

    @classmethod
    def in_slot(cls, slot):
        """A run in a held ``slot``: warm when the configuration says so and the slot is the pool's."""
        warm = config.current().warm and slot.index is not None
        return cls(slot, WARM if warm else FRESH)

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
        """The run is over (its directory removed): free its slot."""
        self.slot.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()

    def __repr__(self):
        return f"<Run {self.mode} as {self.user} in {self.run_dir}>"
