"""What a finished SFT run leaves on disk: checkpoints only when asked, the model in the dtype asked,
and TRL's per-step dicts in the log rather than on the console."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from etagent.train.progress import console_filter
from etagent.train.save import cast_saved_weights
from etagent.train.sft import SFTConfig, run_sft
from tests.train.test_sft_run import _generates


def _cfg(tiny_model_path, sft_file, **overrides) -> SFTConfig:
    base = dict(
        model=str(tiny_model_path), data=str(sft_file), max_length=256, grad_accum=1, max_steps=2,
        save_steps=1, learning_rate=1e-2, warmup_ratio=0.0, threads=1,
    )  # fmt: skip
    return SFTConfig(**{**base, **overrides})


def test_kept_checkpoints_a_bf16_model_and_quiet_metric_dicts(
    tiny_model_path, sft_file, tmp_path, capfd, caplog
):
    cfg = _cfg(tiny_model_path, sft_file, keep_checkpoints=True, save_dtype="bfloat16")
    with caplog.at_level(logging.INFO, logger="etagent"):
        run_sft(cfg, tmp_path)
    assert (tmp_path / "checkpoints" / "checkpoint-2").is_dir()  # kept as configured
    model_dir = tmp_path / "model"
    weights = load_file(str(model_dir / "model.safetensors"))
    assert weights and all(t.dtype == torch.bfloat16 for t in weights.values())
    assert json.loads((model_dir / "config.json").read_text())["dtype"] == "bfloat16"
    # the checkpoint holds the fp32 weights the bf16 model was rounded from
    fp32 = load_file(str(tmp_path / "checkpoints" / "checkpoint-2" / "model.safetensors"))
    for name, tensor in weights.items():
        assert fp32[name].dtype == torch.float32
        assert torch.equal(tensor, fp32[name].to(torch.bfloat16)), name
    _generates(model_dir)

    # TRL's dicts: in the log (marked for files only), not written under the progress bar
    out, err = capfd.readouterr()
    assert "'learning_rate'" not in out + err and "'grad_norm'" not in out + err
    dicts = [r for r in caplog.records if r.name == "etagent.train.metrics"]
    assert len(dicts) >= 2 and "'learning_rate'" in dicts[0].getMessage()
    assert not any(console_filter(r) for r in dicts)
    assert all(console_filter(r) for r in caplog.records if r.name == "etagent.train")


def test_the_default_drops_checkpoints_and_keeps_the_training_dtype(tiny_model_path, sft_file, tmp_path):
    run_sft(_cfg(tiny_model_path, sft_file, max_steps=1), tmp_path)
    assert not (tmp_path / "checkpoints").exists()
    weights = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values())  # fp32 master weights


def test_cast_rewrites_every_shard_config_and_index(tmp_path):
    save_file(
        {"a": torch.ones(4), "ids": torch.arange(3)}, str(tmp_path / "model-1.safetensors"), {"format": "pt"}
    )
    save_file({"b": torch.full((2, 2), 0.1)}, str(tmp_path / "model-2.safetensors"), {"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "float32", "hidden_size": 8}))
    index = {
        "metadata": {"total_size": 32},
        "weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"},
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))

    cast_saved_weights(tmp_path, "bfloat16")
    one, two = (
        load_file(str(tmp_path / "model-1.safetensors")),
        load_file(str(tmp_path / "model-2.safetensors")),
    )
    assert one["a"].dtype == two["b"].dtype == torch.bfloat16
    assert one["ids"].dtype == torch.int64  # integers stay
    assert json.loads((tmp_path / "config.json").read_text()) == {"torch_dtype": "bfloat16", "hidden_size": 8}
    new_index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert new_index["metadata"]["total_size"] == 4 * 2 + 3 * 8 + 4 * 2
    assert new_index["weight_map"] == index["weight_map"]

    cast_saved_weights(tmp_path, "auto")  # leaves the files alone
    assert load_file(str(tmp_path / "model-1.safetensors"))["a"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="save_dtype"):
        cast_saved_weights(tmp_path, "float16")  # type: ignore[arg-type]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
        cast_saved_weights(tmp_path / "empty", "float32")
