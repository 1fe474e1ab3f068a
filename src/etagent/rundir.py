"""Run directories: one per invocation, holding the resolved config, outputs and the log."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from pydantic import BaseModel

from etagent import runtime
from etagent.config import ConfigError, dump_config
from etagent.io import atomic_write_text

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.txt"

#: the first run directory this process prepared: the command's (a pipeline's stages are inside it)
_command_run_dir: Path | None = None


def command_run_dir() -> Path | None:
    """The run directory of this process's command, once prepared (None before): the one an
    interrupted command names in its resume command (cli.main)."""
    return _command_run_dir


def new_run_dir(command: str, root: str | Path = "runs") -> Path:
    """``runs/<command>-<time>``, not yet existing. A job of several processes must name its one
    shared directory (each process would pick its own name)."""
    if runtime.process_count() > 1:
        raise ConfigError(
            f"{runtime.process_count()} processes run this job: give them one run directory with --run-dir"
        )
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{command}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def prepare_run_dir(run_dir: Path, cfg: BaseModel) -> logging.Logger:
    """Create the directory, write the resolved config, and attach a file log.

    An existing directory is a resume: its config is kept as ``config.yaml`` and the new one is
    written only if the directory had none.
    """
    global _command_run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if _command_run_dir is None:
        _command_run_dir = run_dir
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.exists():
        atomic_write_text(cfg_path, dump_config(cfg))
    logger = logging.getLogger("etagent")
    logger.setLevel(logging.INFO)
    log_path = str((run_dir / LOG_FILE).resolve())
    if not any(getattr(h, "baseFilename", None) == log_path for h in logger.handlers):
        handler = logging.FileHandler(log_path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    return logger
