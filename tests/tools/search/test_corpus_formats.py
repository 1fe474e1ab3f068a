"""Corpora in FlashRAG / Search-R1's ``{id, contents}`` shape, searched locally and summarised."""

from __future__ import annotations

import json

import pytest

from etagent.io import DataError
from etagent.tools.search import SearchConfig, SearchTool, load_corpus
from etagent.tools.search.config import SummariserConfig
from etagent.tools.search.summariser import Summariser
from tests.tools.search.scripted import SummaryModel

FLASHRAG = [
    {
        "id": "0",
        "contents": '"Catalan number"\nIn combinatorics, the Catalan numbers count Dyck paths; C(10) = 16796.',
    },
    {
        "id": "1",
        "contents": '"Eugène Charles Catalan"\nEugène Charles Catalan was a Belgian mathematician (1814-1894).',
    },
    {"id": 2, "contents": "A passage without a title line about the Tower of Hanoi puzzle."},
    {
        "id": "3",
        "title": "Dyck path",
        "contents": '"ignored title"\nA Dyck path is a staircase walk from (0,0) to (n,n).',
    },
]


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_flashrag_contents_lines_load(tmp_path) -> None:
    docs = load_corpus(write(tmp_path / "wiki.jsonl", FLASHRAG))
    assert [(d.id, d.title) for d in docs] == [
        ("0", "Catalan number"),
        ("1", "Eugène Charles Catalan"),
        ("2", ""),
        ("3", "Dyck path"),  # an explicit title field wins
    ]
    assert docs[0].text == "In combinatorics, the Catalan numbers count Dyck paths; C(10) = 16796."
    assert docs[2].text == "A passage without a title line about the Tower of Hanoi puzzle."
    # both shapes in one file are fine
    mixed = write(tmp_path / "mixed.jsonl", [FLASHRAG[0], {"id": "x", "title": "T", "text": "plain"}])
    assert [d.text for d in load_corpus(mixed)][1] == "plain"


def test_a_line_of_neither_shape_names_both(tmp_path) -> None:
    bad = write(tmp_path / "bad.jsonl", [FLASHRAG[0], {"id": "9", "body": "what?"}])
    with pytest.raises(DataError, match=r'bad\.jsonl:2: missing field \'text\' .*\{"id", "contents"\}'):
        load_corpus(bad)
    wrong = write(tmp_path / "wrong.jsonl", [{"id": "9", "contents": ["a", "list"]}])
    with pytest.raises(DataError, match=r"wrong\.jsonl:1: field 'contents' must be a string"):
        load_corpus(wrong)


def test_bm25_search_over_a_flashrag_corpus_with_the_summariser(tmp_path) -> None:
    corpus = write(tmp_path / "wiki.jsonl", FLASHRAG)
    cfg = SearchConfig(corpus=corpus, index_dir=str(tmp_path / "idx"), cache=False, top_k=2, threads=1)
    tool = SearchTool.from_config(cfg)
    result = tool.call("Catalan numbers Dyck paths")
    assert result.text.startswith(
        "(1) Catalan number: In combinatorics, the Catalan numbers count Dyck paths"
    )
    assert not tool.web and "knowledge corpus" in tool.spec.description

    model = SummaryModel("**Final Information**\nC(10) = 16796.")
    tool.summariser = Summariser(model, SummariserConfig(batch_wait_s=0))
    summarised = tool.call("Catalan numbers Dyck paths")
    assert summarised.text == "C(10) = 16796." and summarised.meta["summariser"]["status"] == "ok"
    [prompt] = model.prompts
    assert "**Searched documents:**\n**Document 1:**" in prompt and '"title": "Catalan number"' in prompt
    assert "url" not in prompt
    tool.close()
