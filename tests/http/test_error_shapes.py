"""The error shape follows the path: OpenAI's under /v1/, TGI's everywhere else."""

from __future__ import annotations

import pytest

from app.http.errors import ErrorShapes
from app.openai.errors import OpenAIErrorShape
from app.serving.errors import AuthenticationError, InvalidRequestError, OverloadedError
from app.tgi.errors import TGIErrorShape

SHAPES = ErrorShapes(default=TGIErrorShape(retry_after_s=3), others=[OpenAIErrorShape(3)])


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v1/completions", OpenAIErrorShape),
        ("/v1/", OpenAIErrorShape),
        ("/v1", TGIErrorShape),
        ("/v10/x", TGIErrorShape),
        ("/generate", TGIErrorShape),
        ("/", TGIErrorShape),
    ],
)
def test_the_longest_matching_prefix_picks_the_shape(path: str, shape: type) -> None:
    assert isinstance(SHAPES.for_path(path), shape)


def test_a_429_says_when_to_retry_in_both_shapes() -> None:
    for path in ("/generate", "/v1/completions"):
        response = SHAPES.for_path(path).service_error(OverloadedError("full"))
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"


def test_openai_reports_invalid_requests_as_400_and_tgi_as_422() -> None:
    error = InvalidRequestError("bad")
    assert SHAPES.for_path("/v1/chat/completions").service_error(error).status_code == 400
    assert SHAPES.for_path("/generate").service_error(error).status_code == 422


def test_a_401_asks_for_a_bearer_key() -> None:
    response = SHAPES.for_path("/v1/models").service_error(AuthenticationError("no", "missing"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert b'"code":"missing"' in response.body
