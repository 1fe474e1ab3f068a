"""One mixed GRPO group per question: self-explored, expert-prefix and expert-guided trajectories
(docs/e3tir.md 2).

For a question whose plan (:class:`~etagent.rl.e3.boundary.GroupPlan`) asks for them:

- **self-explored**: the policy from the prompt (ARPO branching when configured);
- **expert prefix**: one verified expert trajectory cut after its k-th tool result (the anchor),
  re-tokenised under the policy's prompt and continued by the policy ``prefix`` times, so the
  continuations diverge around the same anchor; the prefix is out of their loss;
- **expert-guided**: whole verified expert trajectories, re-tokenised under the policy's prompt, as
  off-policy samples.

Every trajectory records ``meta["e3"]``: its kind, the expert it came from and, for a
continuation, the number of prefix segments (the response segments out of the loss).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any, Literal

from etagent.loop.agent_loop import AgentLoop
from etagent.loop.arpo import ArpoConfig, ArpoRollout
from etagent.protocol import tags
from etagent.records import Question, Trajectory
from etagent.rl.e3.boundary import GroupPlan, KnowledgeBoundary, prefix_steps
from etagent.rl.e3.config import E3Config
from etagent.rl.e3.experts import ExpertBank
from etagent.rl.samples import PolicySample, to_policy_sample
from etagent.scoring.correctness import AnswerCheck, QAMetric
from etagent.scoring.reward import trajectory_correctness

ExperienceKind = Literal["self", "prefix", "guided"]
KINDS: tuple[ExperienceKind, ...] = ("self", "prefix", "guided")


def experience_kind(traj: Trajectory) -> ExperienceKind:
    return traj.meta.get("e3", {}).get("kind", "self")


def cut_after_tool_result(expert: Trajectory, steps: int) -> str:
    """The expert's response up to and including its ``steps``-th tool result."""
    if steps < 1 or steps > len(expert.tool_calls):
        raise ValueError(
            f"cannot cut after tool result {steps}: the expert made {len(expert.tool_calls)} calls"
        )
    segment = expert.tool_calls[steps - 1].segment_index
    return "".join(s.text for s in expert.segments[: segment + 1])


def e3_policy_sample(traj: Trajectory, eos_id: int) -> tuple[PolicySample, list[int]]:
    """The trainer's sample of a trajectory and its expert mask (1: an expert token in the loss).

    A continuation's prefix segments leave the loss (``env_mask`` 0); an expert-guided trajectory's
    model tokens (and the EOS appended after its answer) are expert tokens.
    """
    sample = to_policy_sample(traj, eos_id)
    info = traj.meta.get("e3", {})
    expert_mask = [0] * len(sample.completion_ids)
    if info.get("kind") == "prefix":
        masked = sum(len(s.token_ids) for s in traj.segments[: info["prefix_segments"]])
        sample.env_mask[:masked] = [0] * masked
        sample.logprobs[:masked] = [None] * masked
    elif info.get("kind") == "guided":
        expert_mask = list(sample.env_mask)
    return sample, expert_mask


