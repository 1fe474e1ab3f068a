"""Batched multi-turn rollouts versus a sequential one-trajectory-at-a-time loop.

Both runs use the same agent loop, model, tools, prompts and greedy decoding on the same tool
world questions; the only difference is how many trajectories are generated together
(``max_active``). Prints model tokens/s for each and the ratio (goal: >= 5x at 16 trajectories),
and checks that both runs wrote the same tokens.

Each timed run starts with an empty prefix store, as the first rollout after a weight update
does, so both do the same prefill work (the shared system prompt once, then each trajectory's
own tokens and tool results). Previously the store kept what a 16-trajectory warm-up run had
computed: the sequential run then found every prompt already cached and prefilled nothing, while
the batched run after it was partly cold, depending on what the store had evicted in between.
``--keep-cache`` measures that way again (each run starting from the store the runs before it
left), which shows decoding alone when the store is large enough to hold everything.

    .venv/bin/python benchmarks/bench_rollout.py --trajectories 16 [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

GOAL = 5.0  # batched / sequential model tokens/s at 16 trajectories

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trajectories", type=int, default=16)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--few-shot", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=96, help="per generate call")
    ap.add_argument("--max-response-tokens", type=int, default=384)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each kind, alternating; medians reported")
    ap.add_argument("--keep-cache", action="store_true", help="do not empty the prefix store before each run")
    ap.add_argument(
        "--no-lean-decode",
        action="store_true",
        help="every decode step through the model's forward (hf.lean_decode off)",
    )
    args = ap.parse_args()

    from etagent.backends.config import BackendConfig, build_generator
    from etagent.backends.hf import GenerateStats, HFConfig
    from etagent.loop.agent_loop import AgentLoop, BudgetConfig, SamplingConfig
    from etagent.tasks.toolworld import ToolWorldTask
    from etagent.tools.config import ToolsConfig, build_tools

    task = ToolWorldTask()
    questions = task.questions("dev")[: args.trajectories]
    tools_cfg = ToolsConfig().with_section("search", corpus=str(task.corpus()))
    tools = build_tools(tools_cfg)
    few_shot = task.prompt_examples(args.few_shot, tools_cfg, args.model)
    generator = build_generator(
        BackendConfig(
            kind="hf",
            model=args.model,
            hf=HFConfig(
                batch_size=args.trajectories, threads=args.threads, lean_decode=not args.no_lean_decode
            ),
        )
    )
    budget = BudgetConfig(
        max_new_tokens_per_call=args.max_new_tokens, max_response_tokens=args.max_response_tokens
    )
    store = getattr(generator, "prefix_store", None)

    def run(max_active: int, qs: list = questions) -> dict:
        loop = AgentLoop(
            generator,
            tools,
            budget=budget,
            sampling=SamplingConfig(temperature=0.0),
            few_shot=few_shot,
            max_active=max_active,
        )
        if not args.keep_cache:
            generator.clear_prefix_cache()
        hits0 = store.hits if store is not None else 0
        prompt_tokens = 0
        generate = generator.generate

        def counting(prompts, params):  # prompt tokens sent, to show how much came from the store
            nonlocal prompt_tokens
            prompt_tokens += sum(len(p) for p in prompts)
            return generate(prompts, params)

        generator.generate = counting
        generator.stats = GenerateStats()  # time by phase, this run only
        t0 = time.perf_counter()
        try:
            trajs = loop.run(qs, n=1)
        finally:
            dt = time.perf_counter() - t0
            del generator.generate
            loop.close()
        return {
            "s": dt,
            "tokens": sum(t.num_model_tokens for t in trajs),
            "longest": max(t.num_model_tokens for t in trajs),
            "calls": sum(len(t.tool_calls) for t in trajs),
            "prompt": prompt_tokens,
            "cached": (store.hits - hits0) if store is not None else 0,
            "ids": [t.response_ids for t in trajs],
            "phases": generator.stats,
        }

    # warm-up: first-call allocations, thread pools, tool workers (and, with --keep-cache, the store)
    run(args.trajectories, questions if args.keep_cache else questions[:2])
    runs: dict[str, list[dict]] = {"sequential": [], "batched": []}
    for _ in range(args.repeat):
        runs["sequential"].append(run(1))
        runs["batched"].append(run(args.trajectories))
    print(
        f"trajectories: {len(questions)}  model: {args.model}  threads: {args.threads or 'all'}  "
        f"prefix store: {'kept between runs' if args.keep_cache else 'emptied before each run'}  "
        f"lean decode: {'off' if args.no_lean_decode else 'on'}"
    )
    rates = {}
    for name, rs in runs.items():
        r = rs[0]
        secs = statistics.median(x["s"] for x in rs)
        rates[name] = r["tokens"] / secs
        label = (
            "sequential (1 at a time)" if name == "sequential" else f"batched ({args.trajectories} together)"
        )
        times = ", ".join(f"{x['s']:.1f}" for x in rs)
        each = f" (median of {times})" if len(rs) > 1 else ""
        print(
            f"{label}: {r['tokens']} model tokens, {r['calls']} tool calls, {secs:.1f} s{each}, "
            f"{rates[name]:.1f} tok/s; prompt tokens {r['prompt']}, {r['cached']} of them from the prefix store"
        )
    breakdown(runs)
    same = all(a["ids"] == b["ids"] for a, b in zip(runs["sequential"], runs["batched"], strict=True))
    print(f"same tokens in both runs: {'yes' if same else 'NO'}")
    ratio = rates["batched"] / rates["sequential"]
    print(
        f"ratio batched/sequential tokens/s: {ratio:.2f}x (goal >= {GOAL:g}x: {'met' if ratio >= GOAL else 'NOT met'})"
    )
    for tool in tools.values():
        tool.close()


def breakdown(runs: dict[str, list[dict]]) -> None:
    """Where each kind of run spent its time (the first run of each), and what that leaves for
    the ratio: prefill is the same work in both (the same uncached prompt tokens), batching it
    gains little, so the batched run's prefill and its time outside the model bound the ratio even
    if its decode steps cost nothing; with each of its steps costing what one sequential one-row
    step does (perfect batching), the bound is lower still. The longest trajectory's tokens are
    decode steps in sequence under any schedule, which gives the tightest bound (critical path)."""
    seq, bat = runs["sequential"][0], runs["batched"][0]
    for name, r in (("sequential", seq), ("batched", bat)):
        p = r["phases"]
        other = r["s"] - p.prefill_s - p.decode_s
        print(
            f"  {name}: prefill {p.prefill_s:.1f} s ({p.prefills} prefills), decode {p.decode_s:.1f} s in "
            f"{p.decode_steps} steps ({1e3 * p.decode_s / max(p.decode_steps, 1):.0f} ms a step, "
            f"{p.decode_rows / max(p.decode_steps, 1):.1f} rows a step), other (tools, agent loop, "
            f"sampling) {other:.1f} s"
        )
    ps, pb = seq["phases"], bat["phases"]
    fixed = bat["s"] - pb.decode_s  # the batched run's prefill and time outside the model
    one_row_step = ps.decode_s / max(ps.decode_steps, 1)
    print(
        f"  ceiling of the ratio: {seq['s'] / fixed:.2f}x if the batched decode steps cost nothing, "
        f"{seq['s'] / (fixed + pb.decode_steps * one_row_step):.2f}x if each cost one sequential step "
        f"({1e3 * one_row_step:.0f} ms)"
    )
    # The longest trajectory's tokens depend on each other: whatever runs beside them, they take
    # that many decode steps in sequence (a lower bound on the batched decode time).
    chain = bat["longest"]
    print(
        f"  critical path: the longest trajectory's {chain} model tokens are {chain} decode steps one "
        f"after another; with the same prefill and no step cheaper than one row's, the ratio is at "
        f"most {seq['s'] / (fixed + chain * one_row_step):.2f}x however the rest is batched"
    )


if __name__ == "__main__":
    main()
