"""The E3-TIR warm-up's typed config: the ``warmup:`` section of an ``etagent rl`` config
(docs/e3tir.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from etagent.agent import AgentConfig
from etagent.config import ConfigModel

ExpertSourceKind = Literal["oracle", "agent", "file"]


class ExpertSourceConfig(ConfigModel):
    """Where expert trajectories come from. Each is verified with the task's answer check before it
    is used (``min_correctness``), and cached in ``<run_dir>/e3_experts.jsonl``."""

    source: ExpertSourceKind = Field(
        "oracle",
        description="oracle: the task's oracle (the tool world's scripted expert); agent: any agent "
        "(e.g. a stronger model behind the openai backend, expert.agent); file: trajectories on disk "
        "(expert.path: a rollout's trajectories.jsonl or a flywheel's buffers.jsonl)",
    )
    oracle: dict[str, Any] = Field(
        default_factory=dict,
        description="source oracle: the task's oracle settings (tool world: redundant_rate, missing_rate, seed)",
    )
    agent: AgentConfig | None = Field(
        None, description="source agent: the expert's agent (backend, tools, budget)"
    )
    path: str | None = Field(None, description="source file: trajectories or flywheel buffers, JSONL")
    samples: int = Field(
        2,
        ge=1,
        description="expert trajectories sampled per question (oracle, agent): the anchors to choose from",
    )
    min_correctness: float = Field(
        1.0, ge=0, le=1, description="an expert trajectory is used only at this correctness or above"
    )

    @model_validator(mode="after")
    def _source_settings(self) -> ExpertSourceConfig:
        if self.source == "agent" and self.agent is None:
            raise ValueError("expert.source agent needs expert.agent (the expert's backend, tools, budget)")
        if self.source == "file" and not self.path:
            raise ValueError("expert.source file needs expert.path (trajectories.jsonl or buffers.jsonl)")
        return self


class OffPolicyConfig(ConfigModel):
    """The objective of expert-guided tokens, whose behaviour policy (the expert) gives no log-probs."""

    shaping: Literal["policy_shaping", "plain", "log"] = Field(
        "policy_shaping",
        description="policy_shaping: loss -A * f(p), f(p) = p / (p + gamma), p the policy's own token "
        "probability: the weight on grad log p is gamma p / (p + gamma)^2, which keeps the rare tokens "
        "of the expert (small p) from being ignored and the common ones from dominating; plain: -A * p "
        "(importance weight p / 1: the expert taken as deterministic); log: -A log p (advantage-weighted "
        "likelihood, SFT's pull on every expert token whatever its probability: for a policy that "
        "cannot yet write the expert's format, where p is tiny and both others vanish). Never clipped: "
        "with no behaviour log-probs a ratio has nothing to be clipped against",
    )
    gamma: float = Field(0.1, gt=0, description="policy shaping's regulariser gamma")
    weight: float = Field(
        1.0, ge=0, description="scale of the expert tokens' loss against the on-policy tokens'"
    )


class E3Config(ConfigModel):
    """E3-TIR: expert prefixes, expert-guided and self-explored trajectories in one GRPO group, a
    mixed objective, and a knowledge boundary that moves guidance to where the policy fails.

    At full guidance (a question the policy never solves, at step 1) a group of ``num_generations``
    holds ``min_self`` or more self-explored trajectories, ``max_expert_share`` of the group as expert
    experience, of which ``prefix_share`` are continuations of one expert prefix (the rest whole
    expert trajectories). Both shares shrink with the question's pass rate and anneal to zero by
    ``anneal_steps``: the end of the warm-up is pure self-exploration."""

    method: Literal["e3"] = "e3"
    expert: ExpertSourceConfig = Field(default_factory=ExpertSourceConfig)
    max_expert_share: float = Field(
        0.5, ge=0, le=1, description="share of a group given to expert experience at full guidance"
    )
    prefix_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of the expert slots that continue an expert prefix (the rest: whole expert trajectories)",
    )
    max_prefix_fraction: float = Field(
        0.75,
        gt=0,
        le=1,
        description="share of the expert's tool steps the prefix keeps at full guidance (cut after a tool result)",
    )
    min_self: int = Field(
        2, ge=1, description="self-explored trajectories in every group (they measure the pass rate)"
    )
    anneal_steps: int | None = Field(
        None, ge=1, description="guidance falls linearly to zero by this step; None = max_steps"
    )
    pass_rate_momentum: float = Field(
        0.5, ge=0, lt=1, description="a question's pass rate: momentum * old + (1 - momentum) * this step's"
    )
    initial_pass_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="the pass rate assumed before any question has been seen (0: full guidance)",
    )
    pass_threshold: float = Field(
        1.0, ge=0, le=1, description="a self-explored trajectory passes at this correctness or above"
    )
    off_policy: OffPolicyConfig = Field(default_factory=OffPolicyConfig)
