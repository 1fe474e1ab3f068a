"""Writing a trained model once, complete, however many processes trained it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from etagent.io import build_dir_atomically


def save_once(trainer: Any, target: Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool]) -> None:
    """Every process calls this after training; the main process builds ``target`` atomically
    (``build(tmp)`` then a rename), the others wait until it is there.

    With one process per replica (DDP) the main process holds the whole model; sharded training
    (ZeRO-3, FSDP) would have to gather it on every process first, which this does not do yet.
    """
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        build_dir_atomically(target, build, is_complete)
    accelerator.wait_for_everyone()
