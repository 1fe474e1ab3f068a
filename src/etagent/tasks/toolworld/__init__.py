"""The embedded default task: a seeded synthetic "tool world".

A small encyclopedia of invented people, cities, companies and countries (names built from random
syllables, so no pretrained model can know them), written as a search corpus of ``{id, title,
text}`` documents, plus questions whose minimal solution needs exactly 0, 1 or 2 searches and/or
one Python computation. Every question's ``meta`` records the minimal plan::

    meta = {
      "qtype": "search2_python", "template": "birth_city_population_times",
      "min_search": 2, "min_python": 1, "min_tool_calls": 3,
      "plan": [  # ordered; each step is one tool call and what its result reveals
        {"tool": "search", "query": "Where was Kalo Vessane born?", "alt_query": "Kalo Vessane birthplace",
         "need": "the birth city of Kalo Vessane", "fact": "Kalo Vessane was born in Quessaheim",
         "reveals": {"entity": "Kalo Vessane", "doc_id": "tw-person-0012",
                     "facts": {"birth_city": "Quessaheim"}}},
        {"tool": "search", ...},
        {"tool": "python", "code": "print(482135 * 37)", "alt_code": "result = 482135 * 37\\nprint(result)",
         "need": "482135 * 37", "fact": "482135 * 37 = 17838995", "reveals": {"facts": {"result": "17838995"}}},
      ],
      "extra_steps": [...],   # plausible but unneeded calls (material for redundant-call variants)
      "guess": "17800000",    # what a trajectory that skips the last needed call would answer
      "direct_note": None,    # for no-tool questions: why no tool is needed
      "entities": [...],      # every entity the question touches (splits are disjoint on these)
    }

so the expert policy can write a minimal trajectory and later stages can count redundant or
missing calls exactly. Splits are disjoint by entity: each split owns its people, cities and
companies (only the few countries are shared), and question texts are unique across splits.

Modules, one job each: :mod:`~.entities` (settings, entity types, the world), :mod:`~.names`
(invented names, the template vocabulary), :mod:`~.steps` (the table of plan steps),
:mod:`~.questions` (question templates), :mod:`~.world` (the builder), :mod:`~.storage` (files
and cache), :mod:`~.variants` (the trajectories of a plan), :mod:`~.expert` (the oracle),
:mod:`~.critic` (the flywheel's critic without a model), :mod:`~.task` (:class:`ToolWorldTask`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from etagent.tasks.toolworld.entities import SOURCE, SPLITS, WORLD_VERSION, Document, ToolWorld, WorldConfig
from etagent.tasks.toolworld.expert import ExpertConfig, ExpertPolicy, parse_progress
from etagent.tasks.toolworld.questions import QTYPES, REFERENCE_YEAR
from etagent.tasks.toolworld.storage import (
    corpus_path,
    default_corpus_path,
    ensure_toolworld,
    load_split,
    write_toolworld,
)
from etagent.tasks.toolworld.task import ToolWorldTask, pick_examples
from etagent.tasks.toolworld.variants import Variant, expert_plan_text, redundancy_options, variant_segments
from etagent.tasks.toolworld.world import generate_world

if TYPE_CHECKING:
    from etagent.tasks.toolworld.critic import ExpertCritic


def __getattr__(name: str) -> Any:
    # the critic imports the flywheel; loaded only when asked for
    if name == "ExpertCritic":
        from etagent.tasks.toolworld.critic import ExpertCritic

        return ExpertCritic
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "QTYPES",
    "REFERENCE_YEAR",
    "SOURCE",
    "SPLITS",
    "WORLD_VERSION",
    "Document",
    "ExpertConfig",
    "ExpertCritic",
    "ExpertPolicy",
    "ToolWorld",
    "ToolWorldTask",
    "Variant",
    "WorldConfig",
    "corpus_path",
    "default_corpus_path",
    "ensure_toolworld",
    "expert_plan_text",
    "generate_world",
    "load_split",
    "parse_progress",
    "pick_examples",
    "redundancy_options",
    "variant_segments",
    "write_toolworld",
]
