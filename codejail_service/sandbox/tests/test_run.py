"""A run's release: after its answer, what is left of it is ended and removed, then its slot is freed."""
import logging
from unittest import mock

from codejail_service.sandbox.run import FRESH, Run


def test_release_ends_the_run_then_cleans_up_last_pushed_first_then_frees_the_slot_once():
    events = []
    slot = mock.Mock(index=None, user="sbx")
    slot.release.side_effect = lambda: events.append("slot")
    run = Run(slot, FRESH)
    run.cleanup.callback(events.append, "run directory")
    run.cleanup.callback(events.append, "tmp")
    run.ending = lambda: events.append("processes")
    run.release()
    run.release()
    assert events == ["processes", "tmp", "run directory", "slot"]
    assert {"leftovers", "cleanup", "release"} <= set(run.stages)


def test_a_failed_cleanup_is_logged_and_the_slot_freed_all_the_same(caplog):
    # The twin of the one above, when its ending fails.
    slot = mock.Mock(index=None, user="sbx")
    run = Run(slot, FRESH)
    run.ending = mock.Mock(side_effect=OSError("gone"))
    with caplog.at_level(logging.ERROR):
        run.release()
    slot.release.assert_called_once_with()
    assert "Cleaning up after" in caplog.text and "gone" in caplog.text
