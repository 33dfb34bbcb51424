"""Twins: randomly initialised checkpoints with a real model's architecture and tokenizer.

No model hub is reachable from CI or from this project's development machines, so every test,
demo and benchmark runs on twins. A twin is written with `save_pretrained` and then handled
exactly like a downloaded checkpoint; it records the hub id it imitates in its config so that
family resolution works on the directory. `full` twins have the real sizes (for benchmarks),
`tiny` twins keep the class and vocabulary but shrink the layers (for tests).
"""

from __future__ import annotations

import enum
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from app.core.errors import ModelSourceError
from app.core.families import SOURCE_MODEL_CONFIG_KEY, canonical_hub_id, family_for_hub_id


class TwinSize(str, enum.Enum):
    FULL = "full"
    TINY = "tiny"


@dataclass(frozen=True)
class T5Shape:
    d_model: int
    d_ff: int
    layers: int
    heads: int
    gated: bool

    def config(self, tiny: bool) -> dict[str, Any]:
        d_model, d_ff, layers, heads = (
            (64, 128, 2, 4) if tiny else (self.d_model, self.d_ff, self.layers, self.heads)
        )
        return {
            "model_type": "t5",
            "architectures": ["T5ForConditionalGeneration"],
            "vocab_size": 32128,
            "d_model": d_model,
            "d_ff": d_ff,
            "d_kv": d_model // heads if tiny else 64,
            "num_layers": layers,
            "num_decoder_layers": layers,
            "num_heads": heads,
            "feed_forward_proj": "gated-gelu" if self.gated else "relu",
            "tie_word_embeddings": not self.gated,
            "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "decoder_start_token_id": 0,
            "n_positions": 512,
        }


