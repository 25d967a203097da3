"""The committed API reference page matches the app's schema, and the renderer covers every route and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from uit_reid.serve.api_doc import REGENERATE, main, reference_schema, render_api_reference

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "serve_api.md"
METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def schema() -> dict:
    return reference_schema()


def section(text: str, heading: str) -> str:
    """The text of the section that starts with ``heading`` (up to the next heading of any level)."""
    start = text.index(heading)
    ends = [i for i in (text.find("\n## ", start + 1), text.find("\n### ", start + 1)) if i != -1]
    return text[start : min(ends, default=len(text))]


def test_committed_page_is_current(schema) -> None:
    expected = render_api_reference(schema)
    assert PAGE.read_text(encoding="utf-8") == expected, (
        f"{PAGE.relative_to(ROOT)} is out of date with the app's OpenAPI schema: regenerate it with "
        f"`make api-doc` or `{REGENERATE}`"
    )


def test_every_route_parameter_and_response_is_rendered(schema) -> None:
    text = render_api_reference(schema)
    routes = [(p, m, op) for p, item in schema["paths"].items() for m, op in item.items() if m in METHODS]
    assert {(m.upper(), p) for p, m, _ in routes} == {
        ("GET", "/search"), ("POST", "/search"), ("GET", "/image/{image_id}"), ("GET", "/healthz"), ("GET", "/stats"),
        ("GET", "/metrics")}
    for path, method, op in routes:
        body = section(text, f"## `{method.upper()} {path}`")
        assert op["summary"] in body
        for param in op.get("parameters", []):
            row = next(line for line in body.splitlines() if line.startswith(f"| `{param['name']}` |"))
            assert f"| {param['in']} |" in row and ("| yes |" if param["required"] else "| no |") in row
            assert param["description"] in row
        for status, resp in op["responses"].items():
            row = next(line for line in body.splitlines() if line.startswith(f"| {status} |"))
            assert resp["description"] in row
            if int(status) >= 400 and path != "/healthz":  # every refusal is documented as the {"error": ...} body
                assert "[ErrorResponse](#schema-errorresponse)" in row
            elif int(status) >= 400:  # /healthz's 503 is its own answer, with the {"error": ...} field
                assert "[Health](#schema-health)" in row and "error" in schema["components"]["schemas"]["Health"][
                    "properties"]
    for name, comp in schema["components"]["schemas"].items():
        body = section(text, f"### {name} {{#schema-")
        for field in comp.get("properties", {}):
            assert f"| `{field}` |" in body, (name, field)


def test_error_shape_and_limits_come_from_the_app(schema) -> None:
    assert schema["components"]["schemas"]["ErrorResponse"]["required"] == ["error"]
    q = next(p for p in schema["paths"]["/search"]["get"]["parameters"] if p["name"] == "q")
    assert "1 to 512 characters" in q["description"]  # ServeLimits.max_query_chars, the default
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's own 422 shape is never sent


def test_renders_types_defaults_and_constraints() -> None:
    schema = {
        "info": {"title": "t", "description": "d."},
        "paths": {"/x/{n}": {"put": {
            "summary": "Put x",
            "parameters": [
                {"name": "n", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0, "maximum": 9},
                 "description": "a | number"},
                {"name": "mode", "in": "query", "schema": {"type": "string", "enum": ["a", "b"], "default": "a"}},
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/B"}}}},
            "responses": {"204": {"description": "done"}},
        }}},
        "components": {"schemas": {"B": {"properties": {"tags": {"type": "array", "items": {"type": "string"},
                                                                 "maxItems": 3}}, "required": ["tags"]}}},
    }
    text = render_api_reference(schema)
    assert "| [`PUT /x/{n}`](#put-x-n) | Put x |" in text
    assert "| `n` | path | `integer` | yes | — | minimum 0, maximum 9 | a \\| number |" in text
    assert "| `mode` | query | `string` | no | `\"a\"` | enum ['a', 'b'] | — |" in text
    assert "**Request body** (required): `application/json`: [B](#schema-b)" in text
    assert text.count("| `tags` | list of `string` | yes | — | maxItems 3 | — |") == 2  # under the route and in Schemas
    assert "| 204 | done | — |" in text


def test_write_option_writes_the_page(tmp_path, capsys) -> None:
    out = tmp_path / "api.md"
    assert main(["--write", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == PAGE.read_text(encoding="utf-8")
    assert main([]) == 0
    assert capsys.readouterr().out == PAGE.read_text(encoding="utf-8")
