"""The service's API reference page, rendered from the app's own OpenAPI schema.

`render_api_reference` turns an OpenAPI document into Markdown (routes, parameters, request bodies,
responses, schemas); `reference_schema` builds the schema of the real app with the default limits,
over an engine stand-in (the routes do not depend on the model or the index, so neither is built).
Regenerate the committed page with ``make api-doc``, i.e.
``python -m uit_reid.serve.api_doc --write docs/serve_api.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

__all__ = ["REGENERATE", "main", "reference_schema", "render_api_reference"]

REGENERATE = "python -m uit_reid.serve.api_doc --write docs/serve_api.md"
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
_CONSTRAINTS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
                "pattern", "minItems", "maxItems", "enum", "format")


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _schema_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _cell(text: Any) -> str:
    """Table-cell text: one line, pipes escaped, '' → an em dash."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text or "—"


def _type(schema: dict[str, Any]) -> str:
    """A short Markdown type: `string`, list of [Hit](#schema-hit), `string` or `null`, ..."""
    if "$ref" in schema:
        name = _schema_name(schema["$ref"])
        return f"[{name}](#schema-{_anchor(name)})"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " or ".join(_type(s) for s in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(_type({**schema, "type": k}) for k in kind)
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    return f"`{kind}`" if kind else "any"


def _constraints(schema: dict[str, Any]) -> str:
    return ", ".join(f"{key} {schema[key]!r}" if key == "pattern" else f"{key} {schema[key]}"
                     for key in _CONSTRAINTS if key in schema)


def _default(schema: dict[str, Any]) -> str:
    return f"`{json.dumps(schema['default'])}`" if "default" in schema else ""


def _fields_table(schema: dict[str, Any]) -> list[str]:
    props = schema.get("properties", {})
    if not props:
        return [f"Type: {_type(schema)}.", ""]
    required = set(schema.get("required", ()))
    lines = ["| field | type | required | default | constraints | description |", "|---|---|---|---|---|---|"]
    for name, prop in props.items():
        lines.append(
            f"| `{name}` | {_cell(_type(prop))} | {'yes' if name in required else 'no'} | {_cell(_default(prop))} "
            f"| {_cell(_constraints(prop))} | {_cell(prop.get('description', ''))} |"
        )
    return [*lines, ""]


def _body_types(content: dict[str, Any]) -> str:
    parts = []
    for media, item in content.items():
        schema = item.get("schema")
        parts.append(f"`{media}`" + (f": {_type(schema)}" if schema else ""))
    return "; ".join(parts)


def _operation(path: str, method: str, op: dict[str, Any], schemas: dict[str, Any]) -> list[str]:
    title = f"{method.upper()} {path}"
    lines = [f"## `{title}` {{#{_anchor(title)}}}", ""]
    if op.get("summary"):
        lines += [f"**{op['summary']}.**" if not op["summary"].endswith(".") else f"**{op['summary']}**", ""]
    if op.get("description"):
        lines += [op["description"].strip(), ""]
    params = op.get("parameters", [])
    if params:
        lines += ["**Parameters**", "",
                  "| name | in | type | required | default | constraints | description |",
                  "|---|---|---|---|---|---|---|"]
        for p in params:
            schema = p.get("schema", {})
            lines.append(
                f"| `{p['name']}` | {p['in']} | {_cell(_type(schema))} | {'yes' if p.get('required') else 'no'} "
                f"| {_cell(_default(schema))} | {_cell(_constraints(schema))} "
                f"| {_cell(p.get('description', schema.get('description', '')))} |"
            )
        lines.append("")
    body = op.get("requestBody")
    if body:
        required = "required" if body.get("required") else "optional"
        lines += [f"**Request body** ({required}): {_body_types(body.get('content', {}))}", ""]
        for item in body.get("content", {}).values():
            ref = item.get("schema", {}).get("$ref")
            if ref:
                lines += _fields_table(schemas.get(_schema_name(ref), {}))
    lines += ["**Responses**", "", "| status | description | body |", "|---|---|---|"]
    for status, resp in sorted(op.get("responses", {}).items()):
        extra = "".join(f"; header `{name}`: {h.get('description', '')}" for name, h in resp.get("headers", {}).items())
        lines.append(f"| {status} | {_cell(resp.get('description', '') + extra)} | {_cell(_body_types(resp.get('content', {})))} |")
    return [*lines, ""]


def render_api_reference(schema: dict[str, Any]) -> str:
    """Markdown reference of an OpenAPI document: a route table, one section per route, the schemas."""
    schemas = schema.get("components", {}).get("schemas", {})
    info = schema.get("info", {})
    ops = [(path, method, item[method]) for path, item in schema.get("paths", {}).items()
           for method in _METHODS if method in item]
    lines = [
        "# Service API reference",
        "",
        f"<!-- generated from the app's OpenAPI schema by `{REGENERATE}` (or `make api-doc`); do not edit -->",
        "",
        f"{info.get('title', 'API')}: {info.get('description', '').strip()} These are the routes of the app "
        "that `uit-reid serve` runs, with the default limits (the command's flags change the numbers). A running "
        "service also serves this schema at `/openapi.json` and an interactive view at `/docs`; the search page "
        "at `/` and its static files are left out.",
        "",
    ]
    if "ErrorResponse" in schemas:
        lines += ["Every refusal has a 4xx status (503 for searches once a file the index reads changed on disk) "
                  'and a JSON body [ErrorResponse](#schema-errorresponse), `{"error": "<one line>"}`.', ""]
    lines += ["| route | summary |", "|---|---|"]
    for path, method, op in ops:
        title = f"{method.upper()} {path}"
        lines.append(f"| [`{title}`](#{_anchor(title)}) | {_cell(op.get('summary', ''))} |")
    lines.append("")
    for path, method, op in ops:
        lines += _operation(path, method, op, schemas)
    if schemas:
        lines += ["## Schemas", ""]
        for name, comp in schemas.items():
            lines += [f"### {name} {{#schema-{_anchor(name)}}}", ""]
            if comp.get("description"):
                lines += [comp["description"].strip(), ""]
            lines += _fields_table(comp)
    return "\n".join(lines).rstrip("\n") + "\n"


class _RoutesOnlyEngine:
    """What `create_app` asks of an engine while it declares the routes: the index size. It is never
    started or searched, so no model, index or torch tensor is built to render the page."""

    def __len__(self) -> int:
        return 2


def reference_schema() -> dict[str, Any]:
    """The OpenAPI schema of the real app with the default `ServeLimits`.

    The routes, parameters and models do not depend on the model or the gallery, so the app is built
    over an engine stand-in and an empty gallery: no model, index or encoder is needed.
    """
    from uit_reid.serve.app import ServeLimits, create_app
    from uit_reid.serve.gallery import GalleryImages

    engine: Any = _RoutesOnlyEngine()
    return create_app(engine, GalleryImages([], "."), ServeLimits()).openapi()


def main(argv: list[str] | None = None) -> int:
    """``python -m uit_reid.serve.api_doc [--write PATH]``: print (or write atomically) the reference page."""
    parser = argparse.ArgumentParser(prog="python -m uit_reid.serve.api_doc", description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="PATH", help="write the page to PATH (atomically) instead of stdout")
    args = parser.parse_args(argv)
    text = render_api_reference(reference_schema())
    if args.write:
        from uit_reid.io import atomic_write_text

        atomic_write_text(args.write, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
