"""
Settings for codejail-service, split by purpose.

- ``base``: defaults shared by every environment.
- ``production``: base + a YAML file named by ``CODEJAIL_SERVICE_CFG``.
- ``local``: a developer's machine.
- ``test``: the unit tests.
"""
