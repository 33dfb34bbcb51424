"""Tokenizer routes: `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info`.

Benchmark and evaluation clients count and cut prompts with the served model's own tokenizer:
lm-evaluation-harness uses these routes instead of downloading a tokenizer when the server has
them (its `tokenizer_backend` "auto" checks `/tokenizer_info` and `/tokenize`). Text is
tokenized as sent - no prompt format - which is also how `echo` scores a prompt and how
token-id prompts reach the model; a chat `messages` body gets exactly the model input the
chat route would build. The model is chosen by the body's `model` or `?model=`.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query, Request

from app.core.chat import ChatTurn, chat_to_instruction
from app.http.errors import ErrorResponse, documented_errors
from app.http.requests import served_model
from app.serving.errors import InvalidRequestError
from app.serving.served_model import ServedModel
from app.tokenize.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TgiToken,
    TgiTokenizeRequest,
    TokenizeChatRequest,
    TokenizeResponse,
    TokenizerInfo,
    TokenizeTextRequest,
)

router = APIRouter(tags=["Tokenizer"])

_ERRORS = documented_errors(
    ErrorResponse,
    {
        400: "Body is not JSON or not UTF-8",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Body too large",
        422: "Invalid body (or token ids outside the vocabulary)",
        503: "Model loading or server shutting down",
    },
)
ModelQuery = Query(default=None, description="Served model to use (default: the first).")


def _model(request: Request, body_model: str | None, query_model: str | None) -> ServedModel:
    return served_model(request, query_model or body_model)


def _ids(served: ServedModel, text: str, add_special_tokens: bool) -> list[int]:
    encoded = served.engine.tokenizer(text, add_special_tokens=add_special_tokens, verbose=False)
    return list(encoded["input_ids"])


def _vllm_tokens(
    served: ServedModel, ids: list[int], return_token_strs: bool | None
) -> TokenizeResponse:
    tokenizer = served.engine.tokenizer
    return TokenizeResponse(
        count=len(ids),
        max_model_len=served.engine.info.max_total_tokens,
        tokens=ids,
        token_strs=tokenizer.convert_ids_to_tokens(ids) if return_token_strs else None,
    )


def _tgi_tokens(served: ServedModel, text: str) -> list[TgiToken]:
    """Every token with the characters of `text` it covers (special tokens cover none)."""
    encoded = served.engine.tokenizer(text, return_offsets_mapping=True, verbose=False)
    return [
        TgiToken(id=token_id, text=text[start:stop], start=start, stop=stop)
        for token_id, (start, stop) in zip(
            encoded["input_ids"], encoded["offset_mapping"], strict=True
        )
    ]


@router.post(
    "/tokenize",
    response_model=TokenizeResponse | list[TgiToken],
    responses=_ERRORS,
    summary="Tokenize text or a chat (vLLM's body), or TGI's `inputs` (TGI's answer)",
)
async def tokenize(
    request: Request,
    body: TokenizeTextRequest | TokenizeChatRequest | TgiTokenizeRequest,
    model: str | None = ModelQuery,
) -> TokenizeResponse | list[TgiToken]:
    served = _model(request, body.model, model)
    # Tokenizing a long text is real work: off the event loop, like every prompt's.
    if isinstance(body, TgiTokenizeRequest):
        return await asyncio.to_thread(_tgi_tokens, served, body.inputs)
    if isinstance(body, TokenizeChatRequest):
        turns = [ChatTurn(m.role, m.content or "") for m in body.messages]
        try:
            instruction = chat_to_instruction(turns)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        _, ids = await asyncio.to_thread(served.preparer.model_input, instruction)
    else:
        ids = await asyncio.to_thread(_ids, served, body.prompt, body.add_special_tokens)
    return _vllm_tokens(served, ids, body.return_token_strs)


@router.post(
    "/detokenize",
    response_model=DetokenizeResponse,
    responses=_ERRORS,
    summary="Token ids back to text (vLLM)",
)
async def detokenize(
    request: Request, body: DetokenizeRequest, model: str | None = ModelQuery
) -> DetokenizeResponse:
    served = _model(request, body.model, model)
    ids = served.preparer.checked_ids(body.tokens, allow_empty=True)
    return DetokenizeResponse(prompt=served.engine.tokenizer.decode(ids))


@router.get(
    "/tokenizer_info",
    response_model=TokenizerInfo,
    responses=_ERRORS,
    summary="The served model's tokenizer: class, special tokens, limits (vLLM)",
)
async def tokenizer_info(request: Request, model: str | None = ModelQuery) -> TokenizerInfo:
    served = _model(request, None, model)
    tokenizer = served.engine.tokenizer
    return TokenizerInfo(
        tokenizer_class=type(tokenizer).__name__,
        eos_token=tokenizer.eos_token,
        bos_token=tokenizer.bos_token,
        pad_token=tokenizer.pad_token,
        unk_token=tokenizer.unk_token,
        model_max_length=served.engine.info.max_total_tokens,
        vocab_size=served.preparer.vocab_size,
    )
