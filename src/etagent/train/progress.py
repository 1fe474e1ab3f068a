"""The trainer's progress on the console, its per-step metric dicts in the run's log.

transformers' ``ProgressCallback`` writes every ``on_log`` dict (about 40 keys per GRPO step) under
its progress bar. :func:`send_metric_dicts_to_log` swaps it for one that keeps the bar and logs the
dict as a record marked :data:`FILE_ONLY`, which reaches the run directory's ``log.txt`` (a file
handler of the ``etagent`` logger) but not the console: the CLI's console handler drops records
carrying ``console=False`` (:func:`console_filter`). The stages print their own one-line summaries.

Inside one optimizer step the bar does not move; :class:`UpdateProgress` announces the policy
update that follows a rollout (``update: 16 sequences, 0/4 micro-batches finished``) and counts
its micro-batches through a ``TrainerCallback`` (a micro-batch ends with ``on_substep_end``, the
last of an optimizer step with ``on_step_end``).
"""

from __future__ import annotations

import logging
from typing import Any

from etagent.progress import LOG_INTERVAL_S, Progress, ProgressDisplay

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

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ):
            _log_dict(state, logs)

    class LoggedPrinterCallback(TrainerCallback):
        """``PrinterCallback`` (``disable_tqdm``) to the log."""

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ):
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


class UpdateProgress:
    """The policy update after a rollout, shown while it runs (see :mod:`etagent.progress`).

    :meth:`begin` when the rollout has returned; :meth:`callback` is the ``TrainerCallback`` that
    counts the micro-batches and ends the display after the last one. ``enabled=False`` (a process
    other than the first) keeps count and shows nothing.
    """

    def __init__(self, enabled: bool = True, interval_s: float = LOG_INTERVAL_S, **display: Any):
        self.enabled = enabled
        self.interval_s = interval_s
        self.display_options = display  # ProgressDisplay's stream / tty / logger (tests)
        self.progress: Progress | None = None
        self._display: ProgressDisplay | None = None

    def begin(self, sequences: int, micro_batches: int) -> None:
        """An update of ``sequences`` sequences in ``micro_batches`` micro-batches starts."""
        if micro_batches < 1:
            raise ValueError(f"an update has at least one micro-batch, got {micro_batches}")
        self.end()
        self.progress = Progress(
            "update", total=micro_batches, unit="micro-batches", detail=f"{sequences} sequences"
        )
        self._display = ProgressDisplay(
            self.progress, enabled=self.enabled, interval_s=self.interval_s, **self.display_options
        )
        self._display.announce()

    def micro_batch_done(self) -> None:
        """One micro-batch's forward and backward pass are done; the last one ends the display."""
        if self.progress is None:  # a micro-batch outside an announced update (resume mid-rollout)
            return
        self.progress.add_finished()
        if self.progress.total is not None and self.progress.finished >= self.progress.total:
            self.end()

    def end(self) -> None:
        if self._display is not None:
            self._display.close()
        self._display = None
        self.progress = None

    def callback(self) -> Any:
        """The ``TrainerCallback`` feeding this display."""
        from transformers.trainer_callback import TrainerCallback

        owner = self

        class UpdateProgressCallback(TrainerCallback):
            def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any):
                owner.micro_batch_done()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any):
                owner.micro_batch_done()

            def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any):
                owner.end()

        return UpdateProgressCallback()
