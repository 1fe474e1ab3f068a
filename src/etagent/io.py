"""Files on disk: JSONL with errors that name the file and line, atomic writes, safe appends."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for each non-blank line; raise DataError on bad JSON."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def validate_record(model: type[M], obj: dict[str, Any], where: str) -> M:
    """``model.model_validate(obj)`` with an error naming ``where`` (file:line) and the field."""
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in err['loc']) or '<record>'}': {err['msg']}"
            for err in e.errors()
        )
        raise DataError(f"{where}: {problems}") from None


def read_records(path: str | Path, model: type[M]) -> list[M]:
    return [validate_record(model, obj, f"{path}:{lineno}") for lineno, obj in iter_jsonl(path)]


def to_json_line(obj: BaseModel | dict[str, Any]) -> str:
    if isinstance(obj, BaseModel):
        return obj.model_dump_json() + "\n"
    return json.dumps(obj, ensure_ascii=False) + "\n"


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a whole file so that readers see the old or the new content, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_jsonl(path: str | Path, records: Iterable[BaseModel | dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(to_json_line(r) for r in records))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def repair_torn_tail(path: str | Path) -> int:
    """Drop an incomplete last line (a write interrupted mid-line). Returns bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # find the last newline; everything after it is torn
        block = 1 << 16
        pos = size
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        f.truncate(keep)
        return size - keep


class JsonlAppender:
    """Appends groups of records, each group in one write followed by fsync.

    A crash can only tear the last group; ``repair_torn_tail`` (run on open) removes a torn line.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self._f = self.path.open("a", encoding="utf-8")

    def write_group(self, records: Iterable[BaseModel | dict[str, Any]]) -> None:
        data = "".join(to_json_line(r) for r in records)
        if not data:
            return
        self._f.write(data)
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def file_lock(lock_path: str | Path) -> Iterator[None]:
    """An exclusive advisory lock between processes (and threads holding separate opens)."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_dir_atomically(
    target: str | Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool]
) -> bool:
    """Make sure ``target`` is a complete directory; returns True when this call built it.

    ``build(tmp)`` fills a fresh sibling directory, which is renamed to ``target`` only when
    complete, under a lock, so concurrent processes neither build twice nor see a half-written
    directory. An incomplete or stale ``target`` (per ``is_complete``) is replaced.
    """
    target = Path(target)
    if is_complete(target):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if is_complete(target):  # another process finished while we waited
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            build(tmp)
            if target.exists():
                # a rename over a non-empty directory fails: move the stale one aside first
                stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
                os.replace(target, stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return True


@contextmanager
def resumable_output(
    path: str | Path, total: int, done: int, desc: str
) -> Iterator[tuple[JsonlAppender, Any]]:
    """A stage's appender on ``path`` and a progress bar (per question) starting at ``done``."""
    from tqdm import tqdm

    with (
        JsonlAppender(path) as writer,
        tqdm(total=total, initial=done, desc=desc, unit="q", dynamic_ncols=True) as bar,
    ):
        yield writer, bar
