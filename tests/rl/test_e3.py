"""The E3-TIR warm-up: mixed groups (self-explored, expert prefix, expert-guided), their loss masks
checked against the tokenizer, the knowledge boundary, the mixed objective's gradients, and the
warm-up under TRL, from the CLI and in the pipeline."""

from __future__ import annotations

import json
import math

import pytest
import torch

from etagent.io import atomic_write_jsonl
from etagent.loop.agent_loop import AgentLoop, BudgetConfig
from etagent.records import Question
from etagent.rl import RLConfig, run_rl
from etagent.rl.e3.boundary import KnowledgeBoundary, prefix_steps
from etagent.rl.e3.config import E3Config, ExpertSourceConfig, OffPolicyConfig
from etagent.rl.e3.experts import ExpertBank, read_expert_file
from etagent.rl.e3.loss import mixed_token_loss, read_state
from etagent.rl.e3.rollout import E3Rollout, cut_after_tool_result, e3_policy_sample, experience_kind
from etagent.rl.trl_engine import build_trainer
from tests.cli_helpers import invoke_ok
from tests.loop.test_agent_loop import EchoTool
from tests.rl.scripted import CyclingScripts, model_written

ANSWER = "<think>Done.</think><answer>The final answer is \\[ \\boxed{42} \\]</answer>"
#: the expert: two searches, then the right answer
EXPERT = (
    "<think>Look up alpha.</think><search>alpha</search><think>Look up beta.</think><search>beta</search>"
    + ANSWER
)
#: the policy: a wrong guess from the prompt, or (after the expert's first step) the right answer
WRONG = "<think>No idea.</think><answer>The final answer is \\[ \\boxed{7} \\]</answer>"
CONTINUED = "<think>Look up alpha.</think><search>alpha</search><think>Got it.</think>" + ANSWER.removeprefix(
    "<think>Done.</think>"
)
EOS = "<|im_end|>"


def _questions() -> list[Question]:
    return [Question(id=f"q{i}", question=f"Question {i}?", answer="42") for i in range(2)]


def _expert_file(tokenizer, tmp_path):
    loop = AgentLoop(CyclingScripts(tokenizer, [EXPERT]), {"search": EchoTool("search")})
    experts = loop.run(_questions(), n=1)
    path = tmp_path / "experts.jsonl"
    atomic_write_jsonl(path, experts)
    return path


def _e3(path, **kw) -> E3Config:
    return E3Config.model_validate({"expert": {"source": "file", "path": str(path)}, **kw})


# --------------------------------------------------------------------------------------------
# the knowledge boundary


def test_guidance_follows_the_pass_rate_and_anneals_to_self_exploration():
    cfg = E3Config(
        max_expert_share=0.5, prefix_share=0.5, max_prefix_fraction=1.0, min_self=2, pass_rate_momentum=0.5
    )
    boundary = KnowledgeBoundary(cfg, group_size=8, total_steps=5)  # guidance 0 at step 5
    full = boundary.plan("q", step=1, expert_steps=3)
    assert (full.self_explored, full.prefix, full.guided, full.guidance, full.prefix_fraction) == (
        4,
        2,
        2,
        1.0,
        1.0,
    )
    assert boundary.plan("q", step=3, expert_steps=3).guidance == pytest.approx(0.5)
    assert boundary.plan("q", step=5, expert_steps=3).size == 8
    assert boundary.plan("q", step=5, expert_steps=3).self_explored == 8
    # a question without a verified expert, or whose expert called no tool (nothing to cut at)
    assert boundary.plan("q", 1, expert_steps=None).self_explored == 8
    assert (
        boundary.plan("q", 1, expert_steps=0).prefix == 0
        and boundary.plan("q", 1, expert_steps=0).guided == 4
    )

    boundary.update("q", [True, True, True, True])  # solved alone: half the guidance (momentum 0.5)
    assert boundary.pass_rate("q") == 0.5
    assert boundary.plan("q", 1, 3).guidance == pytest.approx(0.5)
    boundary.update("q", [True] * 4)
    boundary.update_overall([True, False, False, False])
    assert boundary.pass_rate("q") == 0.75
    assert boundary.pass_rate("new") == 0.25  # an unseen question takes the overall pass rate
    restored = KnowledgeBoundary(cfg, 8, 5)
    restored.load_state_dict(json.loads(json.dumps(boundary.state_dict())))
    assert restored.pass_rate("q") == 0.75 and restored.pass_rate("new") == 0.25

    min_self = KnowledgeBoundary(E3Config(max_expert_share=1.0, min_self=3), 4, 5).plan("q", 1, 2)
    assert min_self.self_explored == 3 and min_self.prefix + min_self.guided == 1


