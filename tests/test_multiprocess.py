"""Several processes, one job: ``etagent sft`` and ``etagent rl`` under torchrun with 2 processes
(gloo on the CPU, the tiny model). One log line per step, one complete model, the summary once;
SFT on 2 processes equals 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from etagent.backends.base import Completion, Generator, SamplingParams, trim_at_stop
from etagent.runtime import launch_argv
from tests.train.conftest import write_sft

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")


def _etagent(*args: str, processes: int = 1) -> None:
    """``etagent ARGS`` as ``torchrun --nproc_per_node PROCESSES`` runs it (plainly for 1)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *launch_argv(processes), "-m", "etagent.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def _steps(run_dir: Path) -> list[int]:
    lines = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [r["step"] for r in lines if "loss" in r]


def _complete(model_dir: Path) -> None:
    assert all((model_dir / name).exists() for name in MODEL_FILES), sorted(os.listdir(model_dir))


def test_sft_on_two_processes_is_one_job_with_the_global_batch_of_one(tmp_path, tiny_model_path):
    data = write_sft(tmp_path / "sft.jsonl", 12)
    common = [
        "sft", "--data", str(data), "--model", str(tiny_model_path), "--max-steps", "2",
        "--set", "threads=1", "--set", "max_length=256", "--set", "batch_size=1",
        "--set", "learning_rate=1e-3", "--set", "warmup_ratio=0",
    ]  # fmt: skip
    _etagent(*common, "--set", "grad_accum=1", "--run-dir", str(tmp_path / "two"), processes=2)
    _etagent(*common, "--set", "grad_accum=2", "--run-dir", str(tmp_path / "one"))
    for run in ("two", "one"):
        assert _steps(tmp_path / run) == [1, 2]  # one line per step, not one per process
        _complete(tmp_path / run / "model")
    two = [json.loads(line) for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    one = [json.loads(line) for line in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in two[:2]] == pytest.approx([r["loss"] for r in one[:2]], rel=1e-4)
    w2, w1 = (
        load_file(str(tmp_path / "two/model/model.safetensors")),
        load_file(str(tmp_path / "one/model/model.safetensors")),
    )
    assert w2.keys() == w1.keys()
    for name in w1:  # the 2-process update is the 1-process update with the same global batch
        assert (w2[name] - w1[name]).abs().max() < 1e-4, name


def test_rl_on_two_processes_is_one_job_and_resumes(tmp_path, tiny_model_path):
    run_dir = tmp_path / "rl"
    rl = (
        "rl", "--model", str(tiny_model_path), "--run-dir", str(run_dir),
        "--set", "threads=1", "--set", "logging.report_to=none", "--set", "agent.tools.enabled=[search]",
        "--set", "agent.budget.max_new_tokens_per_call=16", "--set", "agent.budget.max_response_tokens=48",
        "--set", "num_generations=2", "--set", "arpo.n=2", "--set", "arpo.initial_rollouts=1",
        "--set", "questions_per_step=2", "--set", "micro_batch_size=2", "--set", "save_steps=1",
    )  # fmt: skip
    _etagent(*rl, "--max-steps", "2", processes=2)
    assert _steps(run_dir) == [1, 2]
    lines = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r.get("ranks_agree") for r in lines] == [True, True]  # the same weights on both ranks
    _complete(run_dir / "model")
    assert json.loads((run_dir / "rl_summary.json").read_text())["steps"] == 2
    # both processes resume from the shared checkpoint; the log goes on without repeating a step
    _etagent(*rl, "--max-steps", "3", processes=2)
    assert _steps(run_dir) == [1, 2, 3]
    summary = json.loads((run_dir / "rl_summary.json").read_text())
    assert summary["steps"] == 3 and summary["resumed_from"].endswith("checkpoint-2")


def test_the_e3_warmup_on_two_processes(tmp_path, tiny_model_path):
    """Each process samples and caches its own questions' experts and saves its own knowledge
    boundary; the mixed objective's metrics reduce across both (one log line per step, equal weights)."""
    run_dir = tmp_path / "e3"
    _etagent(
        "rl", "--model", str(tiny_model_path), "--run-dir", str(run_dir), "--max-steps", "2",
        "--set", "threads=1", "--set", "logging.report_to=none", "--set", "data=toolworld:train",
        "--set", "limit=4", "--set", "agent.tools.enabled=[search, python]",
        "--set", "agent.tools.search.top_k=1", "--set", "agent.tools.search.max_doc_chars=160",
        "--set", "agent.budget.max_new_tokens_per_call=200", "--set", "agent.budget.max_response_tokens=360",
        "--set", "warmup.method=e3", "--set", "warmup.max_expert_share=1.0", "--set", "warmup.min_self=1",
        "--set", "warmup.prefix_share=0",  # the expert slot holds a whole expert trajectory
        "--set", "use_arpo=false", "--set", "num_generations=2", "--set", "arpo.n=2",
        "--set", "arpo.initial_rollouts=1", "--set", "questions_per_step=2", "--set", "micro_batch_size=2",
        "--set", "save_steps=1",
        processes=2,
    )  # fmt: skip
    lines = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and [r.get("ranks_agree") for r in lines] == [True, True]
    # per process (logged as the mean of the two): 1 self-explored, 1 expert-guided trajectory
    assert (lines[0]["e3/self"], lines[0]["e3/guided"], lines[0]["e3/guidance"]) == (1, 1, 1)
    assert lines[0]["e3/expert_token_share"] > 0 and lines[1]["e3/expert_token_share"] == 0
    for rank in (0, 1):  # one question per process and step
        assert (run_dir / f"e3_experts.rank{rank}.jsonl").read_text().strip()
        assert (run_dir / "checkpoints" / "checkpoint-2" / f"e3_state.rank{rank}.json").is_file()
    _complete(run_dir / "model")


