"""
The sandbox across the service's life, in gunicorn's master: what gunicorn_config.py's hooks call.

With ``preload_app`` the master imports the app (and Django is set up) before any hook runs; the
startup checks (apps/core/startup_checks.py) start the zygotes first, through ``start_zygotes``.
Each run holds a slot (a sandbox user) of the pool, whichever worker serves it; a slot is an
flock that the kernel drops when its holder dies, so when a worker is gone the master recovers
the slots it held.
"""

import logging

from codejail_service.sandbox import config, pool, processes, zygote_client

log = logging.getLogger(__name__)


def start_zygotes():
    """
    Start the zygote of every free slot that has none, all at once (they preload in parallel),
    when the warm sandbox is on. This process becomes a child subreaper first, so that it adopts
    them (each leaves its first process at once) and reaps them.
    """
    if not config.current().warm:
        return
    processes.become_child_subreaper()
    try:
        zygote_client.start_all()
    except Exception:
        # The startup checks start any zygote still missing, and say why not.
        log.exception("Could not start the warm sandbox zygotes ahead of the checks")


def service_starting():
    """gunicorn's ``on_starting``: adopt orphaned run processes."""
    processes.become_child_subreaper()


def worker_gone():
    """gunicorn's ``child_exit``: nothing the runs of a dead worker started may outlive it."""
    pool.recover_free_slots()


def service_stopping():
    """gunicorn's ``on_exit``: the slots' zygotes go with the service."""
    if config.current().warm:
        # Only free slots: a busy one belongs to another service sharing the pool.
        for slot in pool.free_slots():
            processes.kill_processes_of(slot.user)
