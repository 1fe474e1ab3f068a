"""Scoring: answer correctness, the ET-Agent reward, evaluation metrics and the LLM judge.

- :mod:`~etagent.scoring.correctness`: exact match, token F1, MATH normalisation, math-verify;
- :mod:`~etagent.scoring.reward`: the efficiency reward over a group (``group_rewards``, ``et_rewards``);
- :mod:`~etagent.scoring.metrics`: per-trajectory scores, dataset/overall metrics, ``score_run``;
- :mod:`~etagent.scoring.judge`: LLM-as-judge for correctness and conciseness, cached in SQLite;
- :mod:`~etagent.scoring.summary`: the rollout summary (a view over the metrics).
"""
