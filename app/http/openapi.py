"""The OpenAPI document, with what only the running server knows: the served models' names.

Every request body's `model` property gets them as `examples`, so a reader of `/docs` - and a
fuzzer such as schemathesis, whose example phase sends them - uses a model that exists instead
of an arbitrary string (which is a 404 and tests nothing past the lookup).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI


def with_model_examples(app: FastAPI, model_names: Callable[[], Sequence[str]]) -> None:
    """Make `app.openapi()` add `model_names()` as examples of every `model` property."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        names = list(model_names())
        for schema in document.get("components", {}).get("schemas", {}).values():
            model = schema.get("properties", {}).get("model")
            if model is not None:
                model["examples"] = names
        return document

    app.openapi = openapi  # type: ignore[method-assign]
