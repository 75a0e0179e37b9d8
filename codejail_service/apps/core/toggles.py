"""Toggles of the service (settings only: there is no database for waffle)."""

from edx_toggles.toggles import SettingToggle

# .. toggle_name: CODEJAIL_ENABLED
# .. toggle_implementation: SettingToggle
# .. toggle_default: False
# .. toggle_description: Master switch for code execution. While False, every code-exec request
#   is refused with 503 and no code runs. Turn it on once GET /health/ answers 200, i.e. once
#   the startup safety checks have proved the sandbox confines code on this host.
# .. toggle_use_cases: open_edx
# .. toggle_creation_date: 2026-11-26
# .. toggle_warning: The service is unauthenticated; only expose it to the LMS/CMS.
CODEJAIL_ENABLED = SettingToggle("CODEJAIL_ENABLED", default=False, module_name=__name__)
