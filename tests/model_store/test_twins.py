"""Twins: `lamini-serve twin` writes a loadable checkpoint of every zoo model, with the real
architecture at full size and the real class, vocabulary and special tokens at tiny size."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from app.cli import main
from app.core.families import SOURCE_MODEL_CONFIG_KEY, all_hub_ids, family_for_checkpoint
from app.core.families import family_for_hub_id as family_of
from model_store.twins import TwinSize, twin_config

# Parameter counts the model names (and the T5 table of shared/MODELS.md) promise.
EXPECTED_PARAMS = {
    "MBZUAI/LaMini-T5-61M": 61e6,
    "MBZUAI/LaMini-T5-223M": 223e6,
    "MBZUAI/LaMini-T5-738M": 738e6,
    "MBZUAI/LaMini-Flan-T5-77M": 77e6,
    "MBZUAI/LaMini-Flan-T5-248M": 248e6,
    "MBZUAI/LaMini-Flan-T5-783M": 783e6,
    "jmhessel/flant5-dolly-xxl": 11e9,
    "MBZUAI/LaMini-GPT-124M": 124e6,
    "MBZUAI/LaMini-GPT-774M": 774e6,
    "MBZUAI/LaMini-GPT-1.5B": 1.5e9,
    "MBZUAI/LaMini-Cerebras-111M": 111e6,
    "MBZUAI/LaMini-Cerebras-256M": 256e6,
    "MBZUAI/LaMini-Cerebras-590M": 590e6,
    "MBZUAI/LaMini-Cerebras-1.3B": 1.3e9,
    "MBZUAI/LaMini-Neo-125M": 125e6,
    "MBZUAI/LaMini-Neo-1.3B": 1.3e9,
    "facebook/opt-iml-max-1.3b": 1.3e9,
    "facebook/opt-iml-1.3b": 1.3e9,
}
VOCAB = {"t5": 32128, "gpt2": 50257, "gpt_neo": 50257, "opt": 50272}
# (pad, eos) token ids per architecture (GPT-2 BPE models have no pad token).
SPECIAL_IDS = {"t5": (0, 1), "gpt2": (None, 50256), "gpt_neo": (None, 50256), "opt": (1, 2)}


def _auto_model(hub_id: str) -> type:
    family = family_of(hub_id)
    assert family is not None
    return AutoModelForSeq2SeqLM if family.is_seq2seq else AutoModelForCausalLM


def _build_with_cli(hub_id: str, out_dir: Path, *extra: str) -> None:
    assert main(["twin", hub_id, str(out_dir), *extra]) == 0


@pytest.mark.parametrize("hub_id", EXPECTED_PARAMS)
def test_full_twin_config_has_the_real_parameter_count(hub_id: str) -> None:
    with torch.device("meta"):
        model = _auto_model(hub_id).from_config(twin_config(hub_id, TwinSize.FULL))

    assert model.num_parameters() == pytest.approx(EXPECTED_PARAMS[hub_id], rel=0.04)


def test_every_zoo_model_has_a_twin() -> None:
    assert set(EXPECTED_PARAMS) == set(all_hub_ids())


def test_tiny_twin_of_every_zoo_model_via_the_cli(tmp_path: Path) -> None:
    for hub_id in all_hub_ids():
        out_dir = tmp_path / hub_id.replace("/", "_")
        _build_with_cli(hub_id, out_dir, "--size", "tiny")

        model = _auto_model(hub_id).from_pretrained(out_dir)
        tokenizer = AutoTokenizer.from_pretrained(out_dir)
        config = model.config
        family = family_of(hub_id)
        assert family is not None
        assert type(model).__name__ == family.architecture, hub_id
        assert config.vocab_size == VOCAB[config.model_type], hub_id
        assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == SPECIAL_IDS[config.model_type]
        assert getattr(config, SOURCE_MODEL_CONFIG_KEY) == hub_id
        assert family_for_checkpoint(out_dir) is family, hub_id
        assert model.num_parameters() < 10e6, f"{hub_id} tiny twin is not tiny"


def test_twin_weights_follow_the_seed(tmp_path: Path) -> None:
    def weights_digest(seed: int, name: str) -> str:
        out_dir = tmp_path / name
        _build_with_cli("MBZUAI/LaMini-T5-61M", out_dir, "--size", "tiny", "--seed", str(seed))
        return hashlib.sha256((out_dir / "model.safetensors").read_bytes()).hexdigest()

    assert weights_digest(1, "a") == weights_digest(1, "b")
    assert weights_digest(1, "c") != weights_digest(2, "d")


def test_twin_tokenizers_give_the_real_ids(tiny_twin) -> None:
    t5 = AutoTokenizer.from_pretrained(tiny_twin("MBZUAI/LaMini-Flan-T5-77M"))
    gpt2 = AutoTokenizer.from_pretrained(tiny_twin("MBZUAI/LaMini-GPT-124M"))
    opt = AutoTokenizer.from_pretrained(tiny_twin("facebook/opt-iml-max-1.3b"))

    assert t5("Hello world")["input_ids"] == [8774, 296, 1]
    assert gpt2("Hello world")["input_ids"] == [15496, 995]
    assert opt("</s>Hello world", add_special_tokens=False)["input_ids"] == [2, 15496 + 4, 995 + 4]


def test_twin_into_a_non_empty_directory_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "keep.txt").write_text("mine", encoding="utf-8")

    assert main(["twin", "MBZUAI/LaMini-GPT-124M", str(tmp_path), "--size", "tiny"]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("hub_id", "params"), [("MBZUAI/LaMini-Flan-T5-248M", 248e6), ("MBZUAI/LaMini-GPT-124M", 124e6)]
)
def test_full_size_twin_has_the_table_parameter_count(
    tmp_path: Path, hub_id: str, params: float
) -> None:
    _build_with_cli(hub_id, tmp_path / "full", "--size", "full")

    model = _auto_model(hub_id).from_pretrained(tmp_path / "full")

    assert model.num_parameters() == pytest.approx(params, rel=0.03)
    assert family_for_checkpoint(tmp_path / "full") is family_of(hub_id)
