"""The hf backend on a CUDA device (skipped on machines without one, CI included)."""

from __future__ import annotations

import pytest

from etagent.backends.base import SamplingParams
from etagent.backends.config import BackendConfig, build_generator
from etagent.backends.hf import HFConfig

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_hf_generates_on_cuda(dtype):
    gen = build_generator(BackendConfig(kind="hf", model="tiny", hf=HFConfig(device="auto", dtype=dtype)))
    assert gen.device.type == "cuda"
    prompts = [[{"role": "user", "content": f"Count to {k}."}] for k in range(8)]
    params = SamplingParams(max_new_tokens=24, temperature=0.0, stop=["</search>"], logprobs=3)
    outs = gen.generate(prompts, params)
    assert len(outs) == 8
    for (c,) in outs:
        assert gen.tokenizer.decode(c.token_ids, skip_special_tokens=False) == c.text
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
    # greedy rows do not depend on what else is in the batch
    (alone,) = gen.generate(prompts[3:4], params)
    assert alone[0].token_ids == outs[3][0].token_ids
