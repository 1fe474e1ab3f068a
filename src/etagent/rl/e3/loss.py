"""Mix policy optimisation: one GRPO loss over a group that mixes the policy's own tokens with an
expert's (docs/e3tir.md 3).

Per completion token t of row b (all tensors (B, T); advantages (B, 1), one per trajectory):

- on-policy tokens (self-explored, and the policy's continuation of an expert prefix): PPO's
  clipped surrogate, ``-min(r A, clip(r, 1 - eps, 1 + eps) A)`` with ``r = p / p_old``;
- expert tokens (an expert-guided trajectory's model tokens): the behaviour policy (the expert)
  has no log-probs, so there is no ratio to clip; the loss is ``-w A f(p)`` with ``p`` the
  policy's own probability of the expert's token and ``f(p) = p / (p + gamma)`` (policy shaping),
  ``f(p) = p`` (plain) or ``f(p) = log p`` (log), whose gradient is ``-w A f'(p) p grad log p``;
- an expert prefix the policy continued is out of the loss altogether (its tokens have loss mask
  0, like tool results), so one prefix shared by several continuations gets no conflicting
  gradients from their different advantages.

:func:`mixed_token_loss` is the pure function; :func:`mix_trainer_class` puts it into TRL's
GRPOTrainer (token-mean over the update's loss tokens, as the trainer's ``dapo``/``bnpo`` losses).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import torch

from etagent import runtime
from etagent.io import atomic_write_json
from etagent.rl.batch import trimmed_trainer_class
from etagent.rl.e3.config import OffPolicyConfig

STATE_FILE = "e3_state.rank{rank}.json"


def read_state(checkpoint: Path) -> dict[str, Any] | None:
    """This process's E3 state saved in ``checkpoint`` (None: a checkpoint of a run without one)."""
    path = Path(checkpoint) / STATE_FILE.format(rank=runtime.process_rank())
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def shaped_probability(logps: torch.Tensor, cfg: OffPolicyConfig) -> torch.Tensor:
    """f(p) of each token, from its log-probability: p / (p + gamma), p, or log p."""
    if cfg.shaping == "log":
        return logps
    p = logps.exp()
    return p / (p + cfg.gamma) if cfg.shaping == "policy_shaping" else p


def mixed_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    expert_mask: torch.Tensor,
    clip_epsilon: float,
    off_policy: OffPolicyConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token loss (B, T), clipped (B, T) bool: on-policy tokens whose ratio was clipped).

    ``logps`` (B, T) the policy's log-probs of the completion tokens (with grad), ``old_logps``
    (B, T) those of the policy that sampled (no grad), ``advantages`` (B, 1) or (B,),
    ``expert_mask`` (B, T) 1 on expert tokens. The caller masks and averages over loss tokens.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (B, 1)
    expert = expert_mask.bool()
    ratio = torch.exp(logps - old_logps)  # (B, T)
    clipped_ratio = torch.clamp(ratio, 1 - clip_epsilon, 1 + clip_epsilon)
    on_policy = -torch.min(ratio * advantages, clipped_ratio * advantages)
    off_policy_loss = -off_policy.weight * advantages * shaped_probability(logps, off_policy)
    loss = torch.where(expert, off_policy_loss, on_policy)
    clipped = (
        ((ratio < 1 - clip_epsilon) & (advantages < 0)) | ((ratio > 1 + clip_epsilon) & (advantages > 0))
    ) & ~expert
    return loss, clipped


def pad_rows(rows: list[list[int]], width: int, device: Any) -> torch.Tensor:
    """(len(rows), width) int tensor: each row right-padded with 0 or cut to ``width``."""
    out = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        row = row[:width]
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


@cache
def mix_trainer_class() -> type:
    """TRL's GRPOTrainer with the mixed objective. The rollout function leaves each row's expert
    mask in ``expert_masks`` (rows in the order it returned them); it travels with the batch as
    ``inputs["expert_mask"]`` (TRL shuffles and splits every tensor of the batch in unison, and
    etagent.rl.batch cuts it with the completions)."""

    class MixGRPOTrainer(trimmed_trainer_class()):  # type: ignore[misc]
        off_policy: OffPolicyConfig = OffPolicyConfig()

        def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
            out = super()._generate_and_score_completions(inputs)
            masks = self.rollout_func.expert_masks
            if len(masks) != out["completion_ids"].size(0):
                raise RuntimeError(
                    f"e3: {len(masks)} expert masks for {out['completion_ids'].size(0)} completions"
                )
            out["expert_mask"] = pad_rows(masks, out["completion_ids"].size(1), out["completion_ids"].device)
            return out

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            # written before the trainer's files: a checkpoint whose trainer_state.json (written
            # last) reads back also has the warm-up's pass rates (etagent.train.sft.newest_complete_checkpoint)
            rollout = self.rollout_func.rollout
            if rollout is not None:
                folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write_json(
                    folder / STATE_FILE.format(rank=runtime.process_rank()), rollout.state_dict()
                )
            super()._save_checkpoint(model, trial)

        def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
            # every process takes this path for every micro-batch (its metrics reduce across processes)
            prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
            completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
            input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, P + T)
            attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
            mask = (
                completion_mask * inputs["tool_mask"] if "tool_mask" in inputs else completion_mask
            )  # (B, T)
            logps, entropies, _ = self._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True
            )
            old = inputs.get("old_per_token_logps")
            old = logps.detach() if old is None else old
            expert = inputs["expert_mask"].bool() & mask.bool()  # (B, T)
            loss_per_token, clipped = mixed_token_loss(
                logps, old, inputs["advantages"], expert, self.epsilon_low, self.off_policy
            )
            if "importance_sampling_ratio" in inputs:  # vLLM sampled: correct only the policy's own tokens
                loss_per_token = torch.where(
                    expert, loss_per_token, loss_per_token * inputs["importance_sampling_ratio"]
                )
            if self.beta != 0.0:
                ref = inputs["ref_per_token_logps"]
                loss_per_token = loss_per_token + self.beta * (torch.exp(ref - logps) - (ref - logps) - 1)

            mode = "train" if self.model.training else "eval"
            accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            if self.loss_type == "dapo":  # over all loss tokens of the update (TRL's normaliser)
                normaliser = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
                if mode == "train":
                    normaliser = normaliser * accumulation / self.args.steps_per_generation
                loss = (loss_per_token * mask).sum() / normaliser
            elif self.loss_type == "bnpo":
                loss = (loss_per_token * mask).sum() / mask.sum().clamp(min=1.0) / accumulation
            else:
                raise ValueError(f"e3: loss_type {self.loss_type!r} is not supported (dapo, bnpo)")

            def global_mean(values: torch.Tensor, where: torch.Tensor) -> float:
                local = torch.stack([(values * where).sum(), where.sum().float()])
                total = self.accelerator.reduce(local, reduction="sum")
                return (total[0] / total[1].clamp(min=1.0)).item()

            on_policy = mask * (~expert)
            self._metrics[mode]["entropy"].append(global_mean(entropies, mask))
            self._metrics[mode]["clip_ratio/region_mean"].append(global_mean(clipped.float(), on_policy))
            self._metrics[mode]["e3/expert_token_share"].append(global_mean(expert.float(), mask))
            self._metrics[mode]["e3/expert_token_prob"].append(
                global_mean(logps.detach().exp(), expert.float())
            )
            return loss

    return MixGRPOTrainer
