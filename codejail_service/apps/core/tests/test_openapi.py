"""The OpenAPI schema: generated from the views, served as JSON, and the checked-in copy is current."""

import io
import json
import pathlib

import yaml
from django.core.management import call_command

CHECKED_IN = pathlib.Path(__file__).resolve().parents[4] / "docs" / "openapi.yaml"


def _generated():
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    return out.getvalue()


def test_checked_in_schema_is_current():
    """Regenerate with `make openapi` after changing an endpoint."""
    assert _generated() == CHECKED_IN.read_text(encoding="utf-8")


def test_schema_documents_every_answer_of_code_exec():
    schema = yaml.safe_load(_generated())
    assert set(schema["paths"]) == {"/api/v0/code-exec", "/health/"}
    post = schema["paths"]["/api/v0/code-exec"]["post"]
    assert set(post["responses"]) == {"200", "400", "411", "413", "503"}
    request = schema["components"]["schemas"]["CodeExecRequest"]
    assert request["required"] == ["payload"]
    assert set(request["properties"]) == {"payload", "python_lib.zip"}


def test_schema_is_served_as_json(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == yaml.safe_load(CHECKED_IN.read_text(encoding="utf-8"))