def test_a_prefix_keeps_at_least_one_step_and_leaves_the_policy_one():
    assert [prefix_steps(4, f) for f in (0.01, 0.25, 0.5, 0.75, 1.0)] == [1, 1, 2, 3, 3]
    assert prefix_steps(1, 1.0) == 1 and prefix_steps(0, 1.0) == 0


# --------------------------------------------------------------------------------------------
# the mixed objective


def test_expert_tokens_get_the_shaped_off_policy_gradient_and_are_never_clipped():
    gamma = 0.1
    logps = torch.tensor([[math.log(0.3), math.log(0.3), math.log(0.02)]], requires_grad=True)
    old = torch.tensor([[math.log(0.1), math.log(0.1), 0.0]])  # ratio 3: far outside the clip range
    advantages = torch.tensor([1.5])
    expert = torch.tensor([[0, 1, 1]])
    loss, clipped = mixed_token_loss(logps, old, advantages, expert, 0.2, OffPolicyConfig(gamma=gamma))
    loss.sum().backward()
    p = logps.detach().exp()[0]
    # on-policy token: ratio 3 > 1.2 with A > 0 -> clipped, no gradient
    assert clipped.tolist() == [[True, False, False]]
    assert logps.grad[0, 0] == 0
    # expert tokens: d/dlogp of -A p / (p + gamma) = -A gamma p / (p + gamma)^2, whatever old says
    for t in (1, 2):
        expected = -1.5 * gamma * p[t] / (p[t] + gamma) ** 2
        assert logps.grad[0, t].item() == pytest.approx(expected.item(), rel=1e-5)
        assert loss[0, t].item() == pytest.approx(-1.5 * (p[t] / (p[t] + gamma)).item(), rel=1e-5)
    # shaping lifts the rare expert token relative to plain p: weight ratio (rare / common)
    plain_logps = logps.detach().clone().requires_grad_(True)
    plain, _ = mixed_token_loss(plain_logps, old, advantages, expert, 0.2, OffPolicyConfig(shaping="plain"))
    plain.sum().backward()
    shaped_ratio = (logps.grad[0, 2] / logps.grad[0, 1]).item()
    plain_ratio = (plain_logps.grad[0, 2] / plain_logps.grad[0, 1]).item()
    assert plain_ratio == pytest.approx((p[2] / p[1]).item(), rel=1e-5)
    assert shaped_ratio > 3 * plain_ratio
    # log: advantage-weighted likelihood, the same pull on every expert token (-A per token)
    log_logps = logps.detach().clone().requires_grad_(True)
    logged, _ = mixed_token_loss(log_logps, old, advantages, expert, 0.2, OffPolicyConfig(shaping="log"))
    logged.sum().backward()
    assert log_logps.grad[0, 1:].tolist() == pytest.approx([-1.5, -1.5])


def test_on_policy_tokens_keep_ppo_clipping():
    logps = torch.tensor([[0.0, 0.0]], requires_grad=True)
    old = torch.tensor([[0.0, math.log(2.0)]])  # ratios 1 and 0.5
    loss, clipped = mixed_token_loss(
        logps, old, torch.tensor([[-1.0]]), torch.zeros(1, 2), 0.2, OffPolicyConfig()
    )
    assert loss[0].tolist() == pytest.approx([1.0, 0.8])  # -min(rA, clip(r)A) with A = -1
    assert clipped.tolist() == [[False, True]]


