"""The tiny twins the cross-family tests loop over."""

from __future__ import annotations

# One tiny twin per family: the models every cross-family test loops over.
FAMILY_TWINS: dict[str, str] = {
    "lamini-t5": "MBZUAI/LaMini-T5-61M",
    "lamini-flan-t5": "MBZUAI/LaMini-Flan-T5-77M",
    "lamini-cerebras": "MBZUAI/LaMini-Cerebras-111M",
    "lamini-gpt": "MBZUAI/LaMini-GPT-124M",
    "lamini-neo": "MBZUAI/LaMini-Neo-125M",
    "opt-iml": "facebook/opt-iml-max-1.3b",
    "flant5-dolly": "jmhessel/flant5-dolly-xxl",
}

# The model the third-party tool tests (tests/tools/) serve: decoder-only, so it can score
# prompts (echo + logprobs) as evaluation harnesses need.
TOOLS_HUB_ID = FAMILY_TWINS["lamini-gpt"]
TOOLS_MODEL = f"twin:{TOOLS_HUB_ID}@tiny"
