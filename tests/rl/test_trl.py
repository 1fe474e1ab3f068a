"""``etagent rl`` on TRL's GRPOTrainer with the tiny model: the tensors TRL builds from our rollouts
(advantages, loss mask), the per-step log, checkpoints and resume."""

from __future__ import annotations

import json
import math
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


#: two questions with different gold answers, for scripted rollouts
TWO_QUESTIONS = [
    Question(id="q1", question="One?", answer="42"),
    Question(id="q2", question="Two?", answer="7"),
]


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


def _scripted_trainer(
    model: Path, run_dir: Path, tokenizer, questions, scripts, max_response_tokens=256, **kw
):
    """A trainer whose rollouts write ``scripts`` in turn (search answered by an echo tool)."""
    cfg = _cfg(
        model,
        agent={
            "backend": {"model": str(model)},
            "tools": {"enabled": ["search"]},
            "budget": {"max_new_tokens_per_call": 64, "max_response_tokens": max_response_tokens},
        },
        **kw,
    )
    trainer, _ = build_trainer(
        cfg,
        run_dir,
        questions=questions,
        generator=CyclingScripts(tokenizer, scripts),
        tools={"search": EchoTool("search")},
    )
    return trainer


def test_trl_advantages_and_loss_mask_from_our_rollouts(tiny_model_path, tmp_path, tokenizer):
    scripts = [_script("42", ["alpha"]), _script("7", ["beta"]), _script("42", ["gamma", "delta"])]
    questions = TWO_QUESTIONS
    trainer = _scripted_trainer(
        tiny_model_path,
        tmp_path,
        tokenizer,
        questions,
        scripts,
        use_arpo=False,
        num_generations=4,
        micro_batch_size=4,
        max_steps=1,
        reward={"sigma_tool": 0.0, "sigma_length": 0.0},
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
    saved = gen.model.state_dict()
    # every checkpoint tensor is compared; the saved model has no other weights than the output
    # layer tied to the embeddings (not stored twice)
    assert len(trained) > 10 and set(trained) <= set(saved), sorted(set(trained) - set(saved))
    assert set(saved) - set(trained) <= {"lm_head.weight"}
    for name, tensor in trained.items():
        torch.testing.assert_close(saved[name], tensor)


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


# ---------------------------------------------------------------------------------------------
# ARPO branching with a sampling policy that calls a tool, feeding TRL


def test_arpo_branches_of_a_sampling_policy_reach_trl_with_aligned_masks(
    tiny_model_path, tmp_path, tokenizer
):
    from transformers import AutoModelForCausalLM

    from etagent.agent import build_agent
    from tests.loop.test_agent_loop import _check_invariants
    from tests.rl.sampler import FIRST, FREE, tool_sampler

    questions = [
        Question(id="q1", question="One?", answer="4"),
        Question(id="q2", question="Two?", answer="4"),
    ]
    cfg = _cfg(
        tiny_model_path,
        max_steps=1,
        num_generations=4,
        micro_batch_size=4,
        # every branch that has just received a tool result branches (probability 1)
        arpo={"n": 4, "initial_rollouts": 2, "beam_size": 2, "branch_probability": 1.0},
        agent={
            "backend": {"model": str(tiny_model_path)},
            "tools": {"enabled": ["search"]},
            "budget": {"max_new_tokens_per_call": 32, "max_response_tokens": 128},
        },
    )
    tools = {"search": EchoTool("search")}
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_path), dtype=torch.float32).eval()
    gen = tool_sampler(base, tokenizer, set(), tools["search"].call("alpha").text)
    probe = build_agent(cfg.agent, cfg.data_ref().task, generator=gen, tools=tools)
    lengths = {len(probe.new_trajectory(q, 0).prompt_ids) for q in questions}
    gen.model.table.update(
        tool_sampler(base, tokenizer, lengths, tools["search"].call("alpha").text).model.table
    )
    tools["search"].seen.clear()

    trainer, _ = build_trainer(cfg, tmp_path, questions=questions, generator=gen, tools=tools)
    outputs, losses = [], []
    inner, compute_loss = trainer.rollout_func, trainer._compute_loss
    trainer.rollout_func = lambda prompts, t: outputs.append(inner(prompts, t)) or outputs[-1]
    trainer._compute_loss = lambda model, inputs: losses.append(inputs) or compute_loss(model, inputs)
    try:
        trainer.train()
    finally:
        inner.rollout.loop.close()

    (out,) = outputs
    trajs = out["trajectory"]
    assert len(trajs) == 8 and tools["search"].seen == ["alpha"] * 4  # children do not re-run calls
    first_ids = tokenizer.encode(FIRST, add_special_tokens=False)
    for g in range(2):
        group = trajs[4 * g : 4 * g + 4]
        meta = [t.meta["arpo"] for t in group]
        assert [m["parent_id"] for m in meta] == [None, None, 0, 1]
        assert all(m["entropy_method"] == "top_k" for m in meta)
        # the four answers were sampled in one batch (one prompt, four samples): all differ
        assert len({t.response_text for t in group}) == 4, [t.response_text for t in group]
        for child in group[2:]:
            parent = group[child.meta["arpo"]["parent_id"]]
            bp = child.meta["arpo"]["branch_point"]
            assert bp == len(first_ids) + len(child.segments[1].token_ids)  # right after the result
            assert child.response_ids[:bp] == parent.response_ids[:bp]
            assert child.response_mask[:bp] == parent.response_mask[:bp]
            assert (child.response_mask[bp - 1], child.response_mask[bp]) == (0, 1)
            free = slice(bp + 3, bp + 3 + FREE - 1)  # after "<think>": three sampled words
            assert child.response_ids[free] != parent.response_ids[free]
    eos = tokenizer.eos_token_id
    for t, ids, mask, lps in zip(trajs, out["completion_ids"], out["env_mask"], out["logprobs"], strict=True):
        _check_invariants(tokenizer, t)
        assert t.finish_reason == "answer" and [s.role for s in t.segments] == ["model", "tool", "model"]
        assert ids == [*t.response_ids, eos] and mask == [*t.response_mask, 1]
        assert len(lps) == len(ids)
        assert all((lp is None) == (m == 0) for lp, m in zip(lps[:-1], mask[:-1], strict=True))
        assert all(lp <= 0 for lp in lps if lp is not None) and lps[-1] is None
    # what TRL trained on: the same rows, tool tokens out of the loss
    ours = sorted(
        (tuple(ids), tuple(mask)) for ids, mask in zip(out["completion_ids"], out["env_mask"], strict=True)
    )
    theirs = []
    for inp in losses:
        for ids, cmask, tmask in zip(
            inp["completion_ids"], inp["completion_mask"], inp["tool_mask"], strict=True
        ):
            n = int(cmask.sum())
            assert cmask[:n].all() and not cmask[n:].any()
            theirs.append((tuple(ids[:n].tolist()), tuple(tmask[:n].tolist())))
    assert sorted(theirs) == ours
    rec = json.loads((tmp_path / "train_log.jsonl").read_text().splitlines()[0])
    assert (rec["branching_rate"], rec["branched_fraction"], rec["sampled_entropy_estimate"]) == (
        1.0,
        0.5,
        0.0,
    )
    assert rec["branch_entropy"] > 0


