import json
import multiprocessing as mp
from pathlib import Path

import pytest
from pydantic import Field

from etagent.config import ConfigError, ConfigModel, load_config
from etagent.io import (
    DataError,
    JsonlAppender,
    atomic_write_text,
    file_lock,
    iter_jsonl,
    read_records,
    repair_torn_tail,
)
from etagent.records import Question


class Inner(ConfigModel):
    k: int = 1
    names: list[str] = Field(default_factory=list)


class Outer(ConfigModel):
    data: str = "x"
    inner: Inner = Field(default_factory=Inner)


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: toolworld:dev\ninner:\n  k: 3\n")
    cfg = load_config(Outer, f, ["inner.names=[a, b]", "inner.k=5"])
    assert cfg.data == "toolworld:dev" and cfg.inner.k == 5 and cfg.inner.names == ["a", "b"]


class WithList(ConfigModel):
    items: list[Inner] = Field(default_factory=list)


def test_overrides_index_into_lists(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("items:\n  - k: 1\n  - k: 2\n")
    cfg = load_config(WithList, f, ["items.1.k=7", "items.0.names=[x]"])
    assert [i.k for i in cfg.items] == [1, 7] and cfg.items[0].names == ["x"]
    with pytest.raises(ConfigError, match="has 2 items, no index '5'"):
        load_config(WithList, f, ["items.5.k=1"])


class Words(ConfigModel):
    mode: str = "x"
    flag: bool = False


def test_yaml_words_like_off_and_no_stay_strings(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("mode: off\nflag: true\n")
    cfg = load_config(Words, f, [])
    assert cfg.mode == "off" and cfg.flag is True
    assert load_config(Words, None, ["mode=no", "flag=false"]).mode == "no"


def test_artifacts_are_readable_by_others_as_the_umask_allows(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "{}")
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_config_errors_name_file_and_field(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  kk: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*\n.*inner\.kk"):
        load_config(Outer, f)
    with pytest.raises(ConfigError, match=r"inner\.k"):
        load_config(Outer, None, ["inner.k=notanint"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_config(Outer, None, ["oops"])
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, f)


def test_jsonl_errors_name_file_line_and_field(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"id": "a", "question": "q?", "answer": "x"}\n\n{"id": "b", "question": "q2?"}\n')
    with pytest.raises(DataError, match=r"q\.jsonl:3: field 'answer'"):
        read_records(f, Question)
    f.write_text('{"id": "a", "question": "q?", "answer": "x"}\n{"id": \n')
    with pytest.raises(DataError, match=r"q\.jsonl:2: malformed JSON"):
        list(iter_jsonl(f))
    with pytest.raises(DataError, match="does not exist"):
        list(iter_jsonl(tmp_path / "nope.jsonl"))


def test_torn_tail_is_repaired_and_appends_are_whole(tmp_path):
    f = tmp_path / "t.jsonl"
    with JsonlAppender(f) as w:
        w.write_group([{"a": 1}, {"a": 2}])
    with f.open("a") as fh:
        fh.write('{"a": 3, "torn')  # a crash mid-write
    assert repair_torn_tail(f) > 0
    with JsonlAppender(f) as w:
        w.write_group([{"a": 4}])
    assert [o["a"] for _, o in iter_jsonl(f)] == [1, 2, 4]


def _write_many(path: str, k: int) -> None:
    for i in range(50):
        atomic_write_text(path, json.dumps({"writer": k, "i": i, "pad": "x" * 5000}))


def test_atomic_write_never_exposes_a_partial_file(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, json.dumps({"writer": -1}))
    procs = [mp.get_context("fork").Process(target=_write_many, args=(str(target), k)) for k in range(2)]
    for p in procs:
        p.start()
    for _ in range(200):
        json.loads(target.read_text())  # always a whole document
    for p in procs:
        p.join()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _hold_lock(lock: str, log: str, k: int) -> None:
    import time

    for _ in range(5):
        with file_lock(lock), open(log, "a") as f:
            f.write(f"{k} in\n")
            f.flush()
            time.sleep(0.02)  # the other process tries to enter meanwhile
            f.write(f"{k} out\n")


def test_file_lock_lets_one_process_in_at_a_time(tmp_path):
    """Processes sharing a run directory (bench_calibration --policies) run its warm-up once."""
    lock, log = tmp_path / "runs" / "seed0.lock", tmp_path / "log"
    procs = [
        mp.get_context("fork").Process(target=_hold_lock, args=(str(lock), str(log), k)) for k in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 20
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):  # never interleaved
        assert enter.endswith(" in") and leave == enter.replace(" in", " out")


CONFIGS = Path(__file__).parents[1] / "configs"
SHIPPED_CONFIGS = sorted([*CONFIGS.glob("*.yaml"), *(CONFIGS / "scale").glob("*.yaml")])


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads_into_its_stage_config(path):
    """configs/<stage>_*.yaml is what users copy: each must validate against its stage's model."""
    from etagent.eval.stage import EvalConfig
    from etagent.flywheel.stage import FlywheelConfig
    from etagent.pareto.stage import ParetoStageConfig
    from etagent.pipeline import PipelineConfig
    from etagent.rl.config import RLConfig
    from etagent.rollout.stage import RolloutConfig
    from etagent.train.sft import SFTConfig

    stages = {
        "eval": EvalConfig,
        "flywheel": FlywheelConfig,
        "pareto": ParetoStageConfig,
        "pipeline": PipelineConfig,
        "rl": RLConfig,
        "rollout": RolloutConfig,
        "sft": SFTConfig,
    }
    cls = stages[path.name.split("_")[0]]
    cfg = load_config(cls, path)
    assert cfg.model_dump(exclude_defaults=True), f"{path.name} sets nothing"


def test_a_section_given_in_part_keeps_the_stage_defaults_of_the_rest(tmp_path):
    """``agent: {budget: ...}`` changes the budget only: the flywheel still samples at T 1.0 /
    top_p 0.95 with 64 rows and RL keeps its own budget, not the AgentConfig class defaults."""
    from etagent.flywheel.stage import FlywheelConfig
    from etagent.rl.config import RLConfig

    cfg_file = tmp_path / "f.yaml"
    cfg_file.write_text("agent:\n  budget:\n    max_tool_calls: 3\n", encoding="utf-8")
    flywheel = load_config(FlywheelConfig, cfg_file)
    assert flywheel.agent.budget.max_tool_calls == 3
    assert flywheel.agent.budget.max_calls_per_tool == 6
    assert (flywheel.agent.sampling.temperature, flywheel.agent.sampling.top_p) == (1.0, 0.95)
    assert flywheel.agent.max_active == 64
    rl = load_config(RLConfig, None, ["agent.tools.enabled=[search]"])
    assert (rl.agent.budget.max_response_tokens, rl.agent.budget.on_budget) == (1024, "stop")
    with pytest.raises(ConfigError, match=r"rollout\.engine policy rolls out with backend kind"):
        load_config(RLConfig, None, ["agent.backend.kind=openai"])


def test_checking_a_config_does_not_load_torch():
    """A stage's config (hf backend included) validates without importing torch or transformers:
    a CLI error in a config costs a second, not the seconds those imports take."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from etagent.config import load_config\n"
        "from etagent.rl.config import RLConfig\n"
        "from etagent.pipeline import PipelineConfig\n"
        "load_config(RLConfig, None, ['agent.backend.hf.batch_size=8'])\n"
        "load_config(PipelineConfig, None, [])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_partial_section_keeps_every_field_of_the_default_nested_configs():
    """The demo's flywheel sets continuation_budget=BudgetConfig(max_tool_calls=4, ...), leaving
    max_calls_per_tool at BudgetConfig's 6; setting only the flywheel's seed must not swap it for
    the flywheel field's own default budget (10 calls per tool)."""
    from etagent.demo import DemoConfig

    default = DemoConfig().flywheel
    seeded = load_config(DemoConfig, None, ["flywheel.seed=3"]).flywheel
    assert seeded.seed == 3
    assert seeded.continuation_budget == default.continuation_budget
    assert seeded.continuation_budget.max_calls_per_tool == 6
    assert seeded.model_dump(exclude={"seed"}) == default.model_dump(exclude={"seed"})
