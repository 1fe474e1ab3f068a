"""Report options and the one function that writes report.md + report.html for N runs."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from etagent.config import ConfigModel
from etagent.io import atomic_write_text
from etagent.report.html import render_html
from etagent.report.loader import REPORT_HTML, REPORT_MD, load_runs
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
    """Write the HTML and Markdown reports comparing ``run_dirs`` (the first is the baseline).

    ``output``: the HTML file (the Markdown goes next to it with suffix .md); default
    ``report.html`` / ``report.md`` in the last run directory. Returns (html path, md path).
    """
    cfg = cfg or ReportConfig()
    runs = load_runs(run_dirs, max_trajectories=cfg.max_trajectories)
    if output is None:
        html_path = Path(run_dirs[-1]) / REPORT_HTML
        md_path = Path(run_dirs[-1]) / REPORT_MD
    else:
        html_path = Path(output)
        md_path = html_path.with_suffix(".md")
    atomic_write_text(md_path, render_markdown(runs, cfg.title))
    atomic_write_text(
        html_path, render_html(runs, cfg.title, max_block_chars=cfg.max_block_chars, page_size=cfg.page_size)
    )
    return html_path, md_path