def test_the_sigma_decay_reaches_the_reward_step_by_step(tiny_model_path, tmp_path, tokenizer):
    # docs/method.md 6.3/6.4: sigma * (T - t) / (T - 1) at rollout step t of T: 1, 0.5, 0 for T = 3
    scripts = [_script("42", ["alpha"]), _script("42", ["beta", "gamma"])]  # 1 and 2 calls, both right
    questions = [
        Question(id="q1", question="One?", answer="42"),
        Question(id="q2", question="Two?", answer="42"),
    ]
    trainer = _scripted_trainer(
        tiny_model_path,
        tmp_path,
        tokenizer,
        questions,
        scripts,
        use_arpo=False,
        max_steps=3,
        reward={"sigma_tool": 0.2, "sigma_length": 0.5, "decay": True},
    )
    applied = []
    reward = trainer.reward_funcs[0]

    def recording(**kw):
        scores = reward(**kw)
        applied.append((kw["trainer_state"].global_step, kw["trajectory"], scores))
        return scores

    trainer.reward_funcs[0] = recording
    trainer.train()
    assert [step for step, *_ in applied] == [0, 1, 2]
    log_lines = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    spreads = []
    for (_, trajs, scores), factor, line in zip(applied, (1.0, 0.5, 0.0), log_lines, strict=True):
        assert len(trajs) == 4
        for g in range(0, 4, 2):
            pair, got = trajs[g : g + 2], scores[g : g + 2]
            calls = [len(t.tool_calls) for t in pair]
            lengths = [t.num_model_tokens for t in pair]
            assert sorted(calls) == [1, 2] and lengths[0] != lengths[1]
            z = [1.0 if x > min(lengths) else -1.0 for x in lengths]  # two values: z = +-1
            expected = [
                2 / (1 + math.exp(0.2 * factor * (c - 1.5))) * 2 / (1 + math.exp(0.5 * factor * zi))
                for c, zi in zip(calls, z, strict=True)
            ]
            assert got == pytest.approx(expected)
            spreads.append(max(got) - min(got))
        assert line["reward"] == pytest.approx(sum(scores) / 4)
    assert spreads[0] > spreads[2] > 0 and spreads[4] == spreads[5] == 0.0
    assert [line["reward_std"] > 0 for line in log_lines] == [True, True, False]