@dataclass(frozen=True)
class DecoderShape:
    model_type: str
    hidden: int
    layers: int
    heads: int
    ffn: int
    positions: int

    def config(self, tiny: bool) -> dict[str, Any]:
        hidden, layers, heads, ffn = (
            (64, 2, 4, 256) if tiny else (self.hidden, self.layers, self.heads, self.ffn)
        )
        if self.model_type == "gpt2":
            return {
                "model_type": "gpt2",
                "architectures": ["GPT2LMHeadModel"],
                "vocab_size": 50257,
                "n_positions": self.positions,
                "n_embd": hidden,
                "n_layer": layers,
                "n_head": heads,
                "n_inner": ffn,
                "bos_token_id": 50256,
                "eos_token_id": 50256,
            }
        if self.model_type == "gpt_neo":
            return {
                "model_type": "gpt_neo",
                "architectures": ["GPTNeoForCausalLM"],
                "vocab_size": 50257,
                "max_position_embeddings": self.positions,
                "hidden_size": hidden,
                "num_layers": layers,
                "num_heads": heads,
                "intermediate_size": ffn,
                "attention_types": [[["global", "local"], layers // 2]],
                "window_size": 256,
                "bos_token_id": 50256,
                "eos_token_id": 50256,
            }
        return {
            "model_type": "opt",
            "architectures": ["OPTForCausalLM"],
            "vocab_size": 50272,
            "max_position_embeddings": self.positions,
            "hidden_size": hidden,
            "word_embed_proj_dim": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "ffn_dim": ffn,
            "do_layer_norm_before": True,
            "bos_token_id": 2,
            "eos_token_id": 2,
            "pad_token_id": 1,
        }


# The base models' published configs (shared/MODELS.md, "Architectures").
SHAPES: dict[str, T5Shape | DecoderShape] = {
    "MBZUAI/LaMini-T5-61M": T5Shape(512, 2048, 6, 8, gated=False),
    "MBZUAI/LaMini-T5-223M": T5Shape(768, 3072, 12, 12, gated=False),
    "MBZUAI/LaMini-T5-738M": T5Shape(1024, 4096, 24, 16, gated=False),
    "MBZUAI/LaMini-Flan-T5-77M": T5Shape(512, 1024, 8, 6, gated=True),
    "MBZUAI/LaMini-Flan-T5-248M": T5Shape(768, 2048, 12, 12, gated=True),
    "MBZUAI/LaMini-Flan-T5-783M": T5Shape(1024, 2816, 24, 16, gated=True),
    "jmhessel/flant5-dolly-xxl": T5Shape(4096, 10240, 24, 64, gated=True),
    "MBZUAI/LaMini-GPT-124M": DecoderShape("gpt2", 768, 12, 12, 3072, 1024),
    "MBZUAI/LaMini-GPT-774M": DecoderShape("gpt2", 1280, 36, 20, 5120, 1024),
    "MBZUAI/LaMini-GPT-1.5B": DecoderShape("gpt2", 1600, 48, 25, 6400, 1024),
    "MBZUAI/LaMini-Cerebras-111M": DecoderShape("gpt2", 768, 10, 12, 3072, 2048),
    "MBZUAI/LaMini-Cerebras-256M": DecoderShape("gpt2", 1088, 14, 17, 4352, 2048),
    "MBZUAI/LaMini-Cerebras-590M": DecoderShape("gpt2", 1536, 18, 12, 6144, 2048),
    "MBZUAI/LaMini-Cerebras-1.3B": DecoderShape("gpt2", 2048, 24, 16, 8192, 2048),
    "MBZUAI/LaMini-Neo-125M": DecoderShape("gpt_neo", 768, 12, 12, 3072, 2048),
    "MBZUAI/LaMini-Neo-1.3B": DecoderShape("gpt_neo", 2048, 24, 16, 8192, 2048),
    "facebook/opt-iml-max-1.3b": DecoderShape("opt", 2048, 24, 32, 8192, 2048),
    "facebook/opt-iml-1.3b": DecoderShape("opt", 2048, 24, 32, 8192, 2048),
}

# Random weights at the usual 0.02 scale make tiny models repeat one token whatever the input;
# a wider spread makes greedy output depend on the prompt, which parity tests need.
_INIT_STD = 0.5


def _tokenizer_assets() -> Path:
    return Path(str(resources.files("model_store") / "assets" / "tokenizers"))


def _save_t5_tokenizer(out_dir: Path) -> None:
    from transformers import T5TokenizerFast

    # from_pretrained on the t5-small files gives the real pieces ('Hello' -> 8774); building
    # from the bare spiece.model with the default legacy flag does not.
    tokenizer = T5TokenizerFast.from_pretrained(
        str(_tokenizer_assets() / "t5"), model_max_length=512, legacy=True
    )
    tokenizer.save_pretrained(out_dir)


def _save_gpt2_tokenizer(out_dir: Path, positions: int) -> None:
    from transformers import GPT2TokenizerFast

    gpt2 = _tokenizer_assets() / "gpt2"
    tokenizer = GPT2TokenizerFast(
        vocab_file=str(gpt2 / "vocab.json"),
        merges_file=str(gpt2 / "merges.txt"),
        model_max_length=positions,
    )
    tokenizer.save_pretrained(out_dir)


def _save_opt_tokenizer(out_dir: Path, positions: int) -> None:
    """OPT: the GPT-2 BPE with fairseq's special tokens first (`<s>` 0, `<pad>` 1, `</s>` 2,
    `<unk>` 3), the ids the OPT models use."""
    from transformers import GPT2TokenizerFast

    gpt2 = _tokenizer_assets() / "gpt2"
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    bpe = json.loads((gpt2 / "vocab.json").read_text(encoding="utf-8"))
    vocab = {token: index for index, token in enumerate(specials)}
    for token, index in sorted(bpe.items(), key=lambda item: item[1]):
        vocab.setdefault(token, index + len(specials))
    with tempfile.TemporaryDirectory() as scratch:
        vocab_file = Path(scratch) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        tokenizer = GPT2TokenizerFast(
            vocab_file=str(vocab_file),
            merges_file=str(gpt2 / "merges.txt"),
            bos_token="</s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            add_prefix_space=False,
            model_max_length=positions,
        )
        tokenizer.save_pretrained(out_dir)


def _random_weights(model: Any, seed: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith("ln_f.weight") or ".ln_" in name:
                continue
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * _INIT_STD)
    model.tie_weights()


def twin_hub_id(hub_id: str) -> str:
    """The registry spelling of `hub_id`, or an error listing the ids twins exist for."""
    known = canonical_hub_id(hub_id)
    if known is None:
        raise ModelSourceError(
            f"no twin architecture for {hub_id!r}; twins exist for: {', '.join(SHAPES)}"
        )
    return known


def twin_config(hub_id: str, size: TwinSize = TwinSize.TINY, seed: int = 0) -> Any:
    """The transformers config of the twin of `hub_id` (it records the hub id it imitates)."""
    from transformers import AutoConfig

    known = twin_hub_id(hub_id)

    config_dict = SHAPES[known].config(tiny=size is TwinSize.TINY)
    config_dict[SOURCE_MODEL_CONFIG_KEY] = known
    config_dict["lamini_twin"] = {"size": size.value, "seed": seed}
    return AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)


# Building holds the float32 weights plus the random tensors copied into them.
_BUILD_BYTES_PER_PARAMETER = 8


def _refuse_if_too_big(auto_model: Any, config: Any) -> None:
    """Fail up front, instead of being killed half-way, when a twin cannot fit in memory
    (the full flant5-dolly-xxl twin has 11B parameters)."""
    import torch

    with torch.device("meta"):
        parameters = auto_model.from_config(config).num_parameters()
    needed = parameters * _BUILD_BYTES_PER_PARAMETER
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise ModelSourceError(
            f"the {config.lamini_twin['size']} twin of {getattr(config, SOURCE_MODEL_CONFIG_KEY)} "
            f"has {parameters / 1e9:.1f}B parameters and needs about {needed / 2**30:.0f} GiB of "
            f"memory to build; this machine has {available / 2**30:.0f} GiB (use the tiny size)"
        )


def build_twin(hub_id: str, out_dir: Path, size: TwinSize = TwinSize.TINY, seed: int = 0) -> Path:
    """Write a twin checkpoint of `hub_id` into `out_dir` (created; must not exist or be empty)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = twin_config(hub_id, size, seed)
    family = family_for_hub_id(getattr(config, SOURCE_MODEL_CONFIG_KEY))
    assert family is not None
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelSourceError(f"{out_dir} is not empty; choose a new directory for the twin")
    auto = AutoModelForSeq2SeqLM if family.is_seq2seq else AutoModelForCausalLM
    _refuse_if_too_big(auto, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config)
    _random_weights(model, seed)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if config.model_type == "t5":
        _save_t5_tokenizer(out_dir)
    elif config.model_type == "opt":
        _save_opt_tokenizer(out_dir, config.max_position_embeddings)
    else:
        positions = getattr(config, "n_positions", None) or config.max_position_embeddings
        _save_gpt2_tokenizer(out_dir, positions)
    return out_dir


def build_twin_atomically(hub_id: str, target: Path, size: TwinSize, seed: int) -> Path:
    """Build a twin next to `target` and rename it into place (no half-written twin is ever
    visible under `target`)."""
    twin_hub_id(hub_id)  # an unknown id fails before anything is written
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_twin(hub_id, scratch / "twin", size=size, seed=seed)
        (scratch / "twin").rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
