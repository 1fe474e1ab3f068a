"""ARPO branching rollouts versus independent rollouts: 16 trajectories per question.

Both runs use the same agent loop, model (the embedded SmolLM2-135M by default), tools, few-shot
prompt and sampling (T = 1) on the same tool-world questions. The independent run samples all
16 trajectories of every question from the prompt, together in one batch. The ARPO run starts 8
per question and makes the rest by branching right after tool results (docs/method.md 6.2): a branch
re-samples only what follows the branch point, and its prefix is already in the hf backend's
prefix store, so it is neither generated nor prefilled again.

Prints wall time and generated model tokens of each run and the ratios (goal: ARPO <= 0.6x the
time). Each run starts with an empty prefix store (as after a weight update); ``--repeat`` runs
each kind several times, alternating, and reports medians: sampling makes every run different.

    .venv/bin/python benchmarks/bench_arpo.py --questions 2 [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--n", type=int, default=16, help="trajectories per question")
    ap.add_argument("--initial", type=int, default=8, help="ARPO rollouts started from the prompt")
    ap.add_argument(
        "--model", default="embedded", help="embedded, tiny or a model directory (e.g. a demo's 04-sft/model)"
    )
    ap.add_argument(
        "--min-calls",
        type=int,
        default=1,
        help="questions whose expert answer needs at least this many tool calls",
    )
    ap.add_argument("--few-shot", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=96, help="per generate call")
    ap.add_argument("--max-response-tokens", type=int, default=384)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each kind, alternating; medians reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--refill",
        choices=["idle", "unclaimed"],
        default="unclaimed",
        help="ARPO fresh-rollout rule (ArpoConfig.refill; the reference's is idle)",
    )
    ap.add_argument(
        "--reserve",
        type=int,
        default=0,
        help="ARPO reserve rollouts per question (ArpoConfig.reserve_rollouts)",
    )
    args = ap.parse_args()

    import torch

    from etagent.backends.config import BackendConfig, build_generator
    from etagent.backends.hf import HFConfig
    from etagent.loop.agent_loop import AgentLoop, BudgetConfig, SamplingConfig
    from etagent.loop.arpo import ArpoConfig, ArpoRollout
    from etagent.tasks.toolworld import ToolWorldTask
    from etagent.tools.config import ToolsConfig, build_tools

    task = ToolWorldTask()
    # questions that need tools: branching happens after tool results
    questions = [q for q in task.questions("dev") if q.meta.get("min_tool_calls", 0) >= args.min_calls][
        : args.questions
    ]
    tools_cfg = ToolsConfig().with_section("search", corpus=str(task.corpus()))
    tools = build_tools(tools_cfg)
    few_shot = task.prompt_examples(args.few_shot, tools_cfg, args.model)
    rows = args.questions * args.n
    generator = build_generator(
        BackendConfig(kind="hf", model=args.model, hf=HFConfig(batch_size=rows, threads=args.threads))
    )
    budget = BudgetConfig(
        max_new_tokens_per_call=args.max_new_tokens, max_response_tokens=args.max_response_tokens
    )
    arpo_cfg = ArpoConfig(
        n=args.n, initial_rollouts=args.initial, reserve_rollouts=args.reserve, refill=args.refill
    )

    def new_tool_tokens(traj) -> int:
        """Tool-result tokens this trajectory had to prefill: those after its ARPO branch point
        (a branch shares its parent's results up to there)."""
        start = (traj.meta.get("arpo") or {}).get("branch_point") or 0
        pos = total = 0
        for seg in traj.segments:  # the response, in order
            if seg.role == "tool" and pos >= start:
                total += len(seg.token_ids)
            pos += len(seg.token_ids)
        return total

    def up_to_first_result(traj) -> tuple[int, int]:
        """(model tokens before the first tool result, that result's tokens); (0, 0) without one."""
        model = 0
        for seg in traj.segments:
            if seg.role == "tool":
                return model, len(seg.token_ids)
            model += len(seg.token_ids)
        return 0, 0

    def run(kind: str, seed: int) -> dict:
        sampling = SamplingConfig(
            temperature=args.temperature, logprobs=arpo_cfg.top_k_logprobs if kind == "arpo" else 0
        )
        loop = AgentLoop(
            generator, tools, budget=budget, sampling=sampling, few_shot=few_shot, max_active=rows
        )
        generator.clear_prefix_cache()
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        try:
            if kind == "arpo":
                result = ArpoRollout(loop, arpo_cfg).run(questions, seed=seed)
                trajs, stats = result.trajectories, result.stats
                generated = stats["generated_tokens"]
            else:
                round_rows: list[int] = []
                round_s: list[float] = []
                mark = [t0]

                def on_turn(active: int) -> None:
                    now = time.perf_counter()
                    round_rows.append(active)
                    round_s.append(now - mark[0])
                    mark[0] = now

                trajs = [t for _, ts in loop.iter_run(questions, n=args.n, on_turn=on_turn) for t in ts]
                stats = {"round_rows": round_rows, "round_s": round_s}
                generated = sum(t.num_model_tokens for t in trajs)
        finally:
            dt = time.perf_counter() - t0
            loop.close()
        assert len(trajs) == rows
        firsts = [up_to_first_result(t) for t in trajs]
        return {
            "tool_tokens": sum(new_tool_tokens(t) for t in trajs),
            "before_first_result": sum(m for m, _ in firsts),
            "first_result": sum(r for _, r in firsts),
            "s": dt,
            "generated": generated,
            "model_tokens": sum(t.num_model_tokens for t in trajs),
            "calls": sum(len(t.tool_calls) for t in trajs) / len(trajs),
            "stats": stats,
        }

    run("independent", -1)  # warm-up: first-call allocations, tool workers
    runs: dict[str, list[dict]] = {"independent": [], "arpo": []}
    for k in range(args.repeat):
        runs["independent"].append(run("independent", args.seed + k))
        runs["arpo"].append(run("arpo", args.seed + k))
    print(
        f"questions: {len(questions)} (>= {args.min_calls} tool calls) x {args.n} trajectories  "
        f"model: {args.model}  "
        f"threads: {args.threads or 'all'}  T={args.temperature}  ARPO refill: {args.refill}, "
        f"reserves: {args.reserve}  "
        "prefix store emptied before each run"
    )
    med = {}
    for name, rs in runs.items():
        secs = statistics.median(x["s"] for x in rs)
        gen = statistics.median(x["generated"] for x in rs)
        tool = statistics.median(x["tool_tokens"] for x in rs)
        med[name] = (secs, gen, tool)
        times = ", ".join(f"{x['s']:.1f}" for x in rs)
        extra = ""
        if name == "arpo":
            st = [x["stats"] for x in rs]
            extra = (
                f"; branches {[s['branches'] for s in st]}, fresh {[s['fresh_rollouts'] for s in st]}, "
                f"reserves dropped {[s['reserves_dropped'] for s in st]}, "
                f"rounds {[s['rounds'] for s in st]}, entropy estimate {st[0]['entropy_method']}"
            )
        first = rs[0]["stats"]
        extra += "; first run's rounds (rows:seconds) " + " ".join(
            f"{r}:{t:.1f}" for r, t in zip(first["round_rows"], first["round_s"], strict=True)
        )
        print(
            f"{name}: {secs:.1f} s (runs: {times}), generated model tokens {gen:.0f} "
            f"(runs: {[x['generated'] for x in rs]}), tool-result tokens prefilled {tool:.0f}, "
            "tool calls/trajectory "
            f"{statistics.median(x['calls'] for x in rs):.2f}{extra}"
        )
    (ta, ga, ra), (ti, gi, ri) = med["arpo"], med["independent"]
    print(
        f"ratio ARPO/independent: time {ta / ti:.2f}x (goal <= 0.6x), generated tokens {ga / gi:.2f}x, "
        f"tool-result tokens prefilled {ra / max(ri, 1):.2f}x"
    )
    # The work ARPO cannot avoid with this policy: even if every one of the n - N0 trajectories
    # not started from the prompt were a branch made at its parent's first tool result, it would
    # still write and prefill everything after that point.
    ind = runs["independent"]
    share = (args.n - args.initial) / args.n
    gen_floor = 1 - share * sum(x["before_first_result"] for x in ind) / max(
        1, sum(x["generated"] for x in ind)
    )
    tool_floor = 1 - share * sum(x["first_result"] for x in ind) / max(1, sum(x["tool_tokens"] for x in ind))
    print(
        f"best case for ARPO with this policy ({args.n - args.initial} of {args.n} trajectories branched at "
        f"the first tool result): generated tokens {gen_floor:.2f}x, tool-result tokens prefilled "
        f"{tool_floor:.2f}x"
    )
    for tool in tools.values():
        tool.close()


if __name__ == "__main__":
    main()
