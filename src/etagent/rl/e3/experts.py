"""Expert trajectories for the E3-TIR warm-up: from the task's oracle, any agent, or a file; each
verified with the task's answer check; cached on disk so a resumed run reuses them (docs/e3tir.md 2).

Only an expert trajectory's response text and tool calls are used: the warm-up re-tokenises it
under the policy's own prompt (:meth:`AgentLoop.partial_trajectory`), so the expert may be a
different model with another tokenizer and chat template.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from etagent import runtime
from etagent.agent import AgentConfig, build_agent
from etagent.io import JsonlAppender, iter_jsonl, repair_torn_tail, validate_record
from etagent.protocol import tags
from etagent.records import Question, Trajectory
from etagent.rl.e3.config import ExpertSourceConfig
from etagent.scoring.correctness import AnswerCheck, QAMetric
from etagent.scoring.reward import trajectory_correctness
from etagent.tasks import Task

log = logging.getLogger("etagent.e3")

CACHE = "e3_experts.jsonl"


def read_expert_file(path: str | Path) -> dict[str, list[Trajectory]]:
    """Trajectories by question id from a rollout's ``trajectories.jsonl`` (one trajectory a line) or
    a flywheel's ``buffers.jsonl`` (one question a line: its entries judged correct)."""
    out: dict[str, list[Trajectory]] = {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"warmup.expert.path: {path} does not exist")
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if "entries" in obj:  # a flywheel buffer record
            for i, entry in enumerate(obj["entries"]):
                if entry.get("verdict"):
                    traj = validate_record(
                        Trajectory, entry.get("trajectory", {}), f"{where} entries[{i}].trajectory"
                    )
                    out.setdefault(traj.question_id, []).append(traj)
        else:
            traj = validate_record(Trajectory, obj, where)
            out.setdefault(traj.question_id, []).append(traj)
    return out


class ExpertBank:
    """Verified expert trajectories per question, made on first use and kept in ``cache``.

    ``agent`` is the policy's agent: an oracle expert runs with its tools and budget. With several
    processes each keeps its own cache file (it samples its own questions) and reads all of them.
    """

    def __init__(
        self,
        cfg: ExpertSourceConfig,
        task: Task,
        agent: AgentConfig,
        run_dir: Path,
        qa_metric: QAMetric = "f1",
        check: AnswerCheck | None = None,
    ):
        self.cfg = cfg
        self.task = task
        self.agent = agent
        self.qa_metric = qa_metric
        self.check = check
        rank = runtime.process_rank()
        name = CACHE if runtime.process_count() == 1 else CACHE.replace(".jsonl", f".rank{rank}.jsonl")
        self.cache_path = Path(run_dir) / name
        self.known: dict[str, list[Trajectory]] = {}  # question id -> verified trajectories (maybe none)
        for path in sorted(Path(run_dir).glob(CACHE.replace(".jsonl", "*.jsonl"))):
            repair_torn_tail(path)
            for lineno, obj in iter_jsonl(path):
                trajs = [validate_record(Trajectory, t, f"{path}:{lineno}") for t in obj["trajectories"]]
                self.known[obj["question_id"]] = trajs
        self._file: dict[str, list[Trajectory]] | None = None
        self._loop = None
        self.generated = 0  # expert trajectories sampled by this process (oracle, agent)

    def verified(self, trajs: Sequence[Trajectory]) -> list[Trajectory]:
        return [
            t
            for t in trajs
            if tags.has_final_answer(t.response_text)
            and trajectory_correctness(t, self.qa_metric, self.check) >= self.cfg.min_correctness
        ]

    def get(self, questions: Sequence[Question]) -> dict[str, list[Trajectory]]:
        """Each question's verified expert trajectories (an empty list: none passed), sampling the
        missing ones in one batch and caching them."""
        missing = [q for q in questions if q.id not in self.known]
        if missing:
            found = self._sample(missing)
            with JsonlAppender(self.cache_path) as out:
                out.write_group(
                    {
                        "question_id": q.id,
                        "trajectories": [t.model_dump(mode="json") for t in found.get(q.id, [])],
                    }
                    for q in missing
                )
            for q in missing:
                self.known[q.id] = found.get(q.id, [])
        return {q.id: self.known[q.id] for q in questions}

    def _sample(self, questions: list[Question]) -> dict[str, list[Trajectory]]:
        if self.cfg.source == "file":
            if self._file is None:
                self._file = read_expert_file(self.cfg.path or "")
            return {q.id: self.verified(self._file.get(q.id, [])) for q in questions}
        if self._loop is None:
            if self.cfg.source == "oracle":
                expert_agent = self.agent.with_oracle(self.cfg.oracle)
            else:
                expert_agent = self.cfg.agent
            self._loop = build_agent(expert_agent, self.task)
        trajs = self._loop.run(list(questions), n=self.cfg.samples)
        self.generated += len(trajs)
        out: dict[str, list[Trajectory]] = {}
        for t in self.verified(trajs):
            out.setdefault(t.question_id, []).append(t)
        return out

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def stats(self) -> dict[str, Any]:
        return {
            "expert_questions": len(self.known),
            "expert_verified": sum(bool(v) for v in self.known.values()),
        }
