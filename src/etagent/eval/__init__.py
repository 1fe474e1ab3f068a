"""The evaluation stage: rollouts on several data sets, metrics, and readable reports."""

from etagent.eval.stage import EvalConfig, EvalDataset, check_eval_run_dir, rescore, run_eval

__all__ = ["EvalConfig", "EvalDataset", "check_eval_run_dir", "rescore", "run_eval"]
