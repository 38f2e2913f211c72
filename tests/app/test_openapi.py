"""The OpenAPI document is valid, and lists exactly the routes the API serves."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate

from edgectl.app.api import StatusApi
from edgectl.app.openapi import openapi_document


class _Nothing:
    """A provider that is never called: only the routes are looked at."""

    def status(self) -> dict[str, Any]:
        raise AssertionError

    def cycles(self, last: int | None = None) -> dict[str, Any]:
        raise AssertionError

    def availability(self) -> dict[str, Any]:
        raise AssertionError

    def leases_document(self) -> dict[str, Any]:
        raise AssertionError

    def request_lease(self, body: object) -> tuple[int, dict[str, Any]]:
        raise AssertionError

    def exposition(self) -> bytes:
        raise AssertionError

    def openapi(self) -> dict[str, Any]:
        raise AssertionError


def test_the_document_is_valid_openapi() -> None:
    validate(openapi_document())


def test_the_document_lists_the_routes_served_with_their_methods() -> None:
    nothing = _Nothing()
    app = StatusApi(nothing, "127.0.0.1:0", uplink=nothing)._app()
    served = {
        (r.resource.canonical, r.method.lower())
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    documented = {
        (path, method) for path, item in openapi_document()["paths"].items() for method in item
    }
    assert served == documented
