"""Shared pieces of the OpenAI-API tests: the twins they serve and an official client for them."""

from __future__ import annotations

from pathlib import Path

from openai import OpenAI
from transformers import AutoTokenizer

from app.core.families import Family
from app.engines.base import encode_prompt
from tests.support.server import RunningServer

# Two families with different prompt formats: raw instruction (T5) and Alpaca (GPT-2).
FLAN_HUB_ID = "MBZUAI/LaMini-Flan-T5-77M"
GPT_HUB_ID = "MBZUAI/LaMini-GPT-124M"
FLAN = f"twin:{FLAN_HUB_ID}@tiny"
GPT = f"twin:{GPT_HUB_ID}@tiny"


def openai_client(server: RunningServer, api_key: str = "no-key-needed") -> OpenAI:
    """The official client pointed at `server`, failing fast (no retries)."""
    return OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0, timeout=60)


def prompt_token_count(checkpoint: Path, family: Family, instruction: str) -> int:
    """Tokens the server should bill for `instruction`: the family-formatted prompt, tokenised."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return len(encode_prompt(tokenizer, family, family.prompt_format.wrap(instruction)))
