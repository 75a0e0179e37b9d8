"""Settings for the unit tests: nothing here may need the sandbox, sudo or the network."""

from codejail_service.settings.base import *  # noqa: F403

# Execution is switched on per test where a test needs it.
CODEJAIL_ENABLED = False

# No sandbox users here: tests that need the pool set its size themselves.
CODEJAIL_SANDBOX_POOL_SIZE = 0

# Never leaves the machine; the webapp_egress tests mock the socket anyway.
CODEJAIL_EGRESS_CHECK = {"host": "127.0.0.1", "port": 9, "timeout": 0.5}