def test_a_finished_run_drops_its_checkpoints_saves_bf16_and_is_not_redone(
    tiny_model_path, tmp_path, monkeypatch
):
    """keep_checkpoints false: the checkpoint resumes a killed run, and is gone once the run has
    finished; save_dtype bfloat16: the model is bf16 on disk and loads and generates."""
    from safetensors.torch import load_file

    from etagent.backends.base import SamplingParams
    from etagent.backends.config import BackendConfig
    from etagent.backends.hf import HFConfig, HFGenerator
    from etagent.config import ConfigError
    from etagent.rl import trl_engine

    questions = load_split("train")[:4]
    cfg = _cfg(tiny_model_path, max_steps=2, save_steps=1, keep_checkpoints=False, save_dtype="bfloat16")
    real_record = JsonlLog.record

    def crash_at_step_2(self, step, logs):
        if step == 2:
            raise KeyboardInterrupt  # killed during the second step, after checkpoint-1
        return real_record(self, step, logs)

    monkeypatch.setattr(JsonlLog, "record", crash_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_rl(cfg, tmp_path, questions=questions)
    assert (tmp_path / "checkpoints" / "checkpoint-1").is_dir()  # kept while the stage runs
    monkeypatch.undo()

    summary = run_rl(cfg, tmp_path, questions=questions)
    assert summary["resumed_from"].endswith("checkpoint-1") and summary["steps"] == 2
    assert not (tmp_path / "checkpoints").exists()
    model_dir = tmp_path / "model"
    weights = load_file(str(model_dir / "model.safetensors"))
    assert weights and all(t.dtype == torch.bfloat16 for t in weights.values())
    assert json.loads((model_dir / "config.json").read_text())["dtype"] == "bfloat16"
    base = load_file(str(tiny_model_path / "model.safetensors"))
    assert (model_dir / "model.safetensors").stat().st_size < (
        tiny_model_path / "model.safetensors"
    ).stat().st_size
    assert weights.keys() <= base.keys()
    gen = HFGenerator.from_config(BackendConfig(model=str(model_dir), hf=HFConfig(threads=1, device="cpu")))
    try:
        out = gen.generate([[{"role": "user", "content": "Hi?"}]], SamplingParams(max_new_tokens=3))
        assert len(out[0][0].token_ids) >= 1
    finally:
        gen.close()

    # run again: the stored summary, no training (nothing to resume from, the model is complete)
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trl_engine, "build_trainer", no_training)
    assert run_rl(cfg, tmp_path, questions=questions) == summary
    # more steps cannot continue without checkpoints: a clear error, the model is left alone
    with pytest.raises(ConfigError, match="keep_checkpoints: false"):
        run_rl(cfg.model_copy(update={"max_steps": 3}), tmp_path, questions=questions)
    assert load_file(str(model_dir / "model.safetensors")).keys() == weights.keys()


def test_rl_command_keeps_trl_metric_dicts_off_the_console(tiny_model_path, tmp_path):
    """`etagent rl` as a user runs it: TRL's per-step dict of metrics is in log.txt, not on stdout
    or stderr, where our one-line step summary stays; known dependency FutureWarnings are silent."""
    import os
    import subprocess
    import sys

    run_dir = tmp_path / "rl"
    args = [
        "rl", "--model", str(tiny_model_path), "--max-steps", "1", "--run-dir", str(run_dir),
        "--set", "threads=1", "--set", "logging.report_to=none", "--set", "agent.tools.enabled=[search]",
        "--set", "agent.budget.max_new_tokens_per_call=16", "--set", "agent.budget.max_response_tokens=48",
        "--set", "num_generations=2", "--set", "arpo.n=2", "--set", "arpo.initial_rollouts=1",
        "--set", "questions_per_step=1", "--set", "micro_batch_size=2", "--set", "limit=2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "etagent.cli", *args], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    console = done.stdout + done.stderr
    assert "step 1: reward" in console  # our summary line
    for trl_key in ("'clip_ratio/region_mean'", "'frac_reward_zero_std'", "'completions/mean_length'"):
        assert trl_key not in console, console[-3000:]
    log_text = (run_dir / "log.txt").read_text()
    assert "'clip_ratio/region_mean'" in log_text and "'frac_reward_zero_std'" in log_text
    assert "`past_key_values` is deprecated" not in console
    assert "`is_gradient_checkpointing` is deprecated" not in console
    assert "`past_key_values`/`cache_params` are deprecated" not in console


def test_bf16_precision_runs_the_policy_update_under_autocast_over_fp32_weights(
    tiny_model_path, tmp_path, tokenizer
):
    """precision: bfloat16 on the CPU (auto picks it where the CPU has native bf16): the policy
    update's matrix products run in bf16, the weights the optimizer updates stay fp32."""
    from tests.train.test_precision import _matmul_dtypes

    trainer = _scripted_trainer(
        tiny_model_path,
        tmp_path,
        tokenizer,
        TWO_QUESTIONS,
        [_script("42", ["alpha"]), _script("7", [])],
        use_arpo=False,
        max_steps=1,
        precision="bfloat16",
    )
    assert trainer.args.bf16 is True
    seen = _matmul_dtypes(trainer.model)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert seen and set(seen) == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())  # it learned
