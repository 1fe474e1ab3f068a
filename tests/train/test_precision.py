"""The training stages' precision: bf16 autocast where the hardware computes in bf16, fp32
elsewhere, and what each choice really runs (autocast on, weights fp32)."""

from __future__ import annotations

import logging

import pytest
import torch

from etagent.backends.hf.device import cpu_bf16_flags
from etagent.train.precision import training_uses_bf16
from etagent.train.sft import build_trainer
from tests.backends.test_hf_speed import AVX2_CPUINFO as AVX2
from tests.backends.test_hf_speed import SAPPHIRE_RAPIDS_CPUINFO as SAPPHIRE_RAPIDS
from tests.train.test_sft_run import _cfg


def test_auto_follows_the_cpus_bf16_flags_and_explicit_choices_win(caplog):
    with caplog.at_level(logging.INFO, logger="etagent.train.precision"):
        assert training_uses_bf16("auto", cuda=False, cpuinfo=AVX2, stage="sft") is False
        assert "sft precision float32: auto, the CPU has no native bf16" in caplog.text
        assert training_uses_bf16("auto", cuda=False, cpuinfo=SAPPHIRE_RAPIDS, stage="rl") is True
        assert "rl precision bfloat16: auto, the CPU has native bf16 (avx512_bf16, amx_bf16)" in caplog.text
        assert training_uses_bf16("float32", cuda=False, cpuinfo=SAPPHIRE_RAPIDS) is False
        caplog.clear()
        assert training_uses_bf16("bfloat16", cuda=False, cpuinfo=SAPPHIRE_RAPIDS) is True
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # asked for on a CPU that emulates bf16: done, with a warning that it will be slow
    with caplog.at_level(logging.WARNING, logger="etagent.train.precision"):
        assert training_uses_bf16("bfloat16", cuda=False, cpuinfo=AVX2) is True
    assert "emulates it" in caplog.text


def _matmul_dtypes(model) -> list[torch.dtype]:
    """Record the output dtype of every forward of the model's linear layers: bf16 under autocast
    (the arithmetic really ran in bf16), fp32 without."""
    seen: list[torch.dtype] = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda _m, _inp, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "auto"])
def test_sft_steps_run_in_the_precision_chosen_over_fp32_weights(
    tiny_model_path, sft_file, tmp_path, precision
):
    cfg = _cfg(tiny_model_path, sft_file, max_steps=1, precision=precision)
    trainer, _ = build_trainer(cfg, tmp_path)
    seen = _matmul_dtypes(trainer.model)
    trainer.train()
    bf16 = precision == "bfloat16" or (precision == "auto" and bool(cpu_bf16_flags()))
    assert trainer.args.bf16 is bf16
    assert seen and set(seen) == {torch.bfloat16 if bf16 else torch.float32}
    # master weights stay fp32 either way (the saved model's dtype follows them: save_dtype auto)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
