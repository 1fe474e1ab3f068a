"""Fixtures of the fine-tuning tests: small SFT files in the flywheel export format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etagent.protocol import tags

SYSTEM = "Use the tools."


def trajectory(i: int) -> tuple[str, list[tuple[str, str]]]:
    """A short two-call trajectory and its (role, text) pieces as the agent loop would write them."""
    pieces = [
        ("model", f"<think>Need fact {i}.</think><search>fact {i}</search>"),
        ("tool", tags.render_result(f"(1) Fact {i}: the value is {i * 7}.")),
        ("model", f"<think>Compute.</think><python>print({i * 7} + 1)</python>"),
        ("tool", tags.render_result(str(i * 7 + 1))),
        ("model", f"<think>Done.</think>{tags.render_answer(str(i * 7 + 1))}"),
    ]
    return "".join(t for _, t in pieces), pieces


def example(i: int) -> dict:
    text, _ = trajectory(i)
    return {
        "id": f"e{i}",
        "question_id": f"q{i}",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"What is fact {i} plus one?"},
            {"role": "assistant", "content": text},
        ],
        "meta": {"operator": "initial"},
    }


def write_sft(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps(example(i)) + "\n" for i in range(n)), encoding="utf-8")
    return path


@pytest.fixture
def sft_file(tmp_path) -> Path:
    return write_sft(tmp_path / "sft.jsonl", 12)
