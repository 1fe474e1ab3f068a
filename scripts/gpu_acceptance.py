"""GPU acceptance checks, one JSON line per check (run whenever a GPU machine is lent).

    python scripts/gpu_acceptance.py                              # CUDA, a Qwen2.5-1.5B-shaped model
    python scripts/gpu_acceptance.py --device cpu --shape tiny    # the same checks, small, on the CPU

Checks (each line: {"check", "ok", ...figures}; a check that cannot run says why):
- ``hf/<dtype>``: the hf backend's greedy tokens for 4 prompts decoded together equal those decoded
  one at a time, or part only where the two tokens were tied within the tolerance (the model's
  weights are random, its logits near-flat), and its log-probs equal a teacher-forced forward pass
  of the same model;
- ``rl/<dtype>``: ``etagent rl`` steps (GRPO, ET-Agent reward, no tools) on a random-weight model
  of the shape: seconds per step, peak device memory;
- ``sft/<dtype>``: ``etagent sft`` steps on the same model: seconds per step, peak memory.

The models have random weights (nothing is downloaded) and the embedded model's tokenizer. Exits 1
when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

QWEN_1_5B = dict(  # Qwen2.5-1.5B's shape; the vocabulary is the tokenizer's
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
)
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
PROMPTS = ["What is 12 times 34?", "Name a city.", "Who wrote the letter?", "Count to five."]
FAILED = False


def report(check: str, run: Callable[[], dict[str, Any]]) -> None:
    """Run one check and print its JSON line; a crash is a failed check, not the end of the script."""
    global FAILED
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # trainers print their logs; stdout is ours
            line = {"check": check, **run()}
    except Exception as e:  # the line says what broke; the other checks still run
        line = {
            "check": check,
            "ok": False,
            "error": f"{type(e).__name__}: {e}",
            "where": traceback.format_exc(limit=-3),
        }
    line["seconds"] = round(time.perf_counter() - t0, 2)
    FAILED |= not line.get("ok", False)
    print(json.dumps(line), flush=True)


def random_model(shape: dict[str, int], dtype: Any, out: Path) -> Path:
    """A random-weight Qwen2 model of ``shape`` with the embedded tokenizer, saved to ``out``."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from etagent.backends.model_store import embedded_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(str(embedded_tokenizer_dir()))
    cfg = Qwen2Config(
        vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=1e6,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **shape,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).to(dtype).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def peak_memory_gb(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def hf_agreement(model_dir: Path, device: str, dtype: Any) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from etagent.backends.base import SamplingParams, render_chat_ids
    from etagent.backends.hf import HFGenerator

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
    gen = HFGenerator(model, tok, batch_size=len(PROMPTS), prefix_cache_bytes=0)
    prompts = [render_chat_ids(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=32, temperature=0.0)
    together = [c[0] for c in gen.generate(prompts, params)]
    alone = [gen.generate([p], params)[0][0] for p in prompts]
    same = sum(a.token_ids == b.token_ids for a, b in zip(together, alone, strict=True))
    tolerance = 1e-3 if dtype == torch.float32 else 0.1
    worst = tie_margin = 0.0
    with torch.no_grad():
        for p, c, single in zip(prompts, together, alone, strict=True):
            ids = torch.tensor([p + c.token_ids], device=device)
            logits = model(ids).logits.float()[0, len(p) - 1 : len(p) - 1 + len(c.token_ids)]
            forced = torch.log_softmax(logits, -1).gather(
                1, torch.tensor(c.token_ids, device=device)[:, None]
            )
            sampled = torch.tensor([x if x is not None else float("nan") for x in c.logprobs], device=device)
            worst = max(worst, float((forced[:, 0] - sampled).abs().nan_to_num(0.0).max()))
            # Where batched and single greedy decoding part, both tokens must have been near-tied
            # (random weights give near-flat logits, and bf16 kernels differ by batch shape).
            if c.token_ids != single.token_ids:
                # a sequence that ended first parts from the other with the end token
                a, b = ([*t.token_ids, tok.eos_token_id] for t in (single, c))
                i = next(k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
                shared = torch.tensor([p + a[:i]], device=device)
                step = torch.log_softmax(model(shared).logits.float()[0, -1], -1)
                tie_margin = max(tie_margin, float((step[a[i]] - step[b[i]]).abs()))
    return {
        "ok": worst <= tolerance and tie_margin <= tolerance,
        "batched_equals_single": f"{same}/{len(PROMPTS)}",
        "max_logprob_diff": round(worst, 6),
        "max_margin_where_they_part": round(tie_margin, 6),
        "tolerance": tolerance,
    }


def rl_steps(model_dir: Path, device: str, steps: int, run_dir: Path) -> dict[str, Any]:
    import torch

    from etagent.rl import RLConfig, run_rl

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cfg = RLConfig.model_validate(
        {
            "agent": {
                "backend": {"model": str(model_dir)},
                "tools": {"enabled": []},  # the policy engine and the trainer, not the tools
                "budget": {"max_new_tokens_per_call": 128, "max_response_tokens": 256},
            },
            "data": "toolworld:train",
            "num_generations": 4,
            "questions_per_step": 2,
            "micro_batch_size": 4,
            "use_arpo": False,
            "max_steps": steps,
            "device": device,
            "logging": {"report_to": "none"},
        }
    )
    summary = run_rl(cfg, run_dir)
    return {
        "ok": summary["steps"] == steps and (run_dir / "model" / "config.json").exists(),
        "steps": summary["steps"],
        "seconds_per_step": summary["seconds_per_step"],
        "peak_memory_gb": peak_memory_gb(device),
    }


def sft_steps(model_dir: Path, device: str, steps: int, run_dir: Path) -> dict[str, Any]:
    import torch

    from etagent.protocol import tags
    from etagent.train.sft import SFTConfig, run_sft

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    data = run_dir.parent / "sft.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(32):
        answer = tags.render_answer(str(i * 7))
        text = (
            f"<think>Compute.</think><python>print({i} * 7)</python>{tags.render_result(str(i * 7))}{answer}"
        )
        messages = [
            {"role": "user", "content": f"What is {i} times 7?"},
            {"role": "assistant", "content": text},
        ]
        rows.append({"id": f"e{i}", "question_id": f"q{i}", "messages": messages, "meta": {}})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = SFTConfig(
        model=str(model_dir), data=str(data), max_steps=steps, max_length=1024, batch_size=4, grad_accum=1
    )
    summary = run_sft(cfg, run_dir)
    return {
        "ok": summary["steps"] == steps and summary["last_loss"] is not None,
        "steps": summary["steps"],
        "seconds_per_step": round(summary["runtime_s"] / max(steps, 1), 3),
        "peak_memory_gb": peak_memory_gb(device),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--shape", default="qwen1.5b", choices=["qwen1.5b", "tiny"])
    ap.add_argument("--steps", type=int, default=3, help="RL and SFT steps")
    args = ap.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"check": "device", "ok": False, "error": "no CUDA device"}))
        return 1
    print(json.dumps({"check": "device", "ok": True, "torch": torch.__version__, "device": args.device,
                      "name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}), flush=True)  # fmt: skip
    shape = QWEN_1_5B if args.shape == "qwen1.5b" else TINY
    dtypes = (
        {"fp32": torch.float32, "bf16": torch.bfloat16} if args.device == "cuda" else {"fp32": torch.float32}
    )
    with tempfile.TemporaryDirectory(prefix="etagent-gpu-") as tmp:
        root = Path(tmp)
        for name, dtype in dtypes.items():
            model_dir = random_model(shape, dtype, root / f"model-{name}")
            report(f"hf/{name}", lambda d=model_dir, t=dtype: hf_agreement(d, args.device, t))
        trained = root / f"model-{next(reversed(dtypes))}"  # bf16 on a GPU: the trainer's dtype there
        report(f"rl/{args.shape}", lambda: rl_steps(trained, args.device, args.steps, root / "rl"))
        report(f"sft/{args.shape}", lambda: sft_steps(trained, args.device, args.steps, root / "sft" / "run"))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