class E3Rollout:
    """``n`` trajectories per question in mixed groups; the same ``run`` contract as
    :class:`~etagent.rl.samples.PolicyRollout`, plus the step (the boundary anneals with it)."""

    def __init__(
        self,
        loop: AgentLoop,
        n: int,
        arpo: ArpoConfig | None,
        cfg: E3Config,
        experts: ExpertBank,
        boundary: KnowledgeBoundary,
        qa_metric: QAMetric = "f1",
        check: AnswerCheck | None = None,
    ):
        self.loop = loop
        self.n = n
        self.arpo = arpo
        self.cfg = cfg
        self.experts = experts
        self.boundary = boundary
        self.qa_metric = qa_metric
        self.check = check
        #: "<question id>#<expert index>" -> its model tokens, for every expert trajectory used so far
        #: (trained on or continued from): the expert data the warm-up cost, each trajectory once
        self.experts_used: dict[str, int] = {}

    def run(
        self, questions: Sequence[Question], seed: int, step: int = 1
    ) -> tuple[list[Trajectory], dict[str, Any]]:
        t0 = time.perf_counter()
        total = self.n * len(questions)
        rng = random.Random(seed)
        verified = self.experts.get(questions)
        plans: dict[str, GroupPlan] = {}
        anchors: dict[str, tuple[int, Trajectory]] = {}
        for q in questions:
            experts = verified[q.id]
            if experts:
                index = rng.randrange(len(experts))
                anchors[q.id] = (index, experts[index])
            plans[q.id] = self.boundary.plan(
                q.id, step, len(anchors[q.id][1].tool_calls) if experts else None
            )

        own, stats = self._self_explore(questions, plans, seed, total)
        prefixes = self._continue_prefixes(questions, plans, anchors, total)
        # and what the policy wrote after the prefixes
        stats["generated_tokens"] += sum(
            t.num_model_tokens - t.meta["e3"]["prefix_model_tokens"] for ts in prefixes.values() for t in ts
        )
        groups: list[Trajectory] = []
        for q in questions:
            group = own[q.id] + prefixes.get(q.id, []) + self._guided(q, plans[q.id], verified[q.id], anchors)
            for k, t in enumerate(group):
                t.sample_index = k
            groups += group
        self._report(len(groups), total)
        stats = {
            **stats,
            **self._update_boundary(questions, groups, plans),
            "time_s": time.perf_counter() - t0,
        }
        return groups, stats

    def _report(self, done: int, total: int) -> None:
        """Keep the step's progress display on the whole step (``total`` trajectories): each rollout
        call below sets its own total and finished count (ARPO) or none (a continuation)."""
        progress = self.loop.progress
        if progress is not None:
            progress.total = total
            progress.set_finished(done)

    def samples(self, trajs: Sequence[Trajectory], eos_id: int) -> tuple[list[PolicySample], list[list[int]]]:
        """The trainer's samples and their expert masks (:func:`e3_policy_sample`)."""
        pairs = [e3_policy_sample(t, eos_id) for t in trajs]
        return [sample for sample, _ in pairs], [mask for _, mask in pairs]

    # -- the three kinds -----------------------------------------------------------------------

    def _self_explore(
        self, questions: Sequence[Question], plans: dict[str, GroupPlan], seed: int, total: int
    ) -> tuple[dict[str, list[Trajectory]], dict[str, Any]]:
        """Each question's self-explored trajectories; one rollout call per group size."""
        by_size: dict[int, list[Question]] = {}
        for q in questions:
            by_size.setdefault(plans[q.id].self_explored, []).append(q)
        out: dict[str, list[Trajectory]] = {}
        merged: dict[str, float] = {"generated_tokens": 0, "branches": 0, "decisions": 0, "rounds": 0}
        entropy_sum = 0.0
        for size, qs in sorted(by_size.items()):
            if self.arpo is None:
                trajs = self.loop.run(qs, n=size)
                merged["generated_tokens"] += sum(t.num_model_tokens for t in trajs)
            else:
                initial = min(self.arpo.initial_rollouts, size)
                arpo = self.arpo.model_copy(
                    update={
                        "n": size,
                        "initial_rollouts": initial,
                        "reserve_rollouts": min(self.arpo.reserve_rollouts, size - initial),
                    }
                )
                result = ArpoRollout(self.loop, arpo).run(qs, seed=seed + size)
                trajs = result.trajectories
                for key in ("generated_tokens", "branches", "decisions", "rounds"):
                    merged[key] += result.stats[key]
                entropy_sum += result.stats["mean_entropy"] * result.stats["decisions"]
                merged["entropy_method"] = result.stats["entropy_method"]  # type: ignore[assignment]
            for t in trajs:
                t.meta["e3"] = {"kind": "self"}
                out.setdefault(t.question_id, []).append(t)
            self._report(sum(len(v) for v in out.values()), total)
        own = sum(len(v) for v in out.values())
        stats: dict[str, Any] = {
            "generated_tokens": merged["generated_tokens"],
            "branching_rate": merged["branches"] / merged["decisions"] if merged["decisions"] else 0.0,
            "branched_fraction": merged["branches"] / own if own else 0.0,
        }
        if self.arpo is not None:
            stats["rounds"] = merged["rounds"]
            stats["mean_entropy"] = entropy_sum / merged["decisions"] if merged["decisions"] else 0.0
            stats["entropy_method"] = merged.get("entropy_method", "none")
        return out, stats

    def _continue_prefixes(
        self,
        questions: Sequence[Question],
        plans: dict[str, GroupPlan],
        anchors: dict[str, tuple[int, Trajectory]],
        total: int,
    ) -> dict[str, list[Trajectory]]:
        """``plan.prefix`` continuations of each question's anchor, all in one batched call."""
        partials: list[Trajectory] = []
        for q in questions:
            plan = plans[q.id]
            if not plan.prefix:
                continue
            index, expert = anchors[q.id]
            steps = prefix_steps(len(expert.tool_calls), plan.prefix_fraction)
            partial = self.loop.partial_trajectory(
                q, cut_after_tool_result(expert, steps), known_calls=expert.tool_calls
            )
            partial.meta["e3"] = {
                "kind": "prefix",
                "expert": f"{q.id}#{index}",
                "prefix_steps": steps,
                "prefix_segments": len(partial.segments),
                "prefix_tokens": len(partial.response_ids),
                "prefix_model_tokens": partial.num_model_tokens,
            }
            self.experts_used[f"{q.id}#{index}"] = expert.num_model_tokens
            partials += [partial] * plan.prefix
        out: dict[str, list[Trajectory]] = {}
        self._report(sum(p.self_explored for p in plans.values()), total)
        for t in self.loop.continue_run(partials) if partials else []:
            out.setdefault(t.question_id, []).append(t)
        return out

    def _guided(
        self,
        q: Question,
        plan: GroupPlan,
        experts: list[Trajectory],
        anchors: dict[str, tuple[int, Trajectory]],
    ) -> list[Trajectory]:
        """``plan.guided`` whole expert trajectories, the anchor first, then the others in turn."""
        if not plan.guided:
            return []
        first = anchors[q.id][0]
        order = [first] + [i for i in range(len(experts)) if i != first]
        out = []
        for k in range(plan.guided):
            index = order[k % len(order)]
            expert = experts[index]
            t = self.loop.partial_trajectory(q, expert.response_text, known_calls=expert.tool_calls)
            t.finish_reason, t.prediction = "answer", tags.extract_answer(t.response_text)
            t.meta["e3"] = {"kind": "guided", "expert": f"{q.id}#{index}", "expert_model": expert.model}
            self.experts_used[f"{q.id}#{index}"] = expert.num_model_tokens
            out.append(t)
        return out

    # -- the boundary --------------------------------------------------------------------------

    @property
    def expert_tokens(self) -> int:
        """Model tokens of the distinct expert trajectories used so far."""
        return sum(self.experts_used.values())

    def close(self) -> None:
        self.loop.close()
        self.experts.close()

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to go on as this one would: pass rates and expert counts."""
        return {
            "boundary": self.boundary.state_dict(),
            "experts_used": dict(sorted(self.experts_used.items())),
            "expert_trajectories_sampled": self.experts.generated,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.boundary.load_state_dict(state["boundary"])
        self.experts_used = {str(k): int(v) for k, v in state["experts_used"].items()}
        self.experts.generated = int(state.get("expert_trajectories_sampled", 0))

    def _update_boundary(
        self, questions: Sequence[Question], groups: list[Trajectory], plans: dict[str, GroupPlan]
    ) -> dict[str, float]:
        """Fold the self-explored results into the pass rates; the step's E3 statistics."""
        passed: dict[str, list[bool]] = {q.id: [] for q in questions}
        by_kind: dict[str, list[float]] = {k: [] for k in KINDS}
        for t in groups:
            value = trajectory_correctness(t, self.qa_metric, self.check)
            by_kind[experience_kind(t)].append(value)
            if experience_kind(t) == "self":
                passed[t.question_id].append(value >= self.cfg.pass_threshold)
        before = [self.boundary.pass_rate(q.id) for q in questions]
        for q in questions:
            self.boundary.update(q.id, passed[q.id])
        self.boundary.update_overall([p for q in questions for p in passed[q.id]])
        n = max(1, len(questions))
        stats = {
            "e3_guidance": sum(p.guidance for p in plans.values()) / n,
            "e3_pass_rate": sum(before) / n,
            "e3_prefix_fraction": sum(p.prefix_fraction for p in plans.values()) / n,
            "e3_self": sum(p.self_explored for p in plans.values()),
            "e3_prefix": sum(p.prefix for p in plans.values()),
            "e3_guided": sum(p.guided for p in plans.values()),
            "e3_experts_used": len(self.experts_used),
            "e3_expert_tokens": self.expert_tokens,
            "e3_no_expert": sum(1 for q in questions if not self.experts.known.get(q.id)),
        }
        for kind, values in by_kind.items():
            if values:
                stats[f"e3_correctness_{kind}"] = sum(values) / len(values)
        return stats
