from __future__ import annotations

from pathlib import Path

import pytest

from tests.report.fixtures import before_after


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """(before, after): two scored runs over the same hand-made trajectories (fixtures.before_after)."""
    return before_after(tmp_path_factory.mktemp("runs"))
