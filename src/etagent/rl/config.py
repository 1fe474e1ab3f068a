"""``etagent rl``: the behaviour-calibration RL stage's typed config (docs/method.md 6.1)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from etagent.agent import AgentConfig
from etagent.config import ConfigModel
from etagent.loop.agent_loop import BudgetConfig, SamplingConfig
from etagent.loop.arpo import ArpoConfig
from etagent.rl.e3.config import E3Config
from etagent.rollout.stage import DATA_HELP, TASK_HELP
from etagent.scoring.reward import RewardConfig
from etagent.tasks import DataRef, resolve_data
from etagent.train.precision import TRAINING_PRECISION_HELP, TrainingPrecision
from etagent.train.save import SAVE_DTYPE_HELP, SaveDtype


class RLLoggingConfig(ConfigModel):
    """Every step goes to ``<run_dir>/train_log.jsonl``; these add live dashboards."""

    report_to: Literal["auto", "none", "tensorboard", "wandb"] = Field(
        "auto",
        description="auto: tensorboard when installed, and wandb when installed and configured "
        "(WANDB_API_KEY or WANDB_MODE set); none: the JSONL log only",
    )


class ImportanceSamplingConfig(ConfigModel):
    """TRL's correction for the gap between the sampler's and the trainer's log-probs (a vLLM server
    in bf16 vs the trainer in fp32, or a server a weight version behind): each loss token is weighted
    by the ratio trainer / sampler probability, truncated or masked outside [clip_min, clip_max]."""

    enabled: bool = Field(
        True,
        description="apply it with the vllm engines (the policy engine samples with the trainer's weights)",
    )
    mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = Field(
        "token_truncate",
        description="token_*: a ratio per token (suits multi-turn trajectories, whose many turns would "
        "saturate a sequence-level ratio); sequence_*: one ratio per trajectory; *_truncate clips the "
        "ratio, *_mask drops tokens outside the bounds",
    )
    clip_max: float = Field(3.0, gt=0, description="upper bound of the ratio (TRL's default)")
    clip_min: float | None = Field(None, ge=0, description="lower bound (*_mask modes); None = none")


class ColocateConfig(ConfigModel):
    """vLLM inside each training process (TRL's colocate mode)."""

    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="share of the device's memory vLLM takes (on CPU: of the RAM)"
    )
    sleep_mode: bool | None = Field(
        None,
        description="release vLLM's weights and KV cache during the policy update; None = on a GPU "
        "(vLLM on CPU refuses sleep mode)",
    )
    max_model_len: int | None = Field(
        None,
        ge=1,
        description="vLLM's context window; None = the model's; prompts that fill it end with 'context'",
    )


class RolloutEngineConfig(ConfigModel):
    """What samples RL's trajectories (docs/scaling.md)."""

    engine: Literal["policy", "vllm_server", "vllm_colocate"] = Field(
        "policy",
        description="policy: etagent's hf loop on the trainer's own weights (agent.backend.kind hf); "
        "vllm_server: one or more vLLM servers through the openai backend (agent.backend.kind openai, "
        "backend.openai.base_url), given the new weights after every update; vllm_colocate: vLLM in "
        "each training process (TRL's colocate mode, agent.backend.kind hf; needs vllm installed)",
    )
    colocate: ColocateConfig = Field(default_factory=ColocateConfig)
    weight_sync: Literal["disk", "nccl"] = Field(
        "disk",
        description="vllm_server: how new weights reach the servers. disk: saved under sync_dir, then "
        "each server reloads them (POST /collective_rpc reload_weights; works on CPU and GPU, any number "
        "of servers; the servers run with VLLM_SERVER_DEV_MODE=1); nccl: TRL's NCCL broadcast to one "
        'server started with --weight-transfer-config \'{"backend": "nccl"}\' (GPU only)',
    )
    sync_dir: str | None = Field(
        None,
        description="disk sync: a directory the servers can read (shared storage across nodes); "
        "None = <run_dir>/rollout_weights",
    )
    sync_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="disk sync: the dtype weights are written in (the servers' dtype)"
    )
    importance_sampling: ImportanceSamplingConfig = Field(default_factory=ImportanceSamplingConfig)


def _rl_agent() -> AgentConfig:
    return AgentConfig(
        # reference RL: 6 calls in total, then the trajectory ends
        budget=BudgetConfig(
            max_tool_calls=6, max_new_tokens_per_call=256, max_response_tokens=1024, on_budget="stop"
        ),
        # reference: T 1.0, top_p 1.0; keep seed unset, the trainer seeds
        sampling=SamplingConfig(),
    )


