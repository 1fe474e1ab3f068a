"""Report options and the one function that writes report.md + report.html for N runs."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from etagent.config import ConfigModel
from etagent.io import atomic_write_text
from etagent.report.html import render_html
from etagent.report.loader import REPORT_HTML, REPORT_MD, ReportInputs, load_inputs
from etagent.report.markdown import render_markdown


class ReportConfig(ConfigModel):
    title: str = "etagent evaluation report"
    max_trajectories: int = Field(
        200, ge=0, description="trajectories embedded in the HTML viewer per run and data set"
    )
    max_block_chars: int = Field(
        2000, ge=0, description="longer blocks (results, code) are cut in the viewer; 0 = never"
    )
    page_size: int = Field(50, ge=1, description="trajectories listed before 'show more'")


def write_report(
    run_dirs: list[str | Path], output: str | Path | None = None, cfg: ReportConfig | None = None
) -> tuple[Path, Path]:
    """Write the HTML and Markdown reports of ``run_dirs`` (see :func:`build_report`).

    Returns (html path, md path).
    """
    html_path, md_path, _ = build_report(run_dirs, output, cfg)
    return html_path, md_path


def build_report(
    run_dirs: list[str | Path], output: str | Path | None = None, cfg: ReportConfig | None = None
) -> tuple[Path, Path, ReportInputs]:
    """Write the reports of ``run_dirs``: eval runs compared (the first eval run is the baseline),
    RL runs' curves (train_log.jsonl), Pareto runs' selections, and for a pipeline run directory
    its 07-eval/*, 06-rl-* and 05-pareto-* stages (loader.load_inputs).

    ``output``: the HTML file (the Markdown goes next to it with suffix .md); default
    ``report.html`` / ``report.md`` in the last directory given. Returns (html path, md path,
    what was read).
    """
    cfg = cfg or ReportConfig()
    inputs = load_inputs(run_dirs, max_trajectories=cfg.max_trajectories)
    if output is None:
        html_path = Path(run_dirs[-1]) / REPORT_HTML
        md_path = Path(run_dirs[-1]) / REPORT_MD
    else:
        html_path = Path(output)
        md_path = html_path.with_suffix(".md")
    atomic_write_text(md_path, render_markdown(inputs.evals, cfg.title, rl=inputs.rl, pareto=inputs.pareto))
    html = render_html(
        inputs.evals,
        cfg.title,
        max_block_chars=cfg.max_block_chars,
        page_size=cfg.page_size,
        rl=inputs.rl,
        pareto=inputs.pareto,
    )
    atomic_write_text(html_path, html)
    return html_path, md_path, inputs
