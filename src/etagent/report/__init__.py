"""Readable evaluation reports: Markdown tables and a self-contained HTML page, for one or N runs."""

from etagent.report.build import ReportConfig, write_report
from etagent.report.html import render_html
from etagent.report.loader import RunResult, load_run, load_runs
from etagent.report.markdown import render_markdown

__all__ = [
    "ReportConfig",
    "RunResult",
    "load_run",
    "load_runs",
    "render_html",
    "render_markdown",
    "write_report",
]