# --------------------------------------------------------------------------------------------
# the mixed group and its masks, against the tokenizer


def test_a_mixed_group_has_each_kind_with_masks_matching_the_tokens(tokenizer, tmp_path):
    path = _expert_file(tokenizer, tmp_path)
    assert set(read_expert_file(path)) == {"q0", "q1"}
    loop = AgentLoop(
        CyclingScripts(tokenizer, [WRONG, CONTINUED]),
        {"search": EchoTool("search")},
        budget=BudgetConfig(max_new_tokens_per_call=64, max_response_tokens=400),
    )
    cfg = _e3(path, max_prefix_fraction=0.75)
    experts = ExpertBank(cfg.expert, None, None, tmp_path)  # type: ignore[arg-type]  # a file needs neither
    rollout = E3Rollout(loop, 8, None, cfg, experts, KnowledgeBoundary(cfg, 8, 10))
    trajs, stats = rollout.run(_questions(), seed=0, step=1)

    assert [t.question_id for t in trajs] == ["q0"] * 8 + ["q1"] * 8
    assert [experience_kind(t) for t in trajs[:8]] == ["self"] * 4 + ["prefix"] * 2 + ["guided"] * 2
    assert [t.sample_index for t in trajs[:8]] == list(range(8))
    assert (stats["e3_self"], stats["e3_prefix"], stats["e3_guided"]) == (8, 4, 4)
    assert stats["e3_guidance"] == 1.0 and stats["e3_experts_used"] == 2
    expert_text = read_expert_file(path)["q0"][0].response_text
    first_step = cut_after_tool_result(read_expert_file(path)["q0"][0], 1)
    assert first_step.endswith("</result>") and "beta" not in first_step

    for t in trajs:
        sample, expert_mask = e3_policy_sample(t, tokenizer.eos_token_id)
        ids = torch.tensor(sample.completion_ids)
        in_loss = torch.tensor(sample.env_mask).bool()
        expert = torch.tensor(expert_mask).bool()
        loss_text = tokenizer.decode(ids[in_loss], skip_special_tokens=False)
        assert "<result>" not in loss_text
        kind = experience_kind(t)
        if kind == "self":
            assert not expert.any()
            assert loss_text == model_written(t.response_text) + EOS
        elif kind == "prefix":
            # the expert's first step is the anchor, out of the loss; the policy's continuation is in it
            assert not expert.any()
            n = t.meta["e3"]["prefix_tokens"]
            assert tokenizer.decode(ids[:n], skip_special_tokens=False) == first_step
            assert not in_loss[:n].any()
            assert loss_text == "<think>Got it.</think>" + ANSWER.removeprefix("<think>Done.</think>") + EOS
            assert all(lp is None for lp in sample.logprobs[:n])
        else:
            # the whole expert trajectory: its own tokens (and the EOS after its answer) are expert tokens
            assert torch.equal(expert, in_loss)
            assert (
                tokenizer.decode(ids[expert], skip_special_tokens=False) == model_written(expert_text) + EOS
            )
            assert t.prediction and "42" in t.prediction
    # the prefix continuations answer right, the policy alone never does: the pass rate stays 0
    assert stats["e3_correctness_prefix"] == 1.0 and stats["e3_correctness_guided"] == 1.0
    assert stats["e3_correctness_self"] == pytest.approx(0.5)  # WRONG and CONTINUED alternate from the prompt
    assert rollout.boundary.pass_rate("q0") == pytest.approx(0.25)


