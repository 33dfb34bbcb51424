"""The `lamini-serve` command line, run as users run it: the installed script in a subprocess,
offline, on tiny twins."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from app.core.families import SOURCE_MODEL_CONFIG_KEY, get_family
from tests.support.cli import assert_one_line_error, lamini_serve, run_in_process
from tests.support.twins import FAMILY_TWINS

FINISH_REASONS = {"length", "eos_token", "stop_sequence"}
TRANSFORMERS = ("--backend", "transformers")


@pytest.fixture(scope="module")
def ambiguous_t5_checkpoint(
    tiny_twin: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A working T5 checkpoint that says nothing about which T5 family it is."""
    directory = tmp_path_factory.mktemp("anonymous") / "checkpoint"
    shutil.copytree(tiny_twin(FAMILY_TWINS["lamini-t5"]), directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop(SOURCE_MODEL_CONFIG_KEY)
    config.pop("_name_or_path", None)
    config_path.write_text(json.dumps(config), encoding="utf-8")
    return directory


@pytest.mark.parametrize("family_name", FAMILY_TWINS)
def test_prompt_prints_the_exact_model_input(
    capsys: pytest.CaptureFixture[str], family_name: str
) -> None:
    instruction = "Translate:\n\tÇa va? 你好\n"
    hub_id = get_family(family_name).hub_ids[0]

    result = run_in_process(capsys, "prompt", hub_id, instruction)

    assert result.returncode == 0, result.stderr
    assert result.stdout == get_family(family_name).prompt_format.wrap(instruction)


def test_prompt_strings_per_format() -> None:
    outputs = {
        model: lamini_serve("prompt", model, "Hi\nthere").stdout
        for model in (
            "MBZUAI/LaMini-T5-61M",
            "twin:MBZUAI/LaMini-Neo-125M@tiny",
            "facebook/opt-iml-1.3b",
            "jmhessel/flant5-dolly-xxl",
        )
    }

    assert outputs == {
        "MBZUAI/LaMini-T5-61M": "Hi\nthere",
        "twin:MBZUAI/LaMini-Neo-125M@tiny": (
            "Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\nHi\nthere\n\n### Response:"
        ),
        "facebook/opt-iml-1.3b": "</s>Hi\nthere",
        "jmhessel/flant5-dolly-xxl": "Hi <_LB_> there",
    }


def test_prompt_with_tokens_prints_the_token_ids(
    capsys: pytest.CaptureFixture[str], tiny_twin: Callable[[str], Path]
) -> None:
    checkpoint = tiny_twin(FAMILY_TWINS["opt-iml"])

    result = run_in_process(capsys, "prompt", str(checkpoint), "Hello world", "--tokens")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "</s>Hello world\n2 15500 999\n"


def test_prompt_family_flag_overrides_detection(ambiguous_t5_checkpoint: Path) -> None:
    result = lamini_serve(
        "prompt", str(ambiguous_t5_checkpoint), "a\nb", "--family", "flant5-dolly"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "a <_LB_> b"


@pytest.mark.parametrize("family_name", FAMILY_TWINS)
def test_generate_runs_on_a_tiny_twin_of_every_family(
    capsys: pytest.CaptureFixture[str], family_name: str
) -> None:
    model = f"twin:{FAMILY_TWINS[family_name]}@tiny"

    result = run_in_process(
        capsys,
        "generate",
        model,
        "Name three colours.",
        "--backend",
        "transformers",
        "--greedy",
        "--max-new-tokens",
        "6",
        "--json",
    )

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    family = get_family(family_name)
    assert answer["family"] == family_name
    assert answer["engine"] == "transformers"
    assert answer["model_input"] == family.prompt_format.wrap("Name three colours.")
    assert 1 <= len(answer["tokens"]) <= 6
    assert answer["finish_reason"] in FINISH_REASONS
    assert answer["text"] == "".join(
        token["text"] for token in answer["tokens"] if not token["special"]
    )
    assert answer["tidied_text"] == family.prompt_format.tidy(answer["text"])
    assert answer["timings"]["load_seconds"] > 0
    assert answer["timings"]["generate_seconds"] > 0


def test_generate_plain_output_is_the_tidied_text(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("generate", "twin:MBZUAI/LaMini-Flan-T5-77M@tiny", "Say hi", "--greedy", *TRANSFORMERS)

    as_json = json.loads(run_in_process(capsys, *args, "--max-new-tokens", "8", "--json").stdout)
    plain = lamini_serve(*args, "--max-new-tokens", "8")

    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == as_json["tidied_text"] + "\n"
    assert plain.stderr == ""


def test_generate_sampling_follows_the_seed(capsys: pytest.CaptureFixture[str]) -> None:
    sampling = ["--temperature", "1.3", "--top-k", "50", "--top-p", "0.95"]
    sampling += ["--repetition-penalty", "1.2", "--max-new-tokens", "12", "--json", *TRANSFORMERS]

    def sample(seed: str) -> list[int]:
        result = run_in_process(
            capsys,
            "generate",
            "twin:MBZUAI/LaMini-GPT-124M@tiny",
            "Say hi",
            "--seed",
            seed,
            *sampling,
        )
        assert result.returncode == 0, result.stderr
        return [token["id"] for token in json.loads(result.stdout)["tokens"]]

    first = sample("7")
    assert sample("7") == first
    assert sample("8") != first


def test_generate_stops_at_a_stop_sequence(capsys: pytest.CaptureFixture[str]) -> None:
    model = "twin:MBZUAI/LaMini-Cerebras-111M@tiny"
    args = ("generate", model, "Say hi", "--greedy", "--json", *TRANSFORMERS)
    free = json.loads(run_in_process(capsys, *args, "--max-new-tokens", "10").stdout)
    stop = free["text"][len(free["text"]) // 2 :][:2]
    assert stop.strip(), free["text"]

    stopped = run_in_process(capsys, *args, "--max-new-tokens", "10", "--stop", stop)
    stopped = json.loads(stopped.stdout)

    assert stopped["finish_reason"] == "stop_sequence"
    assert stopped["stop_sequence"] == stop
    assert stopped["text"].endswith(stop)


def test_unknown_hub_id_offline_says_what_was_tried_and_how_to_fix_it() -> None:
    result = lamini_serve("generate", "MBZUAI/LaMini-GPT-124M", "hi", env={"HF_HUB_OFFLINE": "1"})

    assert_one_line_error(
        result, "MBZUAI/LaMini-GPT-124M", "Hugging Face hub", "twin:MBZUAI/LaMini-GPT-124M@tiny"
    )


def test_hub_id_is_loaded_from_the_local_hf_cache_offline(
    tmp_path: Path, tiny_twin: Callable[[str], Path]
) -> None:
    repo = tmp_path / "hub" / "models--MBZUAI--LaMini-GPT-124M"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    shutil.copytree(tiny_twin(FAMILY_TWINS["lamini-gpt"]), repo / "snapshots" / commit)

    result = lamini_serve(
        "generate", "mbzuai/lamini-gpt-124m", "hi", "--greedy", "--max-new-tokens", "3",
        "--json", *TRANSFORMERS, env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["family"] == "lamini-gpt"


def test_hub_id_not_in_the_zoo_offline_is_one_clear_line() -> None:
    result = lamini_serve("generate", "someone/unknown-model", "hi", env={"HF_HUB_OFFLINE": "1"})

    assert_one_line_error(result, "someone/unknown-model", "lamini-serve families")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("generate", "./no/such/dir", "hi"), ("./no/such/dir", "no such directory")),
        (("prompt", "/no/such/dir", "hi"), ("/no/such/dir", "no such directory")),
        (("generate", "twin:MBZUAI/LaMini-GPT-999M", "hi"), ("no twin for",)),
        (("generate", "twin:MBZUAI/LaMini-GPT-124M@huge", "hi"), ("'tiny' or 'full'",)),
        (("twin", "MBZUAI/Not-A-Model", "/tmp/never-written"), ("no twin architecture",)),
        (("prompt", "MBZUAI/LaMini-GPT-124M", "hi", "--family", "llama"), ("unknown family",)),
        (("generate", "twin:MBZUAI/LaMini-GPT-124M@tiny", "hi", "--stop", ""), ("--stop",)),
    ],
)
def test_bad_input_is_one_clear_line(args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    assert_one_line_error(lamini_serve(*args), *fragments)


@pytest.mark.parametrize("command", ["prompt", "generate"])
def test_ambiguous_checkpoint_asks_for_family(command: str, ambiguous_t5_checkpoint: Path) -> None:
    line = assert_one_line_error(
        lamini_serve(command, str(ambiguous_t5_checkpoint), "hi"), "--family", "flant5-dolly"
    )

    assert "could be: lamini-t5, lamini-flan-t5, flant5-dolly" in line


def test_invalid_environment_setting_is_one_clear_line() -> None:
    result = lamini_serve("prompt", "MBZUAI/LaMini-GPT-124M", "hi", env={"LAMINI_DEVICE": "tpu"})

    assert_one_line_error(result, "device", "LAMINI_")


def test_too_long_instruction_is_refused(tiny_twin: Callable[[str], Path]) -> None:
    result = lamini_serve(
        "generate", "twin:MBZUAI/LaMini-GPT-124M@tiny", "word " * 1100, *TRANSFORMERS
    )

    assert_one_line_error(result, "accepts at most 1023")


def test_invalid_flag_value_exits_non_zero() -> None:
    result = lamini_serve("generate", "twin:MBZUAI/LaMini-GPT-124M@tiny", "hi", "--top-p", "1.5")

    assert result.returncode == 2
    assert "--top-p: '1.5' is not a number in (0, 1]" in result.stderr