class RLConfig(ConfigModel):
    """GRPO with group-normalised advantages, PPO clipping, token-mean loss, the ET-Agent reward and
    ARPO branching rollouts. A "step" is one rollout step: ``questions_per_step`` questions,
    ``num_generations`` trajectories each, then ``mini_batches`` policy updates on them.

    With several processes (``torchrun`` / ``accelerate launch``) the sizes are global: the step's
    questions are split across the processes, whole groups to each (a process's micro-batch holds
    whole groups: ``micro_batch_size`` a multiple of ``num_generations``)."""

    data: str = Field("toolworld:train", description=DATA_HELP + "; e.g. a curriculum stage file")
    task: str | None = Field(None, description=TASK_HELP)
    limit: int | None = Field(None, ge=1, description="first N questions only")
    agent: AgentConfig = Field(
        default_factory=_rl_agent,
        description="the policy's agent: backend.model is the policy to train (hf: decoded with the "
        "trainer's weights, backend.hf.batch_size rows at once; openai: the servers of "
        "rollout.engine vllm_server, which serve the same weights); budget per trajectory (reference "
        "RL: 6 calls in total, then the trajectory ends); sampling (reference: T 1.0, top_p 1.0; keep "
        "seed unset, the trainer seeds)",
    )
    rollout: RolloutEngineConfig = Field(default_factory=RolloutEngineConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    warmup: E3Config | None = Field(
        None,
        description="the E3-TIR warm-up (method: e3): expert prefixes, expert-guided and self-explored "
        "trajectories in each group with a mixed objective (docs/e3tir.md); None: plain GRPO",
    )
    use_arpo: bool = Field(True, description="ARPO branching rollouts; False: independent samples")
    arpo: ArpoConfig = Field(default_factory=ArpoConfig)
    num_generations: int = Field(16, ge=2, description="trajectories per question (the GRPO group)")
    questions_per_step: int = Field(
        2, ge=1, description="questions per step, all processes together (reference: 64)"
    )
    mini_batches: int = Field(
        1,
        ge=1,
        description="policy updates per step, each on a share of its trajectories; > 1 makes the later "
        "ones off-policy, which is where PPO clipping acts (reference: 16)",
    )
    micro_batch_size: int = Field(4, ge=1, description="sequences per forward/backward pass")
    max_steps: int = Field(10, ge=1, description="rollout steps (reference: 3 epochs of the stage's data)")
    learning_rate: float = Field(1e-6, gt=0, description="AdamW, constant (reference: 1e-6)")
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    clip_epsilon: float = Field(0.2, gt=0, description="PPO clip range, both sides (reference: 0.2)")
    beta: float = Field(0.0, ge=0, description="KL coefficient against the initial policy (reference: 0)")
    loss_type: Literal["dapo", "bnpo"] = Field(
        "dapo",
        description="token-mean loss: dapo = over all loss tokens of an update (TRL's normaliser is "
        "the token count of the whole update); bnpo = per micro-batch, then averaged",
    )
    save_steps: int = Field(10, ge=1, description="checkpoint every N rollout steps")
    save_total_limit: int | None = Field(2, ge=1, description="checkpoints kept (oldest removed)")
    keep_checkpoints: bool = Field(
        True,
        description="keep checkpoints/checkpoint-N (weights and optimizer state, ~4x an fp32 model each) "
        "once the run has finished and model/ is written: a later run with a larger max_steps continues "
        "from them; false removes them (the pipeline's and demo's default). While training they are "
        "always kept: they resume a killed run",
    )
    save_dtype: SaveDtype = Field("auto", description=SAVE_DTYPE_HELP)
    seed: int = 0
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = all cores")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: TrainingPrecision = Field("auto", description=TRAINING_PRECISION_HELP)
    gradient_checkpointing: bool = Field(
        False, description="trade compute for memory in the backward pass (slower on CPU)"
    )
    logging: RLLoggingConfig = Field(default_factory=RLLoggingConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RLConfig:
        kind = self.agent.backend.kind
        needed = {"policy": "hf", "vllm_server": "openai", "vllm_colocate": "hf"}[self.rollout.engine]
        if kind != needed:
            raise ValueError(
                f"agent.backend.kind is {kind!r}, but rollout.engine {self.rollout.engine} rolls out with "
                f"backend kind {needed!r} (backend.model is the policy being trained either way)"
            )
        if self.rollout.engine == "vllm_server" and self.rollout.weight_sync == "nccl":
            urls = self.agent.backend.section().base_url
            if not isinstance(urls, str) and len(urls) != 1:
                raise ValueError(
                    f"rollout.weight_sync nccl pushes to one server (TRL's client); agent.backend.openai."
                    f"base_url lists {len(urls)}: use weight_sync disk, or one server with vLLM's own "
                    "--data-parallel-size"
                )
        if self.use_arpo and self.arpo.n != self.num_generations:
            raise ValueError(
                f"arpo.n ({self.arpo.n}) must equal num_generations ({self.num_generations}): "
                "ARPO produces the GRPO group"
            )
        if self.warmup is not None and self.warmup.min_self > self.num_generations:
            raise ValueError(
                f"warmup.min_self ({self.warmup.min_self}) exceeds num_generations ({self.num_generations})"
            )
        sequences = self.questions_per_step * self.num_generations
        if sequences % (self.mini_batches * self.micro_batch_size):
            raise ValueError(
                f"questions_per_step * num_generations ({sequences}) must be divisible by "
                f"mini_batches * micro_batch_size ({self.mini_batches} * {self.micro_batch_size})"
            )
        return self

    def data_ref(self) -> DataRef:
        return resolve_data(self.data, self.task)

    @property
    def model(self) -> str:
        """The policy being trained."""
        return self.agent.backend.model

    @property
    def sequences_per_step(self) -> int:
        return self.questions_per_step * self.num_generations

    def gradient_accumulation_steps(self, processes: int = 1) -> int:
        """Micro-batches per policy update and process when ``processes`` share the step."""
        per_update = self.mini_batches * self.micro_batch_size * processes
        if self.sequences_per_step % per_update:
            raise ValueError(
                f"questions_per_step * num_generations ({self.sequences_per_step}) must be divisible by "
                f"mini_batches * micro_batch_size * processes ({self.mini_batches} * {self.micro_batch_size} "
                f"* {processes})"
            )
        if processes > 1 and self.micro_batch_size % self.num_generations:
            raise ValueError(
                f"with {processes} processes, micro_batch_size ({self.micro_batch_size}) must be a multiple of "
                f"num_generations ({self.num_generations}): each process rolls out whole groups"
            )
        return self.sequences_per_step // per_update
