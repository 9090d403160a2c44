"""What the `labeling` commands share: reading the project, checking months, running a month in process,
and leaving with a clear message and exit code."""

from __future__ import annotations

import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import click
import dagster as dg
import duckdb
from dagster._core.execution.execution_result import (
    ExecutionResult,  # the base of both run results; not exported
)
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from labeling_dagster.cli.summary import closing_lines, month_summary, summary_frame
from labeling_dagster.project import Project, ProjectFileError, load_project
from labeling_dagster.resources.warehouse import (
    WarehouseError,
    check_location,
    connect,
    warehouse_exists,
)

MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")

# Exit codes: 0 every month done and every blocking check passed; 1 a run failed; 2 bad input.
EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def console() -> Console:
    # Wide enough for three months side by side when the output goes to a file or a pipe.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    # escaped: a step key's "[m2026_08_s0001]" is not markup; soft_wrap: a long message stays one line
    # (a terminal wraps it; grep and logs see it whole)
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(code)


# --warehouse of every command: a DuckDB file or a postgresql:// URL; LABELING_WAREHOUSE as for `dagster dev`.
WAREHOUSE_OPTION = click.option(
    "--warehouse", default=None, envvar="LABELING_WAREHOUSE",
    help="DuckDB file or postgresql://user@host:port/dbname URL (default: the project's `warehouse`; env "
    "LABELING_WAREHOUSE). A PostgreSQL password comes from PGPASSWORD or ~/.pgpass.",
)


def warehouse_location(project: Project, given: str | None, *, must_exist: bool = False, then: str = "") -> str:
    """The warehouse a command uses: --warehouse / LABELING_WAREHOUSE, else the project's."""
    location = given or project.warehouse_location
    try:
        check_location(location)
    except WarehouseError as exc:
        fail(str(exc))
    if must_exist and not warehouse_exists(location):
        fail(f"{location} does not exist; {then or 'label the month first with `labeling run`'}")
    return location


def open_warehouse(location: str) -> duckdb.DuckDBPyConnection:
    """The warehouse for reading, or a clear exit when it cannot be opened."""
    try:
        conn = connect(location, read_only=True)
        (tables,) = conn.execute(
            "SELECT COUNT(*) FROM duckdb_tables() WHERE database_name = current_database() AND table_name = 'raw_items'"
        ).fetchone()
    except (WarehouseError, duckdb.Error) as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits
    if not tables:  # a new PostgreSQL database, or a DuckDB file that is not a warehouse
        conn.close()
        fail(f"{location} holds no labeling tables yet; label a month first with `labeling run`")
    return conn


