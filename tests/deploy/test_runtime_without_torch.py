"""The runtime image's promise, checked without Docker: a virtualenv built the way the image's
`serve-venv` stage builds it (the same sources, the same RUN line: the base dependencies, no
extras) has no torch, and serves a CTranslate2 store entry that the dev environment converted
with the compose `convert` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.deploy import (
    REPO_ROOT,
    answers_ok,
    convert_like_compose,
    replica_process,
    running,
    start_child,
)
from tests.support.dockerfile import parse_dockerfile
from tests.support.server import free_port

pytestmark = pytest.mark.slow

HUB_ID = "MBZUAI/LaMini-Flan-T5-77M"
MODEL = f"twin:{HUB_ID}@tiny"
IMAGE_VENV = "/opt/lamini"
CONVERSION_ONLY_MODULES = ("torch", "optimum", "onnxruntime", "accelerate")


def copy_build_context(destination: Path) -> Path:
    """What the Dockerfile's `source` stage COPYs, at the same relative paths."""
    destination.mkdir(parents=True)
    for copy in parse_dockerfile().stage("source").all("COPY"):
        *sources, _ = copy.arguments.split()
        for source in sources:
            origin = REPO_ROOT / source
            if origin.is_dir():
                shutil.copytree(
                    origin, destination / source, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(origin, destination / source)
    return destination


def serve_venv_script(venv: Path) -> str:
    """The `serve-venv` stage's RUN line for this machine: the venv at `venv`, CPU build."""
    (run,) = parse_dockerfile().stage("serve-venv").all("RUN")
    assert run.arguments.startswith("--mount="), "the pip cache mount is the only RUN flag"
    script = run.arguments.split(" ", 1)[1]
    return script.replace(IMAGE_VENV, str(venv))


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the runtime image's dependency set, built like the image builds it."""
    workdir = tmp_path_factory.mktemp("runtime-image")
    context = copy_build_context(workdir / "src")
    venv = workdir / "venv"
    base_python = Path(getattr(sys, "_base_executable", sys.executable))
    # This process runs in the dev virtualenv; the build must not see it.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}:{base_python.parent}:/usr/bin:/bin"
    env["DEVICE"] = parse_dockerfile().stage("serve-venv").last("ARG").arguments.split("=")[1]
    result = subprocess.run(
        ["sh", "-c", serve_venv_script(venv)],
        cwd=context,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def runtime_server(
    runtime_venv: Path, tiny_twin, store_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tiny_twin(HUB_ID)
    convert_like_compose(MODEL, store_dir)
    port = free_port()
    command, env = replica_process(MODEL, store_dir, port, bin_dir=runtime_venv / "bin")
    log = tmp_path_factory.mktemp("runtime-replica") / "replica.log"
    child = start_child("runtime replica", command, log, env)
    url = f"http://127.0.0.1:{port}"
    with running(child, lambda: answers_ok(f"{url}/ready"), 120):
        yield url


@pytest.mark.parametrize("module", CONVERSION_ONLY_MODULES)
def test_runtime_dependency_set_has_no_conversion_stack(runtime_venv: Path, module: str) -> None:
    probe = subprocess.run(
        [str(runtime_venv / "bin" / "python"), "-c", f"import {module}"],
        capture_output=True,
        text=True,
    )
    assert probe.returncode != 0
    assert "ModuleNotFoundError" in probe.stderr


def test_runtime_serves_a_ctranslate2_entry_without_torch(runtime_server: str) -> None:
    info = httpx.get(f"{runtime_server}/info", timeout=10).json()
    assert (info["model_id"], info["engine"]) == (MODEL, "ct2")
    answer = httpx.post(
        f"{runtime_server}/generate",
        json={"inputs": "What is an apple?", "parameters": {"max_new_tokens": 8}},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["generated_text"]


def test_runtime_streams_without_torch(runtime_server: str) -> None:
    with httpx.stream(
        "POST",
        f"{runtime_server}/generate_stream",
        json={"inputs": "Name a colour.", "parameters": {"max_new_tokens": 8}},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    assert len(events) > 1
