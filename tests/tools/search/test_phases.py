"""The summariser is switched on per phase (each stage's search section) or for every phase at
once (the pipeline's ``search_summariser``, or one YAML anchor), as Decision 7 of docs/method.md says."""

from __future__ import annotations

from etagent.config import load_config

PIPELINE = """
flywheel:
  agent:
    tools:
      enabled: [search, python]
      search: &search               # defined once ...
        backend: serper
        pages: {enabled: true}
        summariser:
          enabled: true
          backend: {kind: openai, model: tiny, openai: {base_url: "http://127.0.0.1:8001/v1"}}
pareto:
  rollout:
    agent: {tools: {enabled: [search, python], search: *search}}   # ... used by every phase
rl:
  agent: {tools: {enabled: [search, python], search: *search}}
eval:
  agent: {tools: {enabled: [search, python], search: *search}}
"""


def test_one_anchor_switches_the_summariser_on_for_every_phase(tmp_path) -> None:
    from etagent.pipeline import PipelineConfig

    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE, encoding="utf-8")
    cfg = load_config(PipelineConfig, path)
    agents = {
        "flywheel": cfg.flywheel.agent,
        "pareto": cfg.pareto.rollout.agent,
        "rl": cfg.rl.agent,
        "eval": cfg.eval.agent,
    }
    for phase, agent in agents.items():
        search = agent.tools.section("search")
        assert search.backend == "serper" and search.pages.enabled, phase
        assert search.summariser.enabled and search.summariser.backend.kind == "openai", phase
    # each phase keeps its own defaults for the rest of its agent (RL: stop at the budget)
    assert cfg.rl.agent.budget.on_budget == "stop" and cfg.flywheel.agent.sampling.temperature == 1.0
    # the cold-start data, untouched, searches raw
    assert not cfg.cold_start_data.agent.tools.section("search").summariser.enabled


def test_one_phase_only(tmp_path) -> None:
    from etagent.eval.stage import EvalConfig
    from etagent.rl.config import RLConfig

    on = ["agent.tools.search.summariser.enabled=true"]
    assert load_config(EvalConfig, None, on).agent.tools.section("search").summariser.enabled
    assert not load_config(RLConfig, None, []).agent.tools.section("search").summariser.enabled


def test_one_pipeline_setting_switches_the_summariser_on_for_every_phase() -> None:
    from etagent.pipeline import PipelineConfig

    cfg = load_config(
        PipelineConfig, None, ["search_summariser.enabled=true", "search_summariser.max_new_tokens=77"]
    )
    for phase, agent in {
        "flywheel": cfg.flywheel.agent,
        "pareto": cfg.pareto.rollout.agent,
        "rl": cfg.rl.agent,
        "eval": cfg.eval.agent,
    }.items():
        summariser = agent.tools.section("search").summariser
        assert summariser.enabled and summariser.max_new_tokens == 77, phase
    assert not cfg.cold_start_data.agent.tools.section("search").summariser.enabled
    assert not load_config(PipelineConfig, None, []).eval.agent.tools.section("search").summariser.enabled
