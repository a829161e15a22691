"""How the controllers document a response in the OpenAPI schema (one way for every feature module).

Litestar's `ResponseSpec` generates an example for each documented response by default, with polyfactory and
Faker: random values that say nothing about the API, and importing them cost every agent ~7 MB of RSS (60.6 ->
53.9 MB for the built app), which the 80 MB budget with a 10 MiB store (issue 9) could not spare.
"""

from __future__ import annotations

from typing import Any

from litestar.openapi.datastructures import ResponseSpec


def response_spec(data_container: Any, description: str, **kwargs: Any) -> ResponseSpec:
    """A documented response without generated examples."""
    return ResponseSpec(data_container=data_container, description=description, generate_examples=False, **kwargs)
