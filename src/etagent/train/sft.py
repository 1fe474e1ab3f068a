"""``etagent sft``: fine-tune a model on ``sft.jsonl`` with TRL's SFTTrainer (full or LoRA).

The stage, in a run directory::

    run_dir/
      checkpoints/checkpoint-N/   TRL checkpoints (model, optimizer, scheduler, RNG); a re-run resumes
                                  from the last one and they are removed once the model is written
      train_log.jsonl             one line per logging step: step, loss, learning rate, grad norm, tokens
      model/                      the final Hugging Face model + tokenizer (LoRA merged), written
                                  atomically; ``BackendConfig(kind="hf", model=<this dir>)`` loads it
      sft_summary.json            examples, tokens, steps, losses, throughput

Data is tokenized here (:mod:`etagent.train.sft_data`) and handed to TRL pre-tokenized as
``input_ids`` + ``assistant_masks``; TRL turns the mask into ``-100`` labels, packs (best-fit
decreasing into ``max_length`` bins, which implies padding-free batches: one flattened row with
per-sequence position ids, so sequences never attend to each other) or pads. Packing is the
default: on 240 tool-world expert trajectories (280-950 tokens) with the embedded model it trained
1.81x the real tokens/s of TRL's padded batches of 8, which were 31.5% padding
(``benchmarks/bench_sft.py``, shared 2-core CPU).

CPU notes (docs/cpu.md 4, 6.1, 10): fp32 (``precision: auto``; bf16 autocast was 16x slower on
an AVX2 CPU, and is used on CPUs with native bf16), no gradient checkpointing by default (~25%
slower, saves ~2 GiB at 4x512 tokens), and short padding-free rows: the attention mask of a
flattened row is dense (length squared) and the CPU attention kernel does not skip the blocks it
masks out, so one bin of ``max_length`` tokens per micro-batch (``batch_size: 1``) plus gradient
accumulation beats flattening many sequences (tiny model: 8 sequences flattened 1.38x the padded
tokens/s, one bin per micro-batch 1.85x).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from etagent import runtime
from etagent.config import ConfigModel
from etagent.io import JsonlAppender, atomic_write_json, atomic_write_jsonl, iter_jsonl
from etagent.protocol import tags
from etagent.train.compat import checkpointing_arg
from etagent.train.precision import TRAINING_PRECISION_HELP, TrainingPrecision, training_uses_bf16
from etagent.train.progress import send_metric_dicts_to_log
from etagent.train.save import SAVE_DTYPE_HELP, SaveDtype, cast_saved_weights, save_once
from etagent.train.sft_data import load_sft_examples, tokenize_example

log = logging.getLogger("etagent.train")

CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.jsonl"
SUMMARY = "sft_summary.json"


class LoraSettings(ConfigModel):
    """LoRA adapters (PEFT); merged into the base weights when the model is saved."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="scaling numerator (lora_alpha)")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names to adapt (Llama/Qwen names), or 'all-linear'",
    )


class SFTConfig(ConfigModel):
    """One fine-tuning run (docs/method.md 4; the reference: full FT, lr 5e-6, 3 epochs, cosine)."""

    model: str = Field(
        "embedded", description="'embedded', 'tiny', or a local Hugging Face model directory to start from"
    )
    data: str = Field(description="sft.jsonl path (the flywheel export format)")
    output: str = Field("model", description="name of the final model directory inside the run directory")
    lora: LoraSettings | None = Field(None, description="LoRA settings; None = full fine-tuning")
    mask_tool_results: bool = Field(
        True, description="exclude inserted <result> spans from the loss (the reference trained on them)"
    )
    tool_tags: list[str] = Field(
        default_factory=lambda: list(tags.DEFAULT_TOOL_TAGS),
        description="tool tags whose results count as tool output",
    )
    packing: bool = Field(
        True, description="pack sequences into max_length bins (best-fit decreasing, padding-free)"
    )
    padding_free: bool = Field(
        False, description="flatten each batch into one row without padding (implied by packing)"
    )
    max_length: int = Field(
        1024, ge=16, description="longest sequence (tokens); longer examples keep their start"
    )
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs when set")
    learning_rate: float = Field(5e-5, gt=0)
    lr_scheduler: str = Field("cosine", description="transformers scheduler name")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of the steps spent warming up")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    batch_size: int = Field(1, ge=1, description="sequences (or packed bins) per micro-batch")
    grad_accum: int = Field(8, ge=1, description="micro-batches per optimizer step")
    gradient_checkpointing: bool = Field(False, description="recompute activations: less memory, ~25% slower")
    save_steps: int = Field(10, ge=1, description="checkpoint every N optimizer steps")
    save_total_limit: int = Field(1, ge=1, description="checkpoints kept while training")
    keep_checkpoints: bool = Field(
        False,
        description="keep checkpoints/ (weights, optimizer state: ~3x an fp32 model) once the final model "
        "is written; they are what resumes a killed run and are always kept while training",
    )
    save_dtype: SaveDtype = Field("auto", description=SAVE_DTYPE_HELP)
    logging_steps: int = Field(1, ge=1)
    seed: int = 0
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = all cores (use 1 when sharing cores)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda if available, else cpu")
    precision: TrainingPrecision = Field("auto", description=TRAINING_PRECISION_HELP)


