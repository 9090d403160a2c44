"""`labeling`: run the monthly pipeline on a project folder, show its summary, estimate costs.

The commands build the same Definitions as the Dagster UI and execute them in process; with
DAGSTER_HOME set, the runs are recorded there and show in the UI's run history and lineage.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import click
import dagster as dg
import duckdb
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from labeling_dagster.cli.estimate import estimate
from labeling_dagster.cli.summary import month_summary, summary_frame
from labeling_dagster.project import Project, ProjectFileError, load_project

MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")

# Exit codes: 0 every month done and every blocking check passed; 1 a run failed; 2 bad input.
EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _console() -> Console:
    return Console(stderr=False, highlight=False)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}")
    sys.exit(code)


def _months(project: Project, first: str, last: str | None) -> list[str]:
    last = last or first
    for value, option in ((first, "--month"), (last, "--to")):
        if not MONTH.match(value):
            _fail(f"{option} {value!r} is not a month; write YYYY-MM, e.g. 2026-09")
    if last < first:
        _fail(f"--to {last} is before --month {first}")
    if first < project.source.start_month:
        _fail(f"{first} is before the project's source.start_month {project.source.start_month}")
    now = datetime.now(timezone.utc).strftime("%Y-%m")
    if last >= now:
        _fail(f"{last} has not ended yet; a monthly partition exists once its month is over")
    months, current = [], datetime.strptime(first, "%Y-%m")
    while current.strftime("%Y-%m") <= last:
        months.append(current.strftime("%Y-%m"))
        current = current.replace(year=current.year + current.month // 12, month=current.month % 12 + 1)
    return months


def _load(project_path: str) -> Project:
    try:
        return load_project(project_path)
    except ProjectFileError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


def print_summary(project: Project, warehouse: Path, months: list[str], console: Console) -> None:
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        frame = summary_frame([month_summary(conn, project, month) for month in months])
    table = Table(title=f"{project.name}: monthly summary", title_justify="left")
    table.add_column("")
    for month in frame.columns:
        table.add_column(month, justify="right")
    for name, values in frame.iterrows():
        table.add_row(name, *[str(value) for value in values])
    console.print(table)


def _first_error(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            return f"{event.step_key}: {event.step_failure_data.error.message.strip()}"
    return "the run failed; see the Dagster logs above"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Label a dataset every month with the cheapest tier that can be trusted, and cost every call.

    A project folder holds project.yaml (taxonomy, source files, tiers, routing, people, budget,
    prices). `labeling run` labels months of it; `labeling summary` shows what a run left;
    `labeling estimate` prices a workload before anything is spent.
    """
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)


@main.command()
@click.option("--project", "project_path", required=True, type=click.Path(exists=True),
              help="Project folder (with project.yaml) or the project file itself.")
@click.option("--month", "first", required=True, help="First month to label, YYYY-MM.")
@click.option("--to", "last", default=None, help="Last month to label, YYYY-MM (default: --month).")
@click.option("--warehouse", type=click.Path(), default=None,
              help="DuckDB file to write (default: the project's `warehouse`, relative to its folder).")
@click.option("--verbose", is_flag=True, help="Show Dagster's step logs as well as the progress bar.")
def run(project_path: str, first: str, last: str | None, warehouse: str | None, verbose: bool) -> None:
    """Materialize every monthly asset for each month from --month to --to, one run per month.

    Each month is its own Dagster run: a failure stops there, and running the same command again
    resumes, reusing every model call already stored (nothing is paid twice). Exit code 0 when every
    month succeeded, 1 when a run failed, 2 for bad input.
    """
    from labeling_dagster.definitions import build_definitions
    from labeling_dagster.schedules import MONTHLY_JOB

    project = _load(project_path)
    months = _months(project, first, last)
    warehouse_path = Path(warehouse) if warehouse else project.warehouse_path
    defs = build_definitions(project_path, warehouse_path)
    job = defs.resolve_job_def(MONTHLY_JOB)
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    console = _console()
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO" if verbose else "WARNING"}}}}
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} months"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(f"labeling {project.name}", total=len(months))
        for month in months:
            progress.update(task, description=f"labeling {project.name} {month}")
            result = job.execute_in_process(
                partition_key=f"{month}-01", instance=instance, raise_on_error=False, run_config=run_config
            )
            if not result.success:
                progress.stop()
                _fail(f"{month}: {_first_error(result)}\nFix the cause and run the same command again: "
                      f"finished months and stored calls are reused.", EXIT_RUN_FAILED)
            failed_checks = [
                evaluation.check_name
                for evaluation in result.get_asset_check_evaluations()
                if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
            ]
            if failed_checks:
                progress.stop()
                _fail(f"{month}: blocking checks failed: {failed_checks}", EXIT_RUN_FAILED)
            progress.advance(task)
    print_summary(project, warehouse_path, months, console)
    console.print(f"warehouse: {warehouse_path}\nreview queue exports: {project.exports_path}/<month>/")


@main.command()
@click.option("--project", "project_path", required=True, type=click.Path(exists=True),
              help="Project folder (with project.yaml) or the project file itself.")
@click.option("--month", "first", required=True, help="First month, YYYY-MM.")
@click.option("--to", "last", default=None, help="Last month, YYYY-MM (default: --month).")
@click.option("--warehouse", type=click.Path(exists=True), default=None, help="DuckDB file to read.")
def summary(project_path: str, first: str, last: str | None, warehouse: str | None) -> None:
    """Print the per-month summary of months already labeled."""
    project = _load(project_path)
    path = Path(warehouse) if warehouse else project.warehouse_path
    if not path.exists():
        _fail(f"{path} does not exist; run `labeling run --project {project_path} --month {first}` first")
    print_summary(project, path, _months(project, first, last), _console())


main.add_command(estimate)