def test_a_job_of_several_processes_needs_one_run_directory(monkeypatch):
    from etagent.config import ConfigError
    from etagent.rundir import new_run_dir

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="give them one run directory with --run-dir"):
        new_run_dir("rl")


def test_rl_sizes_are_global_and_groups_stay_whole():
    from etagent.rl.config import RLConfig

    cfg = RLConfig.model_validate(
        {"num_generations": 4, "use_arpo": False, "questions_per_step": 4, "micro_batch_size": 4}
    )
    assert cfg.gradient_accumulation_steps(1) == 4 and cfg.gradient_accumulation_steps(2) == 2
    with pytest.raises(ValueError, match="must be divisible by"):
        cfg.gradient_accumulation_steps(3)
    split = cfg.model_copy(update={"micro_batch_size": 2})
    with pytest.raises(ValueError, match="each process rolls out whole groups"):
        split.gradient_accumulation_steps(2)


class _ScriptsBySample(Generator):
    """A server-side policy whose answer depends only on the prompt and how often it was asked for
    before: the k-th sample of a prompt writes script ``k % len(scripts)``, whatever else is in the
    batch, so one process and two see the same groups."""

    name = "scripts"

    def __init__(self, tokenizer, scripts: list[str]):
        self.tokenizer = tokenizer
        self.scripts = scripts
        self.asked: dict[tuple[int, ...], int] = {}
        self.reloads = 0

    def generate(self, prompts, params: SamplingParams):
        out = []
        for prompt in prompts:
            key = tuple(self.prompt_ids(prompt))
            group = []
            for _ in range(params.n):
                k = self.asked.get(key, 0)
                self.asked[key] = k + 1
                ids = self.tokenizer.encode(self.scripts[k % len(self.scripts)], add_special_tokens=False)
                text, ids, stop, _ = trim_at_stop(self.tokenizer, ids[: params.max_new_tokens], params.stop)
                group.append(
                    Completion(text, ids, "stop" if stop else "eos", stop=stop, logprobs=[-0.5] * len(ids))
                )
            out.append(group)
        return out

    def reload_weights(self, folder: str) -> int:
        assert (Path(folder) / "model.safetensors").exists()
        self.reloads += 1
        return 0

    def clear_prefix_cache(self) -> None:
        pass


def test_rl_with_the_server_engine_on_two_processes_equals_one_process(tmp_path, tiny_model_path, tokenizer):
    from etagent.backends.server import create_app, serve_in_thread

    short = "<think>Sure.</think><answer>\\boxed{42}</answer>"
    long = "<think>Let me think about it for a while before answering.</think><answer>\\boxed{42}</answer>"
    server = _ScriptsBySample(tokenizer, [short, long])
    with serve_in_thread(create_app(server, "scripted", dev_mode=True)) as url:

        def rl(run: str, processes: int, accumulation_hint: str) -> None:
            _etagent(
                "rl", "--model", str(tiny_model_path), "--run-dir", str(tmp_path / run), "--max-steps", "2",
                "--set", "threads=1", "--set", "logging.report_to=none", "--set", "agent.tools.enabled=[search]",
                "--set", "agent.backend.kind=openai", "--set", f"agent.backend.openai.base_url={url}",
                "--set", "rollout.engine=vllm_server", "--set", "rollout.sync_dtype=float32",
                "--set", "use_arpo=false", "--set", "num_generations=2", "--set", "questions_per_step=2",
                "--set", f"micro_batch_size={accumulation_hint}", "--set", "learning_rate=1e-2",
                "--set", "reward.extra_terms=[{name: model_tokens, weight: 1.0, options: {per: 4}}]",
                processes=processes,
            )  # fmt: skip

        rl("two", 2, "2")  # each process: one question's group per step
        rl("one", 1, "2")  # one process: both groups, accumulated
    assert server.reloads == 4  # before each of 2 steps, by each run
    logs = {}
    for run in ("two", "one"):
        assert _steps(tmp_path / run) == [1, 2]
        _complete(tmp_path / run / "model")
        logs[run] = [
            json.loads(line) for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()
        ]
    assert all(r["ranks_agree"] for r in logs["two"]) and not any("ranks_agree" in r for r in logs["one"])
    for a, b in zip(logs["two"], logs["one"], strict=True):
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-8)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert all(r["grad_norm"] > 1e-5 for r in logs["one"])  # the groups carried a learning signal
    w2 = load_file(str(tmp_path / "two/model/model.safetensors"))
    w1 = load_file(str(tmp_path / "one/model/model.safetensors"))
    initial = load_file(str(tiny_model_path / "model.safetensors"))
    assert any((w1[n] - initial[n]).abs().max() > 1e-4 for n in w1)
    for name in w1:
        assert (w2[name] - w1[name]).abs().max() < 1e-4, name


def _agreement_worker(rank: int, init_file: str, same: bool, out: str) -> None:
    import torch
    import torch.distributed as dist

    from etagent.rl.trl_engine import ranks_agree

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0 if same or rank == 0 else 1.5)
    result = ranks_agree(model)
    dist.destroy_process_group()
    Path(out, f"rank{rank}").write_text(str(result))


@pytest.mark.parametrize("same", [True, False])
def test_the_rank_agreement_check_sees_diverged_weights(tmp_path, same):
    import torch.multiprocessing as mp

    mp.spawn(_agreement_worker, args=(str(tmp_path / "init"), same, str(tmp_path)), nprocs=2, join=True)
    assert {(tmp_path / f"rank{r}").read_text() for r in (0, 1)} == {str(same)}
