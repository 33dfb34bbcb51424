"""Pydantic pieces every wire API's schemas share: what a valid number or text is, and one way
to refuse a parameter the server cannot honour.

Clients send every parameter their API defines, often at a neutral value (`best_of: 1`,
`logit_bias: {}`), so such parameters are declared and accepted at a value the server can
honour, and refused naming the parameter otherwise - never silently ignored. An API lists its
rules as `{field name: HonourRule}` and calls `check_honoured` from a field validator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, ValidationInfo
from pydantic_core import PydanticCustomError

# NaN and infinities are valid JSON for Python's parser, never valid sampling settings.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


def invalid(reason: str) -> PydanticCustomError:
    """A value the API defines but this one is wrong (the error code `invalid_value`)."""
    return PydanticCustomError("invalid_value", reason)


def unsupported(reason: str) -> PydanticCustomError:
    """A parameter (or value) the API defines that these models cannot honour."""
    return PydanticCustomError("unsupported_parameter", reason)


def require_encodable(texts: Iterable[Any]) -> None:
    """Refuse text no tokenizer can read: lone surrogates, legal in JSON escapes, not UTF-8."""
    for text in texts:
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise invalid("text contains a lone surrogate (invalid unicode)") from None


@dataclass(frozen=True)
class HonourRule:
    """Which values of a parameter the server can honour, and what to say about the others."""

    accepts: Callable[[Any], bool]
    reason: str

    @classmethod
    def only(cls, name: str, *values: Any) -> HonourRule:
        """A parameter accepted only at these (neutral) values."""
        listed = " or ".join(repr(value) for value in values)
        return cls(lambda value: value in values, f"{name} is not supported (only {listed})")


def check_honoured(rules: Mapping[str, HonourRule], value: Any, info: ValidationInfo) -> Any:
    """Let `value` through when unset or honourable; otherwise fail naming the field."""
    if value is None or info.field_name is None:
        return value
    rule = rules[info.field_name]
    if not rule.accepts(value):
        raise unsupported(rule.reason)
    return value
