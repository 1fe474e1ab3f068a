"""Engine-independent RL pieces: policy rollouts per question, trajectories as training samples,
and the ET-Agent reward over each question's group.

An engine adapter (TRL's GRPOTrainer here, verl later) only moves these lists in and out of its
own batch format; what is sampled, what is trained on and how it is scored is decided here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from etagent.loop.agent_loop import AgentLoop
from etagent.loop.arpo import ArpoConfig, ArpoRollout
from etagent.protocol import tags
from etagent.records import Question, Trajectory
from etagent.scoring.correctness import AnswerCheck
from etagent.scoring.reward import RewardConfig, RewardParts, group_rewards

#: trajectories whose model stopped on its own get the end-of-sequence token appended, so the
#: policy is trained to stop there (the backend does not return the EOS it sampled)
ENDED_BY_MODEL = ("answer", "eos")


@dataclass
class PolicySample:
    """One trajectory as a trainer sees it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    #: 1 = written by the model (in the loss), 0 = tool output (out of the loss)
    env_mask: list[int]
    #: the sampler's log-probability of each completion token; None for tool tokens and for
    #: tokens without one (re-encoded at a stop string, the appended EOS)
    logprobs: list[float | None]


def to_policy_sample(traj: Trajectory, eos_id: int) -> PolicySample:
    ids = traj.response_ids
    mask = traj.response_mask
    logprobs: list[float | None] = []
    for seg in traj.segments:
        if seg.role == "model" and seg.logprobs is not None:
            logprobs += seg.logprobs
        else:
            logprobs += [None] * len(seg.token_ids)
    if traj.finish_reason in ENDED_BY_MODEL or not ids:
        ids, mask, logprobs = [*ids, eos_id], [*mask, 1], [*logprobs, None]
    return PolicySample(list(traj.prompt_ids), ids, mask, logprobs)


def split_groups(items: Sequence[Any], group_size: int) -> list[list[Any]]:
    """Consecutive groups of ``group_size`` (the order GRPO engines lay a batch out in)."""
    if group_size < 1 or len(items) % group_size:
        raise ValueError(f"{len(items)} items do not split into groups of {group_size}")
    return [list(items[i : i + group_size]) for i in range(0, len(items), group_size)]


def batch_rewards(
    trajectories: Sequence[Trajectory],
    group_size: int,
    cfg: RewardConfig,
    step: int | None = None,
    total_steps: int | None = None,
    tool_tags: tuple[str, ...] = tags.DEFAULT_TOOL_TAGS,
    check: AnswerCheck | None = None,
) -> list[RewardParts]:
    """The ET-Agent reward of every trajectory of a batch, in order, each scored within its
    question's group.

    ``trajectories`` holds consecutive groups of ``group_size``, one question each (checked).
    ``check`` is the task's answer check (``Task.check_answer``); None: the standard rule.
    """
    parts: list[RewardParts] = []
    for group in split_groups(trajectories, group_size):
        ids = {t.question_id for t in group}
        if len(ids) != 1:
            raise ValueError(f"a reward group mixes questions {sorted(ids)}: groups must be consecutive")
        parts += group_rewards(group, cfg, step, total_steps, tool_tags, check)
    return parts


def reward_metrics(parts: Sequence[RewardParts]) -> dict[str, float]:
    """Batch means of what the reward is made of (the config's extra terms as ``extra/<name>``)."""
    n = max(1, len(parts))
    metrics = {
        "correctness": sum(p.correctness for p in parts) / n,
        "tool_calls": sum(p.tool_calls for p in parts) / n,
        "length": sum(p.length for p in parts) / n,
        "format_ok": sum(p.f_format == 0 for p in parts) / n,
    }
    if parts:
        for name in parts[0].extra:
            metrics[f"extra/{name}"] = sum(p.extra[name] for p in parts) / n
    return metrics


class PolicyRollout:
    """``n`` trajectories per question from an agent loop: ARPO branching or independent samples."""

    def __init__(self, loop: AgentLoop, n: int, arpo: ArpoConfig | None = None):
        if arpo is not None and arpo.n != n:
            raise ValueError(f"arpo.n ({arpo.n}) must equal n ({n})")
        self.loop = loop
        self.n = n
        self.arpo = ArpoRollout(loop, arpo) if arpo is not None else None

    def close(self) -> None:
        self.loop.close()  # and the tools it built

    def samples(self, trajs: Sequence[Trajectory], eos_id: int) -> tuple[list[PolicySample], list[list[int]]]:
        """The trainer's samples and their expert masks (none here: all 0; see the E3 warm-up)."""
        samples = [to_policy_sample(t, eos_id) for t in trajs]
        return samples, [[0] * len(s.completion_ids) for s in samples]

    def run(
        self, questions: Sequence[Question], seed: int, step: int = 1
    ) -> tuple[list[Trajectory], dict[str, Any]]:
        """Trajectories grouped by question in input order (``n`` each) and rollout statistics
        (``step``, the rollout step, is for rollouts that change over training; this one does not)."""
        ids = [q.id for q in questions]
        if len(set(ids)) != len(ids):
            raise ValueError(f"questions of one rollout must be distinct, got ids {ids}")
        if self.arpo is not None:
            result = self.arpo.run(questions, seed=seed)
            return result.trajectories, result.stats
        t0 = time.perf_counter()
        trajs = self.loop.run(list(questions), n=self.n)
        return trajs, {
            "branching_rate": 0.0,
            "branched_fraction": 0.0,
            "generated_tokens": sum(t.num_model_tokens for t in trajs),
            "time_s": time.perf_counter() - t0,
        }
