"""The demo preset: a valid pipeline config that survives the save/reload a resumed run does."""

from __future__ import annotations

from etagent.config import dump_config, load_config
from etagent.demo import DemoConfig


def test_demo_config_round_trips_through_its_saved_yaml(tmp_path):
    cfg = DemoConfig()
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(cfg))
    assert load_config(DemoConfig, saved) == cfg  # `etagent demo --run-dir` resumes from this file


def test_demo_sizes_stay_within_a_cpu_budget():
    # the measured 20-minute budget (README) rests on these sizes; change them with a new measurement
    cfg = DemoConfig()
    assert cfg.rl.use_arpo and cfg.rl.arpo.n == cfg.rl.num_generations == 4
    assert cfg.rl.max_steps * cfg.rl.questions_per_step * cfg.rl.num_generations <= 16
    assert cfg.pareto.rollout.limit * cfg.pareto.rollout.n <= 48
    assert cfg.flywheel.limit * cfg.flywheel.rounds <= 20
    assert sum(d.limit or 10**6 for d in cfg.eval.datasets) <= 24
