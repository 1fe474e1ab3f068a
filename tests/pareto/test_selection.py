"""Pareto selection against a brute-force reference (Deb's pairwise sort, the reference's crowding)."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from etagent.io import DataError
from etagent.pareto import (
    ObjectivesConfig,
    ParetoConfig,
    crowding_distance,
    curriculum_stages,
    default_tie_rank,
    group_objectives,
    mixed_outcomes,
    non_dominated_ranks,
    select,
    select_groups,
    stage_file,
    stages_complete,
    write_stages,
)
from etagent.records import Question
from etagent.tasks import load_questions

# --------------------------------------------------------------------------------------------
# brute-force reference: the definitions of docs/method.md 5.3, written out pairwise


def dominates(p, q) -> bool:
    return p[0] >= q[0] and p[1] >= q[1] and (p[0] > q[0] or p[1] > q[1])


def brute_ranks(points) -> list[int]:
    """Deb's fast non-dominated sort, as the reference's pareto/data_process.py does it."""
    n = len(points)
    count = [0] * n
    dominated: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if dominates(points[i], points[j]):
                dominated[i].append(j)
            elif dominates(points[j], points[i]):
                count[i] += 1
    rank = [-1] * n
    front = [i for i in range(n) if count[i] == 0]
    level = 0
    while front:
        nxt = []
        for i in front:
            rank[i] = level
            for j in dominated[i]:
                count[j] -= 1
                if count[j] == 0:
                    nxt.append(j)
        front, level = nxt, level + 1
    return rank


def brute_crowding(points, tie) -> list[float]:
    n = len(points)
    dist = [0.0] * n
    for k in range(2):
        order = sorted(range(n), key=lambda i: (points[i][k], tie[i]))
        lo, hi = points[order[0]][k], points[order[-1]][k]
        if hi == lo:
            continue
        dist[order[0]] = dist[order[-1]] = float("inf")
        for a in range(1, n - 1):
            i = order[a]
            dist[i] += (points[order[a + 1]][k] - points[order[a - 1]][k]) / (hi - lo)
    return dist


def brute_select(points, mixed, budget, position, tie) -> list[int]:
    pool = (
        [i for i in range(len(points)) if mixed[i]] if position == "before_cap" else list(range(len(points)))
    )
    sub = [points[i] for i in pool]
    ranks = brute_ranks(sub)
    chosen: list[int] = []
    for level in range(max(ranks, default=-1) + 1):
        front = [a for a in range(len(sub)) if ranks[a] == level]
        room = budget - len(chosen)
        if room <= 0:
            break
        if len(front) <= room:
            chosen += front
        else:
            dist = brute_crowding([sub[a] for a in front], [tie[pool[a]] for a in front])
            best = sorted(range(len(front)), key=lambda b: (-dist[b], tie[pool[front[b]]]))[:room]
            chosen += [front[b] for b in best]
    kept = sorted(pool[a] for a in chosen)
    if position == "after_cap":
        kept = [i for i in kept if mixed[i]]
    return kept


def random_points(rng: random.Random, n: int, grid: bool) -> np.ndarray:
    if grid:  # few distinct values: many ties and exact duplicates
        return np.array([[rng.randint(0, 3), rng.randint(0, 3)] for _ in range(n)], dtype=float) / 4
    return np.array([[rng.random(), rng.random()] for _ in range(n)])


# --------------------------------------------------------------------------------------------
# non-dominated sorting and crowding distance


@pytest.mark.parametrize("grid", [True, False])
def test_ranks_match_deb_sort_on_random_inputs(grid: bool) -> None:
    rng = random.Random(1)
    for _ in range(150):
        pts = random_points(rng, rng.randint(1, 40), grid)
        assert non_dominated_ranks(pts).tolist() == brute_ranks(pts.tolist())


def test_ranks_of_duplicates_and_anti_chains() -> None:
    pts = np.array([[1, 1], [1, 1], [0, 2], [2, 0], [0, 0], [1, 0], [0, 1]], dtype=float)
    # duplicates share front 0; (1,0) is dominated by (1,1) and (2,0); (0,0) by everything
    assert non_dominated_ranks(pts).tolist() == [0, 0, 0, 0, 2, 1, 1]
    chain = np.array([[i, i] for i in range(5)], dtype=float)
    assert non_dominated_ranks(chain).tolist() == [4, 3, 2, 1, 0]
    assert non_dominated_ranks(np.zeros((0, 2))).tolist() == []


def test_ranks_reject_bad_points() -> None:
    with pytest.raises(ValueError, match="shape"):
        non_dominated_ranks(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="finite"):
        non_dominated_ranks(np.array([[0.0, np.nan]]))


def test_crowding_distance_matches_reference_loop() -> None:
    rng = random.Random(2)
    for case in range(150):
        pts = random_points(rng, rng.randint(1, 25), grid=case % 2 == 0)
        tie = default_tie_rank(len(pts), case)
        got = crowding_distance(pts, tie)
        want = brute_crowding(pts.tolist(), tie.tolist())
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_crowding_distance_hand_example() -> None:
    # objective 1 is constant: it adds nothing, not even infinite ends
    pts = np.array([[0.0, 5.0], [1.0, 5.0], [3.0, 5.0], [4.0, 5.0]])
    assert crowding_distance(pts).tolist() == [np.inf, 0.75, 0.75, np.inf]
    assert crowding_distance(np.array([[1.0, 1.0]])).tolist() == [0.0]


# --------------------------------------------------------------------------------------------
# selection


@pytest.mark.parametrize("position", ["after_cap", "before_cap", "off"])
def test_select_matches_brute_force(position: str) -> None:
    rng = random.Random(3)
    for case in range(120):
        n = rng.randint(1, 30)
        pts = random_points(rng, n, grid=case % 3 != 0)
        mixed = np.array([rng.random() < 0.6 for _ in range(n)])
        budget = rng.randint(1, n + 3)
        cfg = ParetoConfig(budget=budget, mixed_outcome_filter=position, seed=case)
        tie = default_tie_rank(n, case)
        want = brute_select(pts.tolist(), mixed.tolist(), budget, position, tie.tolist())
        assert select(pts, mixed, cfg) == want, (case, budget)


def test_filter_position_changes_the_count() -> None:
    # the three best groups are not mixed: after the cap they are dropped, before it they never compete
    pts = np.array([[3, 3], [3, 2.5], [2.5, 3], [1, 1], [0.5, 1], [1, 0.5], [0, 0]], dtype=float)
    mixed = np.array([False, False, False, True, True, True, True])
    after = select(pts, mixed, ParetoConfig(budget=4, mixed_outcome_filter="after_cap"))
    before = select(pts, mixed, ParetoConfig(budget=4, mixed_outcome_filter="before_cap"))
    off = select(pts, mixed, ParetoConfig(budget=4, mixed_outcome_filter="off"))
    assert after == [3]  # fronts {0, 1, 2} and {3} fill the budget; only 3 is mixed
    assert before == [3, 4, 5, 6]
    assert off == [0, 1, 2, 3]


def test_budget_larger_and_smaller_than_the_pool() -> None:
    rng = random.Random(4)
    pts = random_points(rng, 50, grid=False)
    mixed = np.array([i % 3 != 0 for i in range(50)])
    assert select(pts, mixed, ParetoConfig(budget=1000, mixed_outcome_filter="off")) == list(range(50))
    assert select(pts, mixed, ParetoConfig(budget=1000)) == np.flatnonzero(mixed).tolist()
    small = select(pts, mixed, ParetoConfig(budget=7, mixed_outcome_filter="off"))
    assert len(small) == 7
    # the first front is always preferred: nothing selected is dominated by a point left out
    left = sorted(set(range(50)) - set(small))
    ranks = non_dominated_ranks(pts)
    assert max(ranks[small]) <= min(ranks[left])


def test_selection_is_deterministic_and_seeded() -> None:
    pts = np.array([[0.25, 0.25]] * 20 + [[0.0, 0.0]] * 5)  # 20 identical best groups
    mixed = np.ones(25, dtype=bool)
    a = select(pts, mixed, ParetoConfig(budget=10, seed=7))
    assert a == select(pts, mixed, ParetoConfig(budget=10, seed=7))
    others = {tuple(select(pts, mixed, ParetoConfig(budget=10, seed=s))) for s in range(5)}
    assert len(others) > 1  # ties go by the seeded order, not by index
    assert all(i < 20 for i in a)


# --------------------------------------------------------------------------------------------
# objectives and the mixed-outcome filter


def test_group_objectives_are_population_variances() -> None:
    rng = random.Random(5)
    corr = [[float(rng.random() < 0.5) for _ in range(8)] for _ in range(30)] + [[0.3, 0.9, 1.0]]
    tools = [[rng.randint(0, 6) for _ in range(len(c))] for c in corr]
    obj = group_objectives(corr, tools)
    for i in range(len(corr)):
        assert obj[i, 0] == pytest.approx(np.var(tools[i]), abs=1e-12)
        assert obj[i, 1] == pytest.approx(np.var(corr[i]), abs=1e-12)
    std = group_objectives(corr, tools, ObjectivesConfig(tool="std", correctness="std", ddof=1))
    assert std[-1, 1] == pytest.approx(np.std(corr[-1], ddof=1), abs=1e-12)
    # permuted samples give bit-identical objectives, so such groups tie exactly
    perm = [list(reversed(c)) for c in corr]
    assert (group_objectives(perm, [list(reversed(t)) for t in tools]) == obj).all()
    assert group_objectives([[]], [[]]).tolist() == [[0.0, 0.0]]
    with pytest.raises(ValueError, match="group 0"):
        group_objectives([[1.0, 0.0]], [[1]])


def reference_mixed(correctness: list[float], math: bool) -> bool:
    """pareto/data_process.py's post-filter."""
    if not correctness:
        return False
    if math:
        return any(v == 0 for v in correctness) and any(v == 1 for v in correctness)
    return any(v >= 0.75 for v in correctness) and any(v < 0.75 for v in correctness)