def months_between(project: Project, first: str, last: str | None) -> list[str]:
    last = last or first
    for value, option in ((first, "--month"), (last, "--to")):
        if not MONTH.match(value):
            fail(f"{option} {value!r} is not a month; write YYYY-MM, e.g. 2026-09")
    if last < first:
        fail(f"--to {last} is before --month {first}")
    if first < project.source.start_month:
        fail(f"{first} is before the project's source.start_month {project.source.start_month}")
    now = datetime.now(timezone.utc).strftime("%Y-%m")
    if last >= now:
        fail(f"{last} has not ended yet; a monthly partition exists once its month is over")
    months, current = [], datetime.strptime(first, "%Y-%m")
    while current.strftime("%Y-%m") <= last:
        months.append(current.strftime("%Y-%m"))
        current = current.replace(year=current.year + current.month // 12, month=current.month % 12 + 1)
    return months


def load(project_path: str) -> Project:
    try:
        return load_project(project_path)
    except ProjectFileError as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits


def print_summary(project: Project, warehouse: str, months: list[str], console: Console) -> None:
    with open_warehouse(warehouse) as conn:
        summaries = [month_summary(conn, project, month) for month in months]
    frame = summary_frame(summaries)
    table = Table(title=f"{project.name}: monthly summary", title_justify="left")
    table.add_column("")
    for month in frame.columns:
        table.add_column(month, justify="right")
    for name, values in frame.iterrows():
        table.add_row(name, *[str(value) for value in values])
    console.print(table)
    for line in closing_lines(summaries):
        console.print(escape(line), style="bold red" if "MISSED" in line else None)


def first_error(result: ExecutionResult) -> str:
    """`<step>: <message>` of the run's first failed step, in one line: the cause a person can act on,
    not Dagster's wrapper around it nor the traceback (those are in the run's log, and on screen with
    --verbose)."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data:
            return f"{event.step_key}: {step_failure_cause(event.step_failure_data)}"
    return "the run failed before any step did; run again with --verbose to see Dagster's log"


def step_failure_cause(data) -> str:
    """The user-facing message of a step failure (Dagster's StepFailureData): a dg.Failure's
    description; else the first exception of the error's cause chain that is not Dagster's own
    wrapper (DagsterExecutionStepExecutionError: "Error occurred while executing op"). That is the
    exception the asset raised, with the project's message (a ProviderConfigError naming the
    variable, a source error naming the file); what caused it in turn (the SDK's HTTP error) is a
    detail of the traceback."""
    failure = data.user_failure_data
    if failure is not None and failure.description:
        return _one_line(failure.description)
    error = data.error
    if error is None:
        return "the step failed without an error; run again with --verbose to see Dagster's log"
    while error.cause is not None and error.cls_name.startswith("Dagster"):
        error = error.cause
    text = error.message.strip()
    # format_exception_only's "module.Class: message": our own exceptions' messages say everything;
    # anything else (a KeyError, a DuckDB error) keeps its class name, without the module.
    qualified, sep, rest = text.partition(": ")
    if sep and qualified.split(".")[-1] == error.cls_name:
        ours = qualified.startswith(("labeling_dagster.", "dagster._core.definitions.events."))
        text = rest if ours else f"{error.cls_name}: {rest}"
    return _one_line(text) or error.cls_name


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def dagster_log_config(verbose: bool) -> dict:
    """Run config of Dagster's console logger: its step log (INFO) with --verbose; else nothing on
    screen (a failure's cause is printed in one line instead: first_error). Either way the run and
    every event are stored on the instance (DAGSTER_HOME when set), as the UI shows them."""
    return {"loggers": {"console": {"config": {"log_level": "INFO" if verbose else "CRITICAL"}}}}


def instance() -> dg.DagsterInstance:
    """The DAGSTER_HOME instance when set, so runs show in the UI's history; else a throwaway one.

    A DAGSTER_HOME that does not exist yet is created (Dagster itself refuses one), so the first
    `labeling run` on a fresh machine keeps its history instead of failing.
    """
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return dg.DagsterInstance.ephemeral()
    Path(home).expanduser().mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def monthly_job_of(project_path: str, warehouse: str) -> dg.JobDefinition:
    """The monthly job of a project; module-level, so a multiprocess run can rebuild it in each step process."""
    from labeling_dagster.definitions import build_definitions
    from labeling_dagster.schedules import MONTHLY_JOB

    return build_definitions(project_path, warehouse).resolve_job_def(MONTHLY_JOB)


def execute_month(project_path: str, warehouse: str, month: str, *, selection: list[str] | None = None,
                  verbose: bool = False, on_instance: dg.DagsterInstance | None = None) -> ExecutionResult:
    """One month of the monthly job (or of `selection`, asset names). In process; with
    scale.parallel_shards > 1, each step in its own process, that many shard steps at once."""
    run_config = dagster_log_config(verbose)
    assets = [dg.AssetKey(name) for name in selection] if selection else None
    if load_project(project_path).scale.parallel_shards > 1:
        return _execute_in_processes(project_path, warehouse, month, run_config, assets, on_instance or instance())
    return monthly_job_of(project_path, str(warehouse)).execute_in_process(
        partition_key=f"{month}-01",
        instance=on_instance or instance(),
        raise_on_error=False,
        run_config=run_config,
        asset_selection=assets,
    )


def _execute_in_processes(project_path: str, warehouse: str, month: str, run_config: dict,
                          assets: list[dg.AssetKey] | None, on_instance: dg.DagsterInstance) -> ExecutionResult:
    # Step processes share run storage and the outputs the shard steps pass on: a throwaway instance
    # in memory cannot hold them, so one in a temporary folder stands in when DAGSTER_HOME is not set.
    if on_instance.is_ephemeral:
        # Step processes log their start through the instance's default console logger: at the run's level.
        level = run_config["loggers"]["console"]["config"]["log_level"]
        on_instance = dg.DagsterInstance.local_temp(overrides={"python_logs": {"python_log_level": level}})
    job = dg.build_reconstructable_job(
        "labeling_dagster.cli.common", "monthly_job_of", reconstructable_args=(str(project_path), str(warehouse))
    )
    with dg.execute_job(job, instance=on_instance, run_config=run_config, tags={"dagster/partition": f"{month}-01"},
                        asset_selection=assets, raise_on_error=False) as result:
        return result


def train_label_model(project_path: str, warehouse: str, *, verbose: bool = False,
                      on_instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    """Materialize the `models` group (golden_set, label_model) once, before the months that use them."""
    from labeling_dagster.definitions import build_definitions
    from labeling_dagster.schedules import LABEL_MODEL_JOB

    job = build_definitions(project_path, warehouse).resolve_job_def(LABEL_MODEL_JOB)
    return job.execute_in_process(
        instance=on_instance or instance(),
        raise_on_error=False,
        run_config=dagster_log_config(verbose),
    )


def run_problem(month: str, result: ExecutionResult) -> str | None:
    """Why a month's run did not succeed (a failed step or a failed blocking check), or None."""
    if not result.success:
        return f"{month}: {first_error(result)}"
    failed = [
        evaluation.check_name
        for evaluation in result.get_asset_check_evaluations()
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    ]
    return f"{month}: blocking checks failed: {failed}" if failed else None
