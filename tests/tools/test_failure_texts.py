"""Infrastructure failures of tools: a short neutral text for the model, the reason in the log, once."""

from __future__ import annotations

import logging
import socket

import pytest

from etagent.tools.failure_log import FailureLog
from etagent.tools.python_tool import TOOL_FAILED, PythonConfig, PythonTool, SandboxUnavailable
from etagent.tools.sandbox.pool import SandboxStartError, WorkerPool
from etagent.tools.search import SearchConfig, SearchTool


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_dead_search_server_shows_the_model_a_neutral_text(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    cfg = SearchConfig(backend="remote", url=url, retries=0, timeout_s=5, cache=False)
    tool = SearchTool.from_config(cfg)
    try:
        with caplog.at_level(logging.DEBUG, logger="etagent.tools.search.tool"):
            results = [tool.call("Ed Wood"), *tool.call_batch(["Tim Burton", "", "Ed Wood"])]
            results.append(tool.call("coral reef"))
    finally:
        tool.close()
    texts = [r.text for r in results]
    assert texts == [
        "Search failed: Ed Wood",
        "Search failed: Tim Burton",
        "Invalid search query: the query is empty.",
        "Search failed: Ed Wood",
        "Search failed: coral reef",
    ]
    assert [r.status for r in results] == ["error"] * 5
    for text in texts:  # nothing of the operator's: no URL, no command, no setting
        assert url not in text and "serve-retriever" not in text and "search.url" not in text
    # the operator reads where and why: once per distinct failure (the single searches all failed
    # alike at /search, the batch at /batch_search), the repeats only at DEBUG level
    warnings = _warnings(caplog)
    assert [w.split(" is unreachable")[0].rsplit("/", 1)[1] for w in warnings] == ["search", "batch_search"]
    assert all(url in w and "serve-retriever" in w for w in warnings)
    assert sum("again, 2 times" in r.getMessage() for r in caplog.records) == 1


def test_failure_log_logs_each_distinct_failure_once(caplog: pytest.LogCaptureFixture) -> None:
    failures = FailureLog(logging.getLogger("test.failures"), "thing failed", max_distinct=2)
    with caplog.at_level(logging.WARNING, logger="test.failures"):
        assert [failures.record(m) for m in ("a", "a", "b", "a", "b")] == [True, False, True, False, False]
        assert failures.counts == {"a": 3, "b": 2} and failures.last == "b"
        assert failures.record("c")  # forgets "a", the oldest
        assert failures.record("a")
    assert _warnings(caplog) == [
        f"thing failed: {m} (further identical failures are logged at DEBUG level only)" for m in "abca"
    ]
    with pytest.raises(ValueError):
        FailureLog(logging.getLogger("x"), "x", max_distinct=0)


@pytest.fixture
def python_tool():
    try:
        tool = PythonTool(PythonConfig(pool_size=1, isolation="rlimits"))
    except SandboxUnavailable as e:  # pragma: no cover - rlimits needs no sandbox
        pytest.skip(str(e))
    yield tool
    tool.close()


def test_python_tool_infrastructure_failures_are_neutral(
    python_tool: PythonTool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    detail = "bwrap: setting up uid map: Permission denied (/opt/secret/venv)"

    def broken_acquire(timeout: float) -> None:
        raise SandboxStartError(detail)

    monkeypatch.setattr(python_tool.pool, "acquire", broken_acquire)
    with caplog.at_level(logging.WARNING, logger="etagent.tools.python_tool"):
        results = [python_tool.call("print(1)") for _ in range(3)]
    assert {(r.text, r.status) for r in results} == {(TOOL_FAILED, "error")}
    (warning,) = _warnings(caplog)
    assert detail in warning
    monkeypatch.undo()
    assert python_tool.call("print(6 * 7)").text == "42"  # the code's own errors stay as they were
    assert "ZeroDivisionError" in python_tool.call("1 / 0").text

    python_tool.close()
    closed = python_tool.call("print(1)")
    assert (closed.text, closed.status) == (TOOL_FAILED, "error")


def test_a_sandbox_that_cannot_start_still_names_the_reason_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pool_size 0 checks the sandbox with a first call: the error names the reason, not the model's text."""

    def broken_acquire(self: WorkerPool, timeout: float) -> None:
        raise SandboxStartError("bwrap: Creating new namespace failed: Operation not permitted")

    monkeypatch.setattr(WorkerPool, "acquire", broken_acquire)
    with pytest.raises(SandboxUnavailable, match="Creating new namespace failed") as info:
        PythonTool(PythonConfig(pool_size=0, isolation="rlimits"))
    assert TOOL_FAILED not in str(info.value)
