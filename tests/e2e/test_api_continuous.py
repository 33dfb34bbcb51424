"""The service on the continuous engine: the same routes, streaming and cancellation as on the
other engines, with requests joining one running batch (T5 and GPT-2 tiny twins, float32)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from tests.support.server import RunningServer, running_server

MODELS = ["twin:MBZUAI/LaMini-Flan-T5-77M@tiny", "twin:MBZUAI/LaMini-GPT-124M@tiny"]
ENV = {"LAMINI_ENGINE": "continuous", "LAMINI_QUANTIZATION": "float32"}


def _events(text: str) -> list[dict]:
    return [json.loads(e.removeprefix("data:")) for e in text.split("\n\n") if e]


def _wait_for_metric(server: RunningServer, name: str, value: float, model: str) -> None:
    deadline = time.monotonic() + 30
    while server.metric(name, model=model) != value:
        assert time.monotonic() < deadline, f"{name} never became {value}"
        time.sleep(0.1)


def test_generate_stream_concurrency_and_disconnect_on_the_continuous_engine() -> None:
    with running_server(MODELS, env=ENV) as server:
        for model in MODELS:
            info = server.get("/info", params={"model": model}).json()
            assert (info["engine"], info["quantization"]) == ("continuous", "float32")
            assert info["max_batch_total_tokens"] == 512  # the step budget, not the window's
            assert info["max_batch_size"] == 128  # sequences running together, unset
            body = {"inputs": "Name a colour.", "model": model,
                    "parameters": {"max_new_tokens": 6, "details": True}}  # fmt: skip
            generated = server.post("/generate", json=body).json()
            events = _events(server.post("/generate_stream", json=body).text)
            assert events[-1]["generated_text"] == generated["generated_text"]
            assert [e["token"]["id"] for e in events] == [
                t["id"] for t in generated["details"]["tokens"]
            ]

        async def many(model: str) -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
                bodies = [
                    {"inputs": text, "model": model, "parameters": {"max_new_tokens": n}}
                    for text, n in [("Say hi.", 4), ("Write a poem about the sea.", 9)] * 8
                ]
                return await asyncio.gather(*(client.post("/generate", json=b) for b in bodies))

        for model in MODELS:
            responses = asyncio.run(many(model))
            assert {r.status_code for r in responses} == {200}
            texts = [r.json()["generated_text"] for r in responses]
            assert len(set(texts[0::2])) == 1
            assert len(set(texts[1::2])) == 1
            assert server.metric("lamini_step_duration_seconds_count", model=model, kind="prefill")

        model = MODELS[1]
        body = {"inputs": "Tell a long story.", "model": model,
                "parameters": {"max_new_tokens": 900}}  # fmt: skip
        with (
            httpx.Client(base_url=server.base_url, timeout=60) as client,
            client.stream("POST", "/generate_stream", json=body) as response,
        ):
            assert next(line for line in response.iter_lines() if line.startswith("data:"))
        _wait_for_metric(server, "lamini_request_cancelled_total", 1.0, model)
        _wait_for_metric(server, "lamini_running_sequences", 0.0, model)
