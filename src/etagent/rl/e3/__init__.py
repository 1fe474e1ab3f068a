"""E3-TIR, the expert-experience warm-up (docs/e3tir.md): the ``warmup:`` section of ``etagent rl``.

:mod:`~etagent.rl.e3.config` its settings, :mod:`~etagent.rl.e3.experts` where expert trajectories
come from, :mod:`~etagent.rl.e3.boundary` how much guidance each question gets,
:mod:`~etagent.rl.e3.rollout` the mixed groups and their masks, :mod:`~etagent.rl.e3.loss` the mixed
objective inside TRL's GRPOTrainer.
"""
