"""The SFT stage end to end on the tiny model: a loadable model directory, resume, LoRA merge."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from etagent.backends.base import SamplingParams
from etagent.backends.config import BackendConfig, build_generator
from etagent.backends.hf import HFConfig
from etagent.config import load_config
from etagent.io import iter_jsonl
from etagent.train import sft as sft_stage
from etagent.train.sft import SFTConfig, run_sft


def _cfg(tiny_model_path, sft_file, **overrides) -> SFTConfig:
    base = dict(
        model=str(tiny_model_path),
        data=str(sft_file),
        max_length=256,
        batch_size=1,
        grad_accum=1,
        max_steps=3,
        save_steps=2,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        threads=1,
    )
    return SFTConfig(**{**base, **overrides})


def _weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


def _generates(model_dir) -> None:
    gen = build_generator(
        BackendConfig(kind="hf", model=str(model_dir), hf=HFConfig(threads=1, device="cpu"))
    )
    try:
        out = gen.generate(
            [[{"role": "user", "content": "What is fact 1 plus one?"}]], SamplingParams(max_new_tokens=4)
        )
        assert len(out[0][0].token_ids) >= 1
    finally:
        gen.close()


class Crash(Exception):
    pass


def test_training_writes_a_loadable_model_and_resumes_after_a_crash(
    tiny_model_path, sft_file, tmp_path, monkeypatch
):
    cfg = _cfg(tiny_model_path, sft_file)

    # an uninterrupted run
    straight = tmp_path / "straight"
    summary = run_sft(cfg, straight)
    model_dir = straight / "model"
    assert summary["steps"] == 3 and summary["model_dir"] == str(model_dir)
    assert sft_stage.is_model_dir(model_dir) and not (straight / "checkpoints").exists()
    assert model_dir.stat().st_mode & 0o755 == 0o755
    assert not [
        p for p in straight.iterdir() if p.name.startswith(".model.") and p.is_dir()
    ]  # no temp dirs left
    assert summary["last_loss"] < summary["first_loss"]
    assert summary["data_used"] == 12 and summary["tokens_this_run"] > 0
    losses = [obj for _, obj in iter_jsonl(straight / "train_log.jsonl") if "loss" in obj]
    assert [o["step"] for o in losses] == [1, 2, 3]
    base = _weights(tiny_model_path)
    trained = _weights(model_dir)
    assert trained.keys() == base.keys()
    assert any(not torch.equal(trained[k], base[k]) for k in base)
    _generates(model_dir)
    # a finished run is not redone
    assert run_sft(cfg, straight) == summary

    # the same run, killed during step 3 (after the checkpoint of step 2), then restarted
    crashed = tmp_path / "crashed"
    real_write = sft_stage.LossLogCallback.write

    def write_then_crash(self, record):
        if record.get("step") == 3:
            raise Crash
        real_write(self, record)

    monkeypatch.setattr(sft_stage.LossLogCallback, "write", write_then_crash)
    with pytest.raises(Crash):
        run_sft(cfg, crashed)
    assert (crashed / "checkpoints" / "checkpoint-2").is_dir() and not (crashed / "model").exists()
    monkeypatch.undo()

    resumed = run_sft(cfg, crashed)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 3
    steps = [obj["step"] for _, obj in iter_jsonl(crashed / "train_log.jsonl") if "loss" in obj]
    assert steps == [1, 2, 3]
    # same data order, optimizer and scheduler state: the same weights as the straight run
    resumed_weights = _weights(crashed / "model")
    for k in base:
        torch.testing.assert_close(resumed_weights[k], trained[k], atol=1e-5, rtol=1e-4)


def test_lora_is_merged_into_a_plain_model_dir(tiny_model_path, sft_file, tmp_path):
    cfg = _cfg(tiny_model_path, sft_file, max_steps=2, learning_rate=1e-2, lora={"r": 4, "alpha": 8})
    summary = run_sft(cfg, tmp_path)
    model_dir = tmp_path / "model"
    assert summary["method"] == "lora"
    assert not (model_dir / "adapter_config.json").exists()
    base, merged = _weights(tiny_model_path), _weights(model_dir)
    assert merged.keys() == base.keys()  # no lora_A / lora_B / base_layer names left
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all(k.endswith("_proj.weight") for k in changed)  # the adapted linear layers
    assert not any("embed" in k or "norm" in k for k in changed)  # only adapted modules move
    _generates(model_dir)


def test_the_toolworld_config_maps_onto_sft_config():
    cfg = load_config(SFTConfig, "configs/sft_toolworld.yaml")
    assert cfg.mask_tool_results and cfg.packing
    with pytest.raises(Exception, match=r"lora\.rank"):
        load_config(SFTConfig, "configs/sft_toolworld.yaml", ["lora.rank=4"])
    assert json.loads(cfg.model_dump_json())["data"] == cfg.data