def test_expert_cache_is_reused_and_unverified_experts_are_dropped(tokenizer, tmp_path):
    loop = AgentLoop(CyclingScripts(tokenizer, [WRONG]), {"search": EchoTool("search")})
    wrong = loop.run(_questions()[:1], n=1)
    path = tmp_path / "wrong.jsonl"
    atomic_write_jsonl(path, wrong)
    bank = ExpertBank(ExpertSourceConfig(source="file", path=str(path)), None, None, tmp_path)  # type: ignore[arg-type]
    assert bank.get(_questions()) == {"q0": [], "q1": []}
    path.unlink()  # the cache answers now
    again = ExpertBank(ExpertSourceConfig(source="file", path=str(path)), None, None, tmp_path)  # type: ignore[arg-type]
    assert again.get(_questions()) == {"q0": [], "q1": []}
    with pytest.raises(FileNotFoundError, match=r"warmup\.expert\.path"):
        read_expert_file(path)


# --------------------------------------------------------------------------------------------
# under TRL


def _rl_cfg(model, expert_path, **kw) -> RLConfig:
    base = {
        "agent": {
            "backend": {"model": str(model)},
            "tools": {"enabled": ["search"]},
            "budget": {"max_new_tokens_per_call": 64, "max_response_tokens": 400},
        },
        "warmup": {"method": "e3", "expert": {"source": "file", "path": str(expert_path)}},
        "use_arpo": False,
        "num_generations": 4,
        "arpo": {"n": 4, "initial_rollouts": 2},
        "questions_per_step": 2,
        "micro_batch_size": 4,
        "max_steps": 1,
        "save_steps": 1,
        "threads": 1,
        "logging": {"report_to": "none"},
    }
    return RLConfig.model_validate({**base, **kw})


def test_trl_trains_expert_tokens_off_policy_and_resumes_the_boundary(
    tiny_model_path, tokenizer, tmp_path, monkeypatch
):
    expert_path = _expert_file(tokenizer, tmp_path)
    run_dir = tmp_path / "run"
    cfg = _rl_cfg(tiny_model_path, expert_path)
    trainer, _ = build_trainer(
        cfg,
        run_dir,
        questions=_questions(),
        generator=CyclingScripts(tokenizer, [WRONG, CONTINUED]),
        tools={"search": EchoTool("search")},
    )
    seen = []
    compute_loss = trainer._compute_loss
    trainer._compute_loss = lambda model, inputs: seen.append(inputs) or compute_loss(model, inputs)
    trainer.train()
    expert_rows = 0
    for inputs in seen:  # two micro-batches of 4
        mask = inputs["completion_mask"] * inputs["tool_mask"]
        expert = inputs["expert_mask"].bool()
        assert not (expert & ~mask.bool()).any()  # expert tokens are loss tokens (never tool results)
        for i in range(expert.size(0)):
            if expert[i].any():
                expert_rows += 1
                ids = inputs["completion_ids"][i]
                assert (
                    tokenizer.decode(ids[expert[i]], skip_special_tokens=False) == model_written(EXPERT) + EOS
                )
                assert torch.equal(expert[i], mask[i].bool())
    assert expert_rows == 2  # one whole expert trajectory per group of 4 at full guidance

    # the checkpoint holds the pass rates; a resumed run starts from them
    state = read_state(run_dir / "checkpoints" / "checkpoint-1")
    assert set(state["boundary"]["pass_rates"]) == {"q0", "q1"} and list(state["experts_used"]) == [
        "q0#0",
        "q1#0",
    ]
    loaded = []
    load = E3Rollout.load_state_dict
    monkeypatch.setattr(E3Rollout, "load_state_dict", lambda self, s: loaded.append(s) or load(self, s))
    summary = run_rl(
        _rl_cfg(tiny_model_path, expert_path, max_steps=2),
        run_dir,
        questions=_questions(),
        generator=CyclingScripts(tokenizer, [WRONG, CONTINUED]),
        tools={"search": EchoTool("search")},
    )
    assert summary["resumed_from"].endswith("checkpoint-1") and loaded == [state]
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert log[0]["e3/guidance"] == 1.0 and log[1]["e3/guidance"] == 0.0  # annealed by the last step
    assert log[0]["e3/expert_token_share"] > 0 and log[1]["e3/expert_token_share"] == 0
    # step 2 used no expert: the totals are the restored ones (each expert trajectory's model tokens, once)
    assert summary["e3"]["expert_tokens"] == sum(state["experts_used"].values()) > 0


