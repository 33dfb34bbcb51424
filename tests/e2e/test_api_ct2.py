"""The service on the CTranslate2 engine (converted through the model store at startup): the
same API, streaming and batching as on the reference engine."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.support.server import running_server

MODELS = ["twin:MBZUAI/LaMini-Flan-T5-77M@tiny", "twin:MBZUAI/LaMini-GPT-124M@tiny"]


@pytest.mark.slow
def test_ct2_models_convert_at_startup_and_serve_generate_stream_and_batches() -> None:
    env = {"LAMINI_ENGINE": "ct2", "LAMINI_QUANTIZATION": "float32"}
    args = ["--max-batch-wait-ms", "100"]
    with running_server(MODELS, env=env, args=args) as server:
        for model in MODELS:
            info = server.get("/info", params={"model": model}).json()
            assert info["engine"] == "ct2"

            body = {"inputs": "Name a colour.", "model": model,
                    "parameters": {"max_new_tokens": 6, "details": True}}  # fmt: skip
            generated = server.post("/generate", json=body).json()
            streamed = server.post("/generate_stream", json=body).text
            events = [json.loads(e.removeprefix("data:")) for e in streamed.split("\n\n") if e]
            assert events[-1]["generated_text"] == generated["generated_text"]
            assert [e["token"]["id"] for e in events] == [
                t["id"] for t in generated["details"]["tokens"]
            ]

        async def many() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
                body = {"inputs": "Say hi.", "parameters": {"max_new_tokens": 4}}
                return await asyncio.gather(
                    *(client.post("/generate", json=body) for _ in range(16))
                )

        responses = asyncio.run(many())
        assert {r.status_code for r in responses} == {200}
        assert len({r.json()["generated_text"] for r in responses}) == 1
        model = MODELS[0]
        batches = server.metric("lamini_batch_size_count", model=model)
        assert server.metric("lamini_batch_size_sum", model=model) / batches > 1
        load_stages = {
            labels
            for (name, labels), _ in server.metric_samples().items()
            if name == "lamini_model_load_seconds"
        }
        assert frozenset({("model", model), ("stage", "load")}) in load_stages
