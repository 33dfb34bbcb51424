"""Bodies of the tokenizer routes, in the shapes the clients that call them send and read.

vLLM's (`/tokenize` with `prompt` or `messages`, `/detokenize`, `/tokenizer_info`) is what
lm-evaluation-harness's remote tokenizer and vLLM's clients speak; TGI's `/tokenize`
(`{"inputs", "parameters"}` -> a list of tokens with character offsets) is what
`text-generation` clients speak. Both share the route: the body's fields tell them apart.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.http.fields import require_encodable


def _encodable(value: Any) -> Any:
    require_encodable([value])
    return value


# Text a tokenizer can read (no lone surrogates).
Text = Annotated[str, AfterValidator(_encodable)]


class _Request(BaseModel):
    """Unknown fields and wrong JSON types are errors (`"tokens": ["1"]` is not token ids)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(default=None, description="A served model (default: the first).")


class TokenizeTextRequest(_Request):
    """vLLM's completion-style `/tokenize`: the text as sent, no prompt format."""

    prompt: Text
    add_special_tokens: bool = Field(
        default=True, description="Add the tokenizer's special tokens (T5's `</s>`)."
    )
    return_token_strs: bool | None = Field(default=False, description="Also return the tokens.")


class ChatMessageText(BaseModel):
    """A chat message as far as tokenizing goes: a role and text."""

    model_config = ConfigDict(extra="ignore", strict=True)

    role: str
    content: Text | None = None


class TokenizeChatRequest(_Request):
    """vLLM's chat-style `/tokenize`: the model input the conversation becomes (the
    conversation flattened into one instruction, in the family's prompt format)."""

    messages: list[ChatMessageText] = Field(min_length=1)
    add_generation_prompt: bool | None = Field(default=True, description="Accepted; always on.")
    add_special_tokens: bool = False
    return_token_strs: bool | None = False


class TokenizeResponse(BaseModel):
    """vLLM's `/tokenize` answer."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class TgiTokenizeParameters(BaseModel):
    """TGI sends its generation parameters along; none of them changes tokenization."""

    model_config = ConfigDict(extra="allow")


class TgiTokenizeRequest(_Request):
    """TGI's `/tokenize`: `inputs` tokenized as sent."""

    inputs: Text
    parameters: TgiTokenizeParameters | None = None


class TgiToken(BaseModel):
    """One token of TGI's `/tokenize` answer; `start`/`stop` are character offsets."""

    id: int
    text: str
    start: int
    stop: int


class DetokenizeRequest(_Request):
    """vLLM's `/detokenize`."""

    tokens: list[int] = Field(description="Token ids of the model's vocabulary.")


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    """vLLM's `/tokenizer_info`: the tokenizer's class, special tokens and limits."""

    model_config = ConfigDict(extra="allow")

    tokenizer_class: str
    eos_token: str | None = None
    bos_token: str | None = None
    pad_token: str | None = None
    unk_token: str | None = None
    model_max_length: int
    vocab_size: int