def test_rl_command_runs_the_warmup_with_the_task_oracle(tmp_path):
    config = tmp_path / "e3.yaml"
    config.write_text(
        """
data: toolworld:train
limit: 2
agent:
  backend: {model: tiny}
  tools: {enabled: [search, python], search: {top_k: 1, max_doc_chars: 160}}  # short expert trajectories
  budget: {max_tool_calls: 3, max_new_tokens_per_call: 200, max_response_tokens: 360}
warmup: {method: e3, max_expert_share: 1.0, min_self: 1}
use_arpo: false
num_generations: 2
questions_per_step: 2
micro_batch_size: 2
max_steps: 1
threads: 1
logging: {report_to: none}
""",
        encoding="utf-8",
    )
    run_dir = tmp_path / "run"
    invoke_ok("rl", "-c", str(config), "--run-dir", str(run_dir))
    (rec,) = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    # max_expert_share 1, min_self 1: per question 1 self-explored and 1 expert (prefix_share 0.5 rounds up)
    assert (rec["e3/self"], rec["e3/prefix"] + rec["e3/guided"], rec["e3/no_expert"]) == (2, 2, 0)
    cached = [json.loads(line) for line in (run_dir / "e3_experts.jsonl").read_text().splitlines()]
    assert len(cached) == 2 and any(c["trajectories"] for c in cached)
    summary = json.loads((run_dir / "rl_summary.json").read_text())
    assert summary["e3"]["expert_trajectories_sampled"] == 4  # 2 questions x expert.samples 2


def test_experts_from_a_flywheel_buffer_are_its_entries_judged_correct(tokenizer, tmp_path):
    from etagent.flywheel.buffer import BufferRecord, FlywheelEntry

    loop = AgentLoop(CyclingScripts(tokenizer, [EXPERT, WRONG]), {"search": EchoTool("search")})
    right, wrong = loop.run(_questions()[:1], n=2)

    def entry(i, traj, verdict):
        return FlywheelEntry(
            id=f"q0#{i}",
            operator="initial",
            round=0,
            verdict=verdict,
            correctness=float(verdict),
            metric="f1",
            prediction=traj.prediction,
            tool_calls=len(traj.tool_calls),
            format_ok=True,
            trajectory=traj,
        )

    record = BufferRecord(
        question_id="q0", question=right.question, entries=[entry(0, right, True), entry(1, wrong, False)]
    )
    path = tmp_path / "buffers.jsonl"
    atomic_write_jsonl(path, [record])
    assert [t.response_text for t in read_expert_file(path)["q0"]] == [right.response_text]


def test_experts_from_an_agent_source(tmp_path):
    """source: agent builds the expert's own agent (here the tool world's oracle as a backend kind)."""
    from etagent.tasks import resolve_data

    data = resolve_data("toolworld:train")
    agent_cfg = {
        "backend": {"kind": "expert", "model": "tiny"},
        "tools": {"enabled": ["search", "python"]},
        "budget": {"max_response_tokens": 1200},
    }
    cfg = ExpertSourceConfig.model_validate({"source": "agent", "agent": agent_cfg, "samples": 1})
    bank = ExpertBank(cfg, data.task, None, tmp_path, check=data.task.check_answer)  # type: ignore[arg-type]
    questions = data.questions(2)
    try:
        found = bank.get(questions)
    finally:
        bank.close()
    assert bank.generated == 2 and all(len(found[q.id]) == 1 for q in questions)
    with pytest.raises(ValueError, match=r"needs expert\.agent"):
        ExpertSourceConfig(source="agent")
