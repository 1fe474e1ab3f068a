"""``etagent rl`` on TRL's GRPOTrainer with the tiny model: the tensors TRL builds from our rollouts
(advantages, loss mask), the per-step log, checkpoints and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from etagent.records import Question
from etagent.rl import RLConfig, run_rl
from etagent.rl.trl_engine import JsonlLog, build_trainer
from etagent.tasks.toolworld import load_split
from tests.loop.test_agent_loop import EchoTool
from tests.rl.scripted import CyclingScripts

LOG_KEYS = {
    "step",
    "reward",
    "correctness",
    "tool_calls",
    "length",
    "entropy",
    "branching_rate",
    "kl",
    "clip_fraction",
    "step_seconds",
}


def _script(answer: str, queries: list[str]) -> str:
    calls = "".join(f"<think>Look up {q}.</think><search>{q}</search>" for q in queries)
    return calls + f"<think>Done.</think><answer>The final answer is \\[ \\boxed{{{answer}}} \\]</answer>"


def _cfg(model: Path, **kw) -> RLConfig:
    base = {
        "agent": {
            "backend": {"model": str(model)},
            "tools": {"enabled": ["search"]},
            "budget": {"max_new_tokens_per_call": 16, "max_response_tokens": 48},
        },
        "num_generations": 2,
        "questions_per_step": 2,
        "micro_batch_size": 2,
        "arpo": {"n": 2, "initial_rollouts": 1},
        "threads": 1,
        "logging": {"report_to": "none"},
    }
    base.update(kw)
    return RLConfig.model_validate(base)


def test_trl_advantages_and_loss_mask_from_our_rollouts(tiny_model_path, tmp_path, tokenizer):
    scripts = [_script("42", ["alpha"]), _script("7", ["beta"]), _script("42", ["gamma", "delta"])]
    questions = [
        Question(id="q1", question="One?", answer="42"),
        Question(id="q2", question="Two?", answer="7"),
    ]
    cfg = _cfg(
        tiny_model_path,
        use_arpo=False,
        num_generations=4,
        micro_batch_size=4,
        max_steps=1,
        reward={"sigma_tool": 0.0, "sigma_length": 0.0},
        agent={
            "backend": {"model": str(tiny_model_path)},
            "tools": {"enabled": ["search"]},
            "budget": {"max_new_tokens_per_call": 64, "max_response_tokens": 256},
        },
    )
    trainer, _ = build_trainer(
        cfg,
        tmp_path,
        questions=questions,
        generator=CyclingScripts(tokenizer, scripts),
        tools={"search": EchoTool("search")},
    )
    scored, losses = [], []
    generate_and_score, compute_loss = trainer._generate_and_score_completions, trainer._compute_loss
    trainer._generate_and_score_completions = lambda inputs: (
        scored.append(generate_and_score(inputs)) or scored[-1]
    )
    trainer._compute_loss = lambda model, inputs: losses.append(inputs) or compute_loss(model, inputs)
    trainer.train()

    (out,) = scored
    # TRL's sampler puts the two questions in random order, each with its 4 samples; the rows
    # cycle through the scripts A B C A | B C A B, so the rewards (correctness: sigmas are 0) are
    # q1 (gold 42) 1 0 1 1 | q2 (gold 7) 1 0 0 1, or q2 0 1 0 0 | q1 0 1 1 0
    rewards = torch.tensor(trainer._logs["rewards"]["et_reward"]).view(2, 4)
    assert rewards.tolist() in ([[1, 0, 1, 1], [1, 0, 0, 1]], [[0, 1, 0, 0], [0, 1, 1, 0]])
    expected = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
    torch.testing.assert_close(out["advantages"].view(2, 4), expected)

    # the loss mask TRL uses is completion_mask * tool_mask: tool results out, model tokens (+EOS) in
    assert losses and all("tool_mask" in inp for inp in losses)
    for inp in losses:
        for ids, cmask, tmask in zip(
            inp["completion_ids"], inp["completion_mask"], inp["tool_mask"], strict=True
        ):
            real = cmask.bool()
            in_loss = (cmask * tmask).bool()
            tool_text = tokenizer.decode(ids[real & ~in_loss])
            model_text = tokenizer.decode(ids[in_loss], skip_special_tokens=False)
            assert tool_text.count("<result>") in (1, 2) and "search says:" in tool_text
            assert "<result>" not in model_text and "search says" not in model_text
            assert model_text.startswith("<think>Look up") and model_text.endswith("</answer><|im_end|>")


def test_two_steps_checkpoint_and_resume_to_three(tiny_model_path, tmp_path):
    questions = load_split("train")[:4]
    cfg = _cfg(tiny_model_path, max_steps=2, save_steps=1)
    summary = run_rl(cfg, tmp_path, questions=questions)
    log_path = tmp_path / "train_log.jsonl"
    lines = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    for r in lines:
        assert r.keys() >= LOG_KEYS
        assert r["kl"] is None  # beta = 0: TRL computes no KL
        assert r["clip_fraction"] == 0.0 and r["reward"] is not None and r["entropy"] > 0
    assert (tmp_path / "checkpoints" / "checkpoint-2").is_dir()
    assert summary["steps"] == 2 and summary["resumed_from"] is None

    summary = run_rl(cfg.model_copy(update={"max_steps": 3}), tmp_path, questions=questions)
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 3
    lines = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert (tmp_path / "checkpoints" / "checkpoint-3").is_dir()

    from safetensors.torch import load_file

    from etagent.backends.config import BackendConfig
    from etagent.backends.hf import HFConfig, HFGenerator

    gen = HFGenerator.from_config(BackendConfig(model=summary["model"], hf=HFConfig(threads=1, device="cpu")))
    trained = load_file(tmp_path / "checkpoints" / "checkpoint-3" / "model.safetensors")
    for name, tensor in gen.model.state_dict().items():
        if name in trained:
            torch.testing.assert_close(tensor, trained[name])


def test_log_keeps_only_steps_up_to_the_resumed_checkpoint(tmp_path):
    cfg = RLConfig(num_generations=16)
    path = tmp_path / "train_log.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
    JsonlLog(path, cfg).keep_until(2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


def test_config_checks_group_and_batch_shapes():
    with pytest.raises(ValueError, match=r"arpo\.n"):
        RLConfig(num_generations=4)
    with pytest.raises(ValueError, match="divisible"):
        RLConfig(num_generations=16, questions_per_step=1, micro_batch_size=3)
