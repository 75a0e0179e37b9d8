"""
Sphinx directives that build the operator reference from the code.

``.. configuration-table::`` renders the configuration table (codejail_service/configuration.py:
every operator-facing name, its type, default, unit, readers and aliases).

``.. annotated-toggles::`` lists every ``.. toggle_name:`` annotation,
``.. annotated-settings::`` every ``.. setting_name:`` and
``.. annotated-custom-attributes::`` every ``.. custom_attribute_name:``
annotation found under ``operator_reference_source`` (conf.py), using
code-annotations' own parser and configurations, so the page can only say
what the code says.

Malformed annotations (a missing description, an unknown toggle type) and a
directive that finds nothing are reported as Sphinx warnings: with ``-W`` the
docs build fails rather than publishing an incomplete reference.
"""
import importlib.util
import json
import os

from code_annotations.base import AnnotationConfig
from code_annotations.contrib.config import FEATURE_TOGGLE_ANNOTATIONS_CONFIG_PATH, SETTING_ANNOTATIONS_CONFIG_PATH
from code_annotations.find_static import StaticSearch
from docutils import nodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

CUSTOM_ATTRIBUTE_CONFIG_PATH = os.path.join(os.path.dirname(__file__), "custom_attribute_annotations.yaml")


def find_annotation_groups(source_path, config_path, name_token):
    """
    Return ({name: {token: value, "filename", "line_number"}}, [error, ...]).
    """
    config = AnnotationConfig(str(config_path), verbosity=-1, source_path_override=source_path)
    search = StaticSearch(config)
    results = search.search()
    search.check_results(results)
    errors = list(search.errors)
    found = {}
    for filename in sorted(results):
        for group in search.iter_groups(results[filename]):
            tokens = {a["annotation_token"]: a["annotation_data"] for a in group}
            if name_token not in tokens:
                continue
            name = tokens[name_token]
            if name in found:
                errors.append(f"{name} is annotated twice: {found[name]['filename']} and {filename}")
            entry = dict(tokens)
            # code-annotations reports paths relative to the searched folder.
            entry["filename"] = os.path.relpath(os.path.join(source_path, filename), os.path.dirname(source_path))
            entry["line_number"] = group[0]["line_number"]
            found[name] = entry
    return found, errors


def _text(value):
    """Annotation values may span several comment lines; join them."""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return " ".join(str(value).split())


class _AnnotationDirective(SphinxDirective):
    """Common part: search, warn, render one section per annotated name."""

    has_content = False
    config_path = None
    name_token = None
    kind = None
    fields = ()

    def run(self):
        source_path = os.path.abspath(self.env.config.operator_reference_source)
        found, errors = find_annotation_groups(source_path, self.config_path, self.name_token)
        for error in errors:
            logger.warning("%s annotation error: %s", self.kind, error, location=self.get_location())
        if not found:
            logger.warning("no %s annotations found under %s", self.kind, source_path, location=self.get_location())
        # Rebuild this page when an annotated file changes.
        for entry in found.values():
            self.env.note_dependency(os.path.join(os.path.dirname(source_path), entry["filename"]))
        sections = []
        for name in sorted(found):
            entry = found[name]
            section = nodes.section(ids=[nodes.make_id(f"{self.kind}-{name}")])
            section += nodes.title(text=name)
            field_list = nodes.field_list()
            for label, token in self.fields:
                if token in entry:
                    field_list += self._field(label, _text(entry[token]))
            field_list += self._field("Source", f"{entry['filename']}, line {entry['line_number']}")
            section += field_list
            sections.append(section)
        return sections

    @staticmethod
    def _field(label, text):
        field = nodes.field()
        field += nodes.field_name(text=label)
        field += nodes.field_body("", nodes.paragraph(text=text))
        return field


class AnnotatedToggles(_AnnotationDirective):
    """Every feature toggle (OEP-17 ``.. toggle_*:`` annotations)."""

    config_path = FEATURE_TOGGLE_ANNOTATIONS_CONFIG_PATH
    name_token = ".. toggle_name:"
    kind = "toggle"
    fields = (
        ("Implementation", ".. toggle_implementation:"),
        ("Default", ".. toggle_default:"),
        ("Description", ".. toggle_description:"),
        ("Use cases", ".. toggle_use_cases:"),
        ("Created", ".. toggle_creation_date:"),
        ("Warning", ".. toggle_warning:"),
    )


class AnnotatedSettings(_AnnotationDirective):
    """Every documented setting (``.. setting_*:`` annotations)."""

    config_path = SETTING_ANNOTATIONS_CONFIG_PATH
    name_token = ".. setting_name:"
    kind = "setting"
    fields = (
        ("Default", ".. setting_default:"),
        ("Description", ".. setting_description:"),
        ("Warning", ".. setting_warning:"),
    )


class AnnotatedCustomAttributes(_AnnotationDirective):
    """Every telemetry attribute (``.. custom_attribute_*:`` annotations)."""

    config_path = CUSTOM_ATTRIBUTE_CONFIG_PATH
    name_token = ".. custom_attribute_name:"
    kind = "custom-attribute"
    fields = (("Description", ".. custom_attribute_description:"),)


def load_configuration_table(path):
    """The configuration module at ``path`` (data only: loaded on its own, without the app)."""
    spec = importlib.util.spec_from_file_location("codejail_service_configuration", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _value(value):
    return "unset" if value is None else json.dumps(value)


class ConfigurationTable(SphinxDirective):
    """Every operator-facing name, from the configuration table, one section each."""

    has_content = False

    def run(self):
        path = os.path.join(os.path.abspath(self.env.config.operator_reference_source), "configuration.py")
        self.env.note_dependency(path)
        table = load_configuration_table(path).TABLE
        sections = []
        for entry in table:
            section = nodes.section(ids=[nodes.make_id(f"name-{entry.name}")])
            section += nodes.title(text=entry.name)
            field_list = nodes.field_list()
            field_list += _AnnotationDirective._field("Type", entry.type + (f" ({entry.unit})" if entry.unit else ""))
            field_list += _AnnotationDirective._field("Default", _value(entry.default))
            field_list += _AnnotationDirective._field("Read by", ", ".join(
                f"{reader} ({entry.name_for(reader)})" if reader in entry.aliases else reader
                for reader in entry.readers))
            for reader, value in entry.overrides.items():
                field_list += _AnnotationDirective._field(f"Set by {reader}", _value(value))
            field_list += _AnnotationDirective._field("Description", entry.description)
            section += field_list
            sections.append(section)
        return sections


def setup(app):
    app.add_config_value("operator_reference_source", "", "env")
    app.add_directive("annotated-toggles", AnnotatedToggles)
    app.add_directive("annotated-settings", AnnotatedSettings)
    app.add_directive("annotated-custom-attributes", AnnotatedCustomAttributes)
    app.add_directive("configuration-table", ConfigurationTable)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
