"""`etagent serve-model` and `etagent serve-retriever` as real processes, used by rollouts over HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from typer.testing import CliRunner

from etagent.io import read_records
from etagent.records import Trajectory
from etagent.runtime import free_port
from tests.cli_helpers import invoke_ok

runner = CliRunner()


@contextmanager
def _server(*args: str, health: str, timeout: float = 120) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "etagent.cli", *args, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{proc.stdout.read()}")
            try:
                if httpx.get(base + health, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_rollout_through_serve_model_and_serve_retriever(tmp_path):
    with (
        _server("serve-model", "--model", "tiny", health="/health") as model_url,
        _server("serve-retriever", "--task", "toolworld", health="/health") as search_url,
    ):
        models = httpx.get(model_url + "/v1/models", timeout=10).json()
        assert models["data"]
        run_dir = tmp_path / "run"
        invoke_ok(
            "rollout", "--backend", "openai", "--model", "tiny", "--data", "toolworld:dev", "--limit", "2",
            "--n", "2", "--set", f"agent.backend.openai.base_url={model_url}/v1",
            "--set", "agent.tools.search.backend=remote", "--set", f"agent.tools.search.url={search_url}",
            "--set", "agent.sampling.logprobs=2", "--set", "agent.budget.max_new_tokens_per_call=16",
            "--set", "agent.budget.max_response_tokens=48", "--run-dir", str(run_dir),
        )  # fmt: skip
        trajs = read_records(run_dir / "trajectories.jsonl", Trajectory)
        assert len(trajs) == 4
        for t in trajs:
            assert t.segments and t.segments[0].role == "model"
            # log-probs came back over HTTP, one per model token
            assert t.segments[0].logprobs is not None
            assert len(t.segments[0].logprobs) == len(t.segments[0].token_ids)

        # the remote search tool talks to the retriever process
        from etagent.tools.search import SearchConfig, SearchTool

        tool = SearchTool.from_config(SearchConfig(backend="remote", url=search_url, cache=False))
        try:
            from etagent.tasks.toolworld import load_split

            q = next(q for q in load_split("dev") if q.meta["min_search"] >= 1)
            step = q.meta["plan"][0]
            res = tool.call(step["query"])
            assert res.status == "ok" and step["reveals"]["entity"] in res.text
        finally:
            tool.close()