# ---------------------------------------------------------------------------------------------
# Data


def build_dataset(cfg: SFTConfig, tokenizer: Any) -> tuple[Any, dict[str, Any]]:
    """The pre-tokenized ``datasets.Dataset`` (``input_ids``, ``assistant_masks``) and its statistics."""
    from datasets import Dataset

    examples = load_sft_examples(cfg.data)
    rows: dict[str, list[list[int]]] = {"input_ids": [], "assistant_masks": []}
    stats = {"examples": len(examples), "used": 0, "truncated": 0, "dropped_untrained": 0}
    counts = {"prompt": 0, "model": 0, "tool": 0, "end": 0}
    tool_tags = tuple(cfg.tool_tags)
    for example in examples:
        tok = tokenize_example(example, tokenizer, cfg.mask_tool_results, cfg.max_length, tool_tags)
        if tok.num_trained_tokens == 0:  # a prompt alone fills max_length
            stats["dropped_untrained"] += 1
            continue
        stats["truncated"] += tok.truncated
        for role in tok.roles:
            counts[role] += 1
        rows["input_ids"].append(tok.input_ids)
        rows["assistant_masks"].append(tok.loss_mask)
    if not rows["input_ids"]:
        raise ValueError(f"{cfg.data}: no example has a trainable token within max_length={cfg.max_length}")
    stats["used"] = len(rows["input_ids"])
    stats["tokens"] = sum(counts.values())
    stats["tokens_by_role"] = counts
    stats["trained_tokens"] = sum(sum(m) for m in rows["assistant_masks"])
    if stats["truncated"]:
        log.warning(
            "%d of %d examples are longer than max_length=%d and keep only their start",
            stats["truncated"],
            stats["used"],
            cfg.max_length,
        )
    return Dataset.from_dict(rows), stats


# ---------------------------------------------------------------------------------------------
# Trainer


def _use_cpu(cfg: SFTConfig) -> bool:
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but torch sees no CUDA device")
    return cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())


def training_arguments(cfg: SFTConfig, output_dir: Path) -> Any:
    """TRL's SFTConfig for this run."""
    from trl import SFTConfig as TRLSFTConfig

    use_cpu = _use_cpu(cfg)
    padding_free = cfg.padding_free or cfg.packing
    return TRLSFTConfig(
        output_dir=str(output_dir),
        # data: pre-tokenized and truncated here; max_length is the bin size when packing. TRL
        # refuses padding-free batches without packing when max_length is set (it would not be
        # enforced), and our examples are already truncated.
        max_length=cfg.max_length if (cfg.packing or not padding_free) else None,
        packing=cfg.packing,
        packing_strategy="bfd",
        padding_free=padding_free,
        assistant_only_loss=False,  # our assistant_masks column already says what is trained
        # optimisation
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        **checkpointing_arg(TRLSFTConfig, cfg.gradient_checkpointing),
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=use_cpu,
        bf16=training_uses_bf16(cfg.precision, cuda=not use_cpu, stage="sft"),
        dataloader_pin_memory=not use_cpu,
        # checkpoints and logs
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
        report_to="none",
        disable_tqdm=False,
    )


