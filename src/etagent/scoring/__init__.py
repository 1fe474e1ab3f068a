"""Scoring: answer correctness, the ET-Agent reward, evaluation metrics and the LLM judge.

- :mod:`~etagent.scoring.correctness`: exact match, token F1, MATH normalisation, math-verify, and
  the one correctness rule every stage uses (``answer_correctness``);
- :mod:`~etagent.scoring.reward`: the efficiency reward over a group (``group_rewards``, ``et_rewards``
  and its factors ``tool_factor``, ``length_factor``, ``format_penalty``);
- :mod:`~etagent.scoring.reward_terms`: terms a config adds to the reward (``REWARD_TERMS``);
- :mod:`~etagent.scoring.metrics`: per-trajectory scores, dataset/overall metrics, ``score_run``;
- :mod:`~etagent.scoring.judge`: LLM-as-judge for correctness and conciseness, cached in SQLite;
- :mod:`~etagent.scoring.summary`: the rollout summary (a view over the metrics).
"""
