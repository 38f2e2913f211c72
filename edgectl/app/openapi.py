"""The OpenAPI 3.1 document of the local API, served at /v1/openapi.json.

The report and lease bodies are the JSON Schemas shipped in edgectl.schemas (schemas/ in
the repository), embedded as components, so that the document and what the API serves
cannot drift apart: tests validate served answers against these very schemas.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from edgectl import __version__


def schema(name: str) -> dict[str, Any]:
    """A schema file of edgectl.schemas, parsed."""
    text = resources.files("edgectl.schemas").joinpath(name).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _component(name: str) -> dict[str, Any]:
    # $schema and $id belong to a standalone file; a component is referenced by position.
    doc = dict(schema(name))
    doc.pop("$schema", None)
    doc.pop("$id", None)
    rebased: dict[str, Any] = _rebase(doc, f"#/components/schemas/{_key(name)}")
    return rebased


def _key(name: str) -> str:
    return name.removesuffix(".json").replace(".", "_").replace("-", "_")


def _rebase(node: Any, base: str) -> Any:
    """Internal "#/$defs/x" references of a file as references inside the component."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/"):
                out[k] = base + v[1:]
            else:
                out[k] = _rebase(v, base)
        return out
    if isinstance(node, list):
        return [_rebase(v, base) for v in node]
    return node


def _json(description: str, ref: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"schema": {"$ref": ref} if ref else {"type": "object"}}
    return {"description": description, "content": {"application/json": body}}


ERROR = {
    "description": "One line naming what was wrong",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            }
        }
    },
}


@cache
def openapi_document() -> dict[str, Any]:
    """The document: every route of the local API, with the shipped schemas."""
    report = "#/components/schemas/" + _key("availability-report.v1.json")
    lease = "#/components/schemas/" + _key("lease.v1.json")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edgectl local API",
            "version": __version__,
            "description": "The site controller's state, availability and power leases. "
            "Served on loopback or a unix socket only; no authentication.",
        },
        "paths": {
            "/v1/status": {
                "get": {
                    "summary": "State, cycle statistics, sources, racks, the last decision",
                    "responses": {"200": _json("The status document")},
                }
            },
            "/v1/cycles": {
                "get": {
                    "summary": "The flight recorder (replayable by edgectl dispatch)",
                    "parameters": [
                        {
                            "name": "last",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1},
                        }
                    ],
                    "responses": {"200": _json("The recorder document"), "400": ERROR},
                }
            },
            "/v1/health": {
                "get": {
                    "summary": "Whether the controller runs on inputs it trusts",
                    "responses": {"200": _json("NORMAL or DEGRADED"), "503": _json("Otherwise")},
                }
            },
            "/v1/availability": {
                "get": {
                    "summary": "The latest availability report",
                    "responses": {"200": _json("The report", report)},
                }
            },
            "/v1/leases": {
                "get": {
                    "summary": "The leases in force",
                    "responses": {"200": _json("The leases", lease)},
                },
                "post": {
                    "summary": "Ask for a lease, or renew one (same id, same terms)",
                    "requestBody": {"required": True, **_json("The request", lease)},
                    "responses": {
                        "200": _json("Granted (possibly for less) or refused, with why", lease),
                        "400": ERROR,
                    },
                },
            },
            "/v1/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json("OpenAPI 3.1")}}
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "The Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {
                _key("availability-report.v1.json"): _component("availability-report.v1.json"),
                _key("lease.v1.json"): _component("lease.v1.json"),
            }
        },
    }
