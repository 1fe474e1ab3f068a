"""``etagent demo``: the whole pipeline on the embedded defaults, sized for a 2-core CPU.

The embedded SmolLM2-135M-Instruct cannot follow the tool format from the prompt, so the demo
starts with a short fine-tune on the tool world's expert trajectories (some with redundant or
missing calls, as real policies write them), then runs the flywheel with that policy (the expert
fills the critic and helper roles), fine-tunes on the evolved set, runs one curriculum stage of
Pareto sampling and RL, and evaluates the base, fine-tuned and RL models on the tool world's dev
split in one report. Every size below is a field of :class:`DemoConfig`, overridable with --set.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from etagent.agent import AgentConfig
from etagent.config import deep_update, load_config
from etagent.eval.stage import EvalConfig, EvalDataset
from etagent.flywheel.stage import ColdStartConfig, FlywheelConfig
from etagent.loop.agent_loop import BudgetConfig, SamplingConfig
from etagent.pareto.selection import ParetoConfig
from etagent.pareto.stage import ParetoStageConfig
from etagent.pipeline import PipelineConfig
from etagent.rl.config import RLConfig
from etagent.rl.e3.config import E3Config
from etagent.rollout.stage import RolloutConfig
from etagent.train.sft import SFTConfig

# a tool-world search result is ~250 tokens; two calls and the reasoning fit in 1,024
#: the tool world's expert as the demo's warm-ups see it: some redundant and some missing calls
_COLD_START_EXPERT = {"redundant_rate": 0.2, "missing_rate": 0.1}
_BUDGET = BudgetConfig(max_tool_calls=4, max_new_tokens_per_call=160, max_response_tokens=1024)


def _cold_start() -> FlywheelConfig:
    return FlywheelConfig(
        data="toolworld:train",
        limit=160,
        cold_start=ColdStartConfig(enabled=True, samples=2, expert=_COLD_START_EXPERT),
    )


def _flywheel() -> FlywheelConfig:
    return FlywheelConfig(
        data="toolworld:train",
        limit=8,
        rounds=2,
        agent=AgentConfig(
            budget=_BUDGET, sampling=SamplingConfig(temperature=1.0, top_p=0.95), max_active=64
        ),
        continuation_budget=_BUDGET,
    )


def _pareto() -> ParetoStageConfig:
    return ParetoStageConfig(
        rollout=RolloutConfig(
            data="toolworld:train",
            limit=10,
            n=4,
            agent=AgentConfig(budget=_BUDGET, sampling=SamplingConfig(temperature=1.0)),
            output="groups.jsonl",
        ),
        selection=ParetoConfig(budget=6),
    )


def _rl() -> RLConfig:
    return RLConfig(
        num_generations=4,
        # a reserve spares the rounds a late fresh rollout adds (benchmarks/bench_arpo.py)
        arpo={"n": 4, "initial_rollouts": 2, "reserve_rollouts": 1},
        questions_per_step=1,
        micro_batch_size=4,
        max_steps=3,
        # measured (benchmarks/bench_calibration.py): 1e-5 moves this model within a few steps
        learning_rate=1e-5,
        agent=AgentConfig(budget=_BUDGET.model_copy(update={"on_budget": "stop"})),
        save_steps=2,
        keep_checkpoints=False,  # 2 x 1.5 GB of optimizer state once the stage has finished
    )


def _e3_warmup() -> RLConfig:
    """warmup e3 (the E3-TIR warm-up instead of cold start + flywheel + SFT), with the RL stage's agent.

    max_steps 4 gives it about the compute of the supervised warm-up it replaces (etagent.eval.roi:
    generated + 3 x trained tokens). Measured on a demo run: cold-start SFT + SFT trained ~20k
    non-tool tokens and the flywheel generated ~6.5k, ~67k in all; an RL step trains ~390 tokens
    per trajectory (prompt + model tokens) and generates ~120, so a step of 2 x 8 trajectories costs
    ~20k and 4 steps ~80k. Its 8 questions match the flywheel's 8. On the 2-core CPU a step of 16
    trajectories took 9 min on one thread (2 min of rollout: the base model's self-explored rows
    run up to the 1,024-token budget; the demo's RL step of 4: ~90 s)."""
    return RLConfig(
        data="toolworld:train",
        # the cold start's expert, redundant and missing calls included: both warm-ups learn from the same one
        # off_policy shaping log: the base 135M model gives the expert's tags a probability of ~1e-5,
        # where policy shaping's pull (gamma p / (p + gamma)^2 ~ p / gamma) all but vanishes
        # (docs/e3tir.md 3); the advantage-weighted likelihood pulls as SFT does
        warmup=E3Config(expert={"oracle": _COLD_START_EXPERT}, off_policy={"shaping": "log"}),
        num_generations=8,
        arpo={"n": 8, "initial_rollouts": 4, "reserve_rollouts": 1},
        questions_per_step=2,
        # a micro-batch of 4 with one self-explored row at the 1,024-token budget peaked at 16.5 GB
        # (the 2-core machine has 24); 2 halves that, and gradient accumulation keeps the update
        micro_batch_size=2,
        max_steps=4,
        # between the RL stage's 1e-5 and the SFT stages' 5e-5 / 2e-4: the warm-up has to teach the
        # format the SFT stages teach, in 4 steps (not tuned)
        learning_rate=5e-5,
        agent=AgentConfig(budget=_BUDGET.model_copy(update={"on_budget": "stop"})),
        save_steps=2,
        keep_checkpoints=False,
    )


def _eval() -> EvalConfig:
    return EvalConfig(
        datasets=[EvalDataset(data="toolworld:dev", limit=20)],
        agent=AgentConfig(budget=_BUDGET, sampling=SamplingConfig(temperature=0.0)),
    )


class DemoConfig(PipelineConfig):
    cold_start_data: FlywheelConfig = Field(default_factory=_cold_start)
    # ~150 trained tokens/s on 2 quiet cores (docs/cpu.md 4): 12 steps x 2 packed bins of 1,024 tokens
    # (~120 trajectories) take ~3 minutes and teach the tags (loss ~1.2 -> ~0.2)
    cold_start_sft: SFTConfig = Field(
        default_factory=lambda: SFTConfig(data="", max_steps=12, grad_accum=2, learning_rate=2e-4)
    )
    flywheel: FlywheelConfig = Field(default_factory=_flywheel)
    sft: SFTConfig = Field(
        default_factory=lambda: SFTConfig(data="", max_steps=6, grad_accum=2, learning_rate=5e-5)
    )
    pareto: ParetoStageConfig = Field(default_factory=_pareto)
    rl: RLConfig = Field(default_factory=_rl)
    e3_warmup: RLConfig = Field(default_factory=_e3_warmup)
    eval: EvalConfig = Field(default_factory=_eval)


def seeded_demo_config(seed: int, threads: int = 0, overrides: dict[str, Any] | None = None) -> DemoConfig:
    """The demo pipeline with every stage's randomness from ``seed`` (the cold start's and E3's
    scripted expert, cold-start data, both SFTs, the flywheel, the E3 warm-up, Pareto sampling and
    selection, RL), ``threads`` torch threads in every stage (0: all cores; 1 runs seeds side by
    side) and ``overrides`` laid over it: one whole run of a comparison over seeds."""
    demo = DemoConfig()
    # a dict field is replaced, not laid over its default: keep the demo's oracle settings
    # (redundant / missing rates) and add the seed
    cold_expert = {**demo.cold_start_data.cold_start.expert, "seed": seed}
    e3_oracle = {**demo.e3_warmup.warmup.expert.oracle, "seed": seed} if demo.e3_warmup.warmup else {}
    tree: dict[str, Any] = {
        "cold_start_data": {"seed": seed, "cold_start": {"expert": cold_expert}},
        "cold_start_sft": {"seed": seed},
        "flywheel": {"seed": seed},
        "sft": {"seed": seed},
        "e3_warmup": {"seed": seed, "warmup": {"expert": {"oracle": e3_oracle}}},
        "pareto": {"rollout": {"agent": {"sampling": {"seed": seed}}}, "selection": {"seed": seed}},
        "rl": {"seed": seed},  # its sampling seed stays unset: the trainer seeds (etagent.rl.trl_engine)
    }
    if threads:
        hf = {"agent": {"backend": {"hf": {"threads": threads}}}}
        for stage in ("cold_start_data", "flywheel", "eval"):
            deep_update(tree.setdefault(stage, {}), hf)
        deep_update(tree["pareto"]["rollout"], hf)
        for stage in ("cold_start_sft", "sft", "rl", "e3_warmup"):
            tree[stage]["threads"] = threads
    deep_update(tree, overrides or {})
    return load_config(DemoConfig, base=tree)
