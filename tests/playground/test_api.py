"""`GET /families`, `POST /prompt` and the page's files, on a real server over HTTP."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from app.core.families import FAMILIES, get_family
from app.playground.cards import EXAMPLES
from tests.support.openai_client import FLAN, GPT
from tests.support.server import REPO_ROOT, RunningServer

INSTRUCTION = "Name three colours.\nThen stop."
STATIC_FILES = ("index.html", "playground.css", "playground.js", "favicon.svg")


def test_families_carry_each_registry_families_card_settings(
    playground_server: RunningServer,
) -> None:
    response = playground_server.get("/families")
    assert response.status_code == 200
    cards = {card["name"]: card for card in response.json()}
    assert list(cards) == [family.name for family in FAMILIES]
    for family in FAMILIES:
        card = cards[family.name]
        recommended = family.recommended
        assert card["recommended"] == {
            "do_sample": recommended.do_sample,
            "temperature": recommended.temperature,
            "top_p": recommended.top_p,
            "max_new_tokens": recommended.max_new_tokens,
            "repetition_penalty": recommended.repetition_penalty,
        }
        assert card["prompt_format"] == family.prompt_format.name
        assert card["stop_sequences"] == list(family.prompt_format.stop_sequences)
        assert [e["instruction"] for e in card["examples"]] == [
            text for text, _ in EXAMPLES[family.name]
        ]
    assert cards["opt-iml"]["recommended"]["do_sample"] is False
    assert cards["lamini-gpt"]["recommended"]["repetition_penalty"] == 1.5


@pytest.mark.parametrize("model", [GPT, FLAN])
def test_prompt_returns_the_exact_model_input_and_its_tokens(
    playground_server: RunningServer, model: str
) -> None:
    response = playground_server.post("/prompt", json={"model": model, "inputs": INSTRUCTION})
    assert response.status_code == 200, response.text
    body = response.json()
    family = get_family(body["family"])
    assert body["model_input"] == family.prompt_format.wrap(INSTRUCTION)
    assert body["input_tokens"] == len(body["token_ids"]) > 0
    # The same count a generation route reports for the same instruction.
    completion = playground_server.post(
        "/v1/completions", json={"model": model, "prompt": INSTRUCTION, "max_tokens": 1}
    )
    assert completion.json()["usage"]["prompt_tokens"] == body["input_tokens"]


def test_prompt_matches_what_the_prompt_command_prints(playground_server: RunningServer) -> None:
    command = [sys.executable, "-m", "app.cli", "prompt", GPT, INSTRUCTION, "--tokens"]
    printed = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    body = playground_server.post("/prompt", json={"model": GPT, "inputs": INSTRUCTION}).json()
    text, ids = printed.removesuffix("\n").rsplit("\n", 1)
    assert text == body["model_input"]
    assert [int(token) for token in ids.split()] == body["token_ids"]


def test_prompt_defaults_to_the_first_model(playground_server: RunningServer) -> None:
    body = playground_server.post("/prompt", json={"inputs": "Hi"}).json()
    assert body["model"] == GPT
    assert body["family"] == "lamini-gpt"


@pytest.mark.parametrize(
    ("body", "status", "error_type", "message"),
    [
        ({"model": "nope", "inputs": "Hi"}, 404, "not_found", "'nope' is not served here"),
        ({"inputs": "   "}, 422, "validation", "must not be blank"),
        ({"model": GPT}, 422, "validation", "`inputs`"),
        ({"inputs": "Hi", "stream": True}, 422, "validation", "`stream` is not a known parameter"),
        ({"inputs": 3}, 422, "validation", "`inputs`"),
    ],
)
def test_prompt_errors_have_tgis_shape(
    playground_server: RunningServer, body: dict, status: int, error_type: str, message: str
) -> None:
    response = playground_server.post("/prompt", json=body)
    assert response.status_code == status
    assert response.json()["error_type"] == error_type
    assert message in response.json()["error"]


def test_openapi_documents_the_new_routes_and_not_the_page(
    playground_server: RunningServer,
) -> None:
    paths = playground_server.get("/openapi.json").json()["paths"]
    prompt = paths["/prompt"]["post"]
    assert prompt["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse"
    )
    assert "/families" in paths
    assert not any(path.startswith("/playground") for path in paths)


def test_page_and_files_are_served_with_a_self_only_policy(
    playground_server: RunningServer,
) -> None:
    page = playground_server.get("/playground")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    for name in STATIC_FILES:
        response = playground_server.get(f"/playground/static/{name}")
        assert response.status_code == 200, name
    script = playground_server.get("/playground/static/playground.js")
    assert script.headers["content-type"].startswith("text/javascript")
    # Nothing outside the shipped files, and no way out of the folder.
    for path in ("/playground/static/api.py", "/playground/static/..%2Fapi.py"):
        response = playground_server.get(path)
        assert response.status_code == 404
        assert response.json()["error_type"] == "not_found"


def test_page_refers_to_nothing_outside_its_own_server() -> None:
    static = REPO_ROOT / "app" / "playground" / "static"
    for name in STATIC_FILES:
        text = (static / name).read_text()
        assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "https://" not in text, name


def test_wheel_ships_the_page_but_not_the_screenshot(tmp_path: Path) -> None:
    """Built from a copy of what the image copies, so no build output lands in the checkout."""
    source = tmp_path / "source"
    skip = shutil.ignore_patterns("__pycache__")
    for name in ("app", "conversion", "model_store", "benchmarks"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip_wheel, "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("lamini_serve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in STATIC_FILES:
        assert f"app/playground/static/{name}" in names
    assert not any(name.endswith(".png") for name in names if name.startswith("app/"))
