"""``etagent rl`` on one machine: TRL's GRPOTrainer driven by our rollouts and reward.

TRL computes the group-normalised advantages ((r - group mean) / (group std + 1e-4), unbiased
std), the clipped PPO objective, the token-mean loss (``loss_type="dapo"``: summed over the loss
tokens of an update and divided by their count), the optional KL term, checkpoints and resume.
We plug in three things (docs/cpu.md 6.2):

- ``rollout_func``: receives the batch's prompts (each question id repeated ``num_generations``
  times, consecutively), runs our agent loop with ARPO branching (or independent samples) on the
  live policy, and returns per trajectory the prompt ids, the completion ids (the whole response,
  model and tool tokens, plus EOS where the model stopped on its own), the sampler's log-probs,
  ``env_mask`` (the response mask: tool-output tokens out of the loss) and the trajectories
  themselves, which TRL hands to the reward function as a keyword argument;
- the reward function: the ET-Agent reward of each trajectory within its question's group (TRL
  calls it once for the whole batch, laid out as consecutive groups, and normalises advantages per
  consecutive group of ``num_generations``: the same groups);
- a callback writing one JSONL line per optimizer step.

Where TRL's contract does not fit:
- the prompt column holds question ids, not chat messages: the agent loop renders its own prompt
  (system tool prompt, few-shot examples), and TRL never tokenises prompts on the rollout_func
  path; the ids map back to our Question records;
- the sampler's log-probs are only used by TRL for vLLM importance sampling; with one update per
  step TRL takes the old log-probs from the trainer's own forward pass (the same model in eval
  mode: our hf backend returns log-probs of the model's raw distribution);
- ``num_generations`` trajectories per question are always returned (ARPO keeps the first n in
  creation order), so variable group sizes are never needed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etagent import runtime
from etagent.backends.base import Generator
from etagent.config import ConfigError
from etagent.io import JsonlAppender, atomic_write_json, atomic_write_jsonl, iter_jsonl
from etagent.progress import LOG_INTERVAL_S, Progress, ProgressDisplay
from etagent.records import Question, Trajectory
from etagent.rl.config import RLConfig
from etagent.rl.e3.boundary import KnowledgeBoundary
from etagent.rl.e3.experts import ExpertBank
from etagent.rl.e3.rollout import E3Rollout
from etagent.rl.samples import PolicyRollout, batch_rewards, reward_metrics, split_groups
from etagent.rl.weight_sync import ServerWeightSync, install_server_engine, server_root
from etagent.scoring.correctness import AnswerCheck
from etagent.tools.base import Tool
from etagent.train.compat import checkpointing_arg
from etagent.train.precision import training_uses_bf16
from etagent.train.progress import UpdateProgress, send_metric_dicts_to_log
from etagent.train.save import save_trainer_model
from etagent.train.sft import is_model_dir, newest_complete_checkpoint

log = logging.getLogger("etagent.rl")

TRAIN_LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
SUMMARY = "rl_summary.json"

#: our name in train_log.jsonl <- the name in TRL's logs
TRL_KEYS = {
    "reward": "reward",
    "reward_std": "reward_std",
    "entropy": "entropy",
    "kl": "kl",
    "clip_fraction": "clip_ratio/region_mean",
    "loss": "loss",
    "grad_norm": "grad_norm",
    "learning_rate": "learning_rate",
    "frac_reward_zero_std": "frac_reward_zero_std",
}
#: metrics the reward function reports through TRL's ``log_metric``
OWN_KEYS = (
    "correctness",
    "tool_calls",
    "length",
    "format_ok",
    "branching_rate",
    "branched_fraction",
    "branch_entropy",
    "sampled_entropy_estimate",
    "generated_tokens",
    "rollout_seconds",
    "rollout_rounds",
    "rollout_fresh_rollouts",
    "rollout_reserves_dropped",
)


# ---------------------------------------------------------------------------------------------
# rollout_func and reward function


class RolloutFunc:
    """TRL's ``rollout_func(prompts, trainer) -> dict`` over a :class:`PolicyRollout`.

    TRL's bar counts optimizer steps; inside one the rollout shows its rounds, finished
    trajectories and tokens, then the update its micro-batches (:mod:`etagent.progress`; the
    first process only; a log line every ``progress_interval_s`` seconds when not on a terminal).
    """

    def __init__(
        self,
        cfg: RLConfig,
        questions: dict[str, Question],
        make_rollout: Callable[[Any], PolicyRollout],
        eos_id: int,
    ):
        self.cfg = cfg
        self.questions = questions
        self.make_rollout = make_rollout  # trainer -> PolicyRollout, built on first use
        self.eos_id = eos_id
        self.rollout: PolicyRollout | E3Rollout | None = None
        self.update: UpdateProgress | None = None  # with its TrainerCallback, made on first use
        self.progress_interval_s = LOG_INTERVAL_S
        #: the E3 warm-up's expert mask of each row last returned (all 0 without a warm-up)
        self.expert_masks: list[list[int]] = []
        #: the E3 warm-up's state saved in the checkpoint a run resumes from
        self.resume_state: dict[str, Any] | None = None
        self.__name__ = "etagent_rollout"

    def __call__(self, prompts: list[str], trainer: Any) -> dict[str, Any]:
        g = self.cfg.num_generations
        groups = split_groups(prompts, g)
        for group in groups:
            if len(set(group)) != 1:
                raise ValueError(f"expected each question id repeated {g} times consecutively, got {group}")
        questions = [self.questions[group[0]] for group in groups]
        if self.rollout is None:
            self.rollout = self.make_rollout(trainer)
            if self.resume_state is not None:
                self.rollout.load_state_dict(self.resume_state)
        main = bool(trainer.accelerator.is_main_process)
        if self.update is None:
            self.update = UpdateProgress(enabled=main, interval_s=self.progress_interval_s, logger=log)
            trainer.add_callback(self.update.callback())
        step = rollout_step(trainer.state.global_step, self.cfg)
        # each process draws its own ARPO branches and samples (process 0: the one-process seed)
        seed = self.cfg.seed * 1_000_003 + step + 7_919 * trainer.accelerator.process_index
        engine = self.rollout.loop.generator
        from etagent.backends.hf import HFGenerator

        if isinstance(engine, HFGenerator):  # rollout.engine policy: the trained model itself
            # the weights changed since the last rollout step: prompt prefixes cached with the old
            # ones are stale. The engine's own check samples the weights' values (a fused optimizer
            # leaves version counters alone); here the update is known, so clear outright
            engine.clear_prefix_cache()
        if hasattr(engine, "rollout_begin"):  # vllm_colocate: awake for the whole rollout
            engine.rollout_begin(f"step{trainer.state.global_step}")
        progress = Progress("rollout", total=len(prompts), detail=f"step {step}")
        try:
            with (
                self.rollout.loop.reporting(progress),
                ProgressDisplay(progress, enabled=main, logger=log, interval_s=self.progress_interval_s),
            ):
                trajs, stats = self.rollout.run(questions, seed=seed, step=step)
        finally:
            if hasattr(engine, "rollout_end"):
                engine.rollout_end()
        self.update.begin(len(trajs), trainer.args.steps_per_generation)
        samples, self.expert_masks = self.rollout.samples(trajs, self.eos_id)
        return {
            "prompt_ids": [s.prompt_ids for s in samples],
            "completion_ids": [s.completion_ids for s in samples],
            "logprobs": [s.logprobs for s in samples],
            "env_mask": [s.env_mask for s in samples],
            "trajectory": trajs,
            # not a list: TRL gives every row the same value
            "rollout_stats": {**stats, "step": step},
        }


def rollout_step(global_step: int, cfg: RLConfig) -> int:
    """1-based rollout step of the optimizer step about to run (``mini_batches`` updates per rollout)."""
    return global_step // cfg.mini_batches + 1


def make_reward_func(
    cfg: RLConfig, tool_tags: tuple[str, ...], check: AnswerCheck | None = None
) -> Callable[..., list[float]]:
    """TRL's reward function: the ET-Agent reward of each group (``check``: the task's answer check)."""

    def et_reward(
        prompts: list[str],
        completions: list[Any],
        trajectory: list[Trajectory],
        rollout_stats: list[dict[str, Any]],
        trainer_state: Any,
        log_metric: Callable[[str, float], None],
        **_: Any,
    ) -> list[float]:
        step = rollout_step(trainer_state.global_step, cfg)
        parts = batch_rewards(
            trajectory,
            cfg.num_generations,
            cfg.reward,
            min(step, cfg.max_steps),
            cfg.max_steps,
            tool_tags,
            check=check,
        )
        for name, value in reward_metrics(parts).items():
            log_metric(name, value)
        stats = rollout_stats[0]
        log_metric("branching_rate", float(stats.get("branching_rate", 0.0)))
        log_metric("branched_fraction", float(stats.get("branched_fraction", 0.0)))
        log_metric("generated_tokens", float(stats.get("generated_tokens", 0)))
        log_metric("rollout_seconds", float(stats.get("time_s", 0.0)))
        for key in ("rounds", "fresh_rollouts", "reserves_dropped"):  # ARPO only
            if key in stats:
                log_metric(f"rollout_{key}", float(stats[key]))
        for key, value in stats.items():  # the E3 warm-up's group mix and knowledge boundary
            if key.startswith("e3_"):
                log_metric(f"e3/{key[3:]}", float(value))
        if "mean_entropy" in stats:
            log_metric("branch_entropy", float(stats["mean_entropy"]))
            log_metric("sampled_entropy_estimate", float(stats["entropy_method"] != "top_k"))
        return [p.score for p in parts]

    return et_reward


# ---------------------------------------------------------------------------------------------
# the per-step log


def _trainer_callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class JsonlLog:
    """Appends one line per optimizer step to ``train_log.jsonl``: our names first, then every
    other number TRL logged under its own name."""

    def __init__(self, path: Path, cfg: RLConfig):
        self.path = path
        self.cfg = cfg
        self._last = time.perf_counter()
        self._writer: JsonlAppender | None = None
        #: optimizer step -> whether every process held the same weights after it (several processes)
        self.ranks_agree: dict[int, bool] = {}

    def keep_until(self, step: int) -> None:
        """Drop lines past ``step`` (a run resumed from an earlier checkpoint redoes them)."""
        if not self.path.exists():
            return
        kept = [obj for _, obj in iter_jsonl(self.path) if obj.get("step", 0) <= step]
        atomic_write_jsonl(self.path, kept)

    def restart_clock(self) -> None:
        self._last = time.perf_counter()

    def record(self, step: int, logs: dict[str, Any]) -> dict[str, Any]:
        now = time.perf_counter()
        rec: dict[str, Any] = {"step": step, "rollout_step": (step - 1) // self.cfg.mini_batches + 1}
        for ours, theirs in TRL_KEYS.items():
            rec[ours] = _number(logs.get(theirs))
        for key in OWN_KEYS:
            rec[key] = _number(logs.get(key))
        rec["step_seconds"] = now - self._last
        if step in self.ranks_agree:
            rec["ranks_agree"] = self.ranks_agree[step]
        self._last = now
        for key, value in logs.items():
            if key not in rec and key not in TRL_KEYS.values() and isinstance(value, int | float):
                rec[key] = _number(value)
        if self._writer is None:
            self._writer = JsonlAppender(self.path)
        self._writer.write_group([rec])
        return rec

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _jsonl_callback(writer: JsonlLog) -> Any:
    base = _trainer_callback_base()

    class _Callback(base):  # type: ignore[misc, valid-type]
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any):
            # one line per step: the main process writes it (TRL's logs are already reduced)
            if state.is_world_process_zero and logs and "loss" in logs and "train_runtime" not in logs:
                rec = writer.record(state.global_step, logs)
                log.info(
                    "step %d: reward %.3f correctness %.3f tool calls %.2f (%.1f s)",
                    rec["step"],
                    rec["reward"] if rec["reward"] is not None else float("nan"),
                    rec["correctness"] if rec["correctness"] is not None else float("nan"),
                    rec["tool_calls"] if rec["tool_calls"] is not None else float("nan"),
                    rec["step_seconds"],
                )

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
            agree = ranks_agree(model)
            if agree is not None:
                writer.ranks_agree[state.global_step] = agree
                if not agree:
                    raise RuntimeError(
                        f"rl: after optimizer step {state.global_step} the processes hold different "
                        "weights (a desynchronised update); stopping before the run trains on it"
                    )

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any):
            writer.restart_clock()

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any):
            writer.close()

    return _Callback()


def ranks_agree(model: Any) -> bool | None:
    """Whether every process holds the same weights (a checksum of all parameters, gathered);
    None with one process or with sharded weights (ZeRO-3, FSDP), where each holds its own part.
    Cheap next to a step: one pass over the parameters and one gather of one number per process."""
    import torch
    import torch.distributed as dist

    if model is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    params = list(model.parameters())
    if any(hasattr(p, "ds_id") or type(p.data).__name__ == "DTensor" for p in params):
        return None
    with torch.no_grad():
        total = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1)
    sums = [torch.zeros_like(total) for _ in range(dist.get_world_size())]
    dist.all_gather(sums, total)
    return all(torch.equal(s, sums[0]) for s in sums)


# ---------------------------------------------------------------------------------------------
# building the trainer


def report_to(cfg: RLConfig) -> list[str]:
    """Dashboards to log to besides the JSONL file."""
    import importlib.util

    choice = cfg.logging.report_to
    if choice == "none":
        return []
    if choice != "auto":
        if importlib.util.find_spec(choice) is None:
            raise ValueError(f"logging.report_to={choice} but the {choice} package is not installed")
        return [choice]
    out = []
    if importlib.util.find_spec("tensorboard") is not None:
        out.append("tensorboard")
    if importlib.util.find_spec("wandb") is not None and (
        os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")
    ):
        out.append("wandb")
    return out


def grpo_args(cfg: RLConfig, run_dir: Path, use_cpu: bool, bf16: bool) -> Any:
    from trl import GRPOConfig

    u = cfg.mini_batches
    accumulation = cfg.gradient_accumulation_steps(runtime.process_count())
    engine = cfg.rollout
    return GRPOConfig(
        output_dir=str(run_dir / CHECKPOINTS),
        use_cpu=use_cpu,
        bf16=bf16,  # TRL's default is True: 7-15x slower on a CPU without native bf16 (docs/cpu.md 6.1, 10)
        report_to=report_to(cfg),
        logging_steps=1,
        max_steps=cfg.max_steps * u,
        save_strategy="steps",
        save_steps=cfg.save_steps * u,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation * u,
        num_iterations=1,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.agent.budget.max_response_tokens + 1,
        epsilon=cfg.clip_epsilon,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        scale_rewards="group",
        mask_truncated_completions=False,
        **checkpointing_arg(GRPOConfig, cfg.gradient_checkpointing),
        # the trainer's log-probs are of the distribution that sampled (logits / T), as the server's
        # processed log-probs are: importance ratios compare like with like (docs/scaling.md)
        temperature=cfg.agent.sampling.temperature or 1.0,
        # colocate and nccl: TRL's own engine / client and weight transfer; disk: installed after
        # construction (weight_sync.py)
        use_vllm=engine.engine == "vllm_colocate"
        or (engine.engine == "vllm_server" and engine.weight_sync == "nccl"),
        vllm_mode="colocate" if engine.engine == "vllm_colocate" else "server",
        vllm_server_base_url=_server_root(cfg) if engine.engine == "vllm_server" else None,
        vllm_gpu_memory_utilization=engine.colocate.gpu_memory_utilization,
        vllm_enable_sleep_mode=engine.engine == "vllm_colocate"
        and (engine.colocate.sleep_mode if engine.colocate.sleep_mode is not None else not use_cpu),
        vllm_max_model_length=engine.colocate.max_model_len,
        vllm_tensor_parallel_size=1,
        vllm_importance_sampling_correction=engine.importance_sampling.enabled,
        vllm_importance_sampling_mode=engine.importance_sampling.mode,
        vllm_importance_sampling_clip_max=engine.importance_sampling.clip_max,
        vllm_importance_sampling_clip_min=engine.importance_sampling.clip_min,
        log_completions=False,
        disable_tqdm=False,
        dataloader_num_workers=0,
    )


def _server_root(cfg: RLConfig) -> str:
    urls = cfg.agent.backend.section().base_url
    return server_root(urls if isinstance(urls, str) else urls[0])


def _load_policy(cfg: RLConfig) -> tuple[Any, Any, bool, bool]:
    """(model, tokenizer, on GPU, bf16 steps) with the thread count set. On a GPU a bf16 run loads
    the policy in bf16; on a CPU the weights stay fp32 under bf16 autocast (fp32 master weights:
    an RL learning rate's updates are below bf16's resolution). The trainer wraps the policy's
    forward in that autocast, so the policy engine's rollout prefills run in bf16 too, and its
    lean decode steps (which use the weights directly) in fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    from etagent.backends.model_store import load_tokenizer, resolve_model

    torch.set_num_threads(cfg.threads or runtime.available_cores())
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    bf16 = training_uses_bf16(cfg.precision, cuda, stage="rl")
    dtype = torch.bfloat16 if cuda and bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(resolve_model(cfg.model)), dtype=dtype)
    tokenizer = load_tokenizer(cfg.agent.backend.tokenizer_name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, cuda, bf16


def build_trainer(
    cfg: RLConfig,
    run_dir: Path,
    *,
    questions: list[Question] | None = None,
    generator: Generator | None = None,
    tools: dict[str, Tool] | None = None,
) -> tuple[Any, JsonlLog]:
    """The GRPOTrainer for ``cfg``, and its step log.

    ``generator`` replaces the live policy as the rollout's sampler (tests; off-policy data),
    ``tools`` the tools built from ``cfg.agent.tools``, ``questions`` those loaded from ``cfg.data``.
    """
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset

    from etagent.agent import build_agent
    from etagent.backends.hf import HFGenerator

    data = cfg.data_ref()
    if questions is None:
        questions = data.questions(cfg.limit)
    by_id: dict[str, Question] = {}
    for q in questions:
        if q.id in by_id:
            raise ValueError(f"{cfg.data}: question id {q.id!r} appears twice")
        by_id[q.id] = q
    if len(by_id) < cfg.questions_per_step:
        raise ValueError(
            f"{cfg.data}: {len(by_id)} questions, fewer than questions_per_step={cfg.questions_per_step}"
        )
    model, tokenizer, cuda, bf16 = _load_policy(cfg)
    sampling = cfg.agent.sampling
    if sampling.seed is not None:
        log.warning(
            "sampling.seed is set: every generate call restarts the same random stream; leave it "
            "unset for RL (the trainer seeds torch from cfg.seed and restores its state on resume)"
        )
    if cfg.use_arpo and sampling.logprobs < cfg.arpo.top_k_logprobs:
        sampling = sampling.model_copy(update={"logprobs": cfg.arpo.top_k_logprobs})

    per_process = cfg.sequences_per_step // runtime.process_count()
    agent = cfg.agent.model_copy(update={"sampling": sampling, "max_active": per_process})

    def make_rollout(trainer: Any) -> PolicyRollout:
        gen = generator
        if gen is None and cfg.rollout.engine == "vllm_colocate":
            from etagent.backends.vllm_local import VLLMEngineGenerator

            gen = VLLMEngineGenerator(trainer.vllm_generation, tokenizer, model=cfg.model)
        if gen is None and cfg.rollout.engine == "policy":
            gen = HFGenerator(
                trainer.model,
                tokenizer,
                batch_size=cfg.agent.backend.section().batch_size,
                name=f"policy:{cfg.model}",
            )
        loop = build_agent(agent, data.task, generator=gen, tools=tools)  # vllm_server: the servers
        sync = getattr(trainer, "vllm_generation", None)
        if isinstance(sync, ServerWeightSync):
            sync.generator = loop.generator  # trajectories record the weight version they came from
        arpo = cfg.arpo if cfg.use_arpo else None
        if cfg.warmup is None:
            return PolicyRollout(loop, cfg.num_generations, arpo)
        check = data.task.check_answer
        experts = ExpertBank(cfg.warmup.expert, data.task, agent, run_dir, cfg.reward.qa_metric, check)
        boundary = KnowledgeBoundary(cfg.warmup, cfg.num_generations, cfg.max_steps)
        return E3Rollout(
            loop, cfg.num_generations, arpo, cfg.warmup, experts, boundary, cfg.reward.qa_metric, check
        )

    rollout_func = RolloutFunc(cfg, by_id, make_rollout, eos_id=tokenizer.eos_token_id)
    tool_tags = tuple(tools) if tools is not None else cfg.agent.tools.tags
    writer = JsonlLog(run_dir / TRAIN_LOG, cfg)
    from etagent.rl.batch import trimmed_trainer_class  # torch: imported when a trainer is built
    from etagent.rl.e3.loss import mix_trainer_class

    trainer_class = trimmed_trainer_class() if cfg.warmup is None else mix_trainer_class()
    trainer = trainer_class(
        model=model,
        reward_funcs=[make_reward_func(cfg, tool_tags, data.task.check_answer)],
        args=grpo_args(cfg, run_dir, use_cpu=not cuda, bf16=bf16),
        train_dataset=Dataset.from_list([{"prompt": q.id} for q in by_id.values()]),
        processing_class=tokenizer,
        rollout_func=rollout_func,
        callbacks=[_jsonl_callback(writer)],
    )
    send_metric_dicts_to_log(trainer)  # TRL's ~40-key dict per step goes to log.txt, not the console
    if cfg.warmup is not None:
        trainer.off_policy = cfg.warmup.off_policy
    if cfg.rollout.engine == "policy":
        _refuse_sharded_policy(trainer)
    elif cfg.rollout.engine == "vllm_server":
        install_server_engine(trainer, cfg, run_dir)
    # vllm_colocate: TRL loads the weights into its in-process engine before each rollout
    return trainer, writer


def _refuse_sharded_policy(trainer: Any) -> None:
    """The policy engine decodes with the trainer's own weights, which ZeRO-3 and FSDP shard
    across processes: refuse rather than generate from a shard."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    sharded = getattr(trainer, "is_fsdp_enabled", False) or (
        plugin is not None and getattr(plugin, "zero_stage", 0) == 3
    )
    if sharded:
        raise ConfigError(
            "rl: the policy rollout engine decodes with the trainer's weights, which ZeRO-3 / FSDP "
            "shard across processes; use DDP or ZeRO-2 (configs/accelerate/ddp.yaml, zero2.yaml)"
        )


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest whole checkpoint (one cut short by a kill is skipped)."""
    return newest_complete_checkpoint(run_dir / CHECKPOINTS)


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def run_rl(
    cfg: RLConfig,
    run_dir: Path,
    *,
    questions: list[Question] | None = None,
    generator: Generator | None = None,
    tools: dict[str, Tool] | None = None,
) -> dict[str, Any]:
    """Train, resuming from the last checkpoint in ``run_dir``; write ``<run_dir>/model``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    finished = _finished_summary(cfg, run_dir)
    if finished is not None:
        return finished
    trainer, writer = build_trainer(cfg, run_dir, questions=questions, generator=generator, tools=tools)
    resume = last_checkpoint(run_dir)
    main = trainer.accelerator.is_main_process
    if main:
        writer.keep_until(checkpoint_step(resume) if resume else 0)
    trainer.accelerator.wait_for_everyone()
    if resume:
        log.info("rl: resuming from %s", resume)
        if cfg.warmup is not None:
            from etagent.rl.e3.loss import read_state

            trainer.rollout_func.resume_state = read_state(resume)
    t0 = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        writer.close()
        if trainer.rollout_func.rollout is not None:
            trainer.rollout_func.rollout.close()  # its agent loop, the tools it built, an expert's
    elapsed = time.perf_counter() - t0

    model_dir = run_dir / MODEL_DIR
    save_trainer_model(trainer, model_dir, cfg.save_dtype)
    records = [obj for _, obj in iter_jsonl(run_dir / TRAIN_LOG)] if (run_dir / TRAIN_LOG).exists() else []
    step_times = [r["step_seconds"] for r in records if r.get("step_seconds") is not None]
    summary = {
        "steps": trainer.state.global_step // cfg.mini_batches,
        "optimizer_steps": trainer.state.global_step,
        "resumed_from": str(resume) if resume else None,
        "train_seconds": elapsed,
        "seconds_per_step": sum(step_times) / len(step_times) if step_times else None,
        "model": str(model_dir),
        "train_log": str(run_dir / TRAIN_LOG),
        "last": records[-1] if records else None,
    }
    rollout = trainer.rollout_func.rollout
    if isinstance(rollout, E3Rollout):  # the warm-up's expert data (docs/e3tir.md 5, ROI)
        summary["e3"] = {
            "experts_used": len(rollout.experts_used),
            "expert_tokens": rollout.expert_tokens,
            "expert_trajectories_sampled": rollout.experts.generated,
            **rollout.experts.stats(),
        }
    if main:
        atomic_write_json(run_dir / SUMMARY, summary)
        if not cfg.keep_checkpoints:
            remove_checkpoints(run_dir)
    trainer.accelerator.wait_for_everyone()
    return summary


def remove_checkpoints(run_dir: Path) -> None:
    """Delete ``checkpoints/``: the ``checkpoint-N`` directories and TRL's model card; TensorBoard's
    event files (``checkpoints/runs/``) stay."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name == "runs":
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()


def _finished_summary(cfg: RLConfig, run_dir: Path) -> dict[str, Any] | None:
    """The stored summary of a run that finished and dropped its checkpoints (nothing to resume
    from): returned as is when it reached ``max_steps``; a larger ``max_steps`` is refused, as
    training again from the initial policy would silently replace the trained model."""
    if last_checkpoint(run_dir) is not None:
        return None
    summary_path = run_dir / SUMMARY
    if not (summary_path.exists() and is_model_dir(run_dir / MODEL_DIR)):
        return None
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if summary.get("steps", 0) >= cfg.max_steps:
        log.info("rl: %s is already complete (%s steps)", run_dir / MODEL_DIR, summary.get("steps"))
        return summary
    raise ConfigError(
        f"rl: {run_dir} finished at {summary.get('steps')} steps and its checkpoints were removed "
        f"(keep_checkpoints: false), so it cannot continue to max_steps={cfg.max_steps}; start a new run "
        f"directory from its model ({run_dir / MODEL_DIR})"
    )
