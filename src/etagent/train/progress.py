"""The trainer's progress on the console, its per-step metric dicts in the run's log.

transformers' ``ProgressCallback`` writes every ``on_log`` dict (about 40 keys per GRPO step) under
its progress bar. :func:`send_metric_dicts_to_log` swaps it for one that keeps the bar and logs the
dict as a record marked :data:`FILE_ONLY`, which reaches the run directory's ``log.txt`` (a file
handler of the ``etagent`` logger) but not the console: the CLI's console handler drops records
carrying ``console=False`` (:func:`console_filter`). The stages print their own one-line summaries.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("etagent.train.metrics")

#: ``extra=`` of a log record meant for log files only
FILE_ONLY = {"console": False}


def console_filter(record: logging.LogRecord) -> bool:
    """A handler filter: False for records marked :data:`FILE_ONLY`."""
    return getattr(record, "console", True)


def _log_dict(state: Any, logs: dict[str, Any] | None) -> None:
    if state.is_world_process_zero and logs:
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items() if k != "total_flos"}
        log.info("step %d: %s", state.global_step, shown, extra=FILE_ONLY)


def _callback_classes() -> tuple[type, type]:
    from transformers.trainer_callback import ProgressCallback, TrainerCallback

    class LoggedProgressCallback(ProgressCallback):
        """``ProgressCallback``'s bar; the dicts it would write under the bar go to the log."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any):
            _log_dict(state, logs)

    class LoggedPrinterCallback(TrainerCallback):
        """``PrinterCallback`` (``disable_tqdm``) to the log."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any):
            _log_dict(state, logs)

    return LoggedProgressCallback, LoggedPrinterCallback


def send_metric_dicts_to_log(trainer: Any) -> None:
    """Replace the trainer's ``ProgressCallback`` (or ``PrinterCallback`` with ``disable_tqdm``) by
    one that logs the per-step dicts instead of printing them; the progress bar stays."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    bar, printer = _callback_classes()
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(bar())
    if trainer.pop_callback(PrinterCallback) is not None:
        trainer.add_callback(printer())