class LossLogCallback:
    """Appends every trainer log (loss, learning rate, grad norm, tokens seen) to a JSONL file."""

    def __init__(self, path: Path):
        self.path = path
        self.started = time.perf_counter()
        self._writer: JsonlAppender | None = None

    def as_callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero and logs:
                    outer.write({"step": state.global_step, "epoch": state.epoch, **logs})

            def on_train_end(self, args, state, control, **kwargs):
                outer.close()

        return _Callback()

    def write(self, record: dict[str, Any]) -> None:
        if self._writer is None:
            self._writer = JsonlAppender(self.path)
        record["time_s"] = round(time.perf_counter() - self.started, 3)
        self._writer.write_group([record])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def build_trainer(
    cfg: SFTConfig, run_dir: Path, callbacks: list[Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """An SFTTrainer ready to ``train()``, and the data statistics."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from etagent.backends.model_store import resolve_model

    torch.set_num_threads(cfg.threads or runtime.available_cores())
    model_path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    tokenizer.padding_side = "right"
    dataset, stats = build_dataset(cfg, tokenizer)
    # fp32 master weights everywhere; with bf16 precision the trainer adds autocast
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    peft_config = None
    if cfg.lora is not None:
        peft_config = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            task_type="CAUSAL_LM",
        )
    trainer = SFTTrainer(
        model=model,
        args=training_arguments(cfg, run_dir / CHECKPOINTS),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    send_metric_dicts_to_log(trainer)  # the per-step dicts go to log.txt; the bar stays
    return trainer, stats


# ---------------------------------------------------------------------------------------------
# The stage


def last_checkpoint(run_dir: Path) -> Path | None:
    return newest_complete_checkpoint(run_dir / CHECKPOINTS)


def newest_complete_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` in ``folder`` that is whole: its ``trainer_state.json``, which the
    trainer writes last, reads back. A run killed while writing a checkpoint leaves one without it;
    the resume takes the one before, which is still there (the trainer removes older checkpoints
    only once the new one is written) and the resumed run writes the cut one again."""
    if not folder.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if not (step.isdigit() and path.is_dir()):
            continue
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            log.warning("ignoring %s: incomplete (the run was stopped while writing it)", path)
            continue
        found.append((int(step), path))
    return max(found)[1] if found else None


def is_model_dir(path: Path) -> bool:
    """A complete saved model: config, weights and tokenizer."""
    return (
        (path / "config.json").exists()
        and (path / "tokenizer_config.json").exists()
        and any(path.glob("*.safetensors"))
    )


def _checkpoint_step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint is not None else 0


def _trim_log(path: Path, up_to_step: int) -> None:
    """Keep the log lines of the steps a resumed run will not redo."""
    if not path.exists():
        return
    if up_to_step == 0:
        path.unlink()
        return
    from etagent.io import repair_torn_tail

    repair_torn_tail(path)
    atomic_write_jsonl(path, [obj for _, obj in iter_jsonl(path) if obj.get("step", 0) <= up_to_step])


def save_model_dir(trainer: Any, target: Path, dtype: SaveDtype = "auto") -> None:
    """Write the trained model (LoRA merged into the base weights, in ``dtype``) and tokenizer to
    ``target``, atomically: a temporary sibling directory renamed when complete; once, from the
    main process (every process calls this)."""
    from peft import PeftModel

    model = trainer.model
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.generation_config.pad_token_id = trainer.processing_class.pad_token_id

    def build(tmp: Path) -> None:
        tmp.chmod(0o755)  # a temporary directory is private (0700); the model is for other processes too
        model.save_pretrained(str(tmp))
        cast_saved_weights(tmp, dtype)
        trainer.processing_class.save_pretrained(str(tmp))

    save_once(trainer, target, build, is_model_dir)


def run_sft(cfg: SFTConfig, run_dir: Path) -> dict[str, Any]:
    """Train (resuming from the run directory's last checkpoint), write ``<run_dir>/<output>``
    and the summary; returns the summary. A finished run returns its stored summary."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out_dir = run_dir / cfg.output
    summary_path = run_dir / SUMMARY
    if is_model_dir(out_dir) and summary_path.exists():
        log.info("sft: %s is already complete", out_dir)
        return json.loads(summary_path.read_text(encoding="utf-8"))

    resume = last_checkpoint(run_dir)
    log_path = run_dir / TRAIN_LOG
    if runtime.process_rank() == 0:  # the main process owns the log
        _trim_log(log_path, _checkpoint_step(resume))
    loss_log = LossLogCallback(log_path)
    trainer, stats = build_trainer(cfg, run_dir, callbacks=[loss_log.as_callback()])
    log.info(
        "sft: %d examples (%d truncated), %d tokens, %d trained; %s; resume from %s",
        stats["used"],
        stats["truncated"],
        stats["tokens"],
        stats["trained_tokens"],
        "LoRA" if cfg.lora else "full fine-tuning",
        resume,
    )
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        loss_log.close()
    seconds = time.perf_counter() - t0
    save_model_dir(trainer, out_dir, cfg.save_dtype)

    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    # TRL's num_tokens (real tokens, no padding) restarts at 0 in each invocation: count this one
    resumed_step = _checkpoint_step(resume)
    tokens_now = max((h.get("num_tokens", 0) for h in history if h.get("step", 0) > resumed_step), default=0)
    summary = {
        "model_dir": str(out_dir),
        "base_model": cfg.model,
        "data": cfg.data,
        "method": "lora" if cfg.lora else "full",
        "mask_tool_results": cfg.mask_tool_results,
        "packing": cfg.packing,
        "padding_free": cfg.padding_free or cfg.packing,
        **{f"data_{k}": v for k, v in stats.items()},
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "resumed_from_step": resumed_step,
        "train_loss": result.training_loss,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "runtime_s": round(seconds, 2),
        # real (non-pad) tokens through the model in this invocation (a resume starts mid-way)
        "tokens_this_run": tokens_now,
        "tokens_per_s": round(tokens_now / seconds, 1) if seconds > 0 else None,
    }
    if trainer.accelerator.is_main_process:
        atomic_write_json(summary_path, summary)
        if not cfg.keep_checkpoints:
            shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return summary
