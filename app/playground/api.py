"""`GET /families` and `POST /prompt`: the registry and the prompt formats, over HTTP.

They mirror two commands: `lamini-serve families` and `lamini-serve prompt MODEL "..."`. The
playground reads them to fill in each model's card settings and to show the exact model input;
other clients can ask the same. Errors have TGI's shape, like every route outside `/v1`.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.http.errors import ErrorResponse, documented_errors
from app.http.fields import require_encodable
from app.http.requests import served_model
from app.playground.cards import FamilyCard, family_cards

router = APIRouter(tags=["Models and prompts"])


_ERRORS = documented_errors(
    ErrorResponse,
    {
        400: "Body is not JSON or not UTF-8",
        401: "Missing or wrong API key",
        404: "Unknown model",
        422: "Invalid body",
        503: "Model loading or server shutting down",
    },
)


class PromptRequest(BaseModel):
    """An instruction and the served model whose prompt format wraps it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: str = Field(description="The instruction, as a generation route would get it.")
    model: str | None = Field(default=None, description="Served model (default: the first).")

    @field_validator("inputs")
    @classmethod
    def _inputs_are_text(cls, inputs: str) -> str:
        if not inputs.strip():
            raise ValueError("must not be blank: send the instruction to format")
        require_encodable([inputs])
        return inputs


class PromptResponse(BaseModel):
    """The exact text the model is given for the instruction, and its tokens."""

    model: str
    family: str
    prompt_format: str
    model_input: str = Field(description="The formatted text, byte for byte.")
    input_tokens: int = Field(description="How many tokens the model input is.")
    token_ids: list[int]
    max_input_tokens: int = Field(description="The most input tokens this model accepts.")


@router.get("/families", response_model=list[FamilyCard], responses=_ERRORS)
async def list_families() -> list[FamilyCard]:
    """Every model family: prompt format, model-card settings, example instructions."""
    return family_cards()


@router.post("/prompt", response_model=PromptResponse, responses=_ERRORS)
async def render_prompt(body: PromptRequest, request: Request) -> PromptResponse:
    """The instruction wrapped in the model family's prompt format, as `lamini-serve prompt`
    prints it, with its token ids from the model's own tokenizer."""
    served = served_model(request, body.model)
    model_input, token_ids = await asyncio.to_thread(served.preparer.model_input, body.inputs)
    return PromptResponse(
        model=served.name,
        family=served.family.name,
        prompt_format=served.family.prompt_format.name,
        model_input=model_input,
        input_tokens=len(token_ids),
        token_ids=token_ids,
        max_input_tokens=served.engine.info.max_input_tokens,
    )