def test_mixed_outcomes_match_the_reference_rules() -> None:
    math = [list(c) for c in itertools.product([0.0, 1.0], repeat=3)] + [[]]
    assert mixed_outcomes(math).tolist() == [reference_mixed(c, True) for c in math]
    rng = random.Random(6)
    qa = [[rng.choice([0.0, 0.5, 0.74, 0.75, 0.9, 1.0]) for _ in range(4)] for _ in range(100)]
    assert mixed_outcomes(qa).tolist() == [reference_mixed(c, False) for c in qa]


# --------------------------------------------------------------------------------------------
# scored groups in, stage files out


def scored_groups(n: int, seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    groups = {}
    for i in range(n):
        p = rng.random()
        groups[f"q{i:03d}"] = [
            {"correctness": float(rng.random() < p), "tool_calls": rng.randint(0, 4)} for _ in range(8)
        ]
    return groups


def test_select_groups_ignores_input_order_and_assigns_stages() -> None:
    groups = scored_groups(60)
    cfg = ParetoConfig(budget=30, stages=3)
    a = select_groups(groups, cfg)
    shuffled = dict(sorted(groups.items(), key=lambda kv: random.Random(1).random()))
    b = select_groups(shuffled, cfg)
    assert a.ids == b.ids and a.stage == b.stage
    assert 0 < len(a.ids) <= 30 and all(a.mixed[q] for q in a.ids)
    sizes = a.stats["stage_sizes"]
    assert sum(sizes) == len(a.ids) and max(sizes) - min(sizes) <= 1
    assert [a.stage[q] for q in a.ids] == sorted(a.stage[q] for q in a.ids)
    means = [a.mean_correctness[q] for q in a.ids]
    assert means == sorted(means, reverse=True)  # easy first
    # the ids are exactly what select() picks on the same objectives
    ids = sorted(groups)
    obj = np.array([a.objectives[q] for q in ids])
    mixed = np.array([a.mixed[q] for q in ids])
    assert sorted(a.ids) == [ids[i] for i in select(obj, mixed, cfg)]


def test_select_groups_names_the_bad_sample() -> None:
    with pytest.raises(DataError, match=r"group 'q1' sample 1: field 'tool_calls' is missing"):
        select_groups({"q1": [{"correctness": 1.0, "tool_calls": 1}, {"correctness": 0.0}]}, ParetoConfig())
    with pytest.raises(DataError, match=r"'correctness' must be a number in \[0, 1\]"):
        select_groups({"q1": [{"correctness": 2, "tool_calls": 1}]}, ParetoConfig())


def test_curriculum_stages_split_easy_first() -> None:
    stage = curriculum_stages(np.array([0.1, 0.9, 0.5, 0.7, 0.3]), 2)
    assert stage.tolist() == [2, 1, 1, 1, 2]  # sizes 3 + 2, the easiest three first
    assert sorted(curriculum_stages(np.zeros(7), 3, order="random", seed=1).tolist()) == [1, 1, 1, 2, 2, 3, 3]


def test_write_stages_round_trip(tmp_path) -> None:
    groups = scored_groups(40, seed=3)
    sel = select_groups(groups, ParetoConfig(budget=20, stages=2))
    questions = [Question(id=q, question=f"question {q}?", answer="a", meta={"keep": 1}) for q in groups]
    assert not stages_complete(tmp_path)
    paths = write_stages(tmp_path, sel, questions)
    assert paths == [stage_file(tmp_path, 1), stage_file(tmp_path, 2)]
    assert stages_complete(tmp_path)
    back = [load_questions(p) for p in paths]
    assert [q.id for part in back for q in part] == sel.ids
    q0 = back[0][0]
    assert q0.meta["keep"] == 1 and q0.meta["pareto"]["stage"] == 1
    assert q0.meta["pareto"]["front"] == sel.front[q0.id]
    manifest = json.loads((tmp_path / "stages.json").read_text())
    assert manifest["files"] == ["stage1.jsonl", "stage2.jsonl"] and manifest["selected"] == len(sel.ids)
    with pytest.raises(DataError, match="not among the questions"):
        write_stages(tmp_path / "other", sel, questions[:3])
