"""Sphinx configuration for codejail-service's documentation (`make docs`)."""
import os
import sys

DOCS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(DOCS_DIR, "_ext"))

project = "codejail-service"
author = "codejail-service authors"
copyright = "codejail-service authors"  # Sphinx's name for it

extensions = ["operator_reference"]
# The operator reference is built from the annotations in the package itself.
operator_reference_source = os.path.join(DOCS_DIR, "..", "codejail_service")

root_doc = "index"
exclude_patterns = ["_build"]
# Every cross-reference must resolve: a broken :ref: fails the build under -W.
nitpicky = True
html_theme = "alabaster"
html_static_path = []
