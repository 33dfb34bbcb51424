"""One OpenAI `/v1/completions` client for every server the open loop compares (lamini-serve
whatever its engine, vLLM), so that they are timed by the same code.

lamini-serve wraps the instruction in the family's prompt format itself; a generic OpenAI server
(vLLM) does not, so the client applies the same wrapper and the format's stop sequence there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from benchmarks.loadgen import RequestSender, json_sender
from benchmarks.openloop_results import RequestSample


def served_model_id(base_url: str) -> str:
    """The first model id of `GET /v1/models` (what requests must name)."""
    response = httpx.get(f"{base_url}/v1/models", timeout=30)
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])


@dataclass(frozen=True)
class CompletionsEndpoint:
    """Where to send completions and how to shape the prompt.

    `wrap` is the client-side prompt format (None: the server applies its own); `stop` the
    format's stop sequences sent with it; `forcing` the extra fields that make a server ignore
    eos (vLLM's `ignore_eos`), used by the closed loop's forced-length requests only.
    """

    base_url: str
    model: str
    wrap: Callable[[str], str] | None = None
    stop: tuple[str, ...] = ()
    forcing: dict[str, object] = field(default_factory=dict)

    def body(self, instruction: str, max_tokens: int, *, stream: bool) -> dict[str, object]:
        body: dict[str, object] = {
            "model": self.model,
            "prompt": self.wrap(instruction) if self.wrap else instruction,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": stream,
        }
        if self.stop:
            body["stop"] = list(self.stop)
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def forced_sender(self, max_tokens: int) -> RequestSender:
        """Non-streamed requests of exactly `max_tokens` where the server can force it (the
        closed-loop sweep); tokens come from `usage`."""
        return json_sender(
            f"{self.base_url}/v1/completions",
            lambda text: {**self.body(text, max_tokens, stream=False), **self.forcing},
            lambda answer: int(answer["usage"]["completion_tokens"]),
        )

    async def stream(
        self, client: httpx.AsyncClient, instruction: str, max_tokens: int, sent_s: float
    ) -> RequestSample:
        """One streamed request: time to the first text chunk, the gaps between chunks, end to
        end; the token count is the server's `usage` (chunks when it sends none)."""
        sample = RequestSample(sent_s=sent_s, max_tokens=max_tokens)
        body = self.body(instruction, max_tokens, stream=True)
        started = time.perf_counter()
        last: float | None = None
        chunks = 0
        try:
            async with client.stream(
                "POST", f"{self.base_url}/v1/completions", json=body
            ) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode("utf-8", "replace")
                    sample.error = f"HTTP {response.status_code}: {text[:300]}"
                    return sample
                async for line in response.aiter_lines():
                    payload = line.removeprefix("data:").strip()
                    if not line.startswith("data:") or payload == "[DONE]":
                        continue
                    event = json.loads(payload)
                    if "error" in event:
                        sample.error = str(event["error"])[:300]
                        return sample
                    if event.get("usage"):
                        sample.tokens = int(event["usage"]["completion_tokens"])
                    if any(choice.get("text") for choice in event.get("choices") or []):
                        now = time.perf_counter()
                        chunks += 1
                        if last is None:
                            sample.ttft_s = now - started
                        else:
                            sample.gaps_s.append(now - last)
                        last = now
        except httpx.HTTPError as exc:
            sample.error = f"{type(exc).__name__}: {exc}"
            return sample
        sample.e2e_s = time.perf_counter() - started
        sample.tokens = sample.tokens or chunks
        return sample
