"""Response grammars on the GPT-2 vocabulary of a tiny twin: masks follow the JSON schema
token by token, and a finished document leaves only end-of-sequence."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoTokenizer

from app.engines.grammar import GrammarCompiler, GrammarError, ResponseGrammar

GPT_HUB_ID = "MBZUAI/LaMini-GPT-124M"
EOS = 50256
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer(tiny_twin: Callable[[str], Path]) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_twin(GPT_HUB_ID)))


@pytest.fixture(scope="module")
def compiler(tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, 50257, [EOS])


def test_schema_constraint_writes_only_valid_json(
    compiler: GrammarCompiler, tokenizer: Any
) -> None:
    """Always taking the lowest allowed id (an arbitrary policy) still yields the schema's
    document, and then only eos is allowed."""
    constraint = compiler.constraint(ResponseGrammar(SCHEMA))
    chosen: list[int] = []
    while not constraint.complete and len(chosen) < 30:
        allowed = np.flatnonzero(constraint.allowed())
        token = int(allowed[allowed != EOS][0]) if (allowed != EOS).any() else EOS
        if token == EOS:
            break
        constraint.advance(token)
        chosen.append(token)
    text = tokenizer.decode(chosen)
    assert set(json.loads(text)) == {"ok"}
    assert np.flatnonzero(constraint.allowed()).tolist() == [EOS]


def test_json_object_starts_with_a_brace(compiler: GrammarCompiler) -> None:
    constraint = compiler.constraint(ResponseGrammar())
    allowed = np.flatnonzero(constraint.allowed())
    assert allowed.size > 0
    assert 90 in allowed.tolist()  # "{"
    assert 64 not in allowed.tolist()  # "a"


def test_an_invalid_schema_is_a_grammar_error(compiler: GrammarCompiler) -> None:
    with pytest.raises(GrammarError):
        compiler.constraint(ResponseGrammar({"type": "no-such-type"}))
