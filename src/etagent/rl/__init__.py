"""Behaviour-calibration RL (``etagent rl``): GRPO + ARPO branching rollouts + the ET-Agent reward.

The rollout, sample and reward pieces (:mod:`etagent.rl.samples`, :mod:`etagent.loop.arpo`)
know nothing of the training engine; :mod:`etagent.rl.trl_engine` runs them under TRL's
GRPOTrainer on one machine.
"""

from etagent.rl.config import RLConfig, RLLoggingConfig
from etagent.rl.trl_engine import run_rl

__all__ = ["RLConfig", "RLLoggingConfig", "run_rl"]
