"""
Production settings: base defaults, then the YAML file named by ``CODEJAIL_SERVICE_CFG``.

Each top-level key of the YAML mapping replaces the setting of that name whole (as in other
Open edX services): to change one limit, give the complete ``CODE_JAIL`` dict.
"""

import os

import yaml
from django.core.exceptions import ImproperlyConfigured

from codejail_service.settings.base import *  # noqa: F403
from codejail_service.settings.base import apply_request_size_limit

# Egress is probed with a TCP connect to Cloudflare's public resolver on HTTPS: an IP literal
# (no DNS needed), anycast and answering almost everywhere, so a connect that does not go
# through really means egress is blocked. Override it in the YAML config when your policy
# allows some egress and you want to probe a specific destination.
CODEJAIL_EGRESS_CHECK = {"host": "1.1.1.1", "port": 443, "timeout": 2.0}


def load_yaml_config(path):
    """Read the YAML config file at ``path``; it must hold a mapping of setting names."""
    try:
        with open(path, encoding="utf-8") as config_file:
            config = yaml.safe_load(config_file)
    except OSError as exc:
        raise ImproperlyConfigured(f"Cannot read CODEJAIL_SERVICE_CFG file {path!r}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ImproperlyConfigured(f"CODEJAIL_SERVICE_CFG file {path!r} is not valid YAML: {exc}") from exc
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ImproperlyConfigured(
            f"CODEJAIL_SERVICE_CFG file {path!r} must hold a mapping of setting names, "
            f"not {type(config).__name__}"
        )
    return config


_config_path = os.environ.get("CODEJAIL_SERVICE_CFG")
if not _config_path:
    raise ImproperlyConfigured("Set CODEJAIL_SERVICE_CFG to the path of the service's YAML config file.")

vars().update(load_yaml_config(_config_path))
# Django's parse limits follow CODEJAIL_MAX_REQUEST_BYTES, whether or not the YAML changed it.
apply_request_size_limit(vars())
