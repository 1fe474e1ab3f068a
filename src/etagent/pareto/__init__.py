"""Group-wise Pareto selection of RL questions and curriculum stages (docs/method.md 5)."""

from etagent.pareto.selection import (
    ObjectivesConfig,
    ParetoConfig,
    ParetoSelection,
    crowding_distance,
    curriculum_stages,
    default_tie_rank,
    fill_budget,
    group_objectives,
    mean_correctness,
    mixed_outcomes,
    non_dominated_ranks,
    select,
    select_groups,
    stage_file,
    stages_complete,
    write_stages,
)

__all__ = [
    "ObjectivesConfig",
    "ParetoConfig",
    "ParetoSelection",
    "crowding_distance",
    "curriculum_stages",
    "default_tie_rank",
    "fill_budget",
    "group_objectives",
    "mean_correctness",
    "mixed_outcomes",
    "non_dominated_ranks",
    "select",
    "select_groups",
    "stage_file",
    "stages_complete",
    "write_stages",
]
