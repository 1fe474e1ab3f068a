"""Writing a trained model once, complete, however many processes trained it, in the dtype asked."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from etagent.io import build_dir_atomically

#: the dtype a stage writes its final model in; auto: the dtype it was trained in
SaveDtype = Literal["auto", "bfloat16", "float32"]
SAVE_DTYPE_HELP = (
    "dtype of the saved model: auto = the weights as trained (fp32 master weights on CPU and for SFT, "
    "bf16 for RL on a GPU); bfloat16 halves the size of an fp32 model but rounds away weight changes "
    "below bf16's resolution (~0.4% of a weight): a short fp32 run at a small learning rate (RL at "
    "1e-6..1e-5) can come out unchanged"
)


def save_once(
    trainer: Any, target: Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool]
) -> None:
    """Every process calls this after training; the main process builds ``target`` atomically
    (``build(tmp)`` then a rename), the others wait until it is there.

    ``build`` runs on the main process only: right for one process per replica (DDP), where the
    main process holds the whole model. A sharded model (ZeRO-3, FSDP) is saved with
    :func:`save_trainer_model`, which every process takes part in.
    """
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        build_dir_atomically(target, build, is_complete)
    accelerator.wait_for_everyone()


def save_trainer_model(trainer: Any, target: Path, dtype: SaveDtype = "auto") -> None:
    """``trainer.save_model`` into ``target``, once and complete, from every process: all of them
    call ``save_model`` (it gathers a sharded model collectively and writes on the main process)
    into a staging directory, which the main process casts to ``dtype`` and then renames to
    ``target``."""
    accelerator = trainer.accelerator
    staging = target.with_name(f".{target.name}.staging")
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        cast_saved_weights(staging, dtype)
        build_dir_atomically(target, lambda tmp: _move_contents(staging, tmp), lambda p: False)
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()


def _move_contents(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        os.replace(item, dst / item.name)


def cast_saved_weights(model_dir: Path, dtype: SaveDtype) -> None:
    """Rewrite the floating-point tensors of ``model_dir``'s safetensors files in ``dtype``, and the
    dtype ``config.json`` records (so that ``from_pretrained(dtype="auto")`` loads it as saved); the
    index of a sharded model gets the new total size. ``auto`` leaves the files as they are.

    Rewrites the files in place, one at a time: call it on a directory that is not yet published
    (a staging or temporary directory renamed when complete)."""
    if dtype == "auto":
        return
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"save_dtype must be auto, bfloat16 or float32, not {dtype!r}")
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    target = getattr(torch, dtype)
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors file to cast to {dtype}")
    sizes: dict[str, int] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {"format": "pt"}
            tensors = {
                name: (t.to(target) if t.is_floating_point() else t)
                for name, t in ((name, f.get_tensor(name)) for name in f.keys())  # noqa: SIM118
            }
        save_file(tensors, str(path), metadata=metadata)
        sizes[path.name] = sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    config = Path(model_dir) / "config.json"
    if config.exists():
        data = json.loads(config.read_text(encoding="utf-8"))
        keys = [k for k in ("dtype", "torch_dtype") if k in data] or ["dtype"]
        for key in keys:
            data[key] = dtype
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    index = Path(model_dir) / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text(encoding="utf-8"))
        data.setdefault("metadata", {})["total_size"] = sum(sizes.values())
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
