"""From flywheel buffers to the fine-tuning set (docs/method.md 3.4 [rec]; the step the reference lacks).

Kept: every buffer trajectory judged correct that passes the strict format check
(:func:`etagent.protocol.tags.check_format`), de-duplicated per question on whitespace-normalised
text (the first entry wins, so an initial rollout is kept over an identical refinement). Each
example is a chat with the tool prompt in the **system** role::

    {"id": "<entry id>", "question_id": "...",
     "messages": [{"role": "system", "content": <tool prompt>},
                  {"role": "user", "content": <question>},
                  {"role": "assistant", "content": <full trajectory, inserted <result>s included>}],
     "meta": {"operator": "...", "round": 0, "parent": null, "source": "...", "task": "...", ...}}

built by :func:`etagent.train.sft_data.trajectories_to_sft_examples` (which also checks that the
tool-output segments are exactly the result spans the SFT loss mask will find), with the
provenance added to ``meta``. ``export_stats.json`` counts, per operator and per task, the
candidates, how many were judged correct, passed the format check and were exported, and the
operators' misses (no candidate produced, or the buffer was full).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from etagent.flywheel.buffer import BufferRecord
from etagent.flywheel.steps import normalise
from etagent.io import atomic_write_json, atomic_write_jsonl
from etagent.protocol import tags
from etagent.train.sft_data import trajectories_to_sft_examples

SFT_FILE = "sft.jsonl"
STATS_FILE = "export_stats.json"


def _operator_counts() -> dict[str, int]:
    return {
        "candidates": 0,
        "judged_correct": 0,
        "format_valid": 0,
        "correct_and_valid": 0,
        "duplicates": 0,
        "unmaskable": 0,
        "exported": 0,
        "no_candidate": 0,
        "buffer_full": 0,
    }


def export_sft(
    records: Iterable[BufferRecord],
    system_prompt: str | None = None,
    tool_tags: tuple[str, ...] = tags.DEFAULT_TOOL_TAGS,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(examples, statistics) for the given buffers, in record and buffer order. The system
    prompt defaults to the agent loop's tool prompt for ``tool_tags``."""
    examples: list[dict[str, Any]] = []
    per_operator: dict[str, dict[str, int]] = defaultdict(_operator_counts)
    per_task: dict[str, Counter[str]] = defaultdict(Counter)
    problems: Counter[str] = Counter()
    n_records = 0
    for record in records:
        n_records += 1
        task = per_task[record.question.task]
        task["questions"] += 1
        seen: set[str] = set()
        exported_here = 0
        for entry in record.entries:
            ops = per_operator[entry.operator]
            ops["candidates"] += 1
            task["candidates"] += 1
            check = tags.check_format(entry.text, tool_tags)
            ops["judged_correct"] += entry.verdict
            ops["format_valid"] += check.ok
            task["judged_correct"] += entry.verdict
            if entry.verdict and not check.ok:
                problems.update(check.problems)
            if not (entry.verdict and check.ok):
                continue
            ops["correct_and_valid"] += 1
            key = normalise(entry.text)
            if key in seen:
                ops["duplicates"] += 1
                continue
            seen.add(key)
            built = trajectories_to_sft_examples([entry.trajectory], system_prompt, tool_tags)
            if not built:  # tool outputs the SFT mask would not find (logged by the builder)
                ops["unmaskable"] += 1
                continue
            example = built[0]
            example["id"] = entry.id
            example["meta"].update(operator=entry.operator, round=entry.round, parent=entry.parent)
            examples.append(example)
            ops["exported"] += 1
            exported_here += 1
        for event in record.events:
            per_operator[event.operator][event.status] += 1
        task["exported"] += exported_here
        task["questions_with_examples"] += exported_here > 0
    stats = {
        "questions": n_records,
        "examples": len(examples),
        "per_operator": {op: dict(c) for op, c in sorted(per_operator.items())},
        "per_task": {t: dict(c) for t, c in sorted(per_task.items())},
        "format_problems_of_correct": dict(problems.most_common(10)),
    }
    return examples, stats


def write_sft(
    run_dir: Path,
    records: Iterable[BufferRecord],
    system_prompt: str | None = None,
    tool_tags: tuple[str, ...] = tags.DEFAULT_TOOL_TAGS,
) -> dict[str, Any]:
    """Write ``sft.jsonl`` and ``export_stats.json`` into ``run_dir`` (atomically); the stats."""
    examples, stats = export_sft(records, system_prompt, tool_tags)
    atomic_write_jsonl(run_dir / SFT_FILE, examples)
    atomic_write_json(run_dir / STATS_FILE, stats)
    return stats
