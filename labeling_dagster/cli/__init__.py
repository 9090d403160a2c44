"""`labeling`: run the monthly pipeline on a project folder, show its summary, handle human review,
estimate costs.

The commands build the same Definitions as the Dagster UI and execute them in process; with
DAGSTER_HOME set, the runs are recorded there and show in the UI's run history and lineage.
"""

from __future__ import annotations

import warnings

import click
import dagster as dg
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from labeling_dagster.cli.common import (
    WAREHOUSE_OPTION,
    EXIT_RUN_FAILED,
    console,
    execute_month,
    fail,
    instance,
    load,
    months_between,
    print_summary,
    run_problem,
    train_label_model,
    warehouse_location,
)
from labeling_dagster.cli.estimate import estimate
from labeling_dagster.cli.recommend import recommend_command
from labeling_dagster.cli.review import review

PROJECT_OPTION = click.option(
    "--project", "project_path", required=True, type=click.Path(exists=True),
    help="Project folder (with project.yaml) or the project file itself.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Label a dataset every month with the cheapest tier that can be trusted, and cost every call.

    A project folder holds project.yaml (taxonomy, source files, tiers, routing, people, budget,
    prices). `labeling run` labels months of it; `labeling summary` shows what a run left;
    `labeling review` exports the queue and imports people's answers; `labeling recommend` proposes
    routing bands from the golden run; `labeling estimate` prices a workload before anything is spent.
    """
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)


@main.command()
@PROJECT_OPTION
@click.option("--month", "first", required=True, help="First month to label, YYYY-MM.")
@click.option("--to", "last", default=None, help="Last month to label, YYYY-MM (default: --month).")
@WAREHOUSE_OPTION
@click.option("--verbose", is_flag=True,
              help="Show Dagster's log (steps, and a failed step's traceback) as well as the progress bar.")
def run(project_path: str, first: str, last: str | None, warehouse: str | None, verbose: bool) -> None:
    """Materialize every monthly asset for each month from --month to --to, one run per month
    (after loading the golden set and training the auto-labeler, when the project turns it on).

    Each month is its own Dagster run: a failure stops there, and running the same command again
    resumes, reusing every model call already stored (nothing is paid twice). The runs execute in
    this process; with scale.parallel_shards above 1 in the project file, each step runs in a process
    of its own and that many shards of a model tier at once. Exit code 0 when every
    month succeeded, 1 when a run failed, 2 for bad input.

    A failed run prints its cause in one line, `<month>: <step>: <message>`; Dagster's own log (and
    the traceback) only with --verbose. Either way the run is recorded on the Dagster instance
    (DAGSTER_HOME when set), where the UI shows its whole log.
    """
    from labeling_dagster.definitions import check_paid_tiers
    from labeling_dagster.resources.llm import ProviderConfigError

    project = load(project_path)
    months = months_between(project, first, last)
    try:
        check_paid_tiers(project)
    except ProviderConfigError as exc:
        fail(str(exc))
    warehouse_path = warehouse_location(project, warehouse)
    out = console()
    on_instance = instance()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} months"), TimeElapsedColumn(), console=out) as progress:
        task = progress.add_task(f"labeling {project.name}", total=len(months))
        progress.update(task, description=f"golden set and auto-labeler of {project.name}")
        problem = run_problem("models", train_label_model(project_path, warehouse_path, verbose=verbose,
                                                          on_instance=on_instance))
        if problem:
            progress.stop()
            fail(problem, EXIT_RUN_FAILED)
        for month in months:
            progress.update(task, description=f"labeling {project.name} {month}")
            result = execute_month(project_path, warehouse_path, month, verbose=verbose, on_instance=on_instance)
            problem = run_problem(month, result)
            if problem:
                progress.stop()
                fail(f"{problem}\nFix the cause and run the same command again: finished months and stored "
                     f"calls are reused.", EXIT_RUN_FAILED)
            progress.advance(task)
    print_summary(project, warehouse_path, months, out)
    out.print(f"warehouse: {warehouse_path}\nreview queue exports: {project.exports_path}/<month>/")


@main.command()
@PROJECT_OPTION
@click.option("--month", "first", required=True, help="First month, YYYY-MM.")
@click.option("--to", "last", default=None, help="Last month, YYYY-MM (default: --month).")
@WAREHOUSE_OPTION
def summary(project_path: str, first: str, last: str | None, warehouse: str | None) -> None:
    """Print the per-month summary of months already labeled."""
    project = load(project_path)
    path = warehouse_location(project, warehouse, must_exist=True,
                              then=f"run `labeling run --project {project_path} --month {first}` first")
    print_summary(project, path, months_between(project, first, last), console())


main.add_command(estimate)
main.add_command(review)
main.add_command(recommend_command)
