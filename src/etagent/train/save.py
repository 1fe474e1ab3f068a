"""Writing a trained model once, complete, however many processes trained it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etagent.io import build_dir_atomically


def save_once(trainer: Any, target: Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool]) -> None:
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


def save_trainer_model(trainer: Any, target: Path) -> None:
    """``trainer.save_model`` into ``target``, once and complete, from every process: all of them
    call ``save_model`` (it gathers a sharded model collectively and writes on the main process)
    into a staging directory, which the main process then renames to ``target``."""
    accelerator = trainer.accelerator
    staging = target.with_name(f".{target.name}.staging")
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        build_dir_atomically(target, lambda tmp: _move_contents(staging, tmp), lambda p: False)
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()


def _move_contents(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        os.replace(item, dst / item.name)
