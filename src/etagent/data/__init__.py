"""Question loading from files (benchmark JSONL, Hugging Face ``datasets``); tasks such as the
embedded tool world live in :mod:`etagent.tasks`."""

from etagent.data.loader import load_hf_questions, load_question_file, read_benchmark_jsonl

__all__ = [
    "load_hf_questions",
    "load_question_file",
    "read_benchmark_jsonl",
]
