"""Running the CLI in-process as a user would, for the tests of every command."""

from __future__ import annotations

from typer.testing import CliRunner, Result

from etagent.cli import app

runner = CliRunner()


def invoke_ok(*args: str) -> Result:
    """``etagent ARGS...``; fails the test with the command's output unless it exits 0."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result
