"""The batched multi-turn agent loop.

Every trajectory is a growing token sequence: prompt, then alternating model segments (mask 1)
and tool-result segments (mask 0). One turn of the loop:

1. generate one segment for every active trajectory in a single batched call, stopping at a
   tool's closing tag, ``</answer>`` or EOS;
2. collect the tool calls those segments end with, run them concurrently;
3. append each result as ``<result>\\n...\\n</result>`` and continue,

until every trajectory has answered or run out of budget. New questions join as others finish
(continuous batching), so the batch stays full.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from etagent.backends.base import Completion, Generator, Message, SamplingParams, trim_at_stop
from etagent.config import ConfigModel
from etagent.progress import Progress
from etagent.protocol import tags
from etagent.records import Question, Segment, ToolCall, Trajectory
from etagent.tools.base import Tool, ToolResult


class BudgetConfig(ConfigModel):
    """Limits per trajectory (docs/method.md 1.4; the reference uses 6 calls per tool, 4096 tokens)."""

    max_calls_per_tool: int = Field(6, ge=0, description="calls allowed for each tool")
    max_tool_calls: int = Field(6, ge=0, description="calls allowed in total, all tools together")
    max_new_tokens_per_call: int = Field(512, ge=1, description="tokens one generate call may write")
    max_response_tokens: int = Field(
        2048, ge=1, description="response tokens in total (model and tool tokens)"
    )
    on_budget: Literal["final_turn", "stop"] = Field(
        "final_turn",
        description="a call over budget gets an error result and then: final_turn = one last "
        "generation that may only answer (evaluation in the reference); stop = end the trajectory "
        "(RL in the reference)",
    )


class SamplingConfig(ConfigModel):
    temperature: float = Field(1.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)
    logprobs: int = Field(0, ge=0, description="top-k log-probs to keep per token (0: sampled token only)")
    seed: int | None = None


# ---------------------------------------------------------------------------------------------


@dataclass
class LoopState:
    """One trajectory in flight (see :meth:`AgentLoop.start`, :meth:`AgentLoop.step`)."""

    traj: Trajectory
    calls_by_tool: dict[str, int] = field(default_factory=dict)
    final_turn: bool = False  # only an answer may follow (budget exhausted)
    stopped: bool = False  # ended by the tool budget with on_budget == "stop"
    started: float = field(default_factory=time.perf_counter)

    @property
    def response_len(self) -> int:
        return sum(len(s.token_ids) for s in self.traj.segments)

    def ids(self) -> list[int]:
        return self.traj.prompt_ids + self.traj.response_ids

    def fork(self) -> LoopState:
        """A copy of this trajectory in flight, from which sampling continues independently."""
        return LoopState(
            traj=self.traj.model_copy(deep=True),
            calls_by_tool=dict(self.calls_by_tool),
            final_turn=self.final_turn,
            stopped=self.stopped,
        )


@dataclass
class _PendingTool:
    state: LoopState
    tool: str
    content: str
    status_override: str | None = None  # budget / unknown tool: no execution
    text_override: str = ""


def _replace_tokens(seg: Segment, text: str, ids: list[int], kept: int) -> None:
    """Give a segment new text/ids whose first ``kept`` ids are unchanged (their log-probs stay)."""
    seg.text, seg.token_ids = text, ids
    if seg.logprobs is not None:
        seg.logprobs = seg.logprobs[:kept] + [None] * (len(ids) - kept)
    if seg.top_logprobs is not None:
        seg.top_logprobs = seg.top_logprobs[:kept] + [{} for _ in range(len(ids) - kept)]


class AgentLoop:
    """Runs questions to trajectories with a generator and a set of tools."""

    def __init__(
        self,
        generator: Generator,
        tools: dict[str, Tool],
        budget: BudgetConfig | None = None,
        sampling: SamplingConfig | None = None,
        system_prompt: str | None = None,
        few_shot: list[tuple[str, str]] | None = None,
        max_active: int = 16,
        tool_workers: int = 8,
        owned: Iterable[Generator | Tool] = (),
    ):
        """``owned``: the generator and tools this loop closes when it is closed (those it was
        built with by :func:`etagent.agent.build_agent`; a caller's own ones stay open)."""
        self.generator = generator
        self.tokenizer = generator.tokenizer
        self.tools = tools
        self.tool_tags = tuple(tools)
        self.budget = budget or BudgetConfig()
        self.sampling = sampling or SamplingConfig()
        self.system_prompt = system_prompt or tags.render_system_prompt([t.spec for t in tools.values()])
        self.few_shot = few_shot or []
        self.max_active = max_active
        self._pool = ThreadPoolExecutor(max_workers=tool_workers, thread_name_prefix="etagent-tool")
        self._owned = list(owned)
        #: told about every round, the tokens generated and the trajectories finished (see reporting)
        self.progress: Progress | None = None

    @contextmanager
    def reporting(self, progress: Progress) -> Iterator[Progress]:
        """Report rounds, generated tokens and finished trajectories to ``progress`` inside the
        block (:meth:`iter_run`, :meth:`run`, :meth:`continue_run`, and ARPO over this loop)."""
        previous, self.progress = self.progress, progress
        try:
            yield progress
        finally:
            self.progress = previous

    # -- prompts -------------------------------------------------------------------------------

    def messages(self, question: Question) -> list[Message]:
        """[system tool prompt, few-shot user/assistant pairs..., user question]."""
        msgs: list[Message] = [{"role": "system", "content": self.system_prompt}]
        for q, trajectory in self.few_shot:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": trajectory}]
        msgs.append({"role": "user", "content": question.question})
        return msgs

    def new_trajectory(self, question: Question, sample_index: int) -> Trajectory:
        text = self.tokenizer.apply_chat_template(
            self.messages(question), tokenize=False, add_generation_prompt=True
        )
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return Trajectory(
            question_id=question.id,
            sample_index=sample_index,
            question=question,
            prompt_text=text,
            prompt_ids=ids,
            model=getattr(self.generator, "name", ""),
        )

    # -- the loop ------------------------------------------------------------------------------

    def start(self, question: Question, sample_index: int) -> LoopState:
        """A new trajectory in flight; :meth:`step` advances a batch of them one turn."""
        return LoopState(self.new_trajectory(question, sample_index))

    def finish(self, state: LoopState) -> Trajectory:
        """Close a trajectory that :meth:`step` no longer returns: timing, prediction, and the
        generator's name as it is now (a server's model name is known after its first answer)."""
        state.traj.timings["total_s"] = time.perf_counter() - state.started
        state.traj.prediction = tags.extract_answer(state.traj.response_text)
        state.traj.model = getattr(self.generator, "name", "") or state.traj.model
        return state.traj

    def run(self, questions: list[Question], n: int = 1) -> list[Trajectory]:
        """All trajectories, grouped by question in input order."""
        done: dict[str, list[Trajectory]] = {}
        if self.progress is not None and self.progress.total is None:
            self.progress.total = len(questions) * n
        for qid, trajs in self.iter_run(questions, n):
            done[qid] = trajs
        return [t for q in questions for t in done[q.id]]

    def iter_run(
        self, questions: Iterable[Question], n: int = 1, on_turn: Callable[[int], None] | None = None
    ) -> Iterator[tuple[str, list[Trajectory]]]:
        """Yield (question id, its n trajectories) as soon as each question is finished."""
        queue = iter(questions)
        active: list[LoopState] = []
        finished: dict[str, list[Trajectory]] = {}
        exhausted = False
        while True:
            while not exhausted and len(active) + n <= max(self.max_active, n):
                q = next(queue, None)
                if q is None:
                    exhausted = True
                    break
                finished[q.id] = []
                active += [self.start(q, k) for k in range(n)]
            if not active:
                return
            if self.progress is not None:
                self.progress.start_round(len(active))
            still_active = self.step(active)
            if on_turn is not None:
                on_turn(len(active))
            for s in active:
                if s not in still_active:
                    self.finish(s)
                    if self.progress is not None:
                        self.progress.add_finished()
                    group = finished[s.traj.question_id]
                    group.append(s.traj)
                    if len(group) == n:
                        yield s.traj.question_id, sorted(group, key=lambda t: t.sample_index)
                        del finished[s.traj.question_id]
            active = still_active

    # -- continuing partial trajectories (flywheel edits, branching rollouts) -------------------

    def partial_trajectory(
        self,
        question: Question,
        response_text: str,
        sample_index: int = 0,
        known_calls: Iterable[ToolCall] = (),
    ) -> Trajectory:
        """A trajectory whose response so far is ``response_text`` (e.g. an edited or cut one).

        Every ``<result>...</result>`` that directly follows a complete tool call becomes a tool
        segment (mask 0) with its ToolCall record (status from ``known_calls`` when one has the
        same tool, input and result, else "ok"); the text around them becomes model segments.
        Each segment is tokenised on its own, so ids, masks and text stay aligned. (A result after
        an unknown tool's tag stays model text: only registered tools' results are recognised.)
        """
        traj = self.new_trajectory(question, sample_index)
        status = {(c.tool, c.input, c.result): c.status for c in known_calls}
        pos = 0
        call: tags.Block | None = None  # the complete tool call a result would belong to
        for block in tags.parse_blocks(response_text, tags.STRUCTURE_TAGS + self.tool_tags):
            if block.kind in self.tool_tags and block.closed:
                call = block
            elif block.kind == tags.RESULT and block.closed and call is not None:
                if block.start > pos:
                    self._append_text(traj, "model", response_text[pos : block.start])
                self._append_text(traj, "tool", response_text[block.start : block.end])
                result = block.content.removeprefix("\n").removesuffix("\n")
                content = call.content.strip()
                traj.tool_calls.append(
                    ToolCall(
                        tool=call.kind,
                        input=content,
                        result=result,
                        status=status.get((call.kind, content, result), "ok"),
                        segment_index=len(traj.segments) - 1,
                    )
                )
                pos, call = block.end, None
            elif not (block.kind == "text" and not block.content.strip()):
                call = None  # anything but whitespace between a call and a result breaks the pair
        if pos < len(response_text):
            self._append_text(traj, "model", response_text[pos:])
        return traj

    def _append_text(self, traj: Trajectory, role: str, text: str) -> None:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        traj.segments.append(Segment(role=role, text=text, token_ids=ids))  # type: ignore[arg-type]

    def continue_run(
        self,
        partials: list[Trajectory],
        budget: BudgetConfig | None = None,
        sampling: SamplingConfig | None = None,
    ) -> list[Trajectory]:
        """Continue partial trajectories until they answer or run out of budget; input order.

        A partial may end anywhere: mid-think (e.g. after an injected hint), right after a tool
        result, or with a complete tool call that has no result yet (an edited step that calls a
        tool: it is executed first, within the budget; text after the call is dropped). A partial
        that already holds a final answer comes back as it is, and an empty one is a fresh
        rollout. Calls already in a partial count against ``budget`` (default: this loop's);
        ``sampling`` overrides this loop's sampling. The partials themselves are not modified.
        """
        loop = copy.copy(self)  # shares the generator, tools and pool; own budget/sampling
        loop.budget = budget or self.budget
        loop.sampling = sampling or self.sampling
        states = [loop._resume_state(p) for p in partials]
        started = time.perf_counter()
        prefix_calls = [c for c in (loop._call_in_prefix(s) for s in states) if c is not None]
        loop._run_tools(prefix_calls)
        for p in prefix_calls:
            if p.state.response_len >= loop.budget.max_response_tokens:
                p.state.traj.finish_reason = "response_budget"
                p.state.stopped = True
        queue = deque(s for s in states if not s.stopped)
        active: list[LoopState] = []
        while queue or active:
            while queue and len(active) < self.max_active:
                active.append(queue.popleft())
            if loop.progress is not None:
                loop.progress.start_round(len(active))
            active = loop.step(active)
        elapsed = time.perf_counter() - started
        for s in states:
            s.traj.timings["total_s"] = s.traj.timings.get("total_s", 0.0) + elapsed
            s.traj.prediction = tags.extract_answer(s.traj.response_text)
        return [s.traj for s in states]

    def _resume_state(self, partial: Trajectory) -> LoopState:
        traj = partial.model_copy(deep=True)
        traj.finish_reason = "eos"  # a new segment follows (not the continuation of a cut one)
        counted = [c for c in traj.tool_calls if c.status not in ("budget_exceeded", "unknown_tool")]
        calls: dict[str, int] = {}
        for c in counted:
            calls[c.tool] = calls.get(c.tool, 0) + 1
        s = LoopState(traj, calls_by_tool=calls)
        if tags.has_final_answer(traj.response_text):
            traj.finish_reason, s.stopped = "answer", True
        elif s.response_len >= self.budget.max_response_tokens:
            traj.finish_reason, s.stopped = "response_budget", True
        return s

    def _call_in_prefix(self, s: LoopState) -> _PendingTool | None:
        """The tool call a partial ends with (no result after it yet), admitted for execution."""
        if s.stopped or not s.traj.segments or s.traj.segments[-1].role != "model":
            return None
        seg = s.traj.segments[-1]
        call = tags.pending_tool_call(seg.text, self.tool_tags)
        if call is None:
            return None
        closing = tags.close_tag(call.tool)
        end = seg.text.find(closing) + len(closing)
        if seg.text[end:]:
            seg.text = seg.text[:end]
            seg.token_ids = self.tokenizer.encode(seg.text, add_special_tokens=False)
            seg.logprobs = seg.top_logprobs = None
        return self._admit(s, call.tool, call.content)

    def _params(self, states: list[LoopState], stops: list[str]) -> SamplingParams:
        remaining = max(self.budget.max_response_tokens - s.response_len for s in states)
        sp = self.sampling
        return SamplingParams(
            max_new_tokens=max(1, min(self.budget.max_new_tokens_per_call, remaining)),
            temperature=sp.temperature,
            top_p=sp.top_p,
            top_k=sp.top_k,
            repetition_penalty=sp.repetition_penalty,
            stop=stops,
            n=1,
            logprobs=sp.logprobs,
            seed=sp.seed,
        )

    def step(self, active: list[LoopState]) -> list[LoopState]:
        """One generation step for every active trajectory plus the tool calls it asks for."""
        normal = [s for s in active if not s.final_turn]
        final = [s for s in active if s.final_turn]
        keep: list[LoopState] = []
        pending: list[_PendingTool] = []
        for states, stops in (
            (normal, tags.stop_strings(self.tool_tags)),
            (final, [tags.close_tag(tags.ANSWER)]),
        ):
            if not states:
                continue
            t0 = time.perf_counter()
            outs = self.generator.generate([s.ids() for s in states], self._params(states, stops))
            dt = time.perf_counter() - t0
            if self.progress is not None:
                self.progress.add_tokens(sum(len(comps[0].token_ids) for comps in outs))
            for s, comps in zip(states, outs, strict=True):
                s.traj.timings["generation_s"] = s.traj.timings.get("generation_s", 0.0) + dt
                call = self._absorb(s, comps[0], stops)
                if call is not None:
                    pending.append(call)
                    keep.append(s)
                elif s.traj.finish_reason == "length":
                    # a per-call limit, not the response budget: keep writing the same segment
                    keep.append(s)
        if self.progress is not None and pending:
            self.progress.set_phase("tools", len(pending))
        self._run_tools(pending)
        for p in pending:
            if p.state.response_len >= self.budget.max_response_tokens:
                p.state.traj.finish_reason = "response_budget"
                p.state.stopped = True
        return [s for s in keep if not s.stopped]

    def _append_model(self, s: LoopState, comp: Completion, stops: list[str]) -> Completion:
        """Append a completion to the trajectory; returns it, re-cut if a stop string spans calls."""
        segs = s.traj.segments
        if segs and segs[-1].role == "model" and s.traj.finish_reason == "length":
            # continuation of a segment cut by the per-call limit: one segment, decoded as a whole,
            # so a character split across the two calls still decodes correctly
            last = segs[-1]
            last.token_ids = last.token_ids + comp.token_ids
            last.text = self.tokenizer.decode(last.token_ids, skip_special_tokens=False)
            if last.logprobs is not None and comp.logprobs is not None:
                last.logprobs = last.logprobs + comp.logprobs
            else:
                last.logprobs = None
            if last.top_logprobs is not None and comp.top_logprobs is not None:
                last.top_logprobs = last.top_logprobs + comp.top_logprobs
            else:
                last.top_logprobs = None
            if comp.finish_reason != "stop":
                # a stop string split across two calls ("</sea" + "rch>") is invisible to a
                # backend that only checks the new text: look for it in the joined segment
                text, ids, stop, kept = trim_at_stop(self.tokenizer, last.token_ids, stops)
                if stop is not None:
                    _replace_tokens(last, text, ids, kept)
                    return Completion(text, ids, "stop", stop=stop)
        else:
            segs.append(
                Segment(
                    role="model",
                    text=comp.text,
                    token_ids=comp.token_ids,
                    logprobs=comp.logprobs,
                    top_logprobs=comp.top_logprobs,
                )
            )
        return comp

    def _absorb(self, s: LoopState, comp: Completion, stops: list[str]) -> _PendingTool | None:
        """Append a completion; return the tool call it ends with, or None if the turn ends here."""
        traj = s.traj
        if comp.finish_reason == "context":  # the model cannot write more: the trajectory ends here
            if comp.token_ids:
                self._append_model(s, comp, stops)
            traj.finish_reason = "context"
            return None
        room = self.budget.max_response_tokens - s.response_len
        over = len(comp.token_ids) > room
        if over:  # the batch shares one max_new_tokens; enforce this row's own budget
            ids = comp.token_ids[:room]
            comp = Completion(
                text=self.tokenizer.decode(ids, skip_special_tokens=False),
                token_ids=ids,
                finish_reason="length",
                logprobs=comp.logprobs[:room] if comp.logprobs else comp.logprobs,
                top_logprobs=comp.top_logprobs[:room] if comp.top_logprobs else comp.top_logprobs,
            )
        comp = self._append_model(s, comp, stops)
        traj.finish_reason = "length" if comp.finish_reason == "length" else "eos"
        if s.response_len >= self.budget.max_response_tokens:
            traj.finish_reason = "response_budget"
            return None
        segment = traj.segments[-1].text
        if comp.finish_reason == "stop" and comp.stop == tags.close_tag(tags.ANSWER):
            traj.finish_reason = "answer"
            return None
        if s.final_turn:
            traj.finish_reason = "answer" if tags.has_final_answer(segment) else "tool_budget"
            return None
        if comp.finish_reason == "stop":
            call = tags.pending_tool_call(segment, self.tool_tags)
            if call is not None:
                return self._admit(s, call.tool, call.content)
        if comp.finish_reason == "eos":
            unknown = tags.unknown_tool_call(segment, self.tool_tags)
            if unknown is not None:
                name, end = unknown
                self._cut_last_segment(s, end)
                return _PendingTool(
                    s,
                    name,
                    "",
                    status_override="unknown_tool",
                    text_override=f"Unknown tool <{name}>. Available tools: "
                    + ", ".join(f"<{t}>" for t in self.tool_tags)
                    + ".",
                )
        return None

    def _cut_last_segment(self, s: LoopState, end: int) -> None:
        """Keep the last model segment only up to character ``end``, re-tokenising the cut."""
        seg = s.traj.segments[-1]
        cut_text = seg.text[:end]
        # the cut text ends with a closing tag; trim_at_stop keeps ids and text aligned
        closing = cut_text[cut_text.rfind("</") :]
        text, ids, _, kept = trim_at_stop(self.tokenizer, seg.token_ids, [closing])
        if text != cut_text:  # the same closing tag appeared earlier; fall back to re-encoding
            text, ids, kept = cut_text, self.tokenizer.encode(cut_text, add_special_tokens=False), 0
        _replace_tokens(seg, text, ids, kept)

    def _admit(self, s: LoopState, tool: str, content: str) -> _PendingTool:
        """Check the budgets for a call the model made."""
        used_tool = s.calls_by_tool.get(tool, 0)
        used_total = sum(s.calls_by_tool.values())
        if used_tool >= self.budget.max_calls_per_tool or used_total >= self.budget.max_tool_calls:
            which = (
                f"{tool} calls ({self.budget.max_calls_per_tool})"
                if used_tool >= self.budget.max_calls_per_tool
                else f"tool calls ({self.budget.max_tool_calls})"
            )
            return _PendingTool(
                s,
                tool,
                content,
                status_override="budget_exceeded",
                text_override=f"Tool budget exhausted: no more {which} are allowed. Give your final answer now.",
            )
        s.calls_by_tool[tool] = used_tool + 1
        return _PendingTool(s, tool, content)

    def _run_tools(self, pending: list[_PendingTool]) -> None:
        def execute(p: _PendingTool) -> tuple[ToolResult, float]:
            t0 = time.perf_counter()
            tool = self.tools[p.tool]
            # a tool that wants the trajectory so far (the search summariser reads the question
            # and the reasoning) defines call_in_context(content, trajectory); the trajectory is
            # not changed until this call has returned
            in_context = getattr(tool, "call_in_context", None)
            try:
                result = in_context(p.content, p.state.traj) if in_context else tool.call(p.content)
            except Exception as e:  # a tool bug must not end the run; the model sees the error
                result = ToolResult(f"Tool {p.tool} failed: {type(e).__name__}: {e}", "error")
            return result, time.perf_counter() - t0

        futures = {id(p): self._pool.submit(execute, p) for p in pending if p.status_override is None}
        for p in pending:
            if p.status_override is None:
                result, latency = futures[id(p)].result()
            else:
                result, latency = ToolResult(p.text_override, p.status_override), 0.0  # type: ignore[arg-type]
            traj = p.state.traj
            text = tags.render_result(result.text)
            traj.segments.append(
                Segment(
                    role="tool", text=text, token_ids=self.tokenizer.encode(text, add_special_tokens=False)
                )
            )
            traj.tool_calls.append(
                ToolCall(
                    tool=p.tool,
                    input=p.content,
                    result=result.text,
                    status=result.status,
                    latency_s=latency,
                    segment_index=len(traj.segments) - 1,
                    meta=dict(getattr(result, "meta", None) or {}),
                )
            )
            traj.timings["tool_s"] = traj.timings.get("tool_s", 0.0) + latency
            if p.status_override == "budget_exceeded":
                if self.budget.on_budget == "stop":
                    traj.finish_reason = "tool_budget"
                    p.state.stopped = True
                else:
                    p.state.final_turn = True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        owned, self._owned = self._owned, []
        for resource in reversed(owned):
            resource.close()
