"""Documents and corpora: the ``{id, title, text}`` JSONL format and the FlashRAG ``contents`` string.

A corpus file holds one JSON object per line, in etagent's shape::

    {"id": "hotpot-000001", "title": "Ed Wood (film)", "text": "Ed Wood is a 1994 ..."}

or in the FlashRAG / Search-R1 shape, one ``contents`` string whose first line is the (quoted)
title::

    {"id": "0", "contents": "\\"Ed Wood (film)\\"\\nEd Wood is a 1994 ..."}

FlashRAG and Search-R1 servers send documents in that second shape too; :func:`parse_contents`
and :func:`make_contents` convert between the two.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etagent.io import DataError, iter_jsonl


@dataclass(frozen=True, slots=True)
class Doc:
    """One retrieved passage. ``score`` is the retriever's score (higher is better), when known."""

    id: str
    title: str
    text: str
    score: float | None = None

    @property
    def contents(self) -> str:
        """The FlashRAG / Search-R1 ``contents`` string."""
        return make_contents(self.title, self.text)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "title": self.title, "text": self.text}
        if self.score is not None:
            out["score"] = self.score
        return out

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Doc:
        score = obj.get("score")
        return cls(
            id=str(obj.get("id", "")),
            title=str(obj.get("title", "")),
            text=str(obj.get("text", "")),
            score=None if score is None else float(score),
        )


def make_contents(title: str, text: str) -> str:
    """``"Title"\\ntext`` as in FlashRAG's wiki corpora.

    Without a title the text is sent alone, unless it has a line break of its own: then an empty
    quoted title line keeps a reader that takes the first line as the title from eating the text.
    """
    if title:
        return f'"{title}"\n{text}'
    return f'""\n{text}' if "\n" in text else text


def parse_contents(contents: str) -> tuple[str, str]:
    """(title, text) from a ``contents`` string; no line break means there is no title."""
    if "\n" not in contents:
        return "", contents.strip()
    first, rest = contents.split("\n", 1)
    title = first.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1].strip()
    return title, rest.strip()


@dataclass(frozen=True)
class CorpusVersion:
    """What identifies one state of a corpus file: a change of size or mtime invalidates caches."""

    path: Path
    size: int
    mtime_ns: int

    @property
    def key(self) -> str:
        return f"{self.path}:{self.size}:{self.mtime_ns}"


def corpus_version(path: str | Path) -> CorpusVersion:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: corpus file does not exist")
    # resolve() so that two spellings of one file share a cache entry
    p = p.resolve()
    st = os.stat(p)
    return CorpusVersion(p, st.st_size, st.st_mtime_ns)


_SHAPES = '{"id", "title", "text"} or {"id", "contents"}'


def _field(obj: dict[str, Any], name: str, where: str, required: bool) -> str:
    value = obj.get(name)
    if value is None:
        if required:
            raise DataError(f"{where}: missing field '{name}' (a corpus line is {_SHAPES})")
        return ""
    if name == "id" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    return value


def load_corpus(path: str | Path) -> list[Doc]:
    """Read a corpus JSONL file; any bad line raises :class:`DataError` naming the file and line.

    A line is ``{id, title, text}`` (``title`` may be missing or empty) or FlashRAG / Search-R1's
    ``{id, contents}`` (title on the first line of ``contents``; a non-empty ``title`` field wins).
    An integer id is accepted and turned into a string. Ids must be unique because results and
    caches refer to them.
    """
    docs: list[Doc] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        doc_id = _field(obj, "id", where, required=True)
        if obj.get("text") is None and obj.get("contents") is not None:
            title, text = parse_contents(_field(obj, "contents", where, required=True))
            title = _field(obj, "title", where, required=False) or title
        else:
            text = _field(obj, "text", where, required=True)
            title = _field(obj, "title", where, required=False)
        if not doc_id.strip():
            raise DataError(f"{where}: field 'id' is empty")
        if not text.strip() and not title.strip():
            raise DataError(f"{where}: document {doc_id!r} has neither title nor text")
        if doc_id in seen:
            raise DataError(f"{where}: duplicate id {doc_id!r} (first on line {seen[doc_id]})")
        seen[doc_id] = lineno
        docs.append(Doc(doc_id, title, text))
    if not docs:
        raise DataError(f"{path}: the corpus holds no documents")
    return docs
