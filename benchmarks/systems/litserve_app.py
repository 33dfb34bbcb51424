"""The peer server: LitServe serving the same transformers checkpoint with dynamic batching.

Run as `python -m benchmarks.systems.litserve_app --checkpoint DIR --port N ...`. Requests are
`{"prompt": instruction, "max_new_tokens": n}`; the server applies the family's prompt format
(as lamini-serve does) and batches up to `max_batch_size` requests arriving within
`batch_timeout` seconds into one greedy `generate` call with the output length forced.
"""

# No `from __future__ import annotations`: LitServe reads `decode_request`'s annotation at run
# time to build its FastAPI route, so it must be the real class.
import argparse
from pathlib import Path
from typing import Any

import litserve as ls
from pydantic import BaseModel, Field

from app.core.families import family_for_checkpoint

PromptAndLimit = tuple[str, int]


class PeerRequest(BaseModel):
    prompt: str
    max_new_tokens: int = Field(ge=1)


class TransformersBatchAPI(ls.LitAPI):
    """A LaMini checkpoint behind LitServe's batching loop."""

    def __init__(self, checkpoint: str, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.checkpoint = checkpoint

    def setup(self, device: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        torch.set_grad_enabled(False)
        self.family = family_for_checkpoint(Path(self.checkpoint))
        model_class = AutoModelForSeq2SeqLM if self.family.is_seq2seq else AutoModelForCausalLM
        self.model = model_class.from_pretrained(self.checkpoint).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.checkpoint)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right" if self.family.is_seq2seq else "left"

    def decode_request(self, request: PeerRequest) -> PromptAndLimit:
        return self.family.prompt_format.wrap(request.prompt), request.max_new_tokens

    def batch(self, inputs: list[PromptAndLimit]) -> list[PromptAndLimit]:
        return inputs

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def predict(self, batch: Any) -> Any:
        single = isinstance(batch, tuple)
        requests: list[PromptAndLimit] = [batch] if single else batch
        max_new_tokens = max(limit for _prompt, limit in requests)
        inputs = self.tokenizer(
            [prompt for prompt, _limit in requests],
            return_tensors="pt",
            padding=True,
            add_special_tokens=not self.family.prompt_format.bos_text,
        )
        output = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        generated = (
            output[:, 1:] if self.family.is_seq2seq else output[:, inputs["input_ids"].shape[1] :]
        )
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        answers = [
            {"generated_text": text, "generated_tokens": int(generated.shape[1])} for text in texts
        ]
        return answers[0] if single else answers

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.05)
    args = parser.parse_args()
    api = TransformersBatchAPI(args.checkpoint, args.max_batch_size, args.batch_timeout)
    # fast_queue: LitServe's ZeroMQ transport between the API server and the inference worker,
    # its documented option for throughput (the default manager queues add IPC round trips).
    server = ls.LitServer(
        api, accelerator="cpu", workers_per_device=1, timeout=False, fast_queue=True
    )
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=1,
        generate_client_file=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
