"""
Settings for a developer's machine (``make serve`` with no config file).

Same as base: the sandbox paths are those deploy/provision.sh creates, and the egress check
targets loopback (so it fails honestly: nothing firewalls loopback).
"""

from codejail_service.settings.base import *  # noqa: F403

DEBUG = False  # DEBUG pages are HTML; the API answers JSON even while developing.
