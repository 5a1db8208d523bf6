"""Run inside the vLLM venv by test_vllm.py: drive g3's in-process VLLMBackend and print a JSON summary.

Usage: <vllm python> tests/vllm_inprocess_check.py MODEL_DIR REQUESTS_JSON   (repository on PYTHONPATH)
REQUESTS_JSON holds the rendered prompt ensemble (the test renders it in g3's own environment).
"""

from __future__ import annotations

import base64
import json
import sys


def main() -> None:
    from g3.lmm.base import LMMRequest
    from g3.lmm.vllm_backend import VLLMBackend

    with open(sys.argv[2]) as fh:
        specs = json.load(fh)
    requests = [LMMRequest(**{**s, "image": base64.b64decode(s["image"])}) for s in specs]
    backend = VLLMBackend(sys.argv[1], max_model_len=1024, max_num_batched_tokens=8192, dtype="bfloat16",
                          enforce_eager=True)  # fmt: skip
    responses = backend.generate(requests)
    again = backend.generate(requests)
    summary = {
        "tags": [r.tag for r in responses],
        "errors": [r.error for r in responses],
        "n": [len(r.texts) for r in responses],
        "texts": [list(r.texts) for r in responses],
        "usage": [[r.usage.prompt_tokens, r.usage.completion_tokens] for r in responses],
        "reproducible": [a.texts == b.texts for a, b in zip(responses, again, strict=True)],
    }
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep the work under the main guard
    main()
